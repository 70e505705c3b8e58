"""`rasterize`: the public entry point, a custom VJP over the native forward/backward kernels.

Batching. Every argument may carry leading batch dims that broadcast against each other (numpy
rules): cameras [B] with shared Gaussians [N,...], or per-view Gaussians [B,N,...] (FLAME poses
differ per frame), or [A,B] grids. All views render in one kernel call. The wrapper aligns every
operand to the same number of leading dims (_inputs.aligned: size-1 dims, no copies), so that each
`jax.vmap` level (vmap_method="expand_dims") adds exactly one leading dim to every operand and the
kernels see one flat batch of views with shared operands indexed with stride 0. Gradients of shared
operands are reduced over views inside the backward kernel (under vmap, JAX sums the per-example
cotangents afterwards, as it does for any custom_vjp).

The camera is not differentiated (its cotangent is zero).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax import parallel
from gaedit_jax.camera import Camera
from gaedit_jax.errors import InputError
from gaedit_jax.render import _ffi, _inputs, reference
from gaedit_jax.render.types import Gaussians, RenderConfig, RenderOutput


@dataclasses.dataclass(frozen=True)
class _Static:
  width: int
  height: int
  tile_size: int
  sh_degree: int
  near_plane: float
  wabe_k: int
  wabe_beta: float
  wabe_backward: bool
  capacity: int  # intersections per view (pooled over the batch)
  wabe_tile: bool = False  # RenderConfig.wabe_visibility == "tile"
  alpha_clamp_zero: bool = False  # RenderConfig.alpha_clamp_grad == "zero"

  def fwd_attrs(self):
    return dict(
      width=np.int64(self.width),
      height=np.int64(self.height),
      tile_size=np.int64(self.tile_size),
      sh_degree=np.int64(self.sh_degree),
      near_plane=np.float32(self.near_plane),
      wabe_k=np.int64(self.wabe_k),
      wabe_tile=bool(self.wabe_tile),
      wabe_beta=np.float32(self.wabe_beta),
    )

  def bwd_attrs(self):
    return dict(
      width=np.int64(self.width),
      height=np.int64(self.height),
      tile_size=np.int64(self.tile_size),
      sh_degree=np.int64(self.sh_degree),
      near_plane=np.float32(self.near_plane),
      wabe_backward=bool(self.wabe_backward),
      alpha_clamp_zero=bool(self.alpha_clamp_zero),
      wabe_beta=np.float32(self.wabe_beta),
    )

  @property
  def num_tiles(self) -> int:
    t = max(self.tile_size, 1)  # only shapes: the kernels refuse a bad tile size themselves
    return ((self.width + t - 1) // t) * ((self.height + t - 1) // t)


def _fwd_call(st: _Static, means, quats, scales, opac, sh, offset, viewmat, intr, bg):
  batch = means.shape[:-2]  # aligned operands: the full batch shape is the broadcast of all
  batch = jnp.broadcast_shapes(
    *(x.shape[: len(batch)] for x in (means, quats, scales, opac, sh, offset, viewmat, intr, bg))
  )
  n = means.shape[-2]
  v = math.prod(batch)
  h, w = st.height, st.width
  f32, i32 = jnp.float32, jnp.int32
  sds = jax.ShapeDtypeStruct
  out_types = (
    sds(batch + (h, w, 3), f32),  # image
    sds(batch + (h, w), f32),  # alpha
    sds(batch + (h, w), f32),  # depth
    sds(batch + (n,), i32),  # radii
    sds(batch + (n,), i32),  # wabe_count
    sds(batch + (n,), f32),  # wabe_weight
    sds(batch, i32),  # status: 2 x intersections + overflow bit (gs_math.h pack_isect)
    sds(batch + (n, 2), f32),  # means2d
    sds(batch + (n, 4), f32),  # conic + opacity
    sds(batch + (n, 3), f32),  # colours
    sds(batch + (n,), f32),  # depths
    sds(batch + (h, w), f32),  # final transmittance
    sds(batch + (h, w), i32),  # last contributor (+1)
    sds(batch + (st.capacity,), i32),  # sorted intersections (pooled over views)
    sds(batch + (st.num_tiles, 2), i32),  # tile ranges
    sds((_ffi.cuda_fwd_workspace_bytes(v, n, v * st.capacity, v * st.num_tiles, st.tile_size, st.wabe_k),), jnp.uint8),
  )
  call = jax.ffi.ffi_call(_ffi.FWD_TARGET, out_types, vmap_method="expand_dims")
  return call(means, quats, scales, opac, sh, offset, viewmat, intr, bg, **st.fwd_attrs())[:-1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rasterize_op(st: _Static, means, quats, scales, opac, sh, offset, viewmat, intr, bg):
  return _fwd_call(st, means, quats, scales, opac, sh, offset, viewmat, intr, bg)[:7]


def _rasterize_fwd(st, means, quats, scales, opac, sh, offset, viewmat, intr, bg):
  outs = _fwd_call(st, means, quats, scales, opac, sh, offset, viewmat, intr, bg)
  inputs = (means, quats, scales, opac, sh, offset, viewmat, intr, bg)
  residuals = (outs[3],) + tuple(outs[7:]) + (outs[2],)  # radii, ..., tile ranges, depth
  return outs[:7], (inputs, residuals)


def _rasterize_bwd(st, res, cts):
  inputs, residuals = res
  d_image, d_alpha, d_depth = cts[0], cts[1], cts[2]
  v = math.prod(d_image.shape[:-3])
  n = inputs[0].shape[-2]
  isect = residuals[7]  # radii, means2d, conic_opac, colors, zs, final_T, last, isect, tile_ranges, depth
  grad_types = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in inputs[:6]) + (
    jax.ShapeDtypeStruct(inputs[8].shape, jnp.float32),
    jax.ShapeDtypeStruct(
      (_ffi.cuda_bwd_workspace_bytes(v, n, math.prod(isect.shape), v * st.num_tiles, st.tile_size),), jnp.uint8
    ),
  )
  call = jax.ffi.ffi_call(_ffi.BWD_TARGET, grad_types, vmap_method="expand_dims")
  g = call(*inputs, *residuals, d_image, d_alpha, d_depth, **st.bwd_attrs())[:-1]
  viewmat, intr = inputs[6], inputs[7]
  return (*g[:6], jnp.zeros_like(viewmat), jnp.zeros_like(intr), g[6])


_rasterize_op.defvjp(_rasterize_fwd, _rasterize_bwd)


def rasterize(gaussians: Gaussians, camera: Camera, background, config: RenderConfig = RenderConfig()) -> RenderOutput:
  """Renders Gaussians into the camera's views (see the module docstring for batching).

  Args:
    gaussians: world-space `Gaussians` (shared [N,...] or per view [...,N,...]).
    camera: `Camera` with batch shape [...] (or unbatched).
    background: [...,3] colour blended with the final transmittance.
    config: static `RenderConfig`.
  Returns:
    `RenderOutput` with leading dims = the broadcast batch shape.
  """
  if config.backend == "reference":
    return reference.rasterize_reference(gaussians, camera, background, config)
  _ffi.ensure_registered()
  named, batch = _inputs.prepare_inputs(gaussians, camera, background, config)
  ops = _inputs.aligned(named, batch)
  n = gaussians.means.shape[-2]
  st = _Static(
    width=int(camera.width),
    height=int(camera.height),
    tile_size=int(config.tile_size),
    sh_degree=int(config.sh_degree),
    near_plane=float(config.near_plane),
    wabe_k=int(config.wabe_k),
    wabe_beta=float(config.wabe_beta),
    wabe_backward=bool(config.wabe_backward),
    capacity=config.capacity(n),
    wabe_tile=config.wabe_visibility == "tile",
    alpha_clamp_zero=config.alpha_clamp_grad == "zero",
  )
  if st.capacity * max(1, math.prod(batch)) >= 2**31:
    raise InputError(
      f"rasterize: the intersection buffer would hold {st.capacity} x "
      f"{max(1, math.prod(batch))} views >= 2^31 entries: lower "
      "RenderConfig.max_intersections / isect_per_gaussian or render fewer views per call"
    )
  outs = parallel.over_views(functools.partial(_rasterize_op, st), config.mesh, ops, batch)
  image, alpha, depth, radii, wcount, wweight, status = outs
  return RenderOutput(
    image=image,
    alpha=alpha,
    depth=depth,
    radii=radii,
    wabe_mask=wcount > 0,
    wabe_weight=wweight,
    overflow=(status & 1) > 0,
    intersections=status >> 1,
  )
