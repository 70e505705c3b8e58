"""The one door for posing an avatar: (avatar, FLAME model, per-timestep FLAME parameters,
timesteps) -> world-space Gaussians, and what every stage needs around it.

* FLAME model of a run: `resolve_flame_path` / `load_flame_model` / `load_model` (the official
  pickle or our npz, GaussianAvatars' teeth added), `fit_flame_dims` (zero-pad shape / expression to
  the model's counts), `check_consistency` (clear errors for data that do not fit the model),
  `baked_model` (the subject's shape and static offset folded into the template, METHOD §2.6).
* A trained avatar ready to pose: `load_trained` (any folder `io.model_folder` reads, its FLAME
  model, a checkpoint's FLAME parameters from the dataset's tracking) -> `TrainedAvatar`.
* Posing, all pure and batched over timesteps [...]: `pose_vertices` (FLAME forward of the baked
  model) -> `pose_frames` (rig.triangle_frames) -> `pose` (rig.to_world: the rasterizer's
  Gaussians). `motion` is the per-timestep FLAME state, a `FlameMotion` pytree of [T,...] fields
  (what the training states carry and optimise).
* `render_views`: render views in chunks (evaluation, `gaedit render`, the edit dumps), growing the
  intersection buffer on overflow instead of truncating.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.data.layout import FLAME_FILE
from gaedit_jax.errors import DatasetError, InputError
from gaedit_jax.flame import FlameModel, FlameMotion, FlameParams, add_teeth, bake_identity, flame_forward, load_flame
from gaedit_jax.io.model_folder import (
  FLAME_FLAG,
  LAYOUT_GA,
  LAYOUT_GA_CHECKPOINT,
  find_model,
  read_avatar,
  recorded_flame_model,
)
from gaedit_jax.render import rasterize
from gaedit_jax.render.types import Gaussians, RenderConfig
from gaedit_jax.rig import Avatar, FaceFrames, to_world, triangle_frames
from gaedit_jax.train.config import grow_isect

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


def fit_flame_dims(model: FlameModel, flame: FlameParams, where: str | None = None) -> FlameParams:
  """Pads shape / expression vectors with zeros to the model's component counts. With `where` (the
  file the parameters come from), parameters that cannot fit the model are an InputError first."""
  if where is not None:
    ns, ne = flame.shape.shape[-1], flame.expr.shape[-1]
    if flame.static_offset.shape[-2] != model.num_vertices:
      raise InputError(
        f"{where}: static_offset has {flame.static_offset.shape[-2]} vertices but the FLAME model has "
        f"{model.num_vertices} (with teeth); pass the right {FLAME_FLAG}"
      )
    if ns > model.n_shape or ne > model.n_expr:
      raise InputError(
        f"{where}: FLAME parameters have {ns} shape / {ne} expression components, the FLAME model only "
        f"{model.n_shape} / {model.n_expr}; pass the right {FLAME_FLAG}"
      )
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


# ------------------------------------------------------------------------------------------------
# A trained avatar, ready to pose
# ------------------------------------------------------------------------------------------------


class TrainedAvatar(NamedTuple):
  """What `load_trained` returns (unpacks as the 6-tuple the stages use)."""

  avatar: Avatar
  model: FlameModel  # FLAME (+ teeth) with the subject's shape and static offset baked in
  flame: FlameMotion  # per-timestep FLAME state [T,...]
  flame0: FlameParams  # all FLAME parameters (shape, static_offset, per-timestep [T,...])
  cfg: dict  # config, data, flame_model, layout, source
  it_dir: Path


def load_trained(
  model_dir: str | os.PathLike,
  iteration: int | None = None,
  *,
  data: str | os.PathLike | None = None,
  flame_model: str | os.PathLike | None = None,
  require_data: bool = False,
) -> TrainedAvatar:
  """Loads an avatar of any accepted layout with its FLAME model, ready to pose and render:
  (avatar, baked FLAME model, FlameMotion, FlameParams, cfg dict, iteration folder).

  data / flame_model override what the folder records (cfg.json, cfg_args); GaussianAvatars
  records no FLAME model, so a GA folder or checkpoint needs flame_model. require_data: the dataset
  folder must exist (rendering, editing). Missing pieces raise InputError naming the flag."""
  fm = None if flame_model is None else Path(flame_model)
  pre = find_model(model_dir, iteration)
  if fm is None:
    rec = recorded_flame_model(pre)
    if rec is None:
      what = (
        "a GaussianAvatars checkpoint"
        if pre.layout == LAYOUT_GA_CHECKPOINT
        else "a GaussianAvatars folder"
        if pre.layout == LAYOUT_GA
        else "this model folder"
      )
      raise InputError(f"{pre.path}: {what} does not record its FLAME model; pass {FLAME_FLAG}")
    fm = Path(rec)
    if not fm.is_file():
      raise InputError(f"{pre.cfg_file}: the recorded FLAME model {fm} does not exist; pass {FLAME_FLAG}")
  elif not fm.is_file():
    raise InputError(f"--flame-model {fm}: no such file")
  full = load_flame_model(fm)
  af = read_avatar(model_dir, iteration, data=data)
  cfg = af.cfg
  cfg["flame_model"] = str(fm.absolute())
  if require_data or af.flame is None:
    d = cfg.get("data")
    if d is None:
      why = "no dataset folder is recorded (no cfg_args)"
    elif not Path(d).is_dir():
      why = f"the dataset folder {d} does not exist"
    else:
      why = None
    if why is not None:
      need = (
        " (a GaussianAvatars checkpoint holds no FLAME parameters: they come from the dataset's tracking)"
        if af.flame is None
        else ""
      )
      raise InputError(f"{af.source.path}: {why}; pass --data DIR{need}")
  if af.flame is None:  # a checkpoint alone: FLAME from the dataset's tracking, as GaussianAvatars does
    ds = AvatarDataset(cfg["data"], "train", cache_size=0, num_vertices=full.num_vertices)
    af = dataclasses.replace(af, flame=ds.flame_params)
    cfg["flame_source"] = str(cfg["data"])
  nf = int(full.num_faces)
  b = np.asarray(af.avatar.binding)[np.asarray(af.avatar.active)]
  if b.size and int(b.max()) >= nf:
    raise InputError(
      f"{af.source.path}: binding refers to face {int(b.max())} but the FLAME model has {nf} faces "
      f"(with teeth); pass the right {FLAME_FLAG}"
    )
  fp = fit_flame_dims(full, af.flame, str(af.source.path))
  return TrainedAvatar(af.avatar, baked_model(full, fp), fp.motion, fp, cfg, af.it_dir)


# ------------------------------------------------------------------------------------------------
# Posing
# ------------------------------------------------------------------------------------------------


def pose_vertices(model: FlameModel, motion: FlameMotion, timestep: jax.Array) -> jax.Array:
  """Posed vertices [...,V,3] of the baked model (baked_model) for timesteps [...] of `motion`."""
  fp = FlameParams(
    shape=jnp.zeros((0,), jnp.float32),
    static_offset=jnp.zeros((model.num_vertices, 3), jnp.float32),
    **dict(motion.at(timestep).items()),
  )
  return flame_forward(model, fp)


def pose_frames(model: FlameModel, motion: FlameMotion, timestep: jax.Array) -> FaceFrames:
  """The triangle frames [...,F] (centre, rotation, scale k) of the posed mesh at timesteps [...]."""
  return triangle_frames(pose_vertices(model, motion, timestep), model.faces)


def pose(avatar: Avatar, model: FlameModel, motion: FlameMotion, timestep: jax.Array) -> Gaussians:
  """The avatar's world-space Gaussians [...,N] at timesteps [...] (METHOD §2.2): FLAME forward ->
  triangle frames -> local to world."""
  return to_world(avatar, pose_frames(model, motion, timestep))


# ------------------------------------------------------------------------------------------------
# Rendering helper (evaluation, `gaedit render`, edit dumps)
# ------------------------------------------------------------------------------------------------

_pose_jit = jax.jit(pose)
_render_jit = jax.jit(rasterize, static_argnums=(3,))


def render_views(
  avatar: Avatar,
  model: FlameModel,
  motion: FlameMotion,
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
    g = _pose_jit(avatar, model, motion, t)
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
  "resolve_flame_path",
  "load_flame_model",
  "load_model",
  "fit_flame_dims",
  "TrainedAvatar",
  "load_trained",
  "check_consistency",
  "baked_model",
  "pose_vertices",
  "pose_frames",
  "pose",
  "render_views",
]
