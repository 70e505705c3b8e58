"""The FLAME head model as pure JAX functions (METHOD §2.1): pytrees, forward (LBS), regions.

* `FlameModel`: the model as a pytree of arrays (template, blendshapes, pose correctives, joint
  regressor, skinning weights, faces, vertex regions); the kinematic tree and region names are static.
* `FlameParams`: per-subject (`shape`, `static_offset`) and per-timestep (`expr`, `rotation`,
  `neck_pose`, `jaw_pose`, `eyes_pose`, `translation`) parameters, named as GaussianAvatars names them.
* `flame_forward(model, params)`: blendshapes + static offset + pose correctives + linear blend
  skinning over the 5 FLAME joints + translation. Pure; jit-able; differentiable w.r.t. every
  parameter; any leading batch dims of the per-timestep fields are mapped (and it is vmappable).
* `bake_identity(model, shape, static_offset)`: a fixed identity folded into the template.
* `region_face_mask(model, names)`: vertex regions -> face masks (a face is in a region iff all its
  three vertices are); `with_regions` replaces the vertex regions.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.errors import InputError

NUM_JOINTS = 5  # root (global), neck, jaw, left eye, right eye
FLAME_PARENTS = (-1, 0, 1, 1, 1)
JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")


class FlameFileError(InputError):
  """A FLAME model or parameter file is missing, malformed, or has an array of the wrong shape."""


# ------------------------------------------------------------------------------------------------
# Pytrees
# ------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlameModel:
  """A FLAME-compatible linear head model (official layout: V vertices, J = 5 joints).

  v_template [V,3]; shapedirs [V,3,n_shape]; exprdirs [V,3,n_expr]; posedirs [(J-1)*9, V*3] (pose
  feature (R_j - I), j = 1..J-1, flattened row-major -> flattened vertex offsets); j_regressor [J,V];
  lbs_weights [V,J]; faces [F,3] int32; region_masks [R,V] bool (names in `region_names`);
  lip_ring_upper / lip_ring_lower [15] int32 (ordered outer lip contours used by `add_teeth`, or
  None). Static: `parents` (kinematic tree), `region_names`, `has_teeth`.
  """

  v_template: jax.Array
  shapedirs: jax.Array
  exprdirs: jax.Array
  posedirs: jax.Array
  j_regressor: jax.Array
  lbs_weights: jax.Array
  faces: jax.Array
  region_masks: jax.Array
  lip_ring_upper: jax.Array | None = None
  lip_ring_lower: jax.Array | None = None
  parents: tuple[int, ...] = dataclasses.field(metadata=dict(static=True), default=FLAME_PARENTS)
  region_names: tuple[str, ...] = dataclasses.field(metadata=dict(static=True), default=())
  has_teeth: bool = dataclasses.field(metadata=dict(static=True), default=False)

  @property
  def num_vertices(self) -> int:
    return self.v_template.shape[0]

  @property
  def num_faces(self) -> int:
    return self.faces.shape[0]

  @property
  def n_shape(self) -> int:
    return self.shapedirs.shape[-1]

  @property
  def n_expr(self) -> int:
    return self.exprdirs.shape[-1]

  @property
  def num_joints(self) -> int:
    return len(self.parents)

  def region(self, name: str) -> np.ndarray:
    """Vertex mask [V] (bool, numpy) of a named region."""
    if name not in self.region_names:
      raise KeyError(f"FLAME region {name!r} not in the model; available: {sorted(self.region_names)}")
    return np.asarray(self.region_masks[self.region_names.index(name)])

  def region_vertices(self, name: str) -> np.ndarray:
    return np.flatnonzero(self.region(name))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlameParams:
  """FLAME parameters (GaussianAvatars names). Per subject: shape [...,n_shape], static_offset
  [...,V,3]. Per timestep: expr [...,n_expr], rotation / neck_pose / jaw_pose [...,3] (axis-angle),
  eyes_pose [...,6] (left eye then right eye), translation [...,3]. Leading dims are batches of
  timesteps; subject fields usually have none and broadcast."""

  shape: jax.Array
  expr: jax.Array
  rotation: jax.Array
  neck_pose: jax.Array
  jaw_pose: jax.Array
  eyes_pose: jax.Array
  translation: jax.Array
  static_offset: jax.Array

  PER_TIMESTEP = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")
  PER_SUBJECT = ("shape", "static_offset")

  @staticmethod
  def zeros(model: FlameModel, num_timesteps: int | None = None, dtype=jnp.float32) -> "FlameParams":
    """Zero parameters (the template). With num_timesteps, per-timestep fields get a leading [T]."""
    lead = () if num_timesteps is None else (int(num_timesteps),)
    z = lambda *s: jnp.zeros(s, dtype)
    return FlameParams(
      shape=z(model.n_shape),
      expr=z(*lead, model.n_expr),
      rotation=z(*lead, 3),
      neck_pose=z(*lead, 3),
      jaw_pose=z(*lead, 3),
      eyes_pose=z(*lead, 6),
      translation=z(*lead, 3),
      static_offset=z(model.num_vertices, 3),
    )

  @property
  def num_timesteps(self) -> int | None:
    """Size of the leading timestep axis (None when unbatched)."""
    return self.rotation.shape[0] if self.rotation.ndim == 2 else None

  def at(self, t) -> "FlameParams":
    """The parameters of timestep(s) t (an int or an int array) of a [T,...] sequence; the
    subject fields are shared."""
    return dataclasses.replace(self, **{k: jnp.asarray(getattr(self, k))[t] for k in self.PER_TIMESTEP})

  @property
  def motion(self) -> "FlameMotion":
    """The per-timestep fields as a FlameMotion (what training states carry and optimise)."""
    return FlameMotion(**{k: getattr(self, k) for k in self.PER_TIMESTEP})

  def with_motion(self, motion: "FlameMotion") -> "FlameParams":
    """These subject fields with the per-timestep fields of `motion`."""
    return dataclasses.replace(self, **{k: getattr(motion, k) for k in self.PER_TIMESTEP})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlameMotion:
  """The per-timestep FLAME state of a sequence: expr [T,n_expr], rotation / neck_pose / jaw_pose
  [T,3] (axis-angle), eyes_pose [T,6], translation [T,3]. Training states carry and optimise it; a
  motion file (io.motion) reads into it; posing (avatar.pose) indexes it by timestep."""

  expr: jax.Array
  rotation: jax.Array
  neck_pose: jax.Array
  jaw_pose: jax.Array
  eyes_pose: jax.Array
  translation: jax.Array

  FIELDS = FlameParams.PER_TIMESTEP

  @staticmethod
  def zeros(num_timesteps: int, n_expr: int, dtype=jnp.float32) -> "FlameMotion":
    """The neutral motion (template pose, zero expression) of num_timesteps timesteps."""
    z = lambda n: jnp.zeros((int(num_timesteps), n), dtype)
    return FlameMotion(expr=z(n_expr), rotation=z(3), neck_pose=z(3), jaw_pose=z(3), eyes_pose=z(6), translation=z(3))

  @property
  def num_timesteps(self) -> int:
    return int(self.rotation.shape[0])

  @property
  def n_expr(self) -> int:
    return int(self.expr.shape[-1])

  def at(self, t) -> "FlameMotion":
    """Timestep(s) t (an int or an int array) of the sequence."""
    return jax.tree.map(lambda x: jnp.asarray(x)[t], self)

  def astype(self, dtype) -> "FlameMotion":
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), self)

  def items(self):
    """(field, array) pairs in FIELDS order (files and checkpoints name them so)."""
    return ((k, getattr(self, k)) for k in self.FIELDS)


_PARAM_TRAILING = dict(
  shape=1, expr=1, rotation=1, neck_pose=1, jaw_pose=1, eyes_pose=1, translation=1, static_offset=2
)


# ------------------------------------------------------------------------------------------------
# Rotations
# ------------------------------------------------------------------------------------------------


def axis_angle_to_matrix(rvec: jax.Array) -> jax.Array:
  """Rodrigues [...,3] -> [...,3,3], with exact values and gradients at (and near) zero angle."""
  rvec = jnp.asarray(rvec)
  theta2 = jnp.sum(rvec * rvec, axis=-1)
  small = theta2 < 1e-8
  t2 = jnp.where(small, 1.0, theta2)  # double-where: no NaN gradients from the unused branch
  theta = jnp.sqrt(t2)
  half_sin = jnp.sin(0.5 * theta)
  a = jnp.where(small, 1.0 - theta2 / 6.0, jnp.sin(theta) / theta)
  b = jnp.where(small, 0.5 - theta2 / 24.0, 2.0 * half_sin * half_sin / t2)  # (1-cos)/t^2, stable
  x, y, z = rvec[..., 0], rvec[..., 1], rvec[..., 2]
  zero = jnp.zeros_like(x)
  k = jnp.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(rvec.shape[:-1] + (3, 3))
  eye = jnp.eye(3, dtype=rvec.dtype)
  return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


# ------------------------------------------------------------------------------------------------
# Forward
# ------------------------------------------------------------------------------------------------


def _forward_single(model: FlameModel, p: FlameParams, return_joints: bool):
  v = model.v_template
  v_shaped = (
    v
    + jnp.einsum("vck,k->vc", model.shapedirs, p.shape)
    + jnp.einsum("vck,k->vc", model.exprdirs, p.expr)
    + p.static_offset
  )
  joints = model.j_regressor @ v_shaped  # [J,3]
  pose = jnp.concatenate([p.rotation, p.neck_pose, p.jaw_pose, p.eyes_pose]).reshape(-1, 3)
  rot = axis_angle_to_matrix(pose)  # [J,3,3]
  eye = jnp.eye(3, dtype=rot.dtype)
  pose_feature = (rot[1:] - eye).reshape(-1)  # [(J-1)*9]
  v_posed = v_shaped + (pose_feature @ model.posedirs).reshape(-1, 3)

  # Forward kinematics over the static tree: G_j = G_parent [R_j | J_j - J_parent].
  g_rot, g_t = [], []
  for j, parent in enumerate(model.parents):
    if parent < 0:
      g_rot.append(rot[j])
      g_t.append(joints[j])
    else:
      g_rot.append(g_rot[parent] @ rot[j])
      g_t.append(g_rot[parent] @ (joints[j] - joints[parent]) + g_t[parent])
  g_rot = jnp.stack(g_rot)  # [J,3,3]
  g_t = jnp.stack(g_t)  # [J,3]
  # Skinning transform removes the rest pose: x -> G_R (x - J) + G_t.
  a_t = g_t - jnp.einsum("jab,jb->ja", g_rot, joints)
  a = jnp.concatenate([g_rot.reshape(-1, 9), a_t], axis=-1)  # [J,12]
  blend = model.lbs_weights @ a  # [V,12]
  vr = blend[:, :9].reshape(-1, 3, 3)
  verts = jnp.einsum("vab,vb->va", vr, v_posed) + blend[:, 9:] + p.translation
  if return_joints:
    return verts, g_t + p.translation
  return verts


def flame_forward(model: FlameModel, params: FlameParams, *, return_joints: bool = False):
  """Posed vertices [...,V,3] (and posed joints [...,J,3] with return_joints=True).

  The batch shape is the broadcast of the leading dims of all parameter fields (per-timestep fields
  [...,k], subject fields shape [...,n_shape] and static_offset [...,V,3]); unbatched fields are
  shared. METHOD §2.1: v = LBS(v_template + B_shape + B_expr + static_offset + B_pose) + translation.
  """
  leads = {k: jnp.shape(getattr(params, k))[: jnp.ndim(getattr(params, k)) - n] for k, n in _PARAM_TRAILING.items()}
  batch = np.broadcast_shapes(*leads.values())
  if not batch:
    return _forward_single(model, params, return_joints)
  flat = {}
  axes = {}
  nb = int(np.prod(batch))
  for k, n in _PARAM_TRAILING.items():
    x = jnp.asarray(getattr(params, k))
    if leads[k] == ():
      flat[k], axes[k] = x, None
    else:
      x = jnp.broadcast_to(x, batch + x.shape[len(leads[k]) :])
      flat[k], axes[k] = x.reshape((nb,) + x.shape[len(batch) :]), 0
  fp = FlameParams(**flat)
  out = jax.vmap(lambda q: _forward_single(model, q, return_joints), in_axes=(FlameParams(**axes),))(fp)
  return jax.tree.map(lambda y: y.reshape(batch + y.shape[1:]), out)


forward = flame_forward  # the name DESIGN.md uses (flame.forward)


def bake_identity(model: FlameModel, shape: jax.Array, static_offset: jax.Array | None = None) -> FlameModel:
  """Folds a fixed identity into the template: v_template + B_shape(shape) + static_offset, with an
  empty shape basis. GaussianAvatars never optimises shape or static_offset (METHOD §2.6), so training
  can pose the baked model (params with shape of size 0 and zero static_offset) and skip the
  largest matrix product of the forward; the vertices are the same."""
  v = model.v_template + jnp.einsum("vck,k->vc", model.shapedirs, shape)
  if static_offset is not None:
    v = v + static_offset
  return dataclasses.replace(model, v_template=v, shapedirs=model.shapedirs[..., :0])


# ------------------------------------------------------------------------------------------------
# Regions
# ------------------------------------------------------------------------------------------------


def region_vertex_mask(model: FlameModel, names: str | Iterable[str]) -> np.ndarray:
  """Union of named vertex regions -> bool [V] (numpy)."""
  names = [names] if isinstance(names, str) else list(names)
  mask = np.zeros(model.num_vertices, bool)
  for n in names:
    mask |= model.region(n)
  return mask


def region_face_mask(model: FlameModel, names: str | Iterable[str]) -> np.ndarray:
  """Face mask bool [F] (numpy): the union over the named regions of the faces whose three vertices
  all lie in that region (GA FlameMask; the editor's mouth = teeth | lips_tight | lip_inside)."""
  names = [names] if isinstance(names, str) else list(names)
  faces = np.asarray(model.faces)
  mask = np.zeros(faces.shape[0], bool)
  for n in names:
    mask |= model.region(n)[faces].all(axis=1)
  return mask


def all_region_face_masks(model: FlameModel) -> dict[str, np.ndarray]:
  return {n: region_face_mask(model, n) for n in model.region_names}


def with_regions(model: FlameModel, regions: dict[str, np.ndarray]) -> FlameModel:
  """The model with its vertex regions replaced by `regions` (name -> bool [V])."""
  names = tuple(regions)
  masks = np.stack([np.asarray(regions[n], bool) for n in names]) if names else np.zeros((0, model.num_vertices), bool)
  return dataclasses.replace(model, region_masks=jnp.asarray(masks), region_names=names)


def _regions_dict(model: FlameModel) -> dict[str, np.ndarray]:
  m = np.asarray(model.region_masks)
  return {n: m[i] for i, n in enumerate(model.region_names)}
