"""`gaedit view MODEL`: an interactive web viewer of a trained avatar (viser), rendered on this
machine by the project's rasterizer for the browser's camera; open the printed URL locally or
through an SSH port forward.

* MODEL: any avatar `gaedit render` reads (ours, a GaussianAvatars folder or chkpnt<N>.pth);
  `--synthetic` shows the built-in synthetic avatar instead.
* `--compare MODEL2`: original | edited side by side (or either alone) under one motion.
* `--data DIR`: the dataset's cameras as presets (camera 8, the frontal validation view, first);
  default: the dataset the model records, when it exists.
* `--motion FILE`: drive the avatar with another sequence (GaussianAvatars flame_param.npz, ...).
* `--watch RUN_DIR`: follow a running `gaedit reconstruct` / `gaedit edit`, loading each new
  export (point_cloud/iteration_N) as it appears; training never waits for the viewer.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path
from typing import Annotated, Literal

import tyro

from gaedit_jax.avatar import load_trained
from gaedit_jax.camera import Camera
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.data.layout import SPLITS, VAL_CAMERA
from gaedit_jax.errors import InputError
from gaedit_jax.flags import check_flags, config_checks
from gaedit_jax.flame import FlameMotion
from gaedit_jax.io.motion import read_motion
from gaedit_jax.viewer.demo import synthetic_subject
from gaedit_jax.viewer.scene import Subject
from gaedit_jax.viewer.server import Viewer
from gaedit_jax.viewer.watch import RunWatcher


@dataclasses.dataclass
class ViewConfig:
  """Interactive web viewer of a trained avatar."""

  model: Annotated[Path | None, tyro.conf.Positional, tyro.conf.arg(metavar="MODEL")] = None
  """Avatar: a `gaedit reconstruct` / `gaedit edit` folder, a GaussianAvatars output folder, or a
  GaussianAvatars chkpnt<N>.pth (not needed with --watch or --synthetic)."""
  compare: Path | None = None
  """A second avatar (e.g. the edited one) shown beside MODEL under the same motion."""
  data: Path | None = None
  """Dataset folder whose cameras are offered as presets (default: the one MODEL records)."""
  motion: Path | None = None
  """Motion file driving the avatar (GaussianAvatars flame_param.npz, a folder of per-frame npz)."""
  watch: Path | None = None
  """Run folder of a running `gaedit reconstruct` / `gaedit edit`: show each new export."""
  synthetic: bool = False
  """Show the built-in synthetic avatar (no MODEL needed)."""
  iteration: int | None = None
  """point_cloud/iteration_<N> (or chkpnt<N>.pth) of MODEL (default: the highest)."""
  flame_model: Path | None = None
  """FLAME model file (default: the one the model records; GaussianAvatars records none)."""
  intrinsics: Literal["file", "fov_x"] | None = None
  """Intrinsics of the dataset cameras (see `gaedit reconstruct --intrinsics`; default: the model's)."""
  host: str = "127.0.0.1"
  """Address to listen on (0.0.0.0: every interface; the default needs an SSH port forward from
  another machine)."""
  port: int = 8080
  max_size: int = 512
  """Initial render size (long side, pixels; adjustable in the panel)."""
  fps: int = 25
  """Playback and recording frame rate."""
  out: Path | None = None
  """Folder for screenshots and recordings (default: MODEL/viewer, or ./viewer)."""
  watch_interval: float = 2.0
  """Seconds between two looks at --watch RUN_DIR."""

  def __post_init__(self):
    config_checks(self.validate_flags)

  def validate_flags(self) -> None:
    check_flags(self, {"iteration": "int >= 0", "fps max_size": "int >= 1", "watch_interval": "> 0"})
    given = [
      n
      for n, v in (("MODEL", self.model), ("--watch", self.watch), ("--synthetic", self.synthetic or None))
      if v is not None
    ]
    if len(given) != 1:
      raise InputError(f"pass exactly one of MODEL, --watch RUN_DIR, --synthetic (got {', '.join(given) or 'none'})")
    if self.compare is not None and self.model is None:
      raise InputError("--compare MODEL2 needs MODEL (the avatar to compare with)")
    if self.max_size < 64:
      raise InputError(f"--max-size {self.max_size}: expected at least 64 pixels")


def _load(path: Path, cfg: ViewConfig, iteration: int | None) -> tuple[Subject, FlameMotion, dict]:
  tr = load_trained(path, iteration, data=cfg.data, flame_model=cfg.flame_model)
  return Subject(tr.avatar, tr.model, Path(path).name), tr.flame, tr.cfg


def dataset_cameras(data: Path, mcfg: dict, intrinsics: str | None) -> tuple[dict[str, Camera], str | None, bool]:
  """One preset per camera index of the dataset (validation split first, so camera 8 is named
  "(val)"), the name of the default one (camera 8 when present) and the background (white?)."""
  c = mcfg.get("config", {})
  kw = dict(
    image_scale=c.get("image_scale", 1.0),
    white_background=c.get("white_background", True),
    cache_size=0,
    intrinsics=intrinsics or c.get("intrinsics", "file"),
  )
  presets: dict[str, Camera] = {}
  seen: set[int] = set()
  default = None
  for split in ("val", "test", "train"):
    try:
      ds = AvatarDataset(data, split, **kw)
    except FileNotFoundError:
      continue
    for i, ci in enumerate(ds.camera_indices):
      if int(ci) in seen:
        continue
      seen.add(int(ci))
      name = f"camera {int(ci):02d} ({split})"
      presets[name] = ds.camera(i)
      if int(ci) == VAL_CAMERA and default is None:
        default = name
  if not presets:
    raise InputError(f"--data {data}: no transforms_{{{','.join(SPLITS)}}}.json with frames")
  presets = dict(sorted(presets.items()))
  return presets, default or next(iter(presets)), bool(kw["white_background"])


def start(cfg: ViewConfig) -> Viewer:
  """Loads the avatar(s), starts the server and returns the running viewer (main blocks on it)."""
  watcher = None
  if cfg.synthetic:
    avatar, model, motion = synthetic_subject()
    subjects, mcfg = [Subject(avatar, model, "synthetic")], {}
  elif cfg.watch is not None:
    if not Path(cfg.watch).is_dir():
      raise InputError(f"--watch {cfg.watch}: no such run folder")
    first: dict = {}
    watcher = RunWatcher(
      cfg.watch,
      load=lambda it: _load(cfg.watch, cfg, it),
      on_load=lambda it, loaded: first.setdefault("loaded", loaded),
      on_error=lambda it, msg: print(f"iteration {it}: not loadable yet ({msg})"),
      interval=cfg.watch_interval,
    )
    print(f"waiting for the first export in {Path(cfg.watch) / 'point_cloud'} ...", flush=True)
    watcher.wait_first()
    subject, motion, mcfg = first["loaded"]
    subjects = [subject]
  else:
    subject, motion, mcfg = _load(cfg.model, cfg, cfg.iteration)
    subjects = [subject]
    if cfg.compare is not None:
      subjects.append(_load(cfg.compare, cfg, None)[0])
  if cfg.motion is not None:
    motion = read_motion(cfg.motion, int(subjects[0].model.n_expr))
  data = cfg.data if cfg.data is not None else mcfg.get("data")
  presets, default, white = {}, None, bool(mcfg.get("config", {}).get("white_background", True))
  if cfg.data is not None or (data and Path(data).is_dir()):
    presets, default, white = dataset_cameras(Path(data), mcfg, cfg.intrinsics)
  root = cfg.watch or cfg.model
  viewer = Viewer(
    subjects,
    motion,
    background=(1.0, 1.0, 1.0) if white else (0.0, 0.0, 0.0),
    presets=presets,
    default_preset=default,
    out_dir=cfg.out or (Path(root) / "viewer" if root is not None else Path("viewer")),
    host=cfg.host,
    port=cfg.port,
    fps=cfg.fps,
    max_size=cfg.max_size,
  )
  if watcher is not None:
    keep_motion = cfg.motion is not None

    def shown(it: int, loaded) -> None:
      subject, m, _ = loaded
      viewer.replace([subject], None if keep_motion else m)
      viewer.controls.set_status(f"iteration {it} (loaded {time.strftime('%H:%M:%S')})")
      print(f"showing iteration {it}", flush=True)

    watcher.on_load = shown
    watcher.on_error = lambda it, msg: viewer.controls.set_status(f"iteration {it}: not loadable yet ({msg})")
    viewer.controls.set_status(f"iteration {watcher.iteration}")
    watcher.start()
    viewer.watcher = watcher
  return viewer


def urls(host: str, port: int) -> list[str]:
  """How to open the viewer: its URL, and from another machine the SSH port forward."""
  local = host in ("127.0.0.1", "localhost", "::1")
  shown = "localhost" if local or host in ("0.0.0.0", "::") else host
  lines = [f"viewer: http://{shown}:{port}"]
  remote = "localhost" if local else ("localhost" if host in ("0.0.0.0", "::") else host)
  lines.append(
    f"from another machine: ssh -N -L {port}:{remote}:{port} USER@{socket.gethostname()}  then open http://localhost:{port}"
  )
  return lines


def main(cfg: ViewConfig) -> None:
  """Interactive web viewer of a trained avatar (open the printed URL; Ctrl-C stops it)."""
  viewer = start(cfg)
  for line in urls(cfg.host, viewer.port):
    print(line, flush=True)
  try:
    while True:
      time.sleep(1.0)
  finally:
    watcher = getattr(viewer, "watcher", None)
    if watcher is not None:
      watcher.stop()
    viewer.close()


__all__ = ["ViewConfig", "dataset_cameras", "main", "start", "urls"]
