"""`gaedit export MODEL --format F --out DIR`: write a trained avatar in another tool's format.

MODEL is any avatar `gaedit render` reads (our model folder, a GaussianAvatars output folder or
chkpnt<N>.pth). Formats (FORMATS, a name -> writer table; add a format by adding a row):

* `gaussianavatars`: a GaussianAvatars output folder (cfg_args, point_cloud/iteration_N/
  {point_cloud.ply, flame_param.npz}): Gaussians in the local frames of their FLAME triangles, as
  GaussianAvatars stores them; its render.py and local_viewer.py open it.
* `ply`: one timestep's Gaussians baked into world space (the dataset's world frame, metres), a
  standard 3DGS point_cloud.ply without binding for generic viewers.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Annotated, Callable, Literal

import jax.numpy as jnp
import tyro

from gaedit_jax.avatar import load_trained, pose_frames
from gaedit_jax.errors import InputError
from gaedit_jax.io.model_folder import read_avatar, write_gaussianavatars_folder
from gaedit_jax.io.ply import save_world_ply


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


def _write_world_ply(cfg: "ExportConfig") -> list[Path]:
  avatar, model, flame, _, _, _ = load_trained(cfg.model, cfg.iteration, data=cfg.data, flame_model=cfg.flame_model)
  t = int(cfg.timestep)
  nt = flame.num_timesteps
  if not 0 <= t < nt:
    raise InputError(f"--timestep {t}: the avatar has FLAME parameters for timesteps 0..{nt - 1}")
  out = Path(cfg.out) / f"world_timestep_{t:05d}.ply"
  if out.exists() and not cfg.overwrite:
    raise InputError(f"{out} exists; pass --overwrite to replace it")
  save_world_ply(out, avatar, pose_frames(model, flame, jnp.asarray(t)), sh_degree=cfg.sh_degree)
  return [out]


FORMATS: dict[str, Format] = {
  "gaussianavatars": Format(
    "GaussianAvatars output folder (local Gaussians + FLAME parameters)", _write_gaussianavatars
  ),
  "ply": Format("world-space 3DGS point_cloud.ply of one timestep (--timestep)", _write_world_ply),
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
  """gaussianavatars: GaussianAvatars output folder; ply: world-space 3DGS ply of one timestep."""
  iteration: int | None = None
  """point_cloud/iteration_<N> (or chkpnt<N>.pth) to read (default: the highest)."""
  timestep: int = 0
  """ply: the timestep whose FLAME pose places the Gaussians."""
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
  return FORMATS[cfg.format].write(cfg)


def main(cfg: ExportConfig) -> list[Path]:
  """Write a trained avatar as a GaussianAvatars output folder or a world-space 3DGS ply."""
  paths = export(cfg)
  for p in paths:
    print(f"wrote {p}")
  return paths


__all__ = ["ExportConfig", "FORMATS", "Format", "export", "main"]
