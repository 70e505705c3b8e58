"""`gaedit export-frames MODEL --out DIR`: the renders an edit starts from, for any 2D editor.

Writes DIR/<timestep>_<camera>.png (the unedited avatar in training views of the editing sequence,
at the run's image size, with the FLAME state `gaedit edit` starts from: --flame-init) and
DIR/manifest.json (edit.external: per frame the file, camera index, timestep, the transforms json and
the frame's position in it, the photo, and the camera). With --photos, the photos of the same views
go to DIR/photos/. Edit the PNGs with any tool (same names; a frame left out is not edited), then
`gaedit edit --editor frames --edited DIR`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

import jax.numpy as jnp
import numpy as np
import tyro

from gaedit_jax.avatar import baked_model, check_consistency, fit_flame_dims, load_model, load_trained, render_views
from gaedit_jax.edit.evaluation import training_frames
from gaedit_jax.edit.external import frame_entries, write_manifest
from gaedit_jax.errors import InputError
from gaedit_jax.io.media import save_png
from gaedit_jax.render.types import RenderConfig


@dataclasses.dataclass
class ExportFramesConfig:
  """Write the avatar's renders of the editing views (PNG + manifest.json) for an external 2D editor."""

  model: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="MODEL")]
  """Avatar to edit (any folder or checkpoint `gaedit edit --avatar` takes)."""
  out: Path
  """Output folder (PNG files and manifest.json)."""
  cameras: list[int] | None = None
  """Camera indices to export (default: all of the training views)."""
  timesteps: list[int] | None = None
  """Timesteps to export (default: all of the training views)."""
  data: Path | None = None
  """Editing sequence (default: the avatar's training data), as `gaedit edit --data`."""
  flame_model: Path | None = None
  """FLAME model file (default: the one the avatar records)."""
  flame_init: Literal["data", "avatar"] = "data"
  """FLAME state of the renders, as `gaedit edit --flame-init` (data: the sequence's tracking)."""
  eval: bool = True
  """Training views as `gaedit edit --eval` (the train split); --no-eval: train + val + test."""
  photos: bool = True
  """Also write the views' photos to OUT/photos/ (for editors conditioned on them)."""
  overwrite: bool = False
  """Write into a folder that already has a manifest.json."""


def export_frames(cfg: ExportFramesConfig) -> dict:
  avatar, model, flame, fp, acfg, _ = load_trained(
    cfg.model, data=cfg.data, flame_model=cfg.flame_model, require_data=True
  )
  c = acfg["config"]
  data = Path(cfg.data or acfg["data"]).absolute()
  kw = dict(
    image_scale=float(c.get("image_scale", 1.0)),
    white_background=bool(c.get("white_background", True)),
    intrinsics=c.get("intrinsics", "file"),
  )
  ds = training_frames(data, cfg.eval, cache_size=0, **kw)
  if cfg.flame_init == "data":  # as EditRun: FLAME from the editing sequence's tracking
    full = load_model(data, Path(acfg["flame_model"]))
    fp = fit_flame_dims(full, ds.flame_params)
    check_consistency(ds, full, fp)
    model = baked_model(full, fp)
    flame = fp.motion.astype(jnp.float32)
  sel = np.ones(len(ds), bool)
  for flag, want, have in (("--cameras", cfg.cameras, ds.camera_indices), ("--timesteps", cfg.timesteps, ds.timesteps)):
    if want is not None:
      unknown = sorted(set(want) - set(have.tolist()))
      if unknown:
        raise InputError(
          f"{flag} {unknown}: not among the training views of {data} (have {sorted(set(have.tolist()))})"
        )
      sel &= np.isin(have, want)
  idx = np.flatnonzero(sel)
  out = Path(cfg.out)
  if (out / "manifest.json").exists() and not cfg.overwrite:
    raise InputError(f"--out {out} already holds a manifest.json; pass --overwrite to replace it")
  out.mkdir(parents=True, exist_ok=True)
  entries = frame_entries(ds, idx)
  rc = RenderConfig(sh_degree=avatar.sh_degree, wabe_k=0)
  for s in range(0, len(idx), 16):
    chunk = idx[s : s + 16]
    b = ds.batch(chunk)
    imgs = render_views(avatar, model, flame, np.asarray(b.timestep), b.camera, jnp.asarray(ds.background), rc)
    for k, i in enumerate(chunk):
      e = entries[s + k]
      save_png(out / e["file"], imgs[k])
      if cfg.photos:
        save_png(out / "photos" / e["file"], np.asarray(b.image[k]))
  man = write_manifest(
    out,
    entries,
    model=str(Path(cfg.model).absolute()),
    data=str(data),
    flame_init=cfg.flame_init,
    eval=cfg.eval,
    photos="photos" if cfg.photos else None,
    **kw,
  )
  return dict(frames=len(idx), manifest=man)


def main(cfg: ExportFramesConfig) -> dict:
  """Write the avatar's renders of the editing views (PNG + manifest.json) for an external 2D editor."""
  res = export_frames(cfg)
  print(
    f"wrote {res['frames']} frames and {res['manifest']}; edit them (same file names), then "
    f"gaedit edit --avatar {cfg.model} --editor frames --edited {cfg.out} --out OUT"
  )
  return res


__all__ = ["ExportFramesConfig", "export_frames", "main"]
