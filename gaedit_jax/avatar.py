"""The one door for posing an avatar: (avatar, FLAME model, per-timestep FLAME parameters,
timesteps) -> world-space Gaussians, and what every stage needs around it.

* FLAME model of a run: `resolve_flame_path` / `load_flame_model` / `load_model` (the official
  pickle or our npz, GaussianAvatars' teeth added), `fit_flame_dims` (zero-pad shape / expression to
  the model's counts), `check_consistency` (clear errors for data that do not fit the model),
  `baked_model` (the subject's shape and static offset folded into the template, METHOD §2.6).
* Posing, all pure and batched over timesteps [...]: `pose_vertices` (FLAME forward of the baked
  model) -> `pose_frames` (rig.triangle_frames) -> `pose` (rig.to_world: the rasterizer's
  Gaussians). `flame` is the per-timestep FLAME state: a mapping field -> [T,...] of
  FlameParams.PER_TIMESTEP (what the training states carry).
* `render_views`: render views in chunks (evaluation, `gaedit render`, the edit dumps), growing the
  intersection buffer on overflow instead of truncating.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.data.layout import FLAME_FILE, DatasetError
from gaedit_jax.flame import FlameModel, FlameParams, add_teeth, bake_identity, flame_forward, load_flame
from gaedit_jax.render import rasterize
from gaedit_jax.render.types import Gaussians, RenderConfig
from gaedit_jax.rig import Avatar, FaceFrames, to_world, triangle_frames
from gaedit_jax.train.config import grow_isect

PER_TIMESTEP = FlameParams.PER_TIMESTEP  # expr, rotation, neck_pose, jaw_pose, eyes_pose, translation

# ------------------------------------------------------------------------------------------------
# The FLAME model of a run
# ------------------------------------------------------------------------------------------------


def resolve_flame_path(data: str | os.PathLike, flame_model: str | os.PathLike | None) -> Path:
  """--flame-model, or the dataset's own FLAME model (DATA/flame/synthetic_flame.pkl, the synthetic
  data); DatasetError when the file does not exist."""
  p = Path(flame_model) if flame_model is not None else Path(data) / FLAME_FILE
  if not p.exists():
    raise DatasetError(f"FLAME model not found: {p} (pass --flame-model PATH to the FLAME 2023 pkl)")
  return p


def load_flame_model(path: str | os.PathLike) -> FlameModel:
  """The FLAME model as training uses it: GaussianAvatars' teeth added when the file has none."""
  model = load_flame(path)
  return model if model.has_teeth else add_teeth(model)


def load_model(data: str | os.PathLike, flame_model: str | os.PathLike | None) -> FlameModel:
  """The FLAME model of a dataset (resolve_flame_path), with teeth."""
  return load_flame_model(resolve_flame_path(data, flame_model))


def fit_flame_dims(model: FlameModel, flame: FlameParams) -> FlameParams:
  """Pads shape / expression vectors with zeros to the model's component counts."""
  pad = lambda x, n: jnp.pad(jnp.asarray(x), [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])
  return dataclasses.replace(flame, shape=pad(flame.shape, model.n_shape), expr=pad(flame.expr, model.n_expr))


def check_consistency(ds: AvatarDataset, model: FlameModel, flame: FlameParams) -> None:
  """Clear errors for data that does not fit the FLAME model."""
  if flame.static_offset.shape[-2] != model.num_vertices:
    raise DatasetError(
      f"{ds.root}: static_offset has {flame.static_offset.shape[-2]} vertices but the "
      f"FLAME model has {model.num_vertices} (with teeth)"
    )
  if flame.shape.shape[-1] > model.n_shape or flame.expr.shape[-1] > model.n_expr:
    raise DatasetError(
      f"{ds.root}: FLAME params have {flame.shape.shape[-1]} shape / {flame.expr.shape[-1]} "
      f"expression components, the model only {model.n_shape} / {model.n_expr}"
    )
  if len(ds) == 0:
    raise DatasetError(f"{ds.json_path}: no frames")
  bad = ds.timesteps[ds.timesteps >= flame.rotation.shape[0]]
  if bad.size:
    raise DatasetError(f"{ds.json_path}: timesteps {bad[:5].tolist()} have no FLAME parameters")


def baked_model(model: FlameModel, flame: FlameParams) -> FlameModel:
  """The FLAME model with the subject's shape and static offset folded into the template."""
  return bake_identity(model, jnp.asarray(flame.shape), jnp.asarray(flame.static_offset))


def per_timestep(flame: FlameParams) -> dict[str, jax.Array]:
  """The per-timestep FLAME state {field: [T,...]} of FlameParams.PER_TIMESTEP."""
  return {k: getattr(flame, k) for k in PER_TIMESTEP}


# ------------------------------------------------------------------------------------------------
# Posing
# ------------------------------------------------------------------------------------------------


def pose_vertices(model: FlameModel, flame: Mapping[str, jax.Array], timestep: jax.Array) -> jax.Array:
  """Posed vertices [...,V,3] of the baked model (baked_model) for timesteps [...]; flame: the
  per-timestep fields [T,...]."""
  fp = FlameParams(
    shape=jnp.zeros((0,), jnp.float32),
    static_offset=jnp.zeros((model.num_vertices, 3), jnp.float32),
    **{k: jnp.asarray(flame[k])[timestep] for k in PER_TIMESTEP},
  )
  return flame_forward(model, fp)


def pose_frames(model: FlameModel, flame: Mapping[str, jax.Array], timestep: jax.Array) -> FaceFrames:
  """The triangle frames [...,F] (centre, rotation, scale k) of the posed mesh at timesteps [...]."""
  return triangle_frames(pose_vertices(model, flame, timestep), model.faces)


def pose(avatar: Avatar, model: FlameModel, flame: Mapping[str, jax.Array], timestep: jax.Array) -> Gaussians:
  """The avatar's world-space Gaussians [...,N] at timesteps [...] (METHOD §2.2): FLAME forward ->
  triangle frames -> local to world."""
  return to_world(avatar, pose_frames(model, flame, timestep))


# ------------------------------------------------------------------------------------------------
# Rendering helper (evaluation, `gaedit render`, edit dumps)
# ------------------------------------------------------------------------------------------------

_pose_jit = jax.jit(pose)
_render_jit = jax.jit(rasterize, static_argnums=(3,))


def render_views(
  avatar: Avatar,
  model: FlameModel,
  flame: Mapping[str, jax.Array],
  timesteps,
  cameras,
  background,
  render_cfg: RenderConfig,
  chunk: int = 8,
) -> np.ndarray:
  """Renders views (cameras [N], timesteps [N]) in chunks; returns numpy images [N,H,W,3] in
  [0,1]. Retries with a larger intersection buffer on overflow (never truncates)."""
  ts = np.asarray(timesteps, np.int32).reshape(-1)
  outs = []
  for s in range(0, ts.shape[0], chunk):
    t = jnp.asarray(ts[s : s + chunk])
    cam = cameras[s : s + chunk]
    g = _pose_jit(avatar, model, flame, t)
    rc = render_cfg
    for _ in range(6):
      out = _render_jit(g, cam, background, rc)
      if not bool(jnp.any(out.overflow)):
        break
      rc = dataclasses.replace(rc, isect_per_gaussian=grow_isect(rc.isect_per_gaussian), max_intersections=None)
    else:
      raise RuntimeError("rasterizer intersection buffer overflow persists")
    outs.append(np.clip(np.asarray(out.image), 0.0, 1.0))
  return np.concatenate(outs, 0)


__all__ = [
  "PER_TIMESTEP",
  "resolve_flame_path",
  "load_flame_model",
  "load_model",
  "fit_flame_dims",
  "check_consistency",
  "baked_model",
  "per_timestep",
  "pose_vertices",
  "pose_frames",
  "pose",
  "render_views",
]
