"""`gaedit render`: render a trained avatar (METHOD §8, GaussianAvatars' render.py).

* splits (default val + test): the dataset's frames with the avatar's fine-tuned FLAME parameters
  (val = novel view, test = self-reenactment), next to the ground truth;
* `--target DIR` (cross-identity reenactment): cameras and per-timestep FLAME parameters
  (expression, pose, translation) of another dataset; shape and static offset of the source;
* `--orbit N`: N views on a circle around the head (at `--orbit-timestep`, or following the
  sequence with `--orbit-animate`).
Each set is written to OUT/<name>/{renders,gt}/00000.png plus renders.mp4, renders.gif and, with
ground truth, gt.mp4 and side_by_side.gif.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np

from gaedit_jax.avatar import fit_flame_dims, load_model, load_trained, pose_vertices, render_views
from gaedit_jax.camera import look_at, make_camera
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.data.layout import SPLITS, DatasetError, DatasetFileNotFoundError
from gaedit_jax.data.validate import validate_dataset
from gaedit_jax.errors import InputError
from gaedit_jax.flags import check_choice, check_flags, config_checks
from gaedit_jax.io.media import save_frames, save_gif, save_mp4, side_by_side
from gaedit_jax.render.types import RenderConfig


@dataclasses.dataclass
class RenderConfigCLI:
  """Render a trained avatar: dataset splits, cross-identity reenactment, or an orbit."""

  model: Path
  """Avatar: a `gaedit reconstruct` / `gaedit edit` folder, a GaussianAvatars output folder, or a
  GaussianAvatars chkpnt<N>.pth (file or folder)."""
  out: Path | None = None
  """Output folder (default: MODEL/renders)."""
  iteration: int | None = None
  """point_cloud/iteration_<N> to load (default: the highest)."""
  splits: tuple[str, ...] = ("val", "test")
  """Dataset splits to render (train, val, test); empty to skip."""
  target: Path | None = None
  """Cross-identity: dataset folder whose motion and cameras drive the avatar."""
  camera_index: int | None = None
  """Keep only frames of this camera index (GA --select_camera_id)."""
  orbit: int = 0
  """Number of orbit views (0: none)."""
  orbit_timestep: int = 0
  """Timestep of the orbit (FLAME parameters of the source)."""
  orbit_animate: bool = False
  """Orbit while playing the source sequence."""
  orbit_degrees: float = 360.0
  """Azimuth range of the orbit."""
  fps: int = 25
  """Video frame rate (GA: 25)."""
  gif_fps: int = 10
  max_frames: int | None = None
  """Render at most this many frames per set (evenly spaced)."""
  sh_degree: int = 3
  data: Path | None = None
  """Dataset folder (default: the one the model folder records; cfg_args source_path for GA)."""
  flame_model: Path | None = None
  """FLAME model file (default: the one cfg.json records; GaussianAvatars records none)."""
  intrinsics: Literal["file", "fov_x"] | None = None
  """Camera intrinsics of the datasets ("file" or GaussianAvatars' "fov_x", see `gaedit reconstruct
  --intrinsics`). Default: the model's."""

  def __post_init__(self):
    config_checks(self.validate_flags)

  def validate_flags(self) -> None:
    """Value checks of the flags (one-line InputError naming the flag)."""
    check_flags(
      self,
      {
        "iteration camera_index orbit orbit_timestep": "int >= 0",
        "fps gif_fps max_frames": "int >= 1",
        "sh_degree": "int [0, 3]",
        "orbit_degrees": "> 0",
      },
    )
    check_choice(self, "splits", SPLITS)
    if self.intrinsics is not None:
      check_choice(self, "intrinsics", ("file", "fov_x"))

  def check_inputs(self, data: Path, num_timesteps: int, intrinsics: str = "file") -> None:
    """Up-front checks once the model is loaded: --orbit-timestep within its `num_timesteps` FLAME
    timesteps; the model's dataset splits to render and the --target dataset (`validate_dataset`:
    frames, images, FLAME files)."""
    if self.orbit > 0 and self.orbit_timestep >= num_timesteps:
      raise DatasetError(
        f"--orbit-timestep {self.orbit_timestep} is out of range: the model has FLAME timesteps 0..{num_timesteps - 1}"
      )
    if self.target is None:
      if self.splits:
        validate_dataset(data, self.splits, required=(), intrinsics=intrinsics, masks=False, flag="the model's data")
    else:
      s = validate_dataset(self.target, SPLITS, required=(), intrinsics=intrinsics, masks=False, flag="--target")
      if not s.frames:
        raise DatasetFileNotFoundError(f"--target {self.target}: no transforms_{{train,val,test}}.json")


def render_order(ds, camera_index: int | None = None) -> np.ndarray:
  """The frames of dataset `ds` that `gaedit render` renders, in its order: sorted by camera index,
  then timestep; only those of `camera_index` when given."""
  idx = np.arange(len(ds))
  if camera_index is not None:
    idx = idx[ds.camera_indices == camera_index]
  return idx[np.lexsort((ds.timesteps[idx], ds.camera_indices[idx]))]


_FRAME = re.compile(r"\d{5,}\.png")  # io.media.save_frames: f"{i:05d}.png"


def _remove_stale_frames(folder: Path, n: int) -> None:
  """Removes our numbered frames (00000.png, ...) from index n on: left by an earlier render of this
  set with more frames, they would mix with the new ones (other files stay)."""
  if folder.is_dir():
    for p in folder.iterdir():
      if _FRAME.fullmatch(p.name) and int(p.stem) >= n and p.is_file():
        p.unlink()


def _write_set(folder: Path, renders: np.ndarray, gts: np.ndarray | None, cfg: RenderConfigCLI) -> dict:
  folder.mkdir(parents=True, exist_ok=True)
  save_frames(folder / "renders", renders)
  _remove_stale_frames(folder / "renders", len(renders))
  save_mp4(folder / "renders.mp4", renders, fps=cfg.fps)
  save_gif(folder / "renders.gif", renders, fps=cfg.gif_fps)
  out = dict(folder=str(folder), frames=len(renders))
  if gts is not None:
    save_frames(folder / "gt", gts)
    _remove_stale_frames(folder / "gt", len(gts))
    save_mp4(folder / "gt.mp4", gts, fps=cfg.fps)
    sbs = [side_by_side([g, r]) for r, g in zip(renders, gts)]
    save_gif(folder / "side_by_side.gif", sbs, fps=cfg.gif_fps)
    out["side_by_side"] = str(folder / "side_by_side.gif")
  return out


def _subsample(idx: np.ndarray, n: int | None) -> np.ndarray:
  if n is None or n >= len(idx):
    return idx
  return idx[np.unique(np.linspace(0, len(idx) - 1, n).round().astype(int))]


def render_dataset(avatar, model, flame: dict, ds, rc, cfg: RenderConfigCLI, folder: Path) -> dict:
  idx = _subsample(render_order(ds, cfg.camera_index), cfg.max_frames)
  if len(idx) == 0:
    raise InputError(
      f"no frames in {ds.json_path}"
      + (f" with camera index {cfg.camera_index}" if cfg.camera_index is not None else "")
    )
  imgs, gts = [], []
  for s in range(0, len(idx), 8):
    b = ds.batch(idx[s : s + 8])
    imgs.append(render_views(avatar, model, flame, np.asarray(b.timestep), b.camera, jnp.asarray(ds.background), rc))
    gts.append(np.asarray(b.image))
  return _write_set(folder, np.concatenate(imgs), np.concatenate(gts), cfg)


def orbit_cameras(ref_cam, center: np.ndarray, n: int, degrees: float = 360.0):
  """n cameras on a horizontal circle around `center` at the reference camera's distance,
  height offset and intrinsics (camera [single])."""
  c2w = np.linalg.inv(np.asarray(ref_cam.world_to_camera))
  eye0 = c2w[:3, 3]
  d = eye0 - center
  r = float(np.hypot(d[0], d[2]))
  a0 = float(np.arctan2(d[0], d[2]))
  angs = a0 + np.deg2rad(np.linspace(-degrees / 2, degrees / 2, n, endpoint=degrees < 360.0))
  w2c = np.stack([look_at(center + np.array([r * np.sin(a), d[1], r * np.cos(a)]), center) for a in angs])
  return make_camera(
    w2c,
    np.full(n, float(ref_cam.fx), np.float32),
    np.full(n, float(ref_cam.fy), np.float32),
    np.full(n, float(ref_cam.cx), np.float32),
    np.full(n, float(ref_cam.cy), np.float32),
    width=ref_cam.width,
    height=ref_cam.height,
  )


def main(cfg: RenderConfigCLI) -> dict:
  """Render a trained avatar (novel views, orbit, self- and cross-identity reenactment)."""
  avatar, model, flame, fp, mcfg, it_dir = load_trained(
    cfg.model, cfg.iteration, data=cfg.data, flame_model=cfg.flame_model, require_data=True
  )
  c = mcfg["config"]
  intrinsics = cfg.intrinsics or c.get("intrinsics", "file")
  cfg.check_inputs(Path(mcfg["data"]), flame.num_timesteps, intrinsics)
  kw = dict(
    image_scale=c.get("image_scale", 1.0),
    white_background=c.get("white_background", True),
    cache_size=0,
    intrinsics=intrinsics,
  )
  rc = RenderConfig(sh_degree=min(cfg.sh_degree, avatar.sh_degree))
  out = Path(cfg.out or Path(cfg.model) / "renders")
  tag = it_dir.name.replace("iteration_", "ours_")
  suffix = f"_{cfg.camera_index}" if cfg.camera_index is not None else ""
  results = {}
  if cfg.target is None:
    for s in cfg.splits:
      try:
        ds = AvatarDataset(mcfg["data"], s, **kw)
      except FileNotFoundError:
        print(f"skipping split {s}: no transforms_{s}.json")
        continue
      results[s] = render_dataset(avatar, model, flame, ds, rc, cfg, out / f"{s}{suffix}" / tag)
  else:
    # METHOD §8: cameras + per-timestep FLAME of the target (all its splits merged), identity of the source.
    full = load_model(Path(mcfg["data"]), Path(mcfg["flame_model"]))
    name = Path(cfg.target).name + suffix
    for s in ("train", "val", "test"):
      try:
        ds = AvatarDataset(cfg.target, s, **kw)
      except FileNotFoundError:
        continue
      if len(render_order(ds, cfg.camera_index)) == 0:  # e.g. VHAP's train split has no held-out camera
        print(f"skipping {cfg.target} {s}: no frames with camera index {cfg.camera_index}")
        continue
      tf = fit_flame_dims(full, ds.flame_params)
      results[f"{name}/{s}"] = render_dataset(avatar, model, tf.motion, ds, rc, cfg, out / name / s / tag)
    if not results:
      raise InputError(
        f"{cfg.target} has no frames to render (transforms_{{train,val,test}}.json"
        + (f" with camera index {cfg.camera_index})" if cfg.camera_index is not None else ")")
      )
  if cfg.orbit > 0:
    try:  # the orbit starts at the frontal (validation) camera
      ds = AvatarDataset(mcfg["data"], "val", **kw)
    except FileNotFoundError:
      ds = AvatarDataset(mcfg["data"], "train", **kw)
    ref = ds.camera(0)
    t = cfg.orbit_timestep
    verts = np.asarray(pose_vertices(model, flame, jnp.asarray(t)))
    center = verts.mean(0)
    cams = orbit_cameras(ref, center, cfg.orbit, cfg.orbit_degrees)
    nt = flame.num_timesteps
    ts = (np.arange(cfg.orbit) % nt) if cfg.orbit_animate else np.full(cfg.orbit, t)
    imgs = render_views(avatar, model, flame, ts, cams, jnp.asarray(ds.background), rc)
    results["orbit"] = _write_set(out / "orbit" / tag, imgs, None, cfg)
  for k, v in results.items():
    print(f"{k}: {v['frames']} frames -> {v['folder']}")
  return results


__all__ = ["RenderConfigCLI", "main", "orbit_cameras", "render_dataset", "render_order"]
