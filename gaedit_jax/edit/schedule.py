"""The SSIM phase of an edit run (the original's `--use_in2nssim`, GAE:train.py:268-276).

With the flag the original replaces the LPIPS term to the 2D edit E by a D-SSIM term of the same
weight (lambda_p = 10) once `iteration > round(0.9 * (opt.iterations - first_iter))`:

    L_edit = 10 mean|I_p - E| + 10 (1 - SSIM(I_p, E))        (instead of + 10 LPIPS(I_p, E))

with I_p the render in the editor's frame and SSIM GaussianAvatars' (11x11 Gaussian window, mean of
the map). The threshold was meant as "the last 10% of the run"; the released code compares it with
the absolute iteration of a run that starts from a 600k checkpoint (600001 > 899), so there the
phase covers the whole edit. `--ssim-last F` starts the phase at the same relative point of our
run (iterations numbered 1..N, so `it > round((1 - F)(N - 1))`): F = 0.1 is the intended last 10%,
F = 1 is what the released code does with the flag, F = 0 (default: the README commands do not pass
the flag) is off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gaedit_jax.errors import InputError
from gaedit_jax.metrics import ssim

SSIM_WEIGHT = 10.0  # lambda_p of GAE:train.py:265, shared with LPIPS


def ssim_phase_start(iterations: int, fraction: float) -> int | None:
  """0-based first step of the SSIM phase of an `iterations`-long run (None: off). Iteration
  it = step + 1 is in the phase iff it > round((1 - fraction) (iterations - 1)), Python's round as
  the original's (N = 1000, F = 0.1: iterations 900..1000)."""
  if not 0.0 <= fraction <= 1.0:
    raise InputError(f"--ssim-last {fraction}: expected a fraction of the run in [0, 1] (0: off)")
  if fraction == 0.0:
    return None
  return int(round((1.0 - fraction) * (max(int(iterations), 1) - 1)))


def ssim_phase(step: jax.Array, start: int | None) -> jax.Array:
  """1.0 inside the SSIM phase (0-based `step` >= start), else 0.0; always 0.0 when off. In the
  phase the edit loss is 10 |I_p - E| + lambda_ssim (1 - SSIM) instead of ... + 10 LPIPS."""
  if start is None:
    return jnp.zeros((), jnp.float32)
  return (step >= start).astype(jnp.float32)


def edit_dssim(x: jax.Array, target: jax.Array) -> jax.Array:
  """1 - SSIM(x, E), mean over the batch; x, target [..., h, w, 3] in the editor's frame."""
  flat = lambda a: a.reshape((-1,) + a.shape[-3:])
  return 1.0 - jnp.mean(ssim(flat(x), flat(target)))


__all__ = ["SSIM_WEIGHT", "ssim_phase_start", "ssim_phase", "edit_dssim"]
