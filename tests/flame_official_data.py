"""A stand-in for the real FLAME files (which cannot be shipped): a head with FLAME's vertex and face
counts (5023 / 9976), written in the official pickle layout with an official 14-region masks file.

The built-in synthetic head (`flame.make_synthetic_flame`) with a 72 x 60 grid and 8 x 34
eyeballs has 5024 vertices and 10036 faces; opening the neck (removing the bottom pole and its 60
faces) leaves 5023 and 9976, the FLAME counts (FLAME is open at the neck too). Its vertices are then
renumbered so that GaussianAvatars' fixed FLAME ids land where they belong on this head: the outer
lip rings on its outer lip rings (ring index 0 on the subject's left, +x, as in FLAME), lip_inside
and lips_tight on its mouth (lip slit and mouth bag first, then the nearest lip vertices), the
irises on the front of the eyeballs (FLAME's eyeball id ranges start at 3931 and 4477). So the teeth
that `add_teeth` builds from FLAME's ring ids sit in this head's mouth, and the built-in mouth
regions cover its mouth.

Shape / expression bases: 300 + 100 components, as the official files (the motion uses the first 20
of each).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax import flame as F
from gaedit_jax.flame import synthetic as sh
from gaedit_jax.flame.model import _regions_dict
from gaedit_jax.flame.regions import FIXED_REGIONS, OFFICIAL_REGIONS

ROWS, COLS, EYE_RES = 72, 60, (8, 34)
LEFT_EYEBALL_START, RIGHT_EYEBALL_START = 3931, 4477  # FLAME's eyeball vertex id ranges


def _drop_vertex(model: F.FlameModel, v: int) -> F.FlameModel:
  """Removes vertex v and its faces (v must carry no joint-regressor weight)."""
  nv = model.num_vertices
  assert np.abs(np.asarray(model.j_regressor)[:, v]).max() == 0
  keep = np.arange(nv) != v
  faces = np.asarray(model.faces)
  faces = faces[~(faces == v).any(1)]
  faces = faces - (faces > v)
  npose = model.posedirs.shape[0]
  pd = np.asarray(model.posedirs).reshape(npose, nv, 3)[:, keep].reshape(npose, -1)
  regions = {n: m[keep] for n, m in _regions_dict(model).items()}
  shift = lambda r: None if r is None else jnp.asarray(np.asarray(r) - (np.asarray(r) > v), jnp.int32)
  out = dataclasses.replace(
    model,
    v_template=model.v_template[keep],
    shapedirs=model.shapedirs[keep],
    exprdirs=model.exprdirs[keep],
    posedirs=jnp.asarray(pd),
    j_regressor=model.j_regressor[:, keep],
    lbs_weights=model.lbs_weights[keep],
    faces=jnp.asarray(faces, jnp.int32),
    lip_ring_upper=shift(model.lip_ring_upper),
    lip_ring_lower=shift(model.lip_ring_lower),
  )
  return F.with_regions(out, regions)


def _renumber(model: F.FlameModel, new_of_old: np.ndarray) -> F.FlameModel:
  """The same mesh with vertex i renamed new_of_old[i] (a permutation)."""
  nv = model.num_vertices
  old_of_new = np.argsort(new_of_old)
  npose = model.posedirs.shape[0]
  pd = np.asarray(model.posedirs).reshape(npose, nv, 3)[:, old_of_new].reshape(npose, -1)
  regions = {n: m[old_of_new] for n, m in _regions_dict(model).items()}
  ring = lambda r: None if r is None else jnp.asarray(new_of_old[np.asarray(r)], jnp.int32)
  out = dataclasses.replace(
    model,
    v_template=model.v_template[old_of_new],
    shapedirs=model.shapedirs[old_of_new],
    exprdirs=model.exprdirs[old_of_new],
    posedirs=jnp.asarray(pd),
    j_regressor=model.j_regressor[:, old_of_new],
    lbs_weights=model.lbs_weights[old_of_new],
    faces=jnp.asarray(new_of_old[np.asarray(model.faces)], jnp.int32),
    lip_ring_upper=ring(model.lip_ring_upper),
    lip_ring_lower=ring(model.lip_ring_lower),
  )
  return F.with_regions(out, regions)


def _flame_numbering(model: F.FlameModel) -> np.ndarray:
  """new_of_old: GaussianAvatars' FLAME ids for the matching parts of the synthetic head."""
  nv = model.num_vertices
  v = np.asarray(model.v_template)
  new_of_old = np.full(nv, -1, np.int64)
  taken = np.zeros(nv, bool)

  def assign(old_ids, new_ids):
    old_ids, new_ids = np.asarray(old_ids), np.asarray(new_ids)
    assert not (new_of_old[old_ids] >= 0).any() and not taken[new_ids].any()
    new_of_old[old_ids] = new_ids
    taken[new_ids] = True

  # Outer lip rings: the synthetic rings run from -x to +x, FLAME's from +x (left) to -x.
  assign(np.asarray(model.lip_ring_upper)[::-1], FIXED_REGIONS["lip_outside_ring_upper"])
  assign(np.asarray(model.lip_ring_lower)[::-1], FIXED_REGIONS["lip_outside_ring_lower"])
  # Mouth: lip_inside first, then the rest of lips_tight, onto the slit / bag, then the lips.
  centre = (v[np.asarray(model.lip_ring_upper)] + v[np.asarray(model.lip_ring_lower)]).mean(0) / 2
  dist = np.linalg.norm(v - centre, axis=-1)
  rank = np.lexsort((dist, ~model.region("lips_tight"), ~model.region("lip_inside")))
  cand = [i for i in rank if new_of_old[i] < 0]
  want = [i for i in FIXED_REGIONS["lip_inside"] if not taken[i]]
  want += [i for i in FIXED_REGIONS["lips_tight"] if not taken[i] and i not in set(want)]
  assign(cand[: len(want)], want)
  # Eyeballs: front (pupil side, +z) first from FLAME's eyeball starts, so the irises are in front.
  for name, start in (("left_eyeball", LEFT_EYEBALL_START), ("right_eyeball", RIGHT_EYEBALL_START)):
    ids = np.flatnonzero(model.region(name))
    ids = ids[np.argsort(-v[ids, 2], kind="stable")]
    assign(ids, start + np.arange(len(ids)))
  rest_old = np.flatnonzero(new_of_old < 0)
  assign(rest_old, np.flatnonzero(~taken))
  assert (np.sort(new_of_old) == np.arange(nv)).all()
  return new_of_old


def make_flame_like_head(n_shape: int = 300, n_expr: int = 100) -> F.FlameModel:
  """The renumbered 5023-vertex head (no teeth), with all synthetic regions (for rendering) and
  FLAME's lip ring ids as its lip rings."""
  m = sh.make_synthetic_flame(0, n_shape=n_shape, n_expr=n_expr, rows=ROWS, cols=COLS, eye_res=EYE_RES)
  bottom_pole = ROWS * COLS + 1
  boundary = np.zeros(m.num_vertices, bool)
  boundary[(ROWS - 1) * COLS + np.arange(COLS)] = True  # the open neck edge after the cut
  regions = _regions_dict(m)
  regions["boundary"] = boundary
  m = _drop_vertex(F.with_regions(m, regions), bottom_pole)
  assert (m.num_vertices, m.num_faces) == (5023, 9976), (m.num_vertices, m.num_faces)
  m = _renumber(m, _flame_numbering(m))
  # FLAME's ring order (index 0 at +x): the synthetic rings reversed
  return dataclasses.replace(m, lip_ring_upper=m.lip_ring_upper[::-1], lip_ring_lower=m.lip_ring_lower[::-1])


def write_official_files(model: F.FlameModel, folder: Path) -> tuple[Path, Path]:
  """flame2023.pkl (official layout) + FLAME_masks.pkl with exactly the 14 official regions."""
  official = F.with_regions(
    dataclasses.replace(model, lip_ring_upper=None, lip_ring_lower=None), {n: model.region(n) for n in OFFICIAL_REGIONS}
  )
  folder.mkdir(parents=True, exist_ok=True)
  masks = folder / "FLAME_masks.pkl"
  path = F.save_flame(official, folder / "flame2023.pkl", masks_path=masks)
  return path, masks


def write_dataset(
  model_teeth: F.FlameModel,
  out: Path,
  *,
  texture: str,
  num_timesteps: int = 4,
  width: int = 48,
  height: int = 64,
  num_cameras: int = 9,
  n_motion: int = 20,
) -> Path:
  """A tiny multi-view dataset of the head (same motion for every texture), as `gaedit synth` writes."""
  from gaedit_jax.data.layout import DatasetWriter
  from gaedit_jax.data.synthetic import HeadRenderer, make_motion, nersemble_like_rig, write_frame

  small = dataclasses.replace(
    model_teeth, shapedirs=model_teeth.shapedirs[..., :n_motion], exprdirs=model_teeth.exprdirs[..., :n_motion]
  )
  params = make_motion(small, num_timesteps, 0)
  verts = np.asarray(jax.jit(F.flame_forward)(small, params))
  rig = nersemble_like_rig(num_cameras, width, height)
  renderer = HeadRenderer.for_model(model_teeth)
  writer = DatasetWriter(out, overwrite=True)
  for t in range(num_timesteps):
    writer.add_flame_param(t, params.at(t))
    for cam in rig:
      write_frame([writer], renderer, verts[t], t, cam, (texture,), 1)
  writer.add_canonical(params)
  writer.finish(train_ratio=0.7)
  return out
