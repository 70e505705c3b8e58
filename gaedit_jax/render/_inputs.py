"""Checking and preparing `rasterize`'s arguments, shared by the native path (api.py) and the dense
reference (reference.py).

Every argument may carry leading batch dims that broadcast against each other (numpy rules). The
arguments become named float32 operands, each with its core rank (the number of trailing dims that
are not batch dims), plus the broadcast batch shape. The native path aligns every operand to the
same number of leading dims (`aligned`); the reference broadcasts them to one flat batch of views
(`flat_views`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.camera import Camera
from gaedit_jax.errors import InputError
from gaedit_jax.render.types import MAX_IMAGE_SIDE, Gaussians, RenderConfig, _is_int

Named = dict[str, tuple[jax.Array, int]]  # operand name -> (array, core rank)


def _align(x, core_rank: int, nb: int):
  """x with size-1 dims inserted in front so that it has `nb` batch dims (no copy)."""
  lead = x.ndim - core_rank
  return x.reshape((1,) * (nb - lead) + x.shape)


def _broadcast_batch(named: Named) -> tuple[int, ...]:
  shapes = {k: tuple(v.shape[: v.ndim - core]) for k, (v, core) in named.items()}
  try:
    return tuple(np.broadcast_shapes(*shapes.values()))
  except ValueError:
    detail = ", ".join(f"{k} {s}" for k, s in shapes.items())
    raise InputError(f"rasterize: the leading (batch) dims do not broadcast: {detail}") from None


def prepare_inputs(
  gaussians: Gaussians, camera: Camera, background, config: RenderConfig
) -> tuple[Named, tuple[int, ...]]:
  """Validates and casts the arguments; returns (named operands with core ranks, batch shape).

  Every static setting is checked here, before any kernel sees it: the config's own fields (again,
  in case it was built around `RenderConfig.__post_init__`), the image size and the SH degree
  against the coefficients given. Problems raise `InputError`.
  """
  config.__post_init__()
  g = gaussians
  if g.means.ndim < 2 or g.means.shape[-1] != 3:
    raise InputError(f"rasterize: means must be [..., N, 3], got {g.means.shape}")
  n = g.means.shape[-2]
  if g.sh.ndim < 3 or g.sh.shape[-1] != 3 or g.sh.shape[-3] != n:
    raise InputError(f"rasterize: sh must be [..., N, K, 3] with N = {n}, got {g.sh.shape}")
  k = g.sh.shape[-2]
  if (config.sh_degree + 1) ** 2 > k:
    raise InputError(
      f"rasterize: RenderConfig.sh_degree = {config.sh_degree} needs "
      f"(d+1)^2 = {(config.sh_degree + 1) ** 2} SH coefficients per channel, but sh "
      f"has K = {k}: lower sh_degree or pass more coefficients"
    )
  for name in ("width", "height"):
    side = getattr(camera, name)
    if not _is_int(side) or not 1 <= side <= MAX_IMAGE_SIDE:
      raise InputError(f"rasterize: camera.{name} = {side!r}: expected an integer in [1, {MAX_IMAGE_SIDE}] (pixels)")
  offset = g.screen_offset if g.screen_offset is not None else jnp.zeros((n, 2), jnp.float32)
  f = lambda x: jnp.asarray(x, jnp.float32)
  named = {
    "means": (f(g.means), 2),
    "quats": (f(g.quats), 2),
    "scales": (f(g.scales), 2),
    "opacities": (f(g.opacities), 1),
    "sh": (f(g.sh), 3),
    "screen_offset": (f(offset), 2),
    "world_to_camera": (f(camera.world_to_camera), 2),
    "intrinsics": (camera.intrinsics, 1),
    "background": (f(background), 1),
  }
  for name, (x, core) in named.items():
    if x.ndim < core:
      raise InputError(f"rasterize: {name} has rank {x.ndim}, expected at least {core}")
  expected_core = {
    "quats": (n, 4),
    "scales": (n, 3),
    "opacities": (n,),
    "screen_offset": (n, 2),
    "world_to_camera": (4, 4),
    "intrinsics": (4,),
    "background": (3,),
  }
  for name, shape in expected_core.items():
    x, core = named[name]
    if tuple(x.shape[x.ndim - core :]) != shape:
      raise InputError(f"rasterize: {name} must be [..., {', '.join(map(str, shape))}], got {x.shape}")
  return named, _broadcast_batch(named)


def aligned(named: Named, batch: tuple[int, ...]) -> list[jax.Array]:
  """The operands, each with len(batch) leading dims (size 1 where it is shared)."""
  return [_align(x, core, len(batch)) for x, core in named.values()]


def flat_views(named: Named, batch: tuple[int, ...]) -> list[jax.Array]:
  """The operands broadcast to the batch and flattened to one leading dim of views."""
  v = math.prod(batch)
  return [
    jnp.broadcast_to(x, batch + x.shape[x.ndim - core :]).reshape((v,) + x.shape[x.ndim - core :])
    for x, core in named.values()
  ]
