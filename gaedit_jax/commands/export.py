"""`gaedit export MODEL --format F --out DIR`: write a trained avatar in another tool's format.

MODEL is any avatar `gaedit render` reads (our model folder, a GaussianAvatars output folder or
chkpnt<N>.pth). Formats (FORMATS, a name -> writer table; add a format by adding a row):

* `gaussianavatars`: a GaussianAvatars output folder (cfg_args, point_cloud/iteration_N/
  {point_cloud.ply, flame_param.npz}): Gaussians in the local frames of their FLAME triangles, as
  GaussianAvatars stores them; its render.py (-m OUT, needs cfg_args' source_path, the dataset) and
  local_viewer.py (--point_path .../point_cloud.ply, which finds flame_param.npz beside it;
  --sh_degree as written) open it. The FLAME model is not written (GA uses its own FLAME 2023).
* `ply`: one timestep's Gaussians baked into world space, a standard 3DGS point_cloud.ply
  without binding for generic viewers (world_timestep_<t>.ply).
* `ply-sequence`: the same for several timesteps, frame_<t>.ply (SuperSplat plays files of one
  prefix and a trailing frame number as an animation) + manifest.json (timesteps, fps, axes).
* `splat`: antimatter15's 32-byte-per-Gaussian .splat of one timestep (io/splat.py).
* `spz`: Niantic's compressed .spz (version 3, gzip) of one timestep (io/splat.py).

The world-space formats pose the avatar with its own FLAME sequence, or with --motion FILE's
(io/motion.py), all in `_posed`.

Axes and units of the world-space formats: metres; our world is the dataset's FLAME frame (y up,
the face looking along +z: RUB); --axes rdf turns ply / ply-sequence / splat 180 degrees about x
(y down), the convention of COLMAP-born scenes that SuperSplat and antimatter15's viewer assume, so
the head is upright there. spz files are RUB by specification and are written unturned.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Annotated, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from gaedit_jax.avatar import load_trained, pose_frames
from gaedit_jax.errors import InputError
from gaedit_jax.io.cloud import GaussianCloud, atomic_write_bytes, convert_axes, world_cloud
from gaedit_jax.io.model_folder import read_avatar, write_gaussianavatars_folder
from gaedit_jax.io.motion import motion_fps, read_motion_file
from gaedit_jax.io.ply import save_cloud_ply
from gaedit_jax.io.splat import save_splat, save_spz


@dataclasses.dataclass(frozen=True)
class Format:
  """One export format: `write(cfg) -> written paths`."""

  help: str
  write: Callable[["ExportConfig"], list[Path]]


def _write_gaussianavatars(cfg: "ExportConfig") -> list[Path]:
  af = read_avatar(cfg.model, cfg.iteration, data=cfg.data)
  if af.flame is None:
    raise InputError(
      f"{af.source.path}: a GaussianAvatars checkpoint holds no FLAME parameters and no "
      "flame_param.npz of its iteration is beside it; pass --data DIR (the dataset's tracking)"
    )
  data = af.cfg.get("data")
  if not data:
    warnings.warn(
      f"{cfg.model}: no dataset folder recorded: cfg_args source_path is left empty (GaussianAvatars' "
      "render.py needs it; pass --data DIR)",
      stacklevel=2,
    )
    data = ""
  c = af.cfg.get("config", {})
  fm = cfg.flame_model if cfg.flame_model is not None else af.cfg.get("flame_model")
  it = af.iteration if af.iteration is not None else 0
  it_dir = write_gaussianavatars_folder(
    cfg.out,
    af.avatar,
    af.flame,
    iteration=it,
    source_path=data,
    white_background=c.get("white_background", True),
    image_scale=c.get("image_scale", 1.0),
    sh_degree=cfg.sh_degree,
    flame_model=fm,
    overwrite=cfg.overwrite,
  )
  deg = af.avatar.sh_degree if cfg.sh_degree is None else cfg.sh_degree
  print(
    f"GaussianAvatars: python render.py -m {Path(cfg.out).absolute()}  |  python local_viewer.py "
    f"--point_path {(it_dir / 'point_cloud.ply').absolute()} --sh_degree {deg}"
  )
  return [Path(cfg.out) / "cfg_args", it_dir / "point_cloud.ply", it_dir / "flame_param.npz"]


# ------------------------------------------------------------------------------------------------
# World-space exports: the posed avatar of chosen timesteps
# ------------------------------------------------------------------------------------------------


def parse_timesteps(spec: str | None, num: int, flag: str = "--timesteps", source: str = "the avatar's") -> list[int]:
  """Timesteps 0..num-1 chosen by spec: None or "all" (every one), "a:b[:step]" (as a Python slice:
  b excluded, either end may be left out), or a comma list "0,5,9". InputError (naming the flag)
  when a timestep is out of range, the spec is malformed or it selects nothing."""
  if spec is None or spec.strip() == "all":
    return list(range(num))
  text = spec.strip()
  form = f"{flag} {spec!r}: expected 'all', 'a:b[:step]' or a comma list of integers"
  try:
    parts = [int(p) if p.strip() else None for p in text.split(":" if ":" in text else ",")]
  except ValueError:
    raise InputError(form) from None
  if ":" in text:
    if len(parts) > 3:
      raise InputError(form)
    a, b, *c = parts
    step = c[0] if c else None
    if step is not None and step <= 0:
      raise InputError(f"{flag} {spec!r}: the step must be >= 1")
    for v in (a, b):
      if v is not None and not 0 <= v <= num:
        raise InputError(f"{flag} {spec!r}: {v} is outside {source} timesteps 0..{num - 1}")
    ts = list(range(num))[slice(a, b, step)]
  else:
    if None in parts:
      raise InputError(form)
    ts = parts
  bad = [t for t in ts if not 0 <= t < num]
  if bad:
    raise InputError(f"{flag}: timestep {bad[0]} is outside {source} timesteps 0..{num - 1}")
  if not ts:
    raise InputError(f"{flag} {spec!r}: selects no timestep ({source} are 0..{num - 1})")
  return ts


_pose_frames_jit = jax.jit(pose_frames)


def _posed(cfg: "ExportConfig"):
  """(avatar, number of timesteps, timestep -> GaussianCloud in --axes, motion file or None): the one
  place that poses the avatar with a FLAME sequence (its own, or --motion's) for the world-space
  formats."""
  tr = load_trained(cfg.model, cfg.iteration, data=cfg.data, flame_model=cfg.flame_model)
  avatar, model, flame = tr.avatar, tr.model, tr.flame
  seq = None
  if cfg.motion is not None:
    seq = read_motion_file(cfg.motion, int(model.n_expr))
    flame = seq.motion

  def cloud_at(t: int) -> GaussianCloud:
    frames = _pose_frames_jit(model, flame, jnp.asarray(t, jnp.int32))
    return convert_axes(world_cloud(avatar, frames, sh_degree=cfg.sh_degree), "rub", cfg.axes)

  return avatar, flame.num_timesteps, cloud_at, seq


def _check_out(cfg: "ExportConfig", paths: list[Path]) -> None:
  """The output folder can be made and written, and nothing is replaced without --overwrite."""
  out = Path(cfg.out)
  if out.exists() and not out.is_dir():
    raise InputError(f"--out {out}: exists and is not a folder")
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise InputError(f"--out {out}: cannot create the folder ({e.strerror or type(e).__name__})") from None
  if not os.access(out, os.W_OK | os.X_OK):
    raise InputError(f"--out {out}: the folder is not writable")
  clash = [p for p in paths if p.exists()]
  if clash and not cfg.overwrite:
    more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
    raise InputError(f"{clash[0]} exists{more}; pass --overwrite to replace it")


def _one_timestep(cfg: "ExportConfig", suffix: str, write: Callable[[Path, GaussianCloud], object]) -> list[Path]:
  _, nt, cloud_at, seq = _posed(cfg)
  t = int(cfg.timestep)
  if not 0 <= t < nt:
    src = f"--motion {cfg.motion} has" if seq is not None else "the avatar has FLAME parameters for"
    raise InputError(f"--timestep {t}: {src} timesteps 0..{nt - 1}")
  out = Path(cfg.out) / f"world_timestep_{t:05d}{suffix}"
  _check_out(cfg, [out])
  write(out, cloud_at(t))
  return [out]


def _write_world_ply(cfg: "ExportConfig") -> list[Path]:
  return _one_timestep(cfg, ".ply", save_cloud_ply)


def _write_splat(cfg: "ExportConfig") -> list[Path]:
  return _one_timestep(cfg, ".splat", save_splat)


def _write_spz(cfg: "ExportConfig") -> list[Path]:
  if cfg.axes != "rub":
    raise InputError(
      f"--axes {cfg.axes}: an spz file is RUB by its specification (our world already is); "
      "--axes applies to ply, ply-sequence and splat"
    )
  return _one_timestep(cfg, ".spz", lambda p, c: save_spz(p, c, version=cfg.spz_version))


SEQUENCE_MANIFEST = "manifest.json"
DEFAULT_FPS = 25.0  # as `gaedit render --fps`


def _write_ply_sequence(cfg: "ExportConfig") -> list[Path]:
  if cfg.fps is not None and not cfg.fps > 0:
    raise InputError(f"--fps {cfg.fps}: expected a number > 0")
  avatar, nt, cloud_at, seq = _posed(cfg)
  ts = parse_timesteps(cfg.timesteps, nt, source="--motion's" if seq is not None else "the avatar's")
  out = Path(cfg.out)
  files = [out / f"frame_{t:05d}.ply" for t in ts]
  manifest = out / SEQUENCE_MANIFEST
  _check_out(cfg, files + [manifest])
  for t, p in zip(ts, files):
    save_cloud_ply(p, cloud_at(t))
  deg = avatar.sh_degree if cfg.sh_degree is None else cfg.sh_degree
  info = dict(
    format="ply-sequence",
    files=[p.name for p in files],
    timesteps=ts,
    fps=cfg.fps if cfg.fps is not None else motion_fps(seq, DEFAULT_FPS),
    axes=cfg.axes,
    axes_meaning=AXES_HELP[cfg.axes],
    units="metres",
    sh_degree=int(deg),
    num_gaussians=int(np.asarray(avatar.active).sum()),
    model=str(Path(cfg.model).absolute()),
    motion=None if seq is None else str(Path(cfg.motion).absolute()),
  )
  atomic_write_bytes(manifest, [(json.dumps(info, indent=2) + "\n").encode()])
  return files + [manifest]


AXES_HELP = {
  "rub": "our world as is: the dataset's FLAME frame, x right (the avatar's left), y up, +z out of the face",
  "rdf": "turned 180 degrees about x: y down, +z into the face (COLMAP-style scenes; upright in SuperSplat)",
}


FORMATS: dict[str, Format] = {
  "gaussianavatars": Format(
    "GaussianAvatars output folder (local Gaussians + FLAME parameters)", _write_gaussianavatars
  ),
  "ply": Format("world-space 3DGS point_cloud.ply of one timestep (--timestep)", _write_world_ply),
  "ply-sequence": Format(
    "one world-space 3DGS ply per timestep (--timesteps), frame_<t>.ply + manifest.json", _write_ply_sequence
  ),
  "splat": Format("antimatter15 .splat (32 bytes per Gaussian, no SH rest) of one timestep", _write_splat),
  "spz": Format("Niantic .spz (gzip, version 3, RUB) of one timestep", _write_spz),
}

FormatName = Literal[tuple(FORMATS)]  # type: ignore[valid-type]


@dataclasses.dataclass
class ExportConfig:
  """Write a trained avatar in another tool's format."""

  model: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="MODEL")]
  """Avatar: a `gaedit reconstruct` / `gaedit edit` folder, a GaussianAvatars output folder, or a
  GaussianAvatars chkpnt<N>.pth (file or folder)."""
  out: Path
  """Output folder."""
  format: FormatName = "gaussianavatars"
  """gaussianavatars: GaussianAvatars output folder (local Gaussians + flame_param.npz); ply: world-space
  3DGS ply of --timestep; ply-sequence: one world-space ply per timestep of --timesteps + manifest.json;
  splat: antimatter15 .splat of --timestep; spz: Niantic .spz (v3) of --timestep. World-space formats are
  in metres, in --axes."""
  iteration: int | None = None
  """point_cloud/iteration_<N> (or chkpnt<N>.pth) to read (default: the highest)."""
  timestep: int = 0
  """ply, splat, spz: the timestep whose FLAME pose places the Gaussians."""
  timesteps: str | None = None
  """ply-sequence: the timesteps, 'a:b[:step]' (b excluded, as a Python slice) or a comma list '0,4,9'
  (default: all)."""
  fps: float | None = None
  """ply-sequence: frame rate recorded in manifest.json (default: the --motion file's, else 25)."""
  motion: Path | None = None
  """ply, ply-sequence, splat, spz: pose the avatar with this FLAME sequence instead of its own (a
  GaussianAvatars / VHAP flame_param.npz, a sequence npz or a VHAP flame_param/ folder; io/motion.py);
  --timestep(s) then index its frames."""
  axes: Literal["rub", "rdf"] = "rub"
  """ply, ply-sequence, splat: axis convention written. rub: our world (the dataset's FLAME frame, y up,
  +z out of the face, x to the viewer's right); rdf: turned 180 deg about x (y down), as COLMAP-born
  scenes, so SuperSplat and antimatter15's viewer show the head upright. spz is always RUB."""
  spz_version: Literal[2, 3] = 3
  """spz: format version (3: smallest-three quaternions, 2: x,y,z of the w>=0 quaternion, 8 bits each)."""
  sh_degree: int | None = None
  """SH degree written (default: the avatar's; higher degrees are zero-padded, e.g. 3 for GA's viewer default)."""
  data: Path | None = None
  """Dataset folder (default: the one the model records); written as cfg_args source_path."""
  flame_model: Path | None = None
  """FLAME model file (default: the one the model records; GaussianAvatars records none)."""
  overwrite: bool = False
  """Replace existing output files."""


def export(cfg: ExportConfig) -> list[Path]:
  if cfg.format not in FORMATS:
    raise InputError(f"--format {cfg.format!r}: expected one of {', '.join(FORMATS)}")
  if cfg.format == "gaussianavatars":
    for flag, given in (("--motion", cfg.motion is not None), ("--axes", cfg.axes != "rub")):
      if given:
        raise InputError(f"{flag}: applies to the world-space formats, not to --format gaussianavatars")
  return FORMATS[cfg.format].write(cfg)


def main(cfg: ExportConfig) -> list[Path]:
  """Write a trained avatar as a GaussianAvatars output folder, world-space 3DGS ply(s), .splat or .spz."""
  paths = export(cfg)
  for p in paths:
    print(f"wrote {p}")
  return paths


__all__ = ["ExportConfig", "FORMATS", "Format", "export", "main", "parse_timesteps"]
