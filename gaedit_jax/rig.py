"""Gaussians bound to mesh triangles (GaussianAvatars; METHOD §2.2, 2.3).

* `triangle_frames(vertices, faces)`: per face centre T, rotation R = [a0 | a1 | a2] (first edge,
  normal, in-plane perpendicular), its quaternion q (wxyz) and scale k (METHOD §2.2).
* `Avatar`: the local Gaussian parameters with a fixed capacity, an `active` mask and the `binding`
  (face id) of each slot. `init_avatar` puts one Gaussian at the centre of every face (METHOD §2.3).
* `to_world(avatar, frames)`: local -> world (mu = k R mu_l + T, s = k exp(s_l),
  q = normalize(q_f) (x) normalize(q_l), Hamilton product so R_world = R_f R_l), activated for the
  rasterizer as `gaedit_jax.render.types.Gaussians`. Inactive slots get opacity 0 and finite, tiny
  geometry (their inputs are sanitised first, so no NaN gradient leaks through `where`).

All functions are pure and accept leading batch dims on the vertices (one frame per timestep).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.errors import InputError
from gaedit_jax.quaternion import matrix_to_quat, quat_multiply
from gaedit_jax.render.types import Gaussians

_EPS2 = 1e-20  # GA clamps squared norms at 1e-20 (METHOD §2.2)


def _normalize(v: jax.Array) -> jax.Array:
  return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), _EPS2))


def _length(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1), _EPS2))


# ------------------------------------------------------------------------------------------------
# Triangle frames
# ------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FaceFrames:
  """Per-face frames: center [...,F,3], rotation [...,F,3,3] (columns a0, a1 = normal, a2),
  quat [...,F,4] (wxyz of rotation), scale [...,F] (k)."""

  center: jax.Array
  rotation: jax.Array
  quat: jax.Array
  scale: jax.Array


def triangle_frames(vertices: jax.Array, faces: jax.Array) -> FaceFrames:
  """METHOD §2.2: T = centroid; a0 = n(v1-v0); a1 = n(a0 x (v2-v0)); a2 = -n(a1 x a0);
  R = [a0|a1|a2]; k = (|v1-v0| + |a2 . (v2-v0)|)/2. vertices [...,V,3], faces [F,3]."""
  tri = jnp.take(vertices, jnp.asarray(faces), axis=-2)  # [...,F,3,3]
  v0, v1, v2 = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
  e1, e2 = v1 - v0, v2 - v0
  a0 = _normalize(e1)
  a1 = _normalize(jnp.cross(a0, e2))
  a2 = -_normalize(jnp.cross(a1, a0))
  rot = jnp.stack([a0, a1, a2], axis=-1)
  k = 0.5 * (_length(e1) + jnp.abs(jnp.sum(a2 * e2, axis=-1)))
  return FaceFrames(center=(v0 + v1 + v2) / 3.0, rotation=rot, quat=matrix_to_quat(rot), scale=k)


# ------------------------------------------------------------------------------------------------
# Avatar state
# ------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Avatar:
  """Local Gaussian parameters in fixed-capacity slots (C = capacity), GaussianAvatars' storage:

  xyz [C,3] local position (units of k, in the face frame); log_scale [C,3]; rotation [C,4]
  (wxyz, unnormalised, local); opacity_logit [C]; sh_dc [C,1,3]; sh_rest [C,K-1,3] (K = (d+1)^2);
  binding [C] int32 face id; active [C] bool (free slots are False).
  """

  xyz: jax.Array
  log_scale: jax.Array
  rotation: jax.Array
  opacity_logit: jax.Array
  sh_dc: jax.Array
  sh_rest: jax.Array
  binding: jax.Array
  active: jax.Array

  @property
  def capacity(self) -> int:
    return self.xyz.shape[-2]

  @property
  def sh_degree(self) -> int:
    return int(round(np.sqrt(self.sh_rest.shape[-2] + 1))) - 1

  @property
  def num_active(self) -> jax.Array:
    return jnp.sum(self.active.astype(jnp.int32), axis=-1)

  TRAINABLE = ("xyz", "log_scale", "rotation", "opacity_logit", "sh_dc", "sh_rest")

  def params(self) -> dict[str, jax.Array]:
    """The float (optimisable) fields, e.g. for optax; binding/active are bookkeeping."""
    return {k: getattr(self, k) for k in self.TRAINABLE}

  def with_params(self, params: dict[str, jax.Array]) -> "Avatar":
    return dataclasses.replace(self, **params)


def _logit(p: float) -> float:
  return float(np.log(p / (1.0 - p)))


def init_avatar(
  key: jax.Array,
  num_faces: int,
  *,
  capacity: int | None = None,
  sh_degree: int = 3,
  init_opacity: float = 0.1,
  dtype=jnp.float32,
) -> Avatar:
  """METHOD §2.3: one Gaussian per face (binding = arange(F)), local xyz 0 (face centre), log-scale 0
  (world scale = k), rotation identity, opacity 0.1, SH DC ~ U[0, 1/255) written directly as the
  coefficient, other SH 0. Slots F..capacity-1 are free (inactive, zeros, binding 0)."""
  capacity = num_faces if capacity is None else int(capacity)
  if capacity < num_faces:
    raise InputError(
      f"capacity {capacity} (--capacity) is smaller than the {num_faces} faces of the FLAME "
      "model (one Gaussian per face at the start)"
    )
  k = (sh_degree + 1) ** 2
  active = jnp.arange(capacity) < num_faces
  dc = jax.random.uniform(key, (capacity, 1, 3), dtype, 0.0, 1.0 / 255.0) * active[:, None, None]
  rot = jnp.zeros((capacity, 4), dtype).at[:, 0].set(1.0)
  return Avatar(
    xyz=jnp.zeros((capacity, 3), dtype),
    log_scale=jnp.zeros((capacity, 3), dtype),
    rotation=rot,
    opacity_logit=jnp.where(active, _logit(init_opacity), 0.0).astype(dtype),
    sh_dc=dc,
    sh_rest=jnp.zeros((capacity, k - 1, 3), dtype),
    binding=jnp.where(active, jnp.arange(capacity), 0).astype(jnp.int32),
    active=active,
  )


def with_capacity(avatar: Avatar, capacity: int) -> Avatar:
  """Grows the slot arrays to `capacity` (new slots free). Shrinking is refused."""
  c = avatar.capacity
  if capacity < c:
    raise ValueError(f"with_capacity: cannot shrink from {c} to {capacity}")
  pad = capacity - c

  def grow(x, fill=0):
    widths = [(0, pad)] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, widths, constant_values=fill)

  rot = grow(avatar.rotation).at[c:, 0].set(1.0)
  return Avatar(
    xyz=grow(avatar.xyz),
    log_scale=grow(avatar.log_scale),
    rotation=rot,
    opacity_logit=grow(avatar.opacity_logit),
    sh_dc=grow(avatar.sh_dc),
    sh_rest=grow(avatar.sh_rest),
    binding=grow(avatar.binding),
    active=grow(avatar.active, False),
  )


def binding_counter(avatar: Avatar, num_faces: int) -> jax.Array:
  """Number of active Gaussians per face [F] int32 (GA's binding_counter; sum == num_active)."""
  return jax.ops.segment_sum(avatar.active.astype(jnp.int32), avatar.binding, num_segments=num_faces)


def to_world(avatar: Avatar, frames: FaceFrames, *, screen_offset: bool = False) -> Gaussians:
  """World-space, activated Gaussians (render contract) for frames with leading dims [...]:
  means [...,C,3], quats [...,C,4], scales [...,C,3]; opacities [C] and sh [C,K,3] do not depend
  on the frame and stay shared: the rasterizer broadcasts them over the views and sums their
  gradients over the views inside its kernel (README, "The rasterizer API"), so a step of B views neither
  writes B copies of the SH nor reduces B per-view SH gradients.

  screen_offset=True adds zeros [...,C,2] to differentiate for densification's dL/dmu_2D.
  """
  act = avatar.active
  batch = frames.scale.shape[:-1]
  b = avatar.binding
  rot = jnp.take(frames.rotation, b, axis=-3)  # [...,C,3,3]
  center = jnp.take(frames.center, b, axis=-2)
  k = jnp.take(frames.scale, b, axis=-1)[..., None]
  qf = jnp.take(frames.quat, b, axis=-2)
  # Sanitise free slots before any non-linearity (double-where: no NaN/inf gradient via `where`).
  xyz = jnp.where(act[:, None], avatar.xyz, 0.0)
  log_s = jnp.where(act[:, None], avatar.log_scale, -20.0)
  ql = jnp.where(act[:, None], avatar.rotation, jnp.array([1.0, 0.0, 0.0, 0.0], avatar.rotation.dtype))
  means = k * jnp.einsum("...cab,cb->...ca", rot, xyz) + center
  scales = k * jnp.exp(log_s)
  quats = quat_multiply(_normalize(qf), _normalize(ql))
  opac = jnp.where(act, jax.nn.sigmoid(jnp.where(act, avatar.opacity_logit, 0.0)), 0.0)
  sh = jnp.concatenate([avatar.sh_dc, avatar.sh_rest], axis=-2)
  sh = jnp.where(act[:, None, None], sh, 0.0)
  return Gaussians(
    means=means,
    quats=quats,
    scales=scales,
    opacities=opac,
    sh=sh,
    screen_offset=jnp.zeros(batch + (avatar.capacity, 2), means.dtype) if screen_offset else None,
  )


def posed_gaussians(avatar: Avatar, vertices: jax.Array, faces: jax.Array, **kw) -> Gaussians:
  """Convenience: triangle_frames then to_world."""
  return to_world(avatar, triangle_frames(vertices, faces), **kw)


__all__ = [
  "FaceFrames",
  "Avatar",
  "triangle_frames",
  "init_avatar",
  "with_capacity",
  "binding_counter",
  "to_world",
  "posed_gaussians",
]
