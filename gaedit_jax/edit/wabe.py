"""WABE in practice: the per-Gaussian gradient mask of the editing loop (METHOD §6, 6; DESIGN "WABE").

The original (`GAE:train.py:172-208`) multiplies, after every backward, the gradients of position,
SH colour (DC and rest), opacity and scale of each Gaussian by

* `binary` (`--use_grad_mask`, the default of every README run): 1 if the Gaussian is among the first
  K = 10 accepted contributors of some pixel of the rendered view(s) and is not bound to a mouth face,
  else 0;
* `soft` (`--use_grad_mask_alphaT`): the Gaussian's mean min-max-normalised WABE weight
  (`RenderOutput.wabe_weight`) times not-mouth;
* `off`: no masking.

Rotation, FLAME parameters and the discriminator are never masked (METHOD §6). The mask multiplies
the *total* gradient (regularisers and mouth loss included) before Adam, so masked Gaussians still
drift with Adam's running moments (METHOD §6, kept: faithful).

Our visibility set is the per-pixel first-K union computed by the rasterizer (METHOD §10: the
original's per-tile shared-memory buffer was a race). Multi-view batches (the original renders one
view per step): binary = union over the views; soft = max over the views of the per-view weight
(the per-view means cannot be re-pooled exactly without the counts; max keeps "visible somewhere").

A fourth mode, `backward`, applies the paper's equation inside the rasterizer's backward
(`RenderConfig.wabe_backward`, each pixel-Gaussian term scaled by exp(-beta (1 - T_k))); the
gradient multiplier is then only not-mouth. Use `render_config(mode, base)` to get the matching
render settings.

All functions are pure and jit-able; `mode` is static.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Mapping

import jax
import jax.numpy as jnp

from gaedit_jax.render.types import RenderConfig, RenderOutput
from gaedit_jax.rig import Avatar

WabeMode = Literal["binary", "soft", "backward", "off"]
MODES = ("binary", "soft", "backward", "off")
# Avatar fields whose gradients are masked: _xyz, _features_dc, _features_rest, _opacity, _scaling.
MASKED_FIELDS = ("xyz", "sh_dc", "sh_rest", "opacity_logit", "log_scale")


def _check(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"WABE mode must be one of {MODES}, got {mode!r}")


def render_config(mode: WabeMode, base: RenderConfig = RenderConfig()) -> RenderConfig:
  """The render settings a mode needs: WABE outputs (wabe_k > 0) for binary / soft, the
  backward-weighted rasterizer for `backward`, neither for `off`."""
  _check(mode)
  k = base.wabe_k if base.wabe_k > 0 else RenderConfig().wabe_k
  if mode in ("binary", "soft"):
    return dataclasses.replace(base, wabe_k=k, wabe_backward=False)
  if mode == "backward":
    return dataclasses.replace(base, wabe_k=k, wabe_backward=True)
  return dataclasses.replace(base, wabe_k=0, wabe_backward=False)


def gradient_mask(render: RenderOutput, mouth: jax.Array, mode: WabeMode = "binary") -> jax.Array:
  """Per-Gaussian gradient multiplier [N] float32 (METHOD §6).

  render: the `RenderOutput` of this step's view(s), wabe_mask / wabe_weight [...,N] (leading view
  dims are pooled: union for binary, max for soft); mouth: bool [N] (`mouth.mouth_gaussians`)."""
  _check(mode)
  keep = ~jnp.asarray(mouth, bool)
  n = keep.shape[-1]
  if mode == "binary":
    vis = render.wabe_mask.reshape(-1, n).any(axis=0)
    return (vis & keep).astype(jnp.float32)
  if mode == "soft":
    w = render.wabe_weight.reshape(-1, n).max(axis=0)
    return jnp.where(keep, w, 0.0).astype(jnp.float32)
  if mode == "backward":
    return keep.astype(jnp.float32)
  return jnp.ones((n,), jnp.float32)


def apply_gradient_mask(grads, mask: jax.Array, fields: tuple[str, ...] = MASKED_FIELDS):
  """Multiplies the gradients of `fields` by the per-Gaussian mask [C] (broadcast over trailing
  dims); other fields pass through unchanged. grads: the avatar's gradient as a dict
  (`Avatar.params()` layout, extra keys allowed) or as an `Avatar`."""
  mask = jax.lax.stop_gradient(jnp.asarray(mask))

  def mul(g):
    m = mask.reshape(mask.shape + (1,) * (g.ndim - mask.ndim)).astype(g.dtype)
    return g * m

  if isinstance(grads, Avatar):
    return dataclasses.replace(grads, **{f: mul(getattr(grads, f)) for f in fields})
  if isinstance(grads, Mapping):
    return {k: (mul(v) if k in fields else v) for k, v in grads.items()}
  raise TypeError(f"apply_gradient_mask: grads must be a dict or an Avatar, got {type(grads)}")


def mask_gradients(grads, render: RenderOutput, mouth: jax.Array, mode: WabeMode = "binary"):
  """`gradient_mask` then `apply_gradient_mask`; `off` returns grads unchanged. Returns
  (masked grads, mask [N])."""
  mask = gradient_mask(render, mouth, mode)
  if mode == "off":
    return grads, mask
  return apply_gradient_mask(grads, mask), mask


__all__ = [
  "WabeMode",
  "MODES",
  "MASKED_FIELDS",
  "render_config",
  "gradient_mask",
  "apply_gradient_mask",
  "mask_gradients",
]
