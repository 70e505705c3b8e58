"""FLAME head model as pure JAX functions (SPEC 2.1).

* `FlameModel`: the model as a pytree of arrays (template, blendshapes, pose correctives, joint
  regressor, skinning weights, faces, vertex regions); the kinematic tree and region names are static.
* `FlameParams`: per-subject (`shape`, `static_offset`) and per-timestep (`expr`, `rotation`,
  `neck_pose`, `jaw_pose`, `eyes_pose`, `translation`) parameters, named as GaussianAvatars names them.
* `flame_forward(model, params)`: blendshapes + static offset + pose correctives + linear blend
  skinning over the 5 FLAME joints + translation. Pure; jit-able; differentiable w.r.t. every
  parameter; any leading batch dims of the per-timestep fields are mapped (and it is vmappable).
* `load_flame` / `save_flame`: the official pickle layout (chumpy arrays read without chumpy,
  scipy-sparse J_regressor, python-2 pickle) with `FLAME_masks.pkl`, or our own `.npz`.
* `add_teeth(model)`: the GaussianAvatars "teethV3" teeth (120 vertices, 168 faces, face 133 fixed).
* `region_face_mask(model, names)`: vertex regions -> face masks (a face is in a region iff all its
  three vertices are).
* `complete_flame_regions(model)`: GaussianAvatars' own regions of the FLAME topology (lips_tight,
  lip_inside, lip rings, ...; data in `gaedit_jax.flame_regions`) for a 5023-vertex model whose
  masks lack them (`load_flame` and `add_teeth` call it); `require_regions` names what is missing.
* `make_synthetic_flame(...)`: lives in `gaedit_jax.data.synthetic_head` (re-exported here lazily).
"""

from __future__ import annotations

import copyreg
import dataclasses
import io
import os
import pickle
from pathlib import Path
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax import safe_pickle
from gaedit_jax.errors import InputError
from gaedit_jax.flame_regions import (FIXED_REGIONS, FLAME_NUM_VERTICES, LIP_INSIDE_RING_EXTRA,
                                      TEETH_LEFT_HALF, TEETH_RIGHT_HALF)
from gaedit_jax.safe_pickle import StandIn

NUM_JOINTS = 5  # root (global), neck, jaw, left eye, right eye
FLAME_PARENTS = (-1, 0, 1, 1, 1)
JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")

# The 15-vertex outer lip contours of the original FLAME topology (5023 vertices), upper and lower,
# in corresponding order; GaussianAvatars builds its teeth from them (SPEC 2.1). These and its other
# fixed regions of the FLAME mesh live in `gaedit_jax.flame_regions`.
FLAME_LIP_RING_UPPER = FIXED_REGIONS["lip_outside_ring_upper"]
FLAME_LIP_RING_LOWER = FIXED_REGIONS["lip_outside_ring_lower"]
NUM_TEETH_VERTICES = 120
NUM_TEETH_FACES = 168


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
    return FlameParams(shape=z(model.n_shape), expr=z(*lead, model.n_expr), rotation=z(*lead, 3),
                       neck_pose=z(*lead, 3), jaw_pose=z(*lead, 3), eyes_pose=z(*lead, 6),
                       translation=z(*lead, 3), static_offset=z(model.num_vertices, 3))

  @property
  def num_timesteps(self) -> int | None:
    """Size of the leading timestep axis (None when unbatched)."""
    return self.rotation.shape[0] if self.rotation.ndim == 2 else None

  def at(self, t) -> "FlameParams":
    """The parameters of timestep(s) t (an int or an int array) of a [T,...] sequence; the
    subject fields are shared."""
    return dataclasses.replace(self, **{k: jnp.asarray(getattr(self, k))[t] for k in self.PER_TIMESTEP})


_PARAM_TRAILING = dict(shape=1, expr=1, rotation=1, neck_pose=1, jaw_pose=1, eyes_pose=1,
                       translation=1, static_offset=2)


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
  v_shaped = (v + jnp.einsum("vck,k->vc", model.shapedirs, p.shape)
              + jnp.einsum("vck,k->vc", model.exprdirs, p.expr) + p.static_offset)
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
  shared. SPEC 2.1: v = LBS(v_template + B_shape + B_expr + static_offset + B_pose) + translation.
  """
  leads = {k: jnp.shape(getattr(params, k))[:jnp.ndim(getattr(params, k)) - n]
           for k, n in _PARAM_TRAILING.items()}
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
      x = jnp.broadcast_to(x, batch + x.shape[len(leads[k]):])
      flat[k], axes[k] = x.reshape((nb,) + x.shape[len(batch):]), 0
  fp = FlameParams(**flat)
  out = jax.vmap(lambda q: _forward_single(model, q, return_joints),
                 in_axes=(FlameParams(**axes),))(fp)
  return jax.tree.map(lambda y: y.reshape(batch + y.shape[1:]), out)


forward = flame_forward  # the name DESIGN.md uses (flame.forward)


def bake_identity(model: FlameModel, shape: jax.Array, static_offset: jax.Array | None = None) -> FlameModel:
  """Folds a fixed identity into the template: v_template + B_shape(shape) + static_offset, with an
  empty shape basis. GaussianAvatars never optimises shape or static_offset (SPEC 2.6), so training
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
  masks = (np.stack([np.asarray(regions[n], bool) for n in names]) if names
           else np.zeros((0, model.num_vertices), bool))
  return dataclasses.replace(model, region_masks=jnp.asarray(masks), region_names=names)


def _regions_dict(model: FlameModel) -> dict[str, np.ndarray]:
  m = np.asarray(model.region_masks)
  return {n: m[i] for i, n in enumerate(model.region_names)}


def is_flame_topology(model: FlameModel) -> bool:
  """True for the 5023-vertex FLAME mesh (with or without the 120 teeth vertices of `add_teeth`):
  GaussianAvatars' fixed vertex-index regions (`gaedit_jax.flame_regions`) apply to it."""
  nv = model.num_vertices - (NUM_TEETH_VERTICES if model.has_teeth else 0)
  return nv == FLAME_NUM_VERTICES


def complete_flame_regions(model: FlameModel) -> FlameModel:
  """Adds GaussianAvatars' own regions to a FLAME-topology model whose masks lack them; other
  models are returned unchanged. Regions already present (from a masks file) are kept.

  Fixed lists (`flame_regions.FIXED_REGIONS`: lips_tight, lip_inside, lip rings, neck_*,
  bottomline, irises, eyelids, left/right_half, ...; on a model with teeth left/right_half also get
  their teeth vertices), then, where their inputs exist, the regions GaussianAvatars derives:
  hair = scalp - (face | neck), ears, eyeballs, irises, left_eye / right_eye (eye region | eyeball),
  eyelids, lip_inside_ring (inner rings + 2 corner vertices), sclerae = eyeballs - irises,
  skin = FLAME vertices - (eyeballs | hair | lips_tight | boundary). Without lip rings the model
  gets the ordered outer lip rings (for `add_teeth`)."""
  if not is_flame_topology(model):
    return model
  nv = model.num_vertices
  regions = _regions_dict(model)
  before = set(regions)

  def mask(ids) -> np.ndarray:
    m = np.zeros(nv, bool)
    m[np.asarray(ids, np.int64)] = True
    return m

  teeth_half = dict(left_half=TEETH_LEFT_HALF, right_half=TEETH_RIGHT_HALF)
  for name, ids in FIXED_REGIONS.items():
    if name not in regions:
      regions[name] = mask(ids)
      if model.has_teeth and name in teeth_half:
        regions[name] |= mask(np.asarray(teeth_half[name]) + FLAME_NUM_VERTICES)

  def derive(name, inputs, fn):
    if name not in regions and all(i in regions for i in inputs):
      regions[name] = fn(*(regions[i] for i in inputs))

  union = lambda *ms: np.logical_or.reduce(ms)
  derive("hair", ("scalp", "face", "neck"), lambda s, f, n: s & ~(f | n))
  derive("ears", ("right_ear", "left_ear"), union)
  derive("eyeballs", ("right_eyeball", "left_eyeball"), union)
  derive("irises", ("right_iris", "left_iris"), union)
  derive("left_eye", ("left_eye_region", "left_eyeball"), union)
  derive("right_eye", ("right_eye_region", "right_eyeball"), union)
  derive("eyelids", ("left_eyelid", "right_eyelid"), union)
  derive("lip_inside_ring", ("lip_inside_ring_upper", "lip_inside_ring_lower"),
         lambda u, l: u | l | mask(LIP_INSIDE_RING_EXTRA))
  derive("sclerae", ("eyeballs", "irises"), lambda e, i: e & ~i)
  flame_verts = np.arange(nv) < FLAME_NUM_VERTICES  # GA builds skin before the teeth exist
  derive("skin", ("eyeballs", "hair", "lips_tight", "boundary"), lambda *ms: flame_verts & ~union(*ms))

  out = model
  if model.lip_ring_upper is None or model.lip_ring_lower is None:
    out = dataclasses.replace(out, lip_ring_upper=jnp.asarray(FLAME_LIP_RING_UPPER, jnp.int32),
                              lip_ring_lower=jnp.asarray(FLAME_LIP_RING_LOWER, jnp.int32))
  return with_regions(out, regions) if set(regions) != before else out


def require_regions(model: FlameModel, names: Iterable[str], what: str,
                    source: str | os.PathLike | None = None) -> None:
  """Raises FlameFileError (one line) when the model lacks any of the named vertex regions: the
  regions GaussianAvatars defines itself are built in for the FLAME topology only, so a model of
  another topology has to bring them in its masks file."""
  missing = [n for n in names if n not in model.region_names]
  if not missing:
    return
  where = f"{source}" if source is not None else "FLAME model"
  if missing == ["teeth"] and not model.has_teeth:
    raise FlameFileError(f"{where}: {what} needs the teeth region; add the teeth first (flame.add_teeth)")
  raise FlameFileError(
      f"{where}: {what} needs the vertex regions {missing}, which the model lacks; they are built in "
      f"only for the 5023-vertex FLAME topology and this model has "
      f"{model.num_vertices - (NUM_TEETH_VERTICES if model.has_teeth else 0)} vertices, so add these "
      "keys (region name -> vertex ids) to its masks file (<model stem>_masks.pkl or FLAME_masks.pkl "
      "next to the model)")


# ------------------------------------------------------------------------------------------------
# Teeth (GaussianAvatars "teethV3", SPEC 2.1)
# ------------------------------------------------------------------------------------------------


def _teeth_strip(a0: int, b0: int, first: str, reverse: bool) -> list[list[int]]:
  """Triangulates the 14 quads between two 15-vertex rows A (a0..a0+14) and B (b0..b0+14).

  Quad i has corners A_i, A_i+1, B_i, B_i+1; pattern "X" splits it along A_i-B_i+1, "Y" along
  A_i+1-B_i. The diagonal flips at the middle (quads 0-6 use `first`, 7-13 the other), which keeps
  the teeth symmetric; `reverse` flips the winding. This reproduces GA's face table (GA 9b841cb).
  """
  out = []
  for i in range(14):
    A, A1, B, B1 = a0 + i, a0 + i + 1, b0 + i, b0 + i + 1
    pat = first if i < 7 else ("Y" if first == "X" else "X")
    tris = [[A, B1, B], [A, A1, B1]] if pat == "X" else [[A, A1, B], [A1, B1, B]]
    if reverse:
      tris = [[t[0], t[2], t[1]] for t in tris]
    out += tris
  return out


def teeth_faces(fix_face_133: bool = True) -> np.ndarray:
  """The 168 teeth faces in local teeth-vertex ids 0..119 (add the model's vertex count).

  Rows of 15 (SPEC 2.1): 0 upper root, 15 lower root, 30 upper edge, 45 lower edge, 60 upper root
  back, 75 upper edge back, 90 lower root back, 105 lower edge back. Faces 0-83 upper (front, back,
  bottom strips), 84-167 lower (front, back, top). GA issue #50: face 133 is [101,116,115]; before
  the fix (GA < 9b841cb, possibly the editor's shipped flame_model) it was [101,116,114].
  """
  upper = (_teeth_strip(0, 30, "X", False) + _teeth_strip(60, 75, "X", True)
           + _teeth_strip(75, 30, "Y", True))
  lower = (_teeth_strip(45, 15, "Y", False) + _teeth_strip(90, 105, "X", False)
           + _teeth_strip(105, 45, "Y", False))
  f = np.asarray(upper + lower, np.int32)
  if not fix_face_133:
    f[133] = [101, 116, 114]
  return f


def add_teeth(model: FlameModel, *, fix_face_133: bool = True) -> FlameModel:
  """Adds the GaussianAvatars teeth (SPEC 2.1): 120 vertices in 8 rows of 15 built from the outer lip
  rings of the template, 168 faces; shape dirs of every teeth row = mean of the upper/lower ring
  shape dirs; expression dirs, pose correctives and joint regressor 0; skinning one-hot (upper teeth
  -> neck, lower teeth -> jaw). Regions gain `teeth`, `teeth_upper`, `teeth_lower`; on the FLAME
  topology the model's regions are first completed (`complete_flame_regions`) and left_half /
  right_half gain their teeth vertices, as in GaussianAvatars."""
  if model.has_teeth:
    raise ValueError("add_teeth: the model already has teeth")
  if model.num_joints != NUM_JOINTS:
    raise ValueError(f"add_teeth: needs the 5-joint FLAME tree, got {model.num_joints} joints")
  flame_topology = is_flame_topology(model)
  model = complete_flame_regions(model)
  if model.lip_ring_upper is None or model.lip_ring_lower is None:
    raise FlameFileError("add_teeth: the model has no lip rings (masks keys lip_outside_ring_upper / "
                         "lip_outside_ring_lower, 15 ordered vertex ids each) and is not the 5023-vertex "
                         f"FLAME topology (it has {model.num_vertices} vertices)")
  up, lo = np.asarray(model.lip_ring_upper), np.asarray(model.lip_ring_lower)
  if up.shape != (15,) or lo.shape != (15,):
    raise ValueError(f"add_teeth: lip rings must have 15 vertices each, got {up.shape} and {lo.shape}")

  vt = np.asarray(model.v_template, np.float64)
  vu, vl = vt[up], vt[lo]
  d = np.linalg.norm(vu - vl, axis=-1).mean()
  mid = (vu + vl) / 2
  mid[:, 1] = mid[:, 1].mean()
  mid[:, 2] -= 1.5 * d  # teeth sit 1.5 d behind the lips
  ey = np.array([0.0, d, 0.0])
  ez = np.array([0.0, 0.0, d])
  upper_edge = mid + 0.1 * ey
  upper_root = upper_edge + 2.0 * ey
  lower_edge = mid - 0.1 * ey - 0.4 * ez  # lower teeth slightly behind the upper ones
  lower_root = lower_edge - 2.0 * ey
  thick = 1.0 * ez
  rows = [upper_root, lower_root, upper_edge, lower_edge, upper_root - thick, upper_edge - thick,
          lower_root - thick, lower_edge - thick]
  v_teeth = np.concatenate(rows, axis=0)  # [120,3]

  nv = model.num_vertices
  upper_ids = np.concatenate([np.arange(0, 15), np.arange(30, 45), np.arange(60, 90)])
  lower_ids = np.concatenate([np.arange(15, 30), np.arange(45, 60), np.arange(90, 120)])
  dt = model.v_template.dtype

  sd = np.asarray(model.shapedirs)
  sd_mean = (sd[up] + sd[lo]) / 2  # [15,3,n_shape]
  sd_teeth = np.tile(sd_mean, (8, 1, 1))
  ed_teeth = np.zeros((NUM_TEETH_VERTICES,) + model.exprdirs.shape[1:], model.exprdirs.dtype)
  npose = model.posedirs.shape[0]
  pd = np.asarray(model.posedirs).reshape(npose, nv, 3)
  pd = np.concatenate([pd, np.zeros((npose, NUM_TEETH_VERTICES, 3), pd.dtype)], axis=1)
  jr = np.concatenate([np.asarray(model.j_regressor),
                       np.zeros((model.num_joints, NUM_TEETH_VERTICES), model.j_regressor.dtype)], 1)
  w_teeth = np.zeros((NUM_TEETH_VERTICES, model.num_joints), model.lbs_weights.dtype)
  w_teeth[upper_ids, 1] = 1.0  # move with the neck (the skull)
  w_teeth[lower_ids, 2] = 1.0  # move with the jaw
  faces = np.concatenate([np.asarray(model.faces), teeth_faces(fix_face_133) + nv]).astype(np.int32)

  regions = {k: np.concatenate([v, np.zeros(NUM_TEETH_VERTICES, bool)])
             for k, v in _regions_dict(model).items()}
  new = lambda ids: np.concatenate([np.zeros(nv, bool), np.isin(np.arange(NUM_TEETH_VERTICES), ids)])
  regions["teeth_upper"] = new(upper_ids)
  regions["teeth_lower"] = new(lower_ids)
  regions["teeth"] = new(np.arange(NUM_TEETH_VERTICES))
  if flame_topology:  # GA's teeth columns 0-7 are on the subject's left (ring index 0 is at +x)
    for name, ids in (("left_half", TEETH_LEFT_HALF), ("right_half", TEETH_RIGHT_HALF)):
      if name in regions:
        regions[name] = regions[name] | new(np.asarray(ids))

  out = dataclasses.replace(
      model,
      v_template=jnp.asarray(np.concatenate([vt, v_teeth]), dt),
      shapedirs=jnp.asarray(np.concatenate([sd, sd_teeth]), model.shapedirs.dtype),
      exprdirs=jnp.concatenate([model.exprdirs, jnp.asarray(ed_teeth)]),
      posedirs=jnp.asarray(pd.reshape(npose, -1)),
      j_regressor=jnp.asarray(jr),
      lbs_weights=jnp.concatenate([model.lbs_weights, jnp.asarray(w_teeth)]),
      faces=jnp.asarray(faces),
      lip_ring_upper=jnp.asarray(up, jnp.int32),
      lip_ring_lower=jnp.asarray(lo, jnp.int32),
      has_teeth=True,
  )
  return with_regions(out, regions)


# ------------------------------------------------------------------------------------------------
# Loading and saving
# ------------------------------------------------------------------------------------------------


class _ChumpyStandIn(StandIn):
  """Stands in for chumpy's `Ch` while unpickling: keeps the pickled state (a dict whose 'x'
  holds the numpy value of a terminal `Ch`)."""

  _pickled_class = "chumpy.?"


class _SparseStandIn(StandIn):
  """Stands in for scipy.sparse matrices of any scipy version (old pickles name scipy.sparse.csc)."""

  _pickled_class = "scipy.sparse.?"


def _standin(base: type, module: str, name: str) -> type:
  return safe_pickle.standin(base, module, name)


# What a FLAME model or masks pickle may name: numpy arrays and scalars, python-2 era builtins,
# terminal chumpy arrays and scipy sparse matrices (as inert stand-ins; neither package is imported).
_FLAME_STANDINS = {
    **{(m, "Ch"): _standin(_ChumpyStandIn, m, "Ch") for m in ("chumpy.ch", "chumpy")},
    **{(m, n): _standin(_SparseStandIn, m, n)
       for fmt in ("csc", "csr", "coo") for n in (f"{fmt}_matrix", f"{fmt}_array")
       for m in ("scipy.sparse", f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}")},
}
_FLAME_ALLOWED = {**safe_pickle.NUMPY_DATA, **safe_pickle.BUILTIN_DATA, **_FLAME_STANDINS,
                  **safe_pickle.reconstructor_entries(_FLAME_STANDINS.values())}
_FLAME_WHY = "only FLAME arrays are read (numpy arrays, chumpy Ch values, scipy sparse matrices)"


def _to_numpy(obj: Any, where: str) -> Any:
  """Converts stand-ins (chumpy / sparse) to dense numpy arrays; other values unchanged."""
  if isinstance(obj, _ChumpyStandIn):
    st = getattr(obj, "_state", None)
    if not isinstance(st, dict) or "x" not in st:
      raise FlameFileError(f"{where}: a {obj._pickled_class} object without a stored value 'x' "
                           "(only terminal chumpy arrays can be read without chumpy)")
    return _numeric(st["x"], where)
  if isinstance(obj, _SparseStandIn):
    import scipy.sparse as sp

    st = getattr(obj, "_state", {})
    if isinstance(st, tuple) and len(st) == 2 and isinstance(st[0], dict):
      st = st[0]
    if not isinstance(st, dict):
      raise FlameFileError(f"{where}: a {obj._pickled_class} without its fields")
    kind = obj._pickled_class.rsplit(".", 1)[-1][:3]
    try:
      shape = tuple(int(s) for s in st.get("_shape", st.get("shape", ())))
      f = {k: _numeric(st[k], f"{where}.{k}") for k in
           (("data", "row", "col") if kind == "coo" else ("data", "indices", "indptr"))}
      if kind == "coo":
        m = sp.coo_matrix((f["data"], (f["row"], f["col"])), shape=shape)
      else:
        m = (sp.csc_matrix if kind == "csc" else sp.csr_matrix)((f["data"], f["indices"], f["indptr"]),
                                                                shape=shape)
    except KeyError as e:
      raise FlameFileError(f"{where}: sparse matrix without field {e}") from None
    except (TypeError, ValueError) as e:
      raise FlameFileError(f"{where}: not a valid sparse matrix ({e})") from None
    return np.asarray(m.toarray())
  return obj


def _numeric(value: Any, where: str) -> np.ndarray:
  """`value` as a numeric numpy array, or a FlameFileError naming where it was found."""
  try:
    arr = np.asarray(value)
  except ValueError:  # ragged nested lists
    arr = np.asarray(None)
  if arr.dtype.kind not in "biuf":
    raise FlameFileError(f"{where}: expected a numeric array, found {type(value).__name__}")
  return arr


def _read_pickle(path: Path) -> Any:
  """A FLAME model or masks pickle (python-2 era files included), read as data only."""
  try:
    return safe_pickle.load_path(path, allowed=_FLAME_ALLOWED, why=_FLAME_WHY, error=FlameFileError,
                                 encoding="latin1", what="FLAME pickle")
  except FileNotFoundError:
    raise FileNotFoundError(f"FLAME file not found: {path}") from None


def _expect(path, key, arr, shape, what=""):
  """Raises FlameFileError naming file, key and expected shape (None = any size)."""
  try:
    arr = np.asarray(arr)
  except ValueError:  # ragged nested lists
    arr = np.asarray(None)
  if arr.dtype.kind not in "biuf":
    raise FlameFileError(f"{path}: key {key!r} is not a numeric array (found {arr.dtype})")
  ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
  if not ok:
    exp = "[" + ",".join("*" if s is None else str(s) for s in shape) + "]"
    got = "[" + ",".join(str(s) for s in arr.shape) + "]"
    raise FlameFileError(f"{path}: key {key!r} has shape {got}, expected {exp}{what}")
  return arr


def _read_masks(path: Path, nv: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """FLAME_masks.pkl: dict region -> vertex ids. Returns (bool masks, ordered id arrays)."""
  data = _read_pickle(path)
  if not isinstance(data, dict):
    raise FlameFileError(f"{path}: expected a dict of region name -> vertex ids, got {type(data)}")
  masks, ordered = {}, {}
  for k, v in data.items():
    k = k.decode() if isinstance(k, bytes) else str(k)
    ids = _numeric(_to_numpy(v, f"{path}:{k}"), f"{path}:{k}").astype(np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= nv):
      raise FlameFileError(f"{path}: region {k!r} has vertex ids outside [0,{nv})")
    m = np.zeros(nv, bool)
    m[ids] = True
    masks[k] = m
    ordered[k] = ids
  return masks, ordered


def _default_masks_path(path: Path) -> Path | None:
  for cand in (path.with_name(path.stem + "_masks.pkl"), path.with_name("FLAME_masks.pkl"),
               path.parent / "FLAME_masks" / "FLAME_masks.pkl"):
    if cand.exists():
      return cand
  return None


def load_flame(path: str | os.PathLike, *,
               masks_path: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
               n_shape: int | None = None, n_expr: int | None = None,
               dtype=jnp.float32) -> FlameModel:
  """Reads a FLAME model: the official pickle (FLAME 2020/2023; chumpy objects and scipy-sparse
  J_regressor read without chumpy) or our `.npz` (`save_flame`).

  Official shapedirs hold 300 shape then 100 expression components (SPEC 2.1); our pickles record
  the split in the extra key `num_shape_components`. `n_shape`/`n_expr` keep the first components
  (None: all). Regions (dicts region -> vertex ids, FLAME_masks.pkl format) come from `masks_path`
  (one file or several, merged in order), else from a sibling `<stem>_masks.pkl`,
  `FLAME_masks.pkl` or `FLAME_masks/FLAME_masks.pkl` if present; ordered `lip_outside_ring_upper`/
  `lip_outside_ring_lower` entries there become the lip rings used by `add_teeth`. A 5023-vertex
  (FLAME topology) model gets GaussianAvatars' own regions (lips_tight, lip_inside, lip rings, ...)
  where its masks lack them (`complete_flame_regions`); other topologies must bring the regions
  they need in a masks file.
  """
  path = Path(path)
  if path.suffix == ".npz":
    model = _load_npz(path, dtype)
  else:
    model = _load_pickle(path, masks_path, dtype)
  if n_shape is not None:
    if n_shape > model.n_shape:
      raise FlameFileError(f"{path}: n_shape={n_shape} requested but the file has {model.n_shape}")
    model = dataclasses.replace(model, shapedirs=model.shapedirs[..., :n_shape])
  if n_expr is not None:
    if n_expr > model.n_expr:
      raise FlameFileError(f"{path}: n_expr={n_expr} requested but the file has {model.n_expr}")
    model = dataclasses.replace(model, exprdirs=model.exprdirs[..., :n_expr])
  return complete_flame_regions(model)


def _load_pickle(path: Path, masks_path, dtype) -> FlameModel:
  raw = _read_pickle(path)
  if not isinstance(raw, dict):
    raise FlameFileError(f"{path}: expected a dict at the top level, got {type(raw).__name__}")
  d = {}
  for k, v in raw.items():
    k = k.decode() if isinstance(k, bytes) else k
    d[k] = _to_numpy(v, f"{path}:{k}")
  for key in ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table"):
    if key not in d:
      raise FlameFileError(f"{path}: missing key {key!r} (official FLAME layout: v_template, f, "
                           "shapedirs, posedirs, J_regressor, weights, kintree_table)")
  vt = _expect(path, "v_template", d["v_template"], (None, 3))
  nv = vt.shape[0]
  faces = _expect(path, "f", d["f"], (None, 3)).astype(np.int64)
  if faces.size and (faces.min() < 0 or faces.max() >= nv):
    raise FlameFileError(f"{path}: key 'f' has vertex ids outside [0,{nv})")
  kt = _expect(path, "kintree_table", d["kintree_table"], (2, None)).astype(np.int64)
  nj = kt.shape[1]
  sd = _expect(path, "shapedirs", d["shapedirs"], (nv, 3, None))
  pd = _expect(path, "posedirs", d["posedirs"], (nv, 3, (nj - 1) * 9))
  jr = _expect(path, "J_regressor", d["J_regressor"], (nj, nv))
  w = _expect(path, "weights", d["weights"], (nv, nj))
  n_total = sd.shape[2]
  n_sh = int(d.get("num_shape_components", min(300, n_total)))
  # kintree_table[0] holds parent ids (the root's is 2^32-1 in the official files).
  parents = tuple(-1 if (p < 0 or p >= nj or i == 0) else int(p) for i, p in enumerate(kt[0]))
  regions, ordered = {}, {}
  if masks_path is None:
    mps = [p for p in [_default_masks_path(path)] if p is not None]
  elif isinstance(masks_path, (str, os.PathLike)):
    mps = [Path(masks_path)]
  else:
    mps = [Path(p) for p in masks_path]
  for mp in mps:  # later files add to / override earlier ones (FLAME_masks.pkl + custom masks)
    r, o = _read_masks(mp, nv)
    regions.update(r)
    ordered.update(o)
  up = ordered.get("lip_outside_ring_upper")
  lo = ordered.get("lip_outside_ring_lower")
  model = FlameModel(
      v_template=jnp.asarray(vt, dtype),
      shapedirs=jnp.asarray(sd[:, :, :n_sh], dtype),
      exprdirs=jnp.asarray(sd[:, :, n_sh:], dtype),
      posedirs=jnp.asarray(pd.reshape(-1, pd.shape[-1]).T, dtype),  # [V*3,P] -> [P,V*3]
      j_regressor=jnp.asarray(jr, dtype),
      lbs_weights=jnp.asarray(w, dtype),
      faces=jnp.asarray(faces, jnp.int32),
      region_masks=jnp.zeros((0, nv), bool),
      lip_ring_upper=None if up is None else jnp.asarray(up, jnp.int32),
      lip_ring_lower=None if lo is None else jnp.asarray(lo, jnp.int32),
      parents=parents,
  )
  return with_regions(model, regions)


_NPZ_KEYS = ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights",
             "faces", "parents")


def _load_npz(path: Path, dtype) -> FlameModel:
  try:
    z = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise FileNotFoundError(f"FLAME file not found: {path}") from None
  except Exception as e:  # noqa: BLE001 - report any decoding failure with the file name
    raise FlameFileError(f"{path}: not a readable npz ({type(e).__name__}: {e})") from None
  for k in _NPZ_KEYS:
    if k not in z:
      raise FlameFileError(f"{path}: missing key {k!r}")
  vt = _expect(path, "v_template", z["v_template"], (None, 3))
  nv = vt.shape[0]
  parents = tuple(int(p) for p in _expect(path, "parents", z["parents"], (None,)))
  nj = len(parents)
  sd = _expect(path, "shapedirs", z["shapedirs"], (nv, 3, None))
  ed = _expect(path, "exprdirs", z["exprdirs"], (nv, 3, None))
  pd = _expect(path, "posedirs", z["posedirs"], ((nj - 1) * 9, nv * 3))
  jr = _expect(path, "j_regressor", z["j_regressor"], (nj, nv))
  w = _expect(path, "lbs_weights", z["lbs_weights"], (nv, nj))
  faces = _expect(path, "faces", z["faces"], (None, 3))
  names = tuple(str(n) for n in z["region_names"]) if "region_names" in z else ()
  rm = (_expect(path, "region_masks", z["region_masks"], (len(names), nv)) if names
        else np.zeros((0, nv), bool))
  ring = lambda k: jnp.asarray(z[k], jnp.int32) if k in z else None
  return FlameModel(
      v_template=jnp.asarray(vt, dtype), shapedirs=jnp.asarray(sd, dtype),
      exprdirs=jnp.asarray(ed, dtype), posedirs=jnp.asarray(pd, dtype),
      j_regressor=jnp.asarray(jr, dtype), lbs_weights=jnp.asarray(w, dtype),
      faces=jnp.asarray(faces, jnp.int32), region_masks=jnp.asarray(rm, bool),
      lip_ring_upper=ring("lip_ring_upper"), lip_ring_lower=ring("lip_ring_lower"),
      parents=parents, region_names=names,
      has_teeth=bool(z["has_teeth"]) if "has_teeth" in z else False)


class _PickleWriter(pickle._Pickler):  # pure-python pickler: lets us emit python-2 era globals
  """Writes numpy arrays wrapped in `_ChumpyOut` as `chumpy.ch.Ch` objects and `_SparseOut` as a
  legacy `scipy.sparse.csc.csc_matrix`, the way the official (python-2, protocol 2) files store them,
  without chumpy installed."""

  def save_global(self, obj, name=None):
    path = getattr(obj, "_emit_as", None)
    if path is None:
      return super().save_global(obj, name)
    module, qual = path
    self.write(pickle.GLOBAL + f"{module}\n{qual}\n".encode("ascii"))
    self.memoize(obj)

  dispatch = dict(pickle._Pickler.dispatch)
  dispatch[type] = save_global


class _ChumpyOut:
  _emit_as = ("chumpy.ch", "Ch")

  def __init__(self, x):
    self.x = np.asarray(x)

  def __reduce_ex__(self, protocol):
    return (copyreg._reconstructor, (type(self), object, None), {"x": self.x})


class _SparseOut:
  _emit_as = ("scipy.sparse.csc", "csc_matrix")

  def __init__(self, dense):
    import scipy.sparse as sp

    m = sp.csc_matrix(np.asarray(dense))
    self.state = {"_shape": tuple(int(s) for s in m.shape), "data": m.data, "indices": m.indices,
                  "indptr": m.indptr, "maxprint": 50}

  def __reduce_ex__(self, protocol):
    return (copyreg._reconstructor, (type(self), object, None), self.state)


def save_flame(model: FlameModel, path: str | os.PathLike, *,
               masks_path: str | os.PathLike | None = None) -> Path:
  """Writes `model`. `.npz`: our layout (everything, teeth included). Otherwise the official FLAME
  pickle layout (protocol 2; v_template/shapedirs/weights as chumpy `Ch` objects, J_regressor as a
  scipy-sparse csc matrix, posedirs [V,3,36], kintree_table, f, J, bs_style, bs_type) plus an extra
  `num_shape_components`, and the regions (and ordered lip rings) to `masks_path` (default:
  `<stem>_masks.pkl` next to it). Official-layout files hold the model without teeth, as FLAME does
  (teeth are added at load time by `add_teeth`)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  np_ = lambda a: np.asarray(a)
  if path.suffix == ".npz":
    extra = {}
    if model.lip_ring_upper is not None:
      extra = dict(lip_ring_upper=np_(model.lip_ring_upper), lip_ring_lower=np_(model.lip_ring_lower))
    np.savez(path, v_template=np_(model.v_template), shapedirs=np_(model.shapedirs),
             exprdirs=np_(model.exprdirs), posedirs=np_(model.posedirs),
             j_regressor=np_(model.j_regressor), lbs_weights=np_(model.lbs_weights),
             faces=np_(model.faces), parents=np.asarray(model.parents, np.int64),
             region_names=np.asarray(model.region_names, dtype=str),
             region_masks=np_(model.region_masks), has_teeth=np.asarray(model.has_teeth), **extra)
    return path
  if model.has_teeth:
    raise ValueError("save_flame: the official layout stores FLAME without teeth; save the model "
                     "before add_teeth, or use a .npz path")
  nv = model.num_vertices
  npose = model.posedirs.shape[0]
  posedirs = np_(model.posedirs).T.reshape(nv, 3, npose)
  shapedirs = np.concatenate([np_(model.shapedirs), np_(model.exprdirs)], axis=2)
  kintree = np.zeros((2, model.num_joints), np.int64)
  kintree[0] = [p if p >= 0 else 4294967295 for p in model.parents]
  kintree[1] = np.arange(model.num_joints)
  data = {
      "v_template": _ChumpyOut(np_(model.v_template).astype(np.float64)),
      "f": np_(model.faces).astype(np.uint32),
      "shapedirs": _ChumpyOut(shapedirs.astype(np.float64)),
      "posedirs": posedirs.astype(np.float64),
      "J_regressor": _SparseOut(np_(model.j_regressor).astype(np.float64)),
      "weights": _ChumpyOut(np_(model.lbs_weights).astype(np.float64)),
      "kintree_table": kintree,
      "J": (np_(model.j_regressor) @ np_(model.v_template)).astype(np.float64),
      "bs_style": "lbs",
      "bs_type": "lrotmin",
      "num_shape_components": int(model.n_shape),
  }
  buf = io.BytesIO()
  _PickleWriter(buf, protocol=2).dump(data)
  path.write_bytes(buf.getvalue())
  masks = {n: np.flatnonzero(m).astype(np.int64) for n, m in _regions_dict(model).items()}
  if model.lip_ring_upper is not None:
    masks["lip_outside_ring_upper"] = np_(model.lip_ring_upper).astype(np.int64)
    masks["lip_outside_ring_lower"] = np_(model.lip_ring_lower).astype(np.int64)
  mp = Path(masks_path) if masks_path is not None else path.with_name(path.stem + "_masks.pkl")
  buf = io.BytesIO()
  _PickleWriter(buf, protocol=2).dump(masks)
  mp.write_bytes(buf.getvalue())
  return path


def make_synthetic_flame(*args, **kwargs) -> FlameModel:
  """The built-in procedural head with FLAME's keys and kinematic tree (no teeth; call add_teeth).
  See `gaedit_jax.data.synthetic_head.make_synthetic_flame` for the options."""
  from gaedit_jax.data.synthetic_head import make_synthetic_flame as _make

  return _make(*args, **kwargs)


__all__ = [
    "FlameModel", "FlameParams", "FlameFileError", "flame_forward", "axis_angle_to_matrix",
    "add_teeth", "teeth_faces", "region_vertex_mask", "region_face_mask", "all_region_face_masks",
    "with_regions", "complete_flame_regions", "is_flame_topology", "require_regions", "forward",
    "bake_identity",
    "load_flame", "save_flame", "make_synthetic_flame", "NUM_JOINTS", "FLAME_PARENTS", "JOINT_NAMES",
]
