"""The GaussianAvatars "teethV3" teeth (METHOD §2.1): `teeth_faces()` (168 faces over 120 vertices,
face 133 fixed) and `add_teeth(model)`, which appends them to a FLAME-compatible model."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from gaedit_jax.flame.model import NUM_JOINTS, FlameFileError, FlameModel, _regions_dict, with_regions
from gaedit_jax.flame.regions import (
  NUM_TEETH_VERTICES,
  TEETH_LEFT_HALF,
  TEETH_RIGHT_HALF,
  complete_flame_regions,
  is_flame_topology,
)


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

  Rows of 15 (METHOD §2.1): 0 upper root, 15 lower root, 30 upper edge, 45 lower edge, 60 upper root
  back, 75 upper edge back, 90 lower root back, 105 lower edge back. Faces 0-83 upper (front, back,
  bottom strips), 84-167 lower (front, back, top). GA issue #50: face 133 is [101,116,115]; before
  the fix (GA < 9b841cb, possibly the editor's shipped flame_model) it was [101,116,114].
  """
  upper = _teeth_strip(0, 30, "X", False) + _teeth_strip(60, 75, "X", True) + _teeth_strip(75, 30, "Y", True)
  lower = _teeth_strip(45, 15, "Y", False) + _teeth_strip(90, 105, "X", False) + _teeth_strip(105, 45, "Y", False)
  f = np.asarray(upper + lower, np.int32)
  if not fix_face_133:
    f[133] = [101, 116, 114]
  return f


def add_teeth(model: FlameModel, *, fix_face_133: bool = True) -> FlameModel:
  """Adds the GaussianAvatars teeth (METHOD §2.1): 120 vertices in 8 rows of 15 built from the outer lip
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
    raise FlameFileError(
      "add_teeth: the model has no lip rings (masks keys lip_outside_ring_upper / "
      "lip_outside_ring_lower, 15 ordered vertex ids each) and is not the 5023-vertex "
      f"FLAME topology (it has {model.num_vertices} vertices)"
    )
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
  rows = [
    upper_root,
    lower_root,
    upper_edge,
    lower_edge,
    upper_root - thick,
    upper_edge - thick,
    lower_root - thick,
    lower_edge - thick,
  ]
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
  jr = np.concatenate(
    [np.asarray(model.j_regressor), np.zeros((model.num_joints, NUM_TEETH_VERTICES), model.j_regressor.dtype)], 1
  )
  w_teeth = np.zeros((NUM_TEETH_VERTICES, model.num_joints), model.lbs_weights.dtype)
  w_teeth[upper_ids, 1] = 1.0  # move with the neck (the skull)
  w_teeth[lower_ids, 2] = 1.0  # move with the jaw
  faces = np.concatenate([np.asarray(model.faces), teeth_faces(fix_face_133) + nv]).astype(np.int32)

  regions = {k: np.concatenate([v, np.zeros(NUM_TEETH_VERTICES, bool)]) for k, v in _regions_dict(model).items()}
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
