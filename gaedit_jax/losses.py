"""Reconstruction losses of GaussianAvatars (METHOD §2.5). Pure jnp; images [...,H,W,3] in [0,1].

SSIM is `gaedit_jax.metrics.ssim` (GaussianAvatars' 11x11 Gaussian window, sigma 1.5), so the
training loss and the reported metric are the same function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gaedit_jax.metrics import psnr, ssim


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean absolute error over everything (GA's l1_loss)."""
  return jnp.mean(jnp.abs(x - y))


def d_ssim(x: jax.Array, y: jax.Array) -> jax.Array:
  """1 - SSIM, averaged over the batch of images."""
  return 1.0 - jnp.mean(ssim(x.reshape((-1,) + x.shape[-3:]), y.reshape((-1,) + y.shape[-3:])))


def photometric(x: jax.Array, y: jax.Array, lambda_dssim: float = 0.2) -> tuple[jax.Array, dict]:
  """METHOD §2.5: (1 - lambda) L1 + lambda (1 - SSIM), lambda = 0.2. Returns (loss, parts)."""
  a, b = l1(x, y), d_ssim(x, y)
  return (1.0 - lambda_dssim) * a + lambda_dssim * b, {"l1": a, "dssim": b}


def _masked_mean(v: jax.Array, mask: jax.Array) -> jax.Array:
  m = mask.astype(v.dtype)
  return jnp.sum(v * m) / jnp.maximum(jnp.sum(m), 1.0)


def position_reg(xyz_local: jax.Array, visible: jax.Array, threshold: float = 1.0) -> jax.Array:
  """METHOD §2.5: mean over visible Gaussians of relu(||mu_local|| - threshold) (weight applied by
  the caller: 0.01)."""
  n = jnp.sqrt(jnp.sum(xyz_local * xyz_local, axis=-1) + 1e-20)
  return _masked_mean(jax.nn.relu(n - threshold), visible)


def scale_reg(log_scale_local: jax.Array, visible: jax.Array, threshold: float = 0.6) -> jax.Array:
  """METHOD §2.5: mean over visible Gaussians of ||relu(exp(s_local) - threshold)||_2 (weight 1)."""
  r = jax.nn.relu(jnp.exp(log_scale_local) - threshold)
  n = jnp.sqrt(jnp.sum(r * r, axis=-1) + 1e-20) - 1e-10  # ~0 where r = 0, finite gradient
  return _masked_mean(jnp.maximum(n, 0.0), visible)


__all__ = ["l1", "d_ssim", "photometric", "position_reg", "scale_reg", "psnr", "ssim"]
