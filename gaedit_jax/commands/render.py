"""`gaedit render`: render a trained avatar (METHOD §8, GaussianAvatars' render.py).

* splits (default val + test): the dataset's frames with the avatar's fine-tuned FLAME parameters
  (val = novel view, test = self-reenactment), next to the ground truth;
* `--target DIR` (cross-identity reenactment): cameras and per-timestep FLAME parameters
  (expression, pose, translation) of another dataset; shape and static offset of the source;
* `--orbit N`: N views on a circle around the head (at `--orbit-timestep`, or following the
  sequence with `--orbit-animate`);
* `--motion FILE` (io.motion: GaussianAvatars flame_param.npz, a VHAP flame_param/ folder, a sequence
  npz): the avatar driven by that FLAME sequence, no driving dataset needed;
* `--grid`: several cameras (`--cameras`) tiled in one video (the model's own sequence, or --motion);
* `--compare MODEL2`: every set also rendered with a second avatar, written side by side with labels.
Each set is written to OUT/<name>/{renders,gt}/00000.png plus renders.mp4, renders.gif and, with
ground truth, gt.mp4 and side_by_side.gif; with --compare, compare/00000.png, compare.mp4 and
compare.gif. Videos go through io.media.write_video.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.avatar import fit_flame_dims, load_flame_model, load_trained, pose_vertices, render_views
from gaedit_jax.camera import look_at, make_camera
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.data.layout import SPLITS
from gaedit_jax.data.validate import validate_dataset
from gaedit_jax.errors import DatasetError, DatasetFileNotFoundError, InputError
from gaedit_jax.flags import check_choice, check_flags, config_checks
from gaedit_jax.flame import FlameMotion, axis_angle_to_matrix
from gaedit_jax.io.media import save_frames, side_by_side, tile, write_video
from gaedit_jax.io.motion import read_motion_file
from gaedit_jax.render.types import RenderConfig

DEFAULT_FPS = 25.0  # GaussianAvatars' render.py writes its videos at 25 fps
FRONTAL_FOCAL = 2.0  # focal length of the frontal camera without a dataset, in image heights (~28 deg)


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
  splits: tuple[str, ...] | None = None
  """Dataset splits to render (train, val, test); empty to skip. Default: val and test, none when
  --motion or --grid is given."""
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
  motion: Path | None = None
  """Drive the avatar with this FLAME sequence: a GaussianAvatars / VHAP flame_param.npz, a VHAP
  flame_param/ folder of per-frame npz files (or the dataset folder holding it), or an npz of
  [T,...] arrays expr, rotation, neck_pose, jaw_pose, eyes_pose, translation. Expressions are
  truncated / zero-padded to the avatar's. Cameras: --cameras (or --camera-index) of the model's
  dataset, else its frontal validation camera; without a dataset, a frontal camera looking at the
  head along the motion's first head rotation, framing its bounds (--grid: views on a 90 degree arc)."""
  grid: bool = False
  """Tile several cameras (--cameras) in one video: the --motion sequence, or the model's own
  sequence (all its FLAME timesteps)."""
  cameras: str | None = None
  """Camera indices of the model's dataset for --motion / --grid, comma-separated (e.g. 0,4,8).
  Default: the frontal validation camera (--grid: every camera of the dataset). Without a dataset,
  only their number counts (views on an arc; --grid default 3)."""
  compare: Path | None = None
  """A second avatar (e.g. the edited one) rendered in every set with the same cameras and motion:
  written side by side, model | MODEL2, with labels (compare.mp4, compare.gif, compare/*.png)."""
  labels: str | None = None
  """Labels of --compare, comma-separated: A,B (default: the two model folders' names)."""
  fps: float | None = None
  """Video frame rate. Default: the motion file's fps, else the dataset's (a top-level "fps" in
  transforms.json; VHAP's NeRSemble exports record none), else 25 (GA's render.py)."""
  gif_fps: float | None = None
  """GIF frame rate (default: --fps)."""
  gif_min_height: int = 0
  """Upscale GIF frames (Lanczos) to at least this height; the PNG frames and mp4 keep the render
  size. 0: as rendered."""
  max_frames: int | None = None
  """Render at most this many frames per set (evenly spaced)."""
  frontal_size: int = 512
  """Image height and width of the frontal camera used when there is no dataset (--motion, --grid)."""
  sh_degree: int = 3
  data: Path | None = None
  """Dataset folder (default: the one the model folder records; cfg_args source_path for GA)."""
  flame_model: Path | None = None
  """FLAME model file (default: the one cfg.json records; GaussianAvatars records none)."""
  intrinsics: Literal["file", "fov_x"] | None = None
  """Camera intrinsics of the datasets ("file" or GaussianAvatars' "fov_x", see `gaedit reconstruct
  --intrinsics`). Default: the model's."""

  def __post_init__(self):
    if self.splits is None:
      self.splits = () if (self.motion is not None or self.grid) else ("val", "test")
    config_checks(self.validate_flags)

  def validate_flags(self) -> None:
    """Value checks of the flags (one-line InputError naming the flag)."""
    check_flags(
      self,
      {
        "iteration camera_index orbit orbit_timestep gif_min_height": "int >= 0",
        "max_frames frontal_size": "int >= 1",
        "fps gif_fps": "> 0",
        "sh_degree": "int [0, 3]",
        "orbit_degrees": "> 0",
      },
    )
    check_choice(self, "splits", SPLITS)
    self.camera_list()
    self.label_pair()

  def camera_list(self) -> list[int] | None:
    """--cameras as a list of camera indices (None when not given)."""
    if self.cameras is None:
      return None
    try:
      cams = [int(c) for c in self.cameras.split(",") if c.strip()]
    except ValueError:
      raise InputError(f"--cameras {self.cameras!r}: expected comma-separated camera indices, e.g. 0,4,8") from None
    if not cams or min(cams) < 0:
      raise InputError(f"--cameras {self.cameras!r}: expected one or more camera indices >= 0, e.g. 0,4,8")
    return cams

  def label_pair(self) -> tuple[str, str] | None:
    """--labels as (A, B) (None when not given)."""
    if self.labels is None:
      return None
    parts = [p.strip() for p in self.labels.split(",")]
    if len(parts) != 2:
      raise InputError(f"--labels {self.labels!r}: expected two comma-separated labels, e.g. original,edited")
    return parts[0], parts[1]
    if self.intrinsics is not None:
      check_choice(self, "intrinsics", ("file", "fov_x"))

  def check_inputs(self, data: Path | None, num_timesteps: int, intrinsics: str = "file") -> None:
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


@dataclasses.dataclass
class Driven:
  """One avatar ready to pose: its baked FLAME model and its own per-timestep FLAME state."""

  name: str
  avatar: object
  model: object  # FlameModel, identity baked in
  flame: FlameMotion  # its per-timestep FLAME state [T,...]
  flame_model: Path  # its FLAME file (the model without the identity fits a driving dataset's parameters)
  _full: object = None

  @property
  def num_timesteps(self) -> int:
    return self.flame.num_timesteps

  @property
  def full(self):
    if self._full is None:
      self._full = load_flame_model(self.flame_model)
    return self._full


def _model_name(path: Path) -> str:
  p = Path(path).absolute()
  return p.parent.name if p.is_file() else p.name


@dataclasses.dataclass
class VideoSet:
  """Frames of one output set: renders of the model, optionally ground truth and the --compare model's."""

  renders: np.ndarray  # [N,H,W,3]
  gts: np.ndarray | None = None
  other: np.ndarray | None = None  # --compare: the second model's renders of the same views
  fps: float = DEFAULT_FPS


def _write_video_pair(folder: Path, name: str, frames, cfg: RenderConfigCLI, fps: float) -> None:
  write_video(folder / f"{name}.mp4", frames, fps)
  write_video(folder / f"{name}.gif", frames, cfg.gif_fps or fps, min_height=cfg.gif_min_height)


def _write_set(folder: Path, vs: VideoSet, cfg: RenderConfigCLI, labels: tuple[str, str] | None = None) -> dict:
  folder.mkdir(parents=True, exist_ok=True)
  renders, gts, fps = vs.renders, vs.gts, vs.fps
  save_frames(folder / "renders", renders)
  _remove_stale_frames(folder / "renders", len(renders))
  _write_video_pair(folder, "renders", renders, cfg, fps)
  out = dict(folder=str(folder), frames=len(renders), fps=fps)
  if gts is not None:
    save_frames(folder / "gt", gts)
    _remove_stale_frames(folder / "gt", len(gts))
    write_video(folder / "gt.mp4", gts, fps)
    sbs = [side_by_side([g, r]) for r, g in zip(renders, gts)]
    write_video(folder / "side_by_side.gif", sbs, cfg.gif_fps or fps, min_height=cfg.gif_min_height)
    out["side_by_side"] = str(folder / "side_by_side.gif")
  if vs.other is not None:
    cmp = [side_by_side([a, b], labels=labels) for a, b in zip(renders, vs.other)]
    save_frames(folder / "compare", cmp)  # lossless: the halves are exactly the two renders
    _remove_stale_frames(folder / "compare", len(cmp))
    _write_video_pair(folder, "compare", cmp, cfg, fps)
    out["compare"] = str(folder / "compare.mp4")
  return out


def _subsample(idx: np.ndarray, n: int | None) -> np.ndarray:
  if n is None or n >= len(idx):
    return idx
  return idx[np.unique(np.linspace(0, len(idx) - 1, n).round().astype(int))]


def _check_timesteps(d: Driven, timesteps: np.ndarray, what: str) -> None:
  if timesteps.size and int(timesteps.max()) >= d.num_timesteps:
    raise InputError(
      f"--compare {d.name}: {what} needs FLAME timestep {int(timesteps.max())} but the model has "
      f"timesteps 0..{d.num_timesteps - 1} (compare models of the same sequence)"
    )


def render_dataset(
  avatar,
  model,
  flame: FlameMotion,
  ds,
  rc,
  cfg: RenderConfigCLI,
  folder: Path,
  *,
  other=None,
  fps=DEFAULT_FPS,
  labels=None,
) -> dict:
  """The frames of `ds` (render_order); `other` = (Driven, its flame dict) of --compare."""
  idx = _subsample(render_order(ds, cfg.camera_index), cfg.max_frames)
  if len(idx) == 0:
    raise InputError(
      f"no frames in {ds.json_path}"
      + (f" with camera index {cfg.camera_index}" if cfg.camera_index is not None else "")
    )
  if other is not None:
    _check_timesteps(other[0], ds.timesteps[idx], f"{ds.json_path}")
  imgs, gts, imgs2 = [], [], []
  bg = jnp.asarray(ds.background)
  for s in range(0, len(idx), 8):
    b = ds.batch(idx[s : s + 8])
    ts = np.asarray(b.timestep)
    imgs.append(render_views(avatar, model, flame, ts, b.camera, bg, rc))
    gts.append(np.asarray(b.image))
    if other is not None:
      imgs2.append(render_views(other[0].avatar, other[0].model, other[1], ts, b.camera, bg, rc))
  vs = VideoSet(np.concatenate(imgs), np.concatenate(gts), np.concatenate(imgs2) if imgs2 else None, fps)
  return _write_set(folder, vs, cfg, labels)


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


def frontal_camera(model, flame: FlameMotion, timestep: int = 0, size: int = 512, focal: float = FRONTAL_FOCAL):
  """A camera facing the head at `timestep` (no dataset): on the face's forward axis (FLAME's +z
  turned by the global rotation), up along its +y, at the distance where the bounding sphere of
  the posed mesh fills the view with a 15% margin; square image `size`, focal `focal` * size."""
  verts = np.asarray(pose_vertices(model, flame, jnp.asarray(timestep)), np.float64)
  lo, hi = verts.min(0), verts.max(0)
  center = 0.5 * (lo + hi)
  radius = float(np.linalg.norm(verts - center, axis=-1).max())
  r = np.asarray(axis_angle_to_matrix(jnp.asarray(flame.rotation[timestep])), np.float64)
  fwd, up = r @ np.array([0.0, 0.0, 1.0]), r @ np.array([0.0, 1.0, 0.0])
  f = focal * size
  half_fov = math.atan(0.5 * size / f)
  eye = center + fwd * (1.15 * radius / math.sin(half_fov))
  return make_camera(look_at(eye, center, up), f, width=size, height=size), center


def _repeat_camera(cam, n: int):
  """A single view repeated n times (a batch of views)."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), cam)


def recorded_fps(data: Path | None) -> float | None:
  """A dataset's frame rate when its transforms.json records one (top-level "fps"); None otherwise."""
  if data is None:
    return None
  p = Path(data) / "transforms.json"
  if not p.is_file():
    return None
  try:
    v = json.loads(p.read_text()).get("fps")
  except (json.JSONDecodeError, AttributeError, OSError):
    return None  # the dataset readers report a malformed json where they need it
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
    if v is not None:
      raise DatasetError(f"{p}: key 'fps' = {v!r}, expected a positive number (frames per second)")
    return None
  return float(v)


def _dataset_cameras(data: Path, kw: dict) -> dict[int, tuple]:
  """camera index -> (dataset split, frame index) of its first frame, over the val, train and test
  splits of `data` (val first: its camera is the frontal, held-out one)."""
  cams: dict[int, tuple] = {}
  for s in ("val", "train", "test"):
    try:
      ds = AvatarDataset(data, s, **kw)
    except FileNotFoundError:
      continue
    for i in np.argsort(ds.timesteps, kind="stable"):
      cams.setdefault(int(ds.camera_indices[i]), (ds, int(i)))
  return cams


def sequence_views(cfg: RenderConfigCLI, first: Driven, flame: FlameMotion, data: Path | None, kw: dict, white: bool):
  """(cameras [single] with their names, background) of a --motion / --grid set: see --motion."""
  req = cfg.camera_list()
  if data is not None:
    avail = _dataset_cameras(data, kw)
    if avail:
      if req is None:
        if cfg.camera_index is not None:
          req = [cfg.camera_index]
        elif cfg.grid:
          req = sorted(avail)
        else:
          req = [next(iter(avail))]  # the first camera of the val split: the frontal one
      missing = [c for c in req if c not in avail]
      if missing:
        flag = "--cameras" if cfg.cameras is not None else "--camera-index"
        raise InputError(f"{flag}: camera indices {missing} are not in the dataset {data} (it has {sorted(avail)})")
      views = [(f"cam{c:02d}", avail[c][0].camera(avail[c][1])) for c in req]
      return views, np.asarray(avail[req[0]][0].background)
  bg = np.ones(3, np.float32) if white else np.zeros(3, np.float32)
  front, center = frontal_camera(first.model, flame, 0, cfg.frontal_size)
  n = len(req) if req is not None else (3 if cfg.grid else 1)
  if n == 1:
    return [("frontal", front)], bg
  arc = orbit_cameras(front, center, n, 90.0)
  return [(f"view{k}", arc[k]) for k in range(n)], bg


def render_sequence(
  drivers: list[tuple[Driven, dict]], timesteps: np.ndarray, views, bg, rc, cfg: RenderConfigCLI
) -> list[dict[str, np.ndarray]]:
  """Per driver: its frames [T,H,W,3] per view name (one entry "grid" with --grid, the views tiled)."""
  out = []
  for d, flame in drivers:
    per_view = {
      name: render_views(d.avatar, d.model, flame, timesteps, _repeat_camera(cam, len(timesteps)), bg, rc)
      for name, cam in views
    }
    if cfg.grid:
      per_view = {"grid": np.stack([tile([v[t] for v in per_view.values()]) for t in range(len(timesteps))])}
    out.append(per_view)
  return out


def _write_sequence_sets(
  name: str, drivers, timesteps, views, bg, rc, cfg, out: Path, tag: str, fps: float, labels
) -> dict:
  frames = render_sequence(drivers, timesteps, views, bg, rc, cfg)
  results = {}
  keys = list(frames[0])
  for k in keys:
    sub = name if len(keys) == 1 else f"{name}_{k}"
    vs = VideoSet(frames[0][k], None, frames[1][k] if len(frames) > 1 else None, fps)
    results[sub] = _write_set(out / sub / tag, vs, cfg, labels)
  return results


def _load_driven(path: Path, cfg: RenderConfigCLI, **kw) -> tuple[Driven, dict, Path]:
  avatar, model, flame, fp, mcfg, it_dir = load_trained(path, flame_model=cfg.flame_model, **kw)
  return Driven(_model_name(path), avatar, model, flame, Path(mcfg["flame_model"])), mcfg, it_dir


def _fit_dataset_flame(d: Driven, flame_params) -> FlameMotion:
  """A driving dataset's per-timestep FLAME state for avatar `d` (expression zero-padded)."""
  return fit_flame_dims(d.full, flame_params).motion


def main(cfg: RenderConfigCLI) -> dict:
  """Render a trained avatar (novel views, orbit, self- and cross-identity reenactment, a motion file,
  camera grids, side-by-side comparisons)."""
  needs_data = bool(cfg.splits) or cfg.target is not None or cfg.orbit > 0
  first, mcfg, it_dir = _load_driven(cfg.model, cfg, iteration=cfg.iteration, data=cfg.data, require_data=needs_data)
  c = mcfg["config"]
  data = Path(mcfg["data"]) if mcfg.get("data") and Path(mcfg["data"]).is_dir() else None
  intrinsics = cfg.intrinsics or c.get("intrinsics", "file")
  cfg.check_inputs(data, first.num_timesteps, intrinsics)
  second = None
  if cfg.compare is not None:
    second, _, _ = _load_driven(cfg.compare, cfg)
  labels = cfg.label_pair() or (first.name, second.name if second else "")
  kw = dict(
    image_scale=c.get("image_scale", 1.0),
    white_background=c.get("white_background", True),
    cache_size=0,
    intrinsics=intrinsics,
  )
  degrees = [cfg.sh_degree, first.avatar.sh_degree] + ([] if second is None else [second.avatar.sh_degree])
  rc = RenderConfig(sh_degree=min(degrees))
  out = Path(cfg.out or Path(cfg.model) / "renders")
  tag = it_dir.name.replace("iteration_", "ours_")
  suffix = f"_{cfg.camera_index}" if cfg.camera_index is not None else ""
  fps = cfg.fps or recorded_fps(data) or DEFAULT_FPS
  avatar, model, flame = first.avatar, first.model, first.flame
  results = {}
  if cfg.target is None:
    for s in cfg.splits:
      try:
        ds = AvatarDataset(mcfg["data"], s, **kw)
      except FileNotFoundError:
        print(f"skipping split {s}: no transforms_{s}.json")
        continue
      other = None if second is None else (second, second.flame)
      results[s] = render_dataset(
        avatar, model, flame, ds, rc, cfg, out / f"{s}{suffix}" / tag, other=other, fps=fps, labels=labels
      )
  else:
    # METHOD §8: cameras + per-timestep FLAME of the target (all its splits merged), identity of the source.
    name = Path(cfg.target).name + suffix
    tfps = cfg.fps or recorded_fps(Path(cfg.target)) or fps
    for s in ("train", "val", "test"):
      try:
        ds = AvatarDataset(cfg.target, s, **kw)
      except FileNotFoundError:
        continue
      if len(render_order(ds, cfg.camera_index)) == 0:  # e.g. VHAP's train split has no held-out camera
        print(f"skipping {cfg.target} {s}: no frames with camera index {cfg.camera_index}")
        continue
      tflame = _fit_dataset_flame(first, ds.flame_params)
      other = None if second is None else (second, _fit_dataset_flame(second, ds.flame_params))
      results[f"{name}/{s}"] = render_dataset(
        avatar, model, tflame, ds, rc, cfg, out / name / s / tag, other=other, fps=tfps, labels=labels
      )
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
    nt = first.num_timesteps
    ts = (np.arange(cfg.orbit) % nt) if cfg.orbit_animate else np.full(cfg.orbit, t)
    bg = jnp.asarray(ds.background)
    imgs = render_views(avatar, model, flame, ts, cams, bg, rc)
    other = None
    if second is not None:
      _check_timesteps(second, ts, "--orbit")
      other = render_views(second.avatar, second.model, second.flame, ts, cams, bg, rc)
    results["orbit"] = _write_set(out / "orbit" / tag, VideoSet(imgs, None, other, fps), cfg, labels)
  white = bool(c.get("white_background", True))
  if cfg.motion is not None:
    seq = read_motion_file(cfg.motion, model.n_expr)
    mflame = seq.motion
    drivers = [(first, mflame)]
    if second is not None:
      m2 = seq.motion
      if second.model.n_expr != model.n_expr:
        m2 = read_motion_file(cfg.motion, second.model.n_expr).motion
      drivers.append((second, m2))
    ts = _subsample(np.arange(seq.num_timesteps), cfg.max_frames)
    views, bg = sequence_views(cfg, first, mflame, data, kw, white)
    mfps = cfg.fps or seq.fps or fps
    name = "motion_" + (Path(cfg.motion).stem or "sequence") + ("_grid" if cfg.grid else "")
    results.update(_write_sequence_sets(name, drivers, ts, views, jnp.asarray(bg), rc, cfg, out, tag, mfps, labels))
  elif cfg.grid:
    ts = _subsample(np.arange(first.num_timesteps), cfg.max_frames)
    drivers = [(first, flame)]
    if second is not None:
      _check_timesteps(second, ts, "--grid")
      drivers.append((second, second.flame))
    views, bg = sequence_views(cfg, first, flame, data, kw, white)
    results.update(_write_sequence_sets("grid", drivers, ts, views, jnp.asarray(bg), rc, cfg, out, tag, fps, labels))
  for k, v in results.items():
    print(f"{k}: {v['frames']} frames -> {v['folder']}")
  return results


__all__ = [
  "RenderConfigCLI",
  "frontal_camera",
  "main",
  "orbit_cameras",
  "recorded_fps",
  "render_dataset",
  "render_order",
  "render_sequence",
]
