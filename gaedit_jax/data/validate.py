"""Up-front checks of what a user hands a stage: the dataset folder, other input paths, and flags.

`validate_dataset(root, splits)` reads every split's transforms json (each frame checked by
`layout.read_transforms`), the header of every image and mask it refers to (exists, decodable
header, the json's size or a uniform scale of it) and every FLAME npz (finite, expected shapes),
before the first training step, so a bad file deep in a sequence fails in seconds with a message
naming it, not hours into a run (flags and other input paths: gaedit_jax.flags).
All raise `InputError` subclasses whose message is one line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Sequence

from gaedit_jax.data.layout import (
  SPLITS,
  FrameRecord,
  check_image_size,
  flame_param_paths,
  read_transforms,
  split_json_path,
)
from gaedit_jax.errors import DatasetError, DatasetFileNotFoundError
from gaedit_jax.io.flame_npz import read_flame_npz
from gaedit_jax.io.media import ImageError, image_size

# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
  """What `validate_dataset` found: frames per split, FLAME timesteps, image size (w, h) per split."""

  root: Path
  frames: dict[str, int]
  num_timesteps: int
  image_size: dict[str, tuple[int, int]]
  files_checked: int


def _progress(total: int, progress: bool, desc: str):
  """A tqdm bar that appears only on a terminal, when asked, and after a second (large datasets)."""
  from tqdm import tqdm

  return tqdm(
    total=total,
    desc=desc,
    unit="file",
    leave=False,
    delay=1.0,
    dynamic_ncols=True,
    disable=not progress or not sys.stderr.isatty(),
  )


def _check_one_size(split: str, recs: list[FrameRecord]) -> tuple[int, int] | None:
  if not recs:
    return None
  first = recs[0]
  for r in recs[1:]:
    if (r.width, r.height) != (first.width, first.height):
      raise DatasetError(
        f"{r.json_path}: frames have different image sizes: frames[{first.index}] is "
        f"{first.width}x{first.height}, frames[{r.index}] is {r.width}x{r.height} "
        f"(one size per split is supported)"
      )
  return first.width, first.height


def validate_dataset(
  root: str | os.PathLike,
  splits: Sequence[str] = SPLITS,
  *,
  required: Sequence[str] = ("train",),
  intrinsics: str = "file",
  masks: bool = True,
  num_vertices: int | None = None,
  flame_timesteps: int | None = None,
  progress: bool = True,
  flag: str = "--data",
) -> DatasetSummary:
  """Checks a GaussianAvatars / VHAP dataset folder before any training step.

  splits: the transforms_{split}.json files to check ("all" = transforms.json); those in `required`
  must exist, the others are skipped when absent. Checked: every frame's fields (finite rigid
  camera-to-world, positive finite focal lengths, integer timestep / camera index >= 0, ...);
  every image (and fg mask, with masks=True) exists and its header decodes to the json's w x h or
  a uniform scale of it (the PNG header and end are read, not the pixels); one image size per
  split; every FLAME npz of the folder's timesteps (all its split files) has finite values with
  the expected, consistent shapes, and canonical_flame_param.npz too when present.
  flame_timesteps: the number of per-timestep FLAME parameter sets that will index these frames
  (e.g. an avatar's), when not the folder's own. `flag`: the flag that named the folder.
  A tqdm bar shows on a terminal when `progress` and the check takes more than a second."""
  root = Path(root)
  if not root.exists():
    raise DatasetFileNotFoundError(f"dataset folder not found: {root} ({flag})")
  if not root.is_dir():
    raise DatasetError(f"{flag} {root}: expected a dataset folder, got a file")
  records: dict[str, list[FrameRecord]] = {}
  for s in splits:
    p = split_json_path(root, s)
    if not p.exists():
      if s in required:
        raise DatasetFileNotFoundError(f"{root}: no {p.name} ({flag} must be a GaussianAvatars / VHAP dataset folder)")
      continue
    records[s] = read_transforms(p, intrinsics=intrinsics)[1]
  sizes = {s: sz for s, recs in records.items() if (sz := _check_one_size(s, recs)) is not None}

  # every split file of the folder defines the FLAME timesteps (as AvatarDataset.flame_params)
  flame_recs: list[FrameRecord] = []
  for s in SPLITS:
    p = split_json_path(root, s)
    if s in records:
      flame_recs += records[s]
    elif p.exists():
      flame_recs += read_transforms(p, intrinsics=intrinsics)[1]
  if not flame_recs:
    flame_recs = [r for recs in records.values() for r in recs]
  by_t = flame_param_paths(flame_recs) if flame_recs else {}
  canonical = root / "canonical_flame_param.npz"

  files: list[tuple[str, FrameRecord, Path]] = []
  seen: set[Path] = set()
  for recs in records.values():
    for r in recs:
      for what, p in (("image", r.image_path), ("fg mask", r.mask_path if masks else None)):
        if p is not None and p not in seen:
          seen.add(p)
          files.append((what, r, p))
  total = len(files) + len(by_t) + int(canonical.exists())
  with _progress(total, progress, f"checking {root.name}") as bar:
    for what, r, p in files:
      try:
        size = image_size(p)
      except FileNotFoundError:
        raise DatasetFileNotFoundError(f"{r.json_path}: frames[{r.index}]: {what} not found: {p}") from None
      except ImageError as e:
        raise DatasetError(f"{r.json_path}: frames[{r.index}]: cannot read {what} {p} ({e.reason})") from None
      check_image_size(r, size, p, what=what)
      bar.update(1)
    first = None
    for t, p in by_t.items():
      if first is None:
        first = read_flame_npz(p, num_vertices=num_vertices)
        nv = num_vertices if first["static_offset"] is None else first["static_offset"].shape[0]
        dims = dict(n_shape=first["shape"].shape[0], n_expr=first["expr"].shape[0], num_vertices=nv)
      else:
        read_flame_npz(p, **dims)
      bar.update(1)
    if canonical.exists():
      read_flame_npz(canonical, **(dims if first is not None else {}))
      bar.update(1)

  if flame_timesteps is not None:
    for recs in records.values():
      for r in recs:
        if r.timestep >= flame_timesteps:
          raise DatasetError(
            f"{r.json_path}: frames[{r.index}]: timestep_index {r.timestep}, but the "
            f"FLAME parameters cover timesteps 0..{flame_timesteps - 1}"
          )
  return DatasetSummary(
    root=root,
    frames={s: len(r) for s, r in records.items()},
    num_timesteps=len(by_t),
    image_size=sizes,
    files_checked=total,
  )


__all__ = ["DatasetSummary", "validate_dataset"]
