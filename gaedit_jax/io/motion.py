"""Motion files: FLAME sequences that drive an avatar (`gaedit render --motion`, the viewer).

Formats read (all npz, opened without pickle support: files are data, never code):

* a sequence npz with per-timestep arrays expr [T,E], rotation / neck_pose / jaw_pose /
  translation [T,3], eyes_pose [T,6]: GaussianAvatars' `flame_param.npz` (written next to each
  point_cloud.ply, also its `--motion_path` input) and VHAP's tracked sequences. Other keys
  (shape, static_offset, dynamic_offset, ...) are ignored: the avatar keeps its own identity. An
  optional scalar `fps` is the sequence's frame rate.
* a folder of per-frame npz files in the VHAP export layout (`flame_param/00000.npz`, ..., each
  field with a leading [1] axis), ordered by the number in the file name; a dataset folder holding
  such a `flame_param/` folder reads the same way.

Expressions with another number of components than the avatar's are truncated or zero-padded (one
warning). Anything malformed is a `DatasetError` (an `InputError`) naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gaedit_jax.errors import DatasetError, DatasetFileNotFoundError
from gaedit_jax.flame import FlameMotion
from gaedit_jax.io.flame_npz import check_finite, npz_float_array, open_npz, read_flame_npz

# field -> trailing shape (None: the file's own expression count)
TRAILING = {
  "expr": (None,),
  "rotation": (3,),
  "neck_pose": (3,),
  "jaw_pose": (3,),
  "eyes_pose": (6,),
  "translation": (3,),
}
FPS_KEY = "fps"


@dataclasses.dataclass(frozen=True)
class MotionSequence:
  """A motion file as read: the motion (expression fitted to the avatar), the frame rate when the
  file records one, where it came from and the file's own expression count."""

  motion: FlameMotion
  path: Path
  fps: float | None = None
  file_n_expr: int = 0
  frame_files: tuple[Path, ...] = ()  # the per-frame files of a folder, in order

  @property
  def num_timesteps(self) -> int:
    return self.motion.num_timesteps


def read_motion(path: str | os.PathLike, n_expr: int) -> FlameMotion:
  """The FLAME sequence of a motion file (see the module docstring), expressions fitted to n_expr."""
  return read_motion_file(path, n_expr).motion


def read_motion_file(path: str | os.PathLike, n_expr: int) -> MotionSequence:
  """`read_motion` with the file's frame rate (None when it records none) and origin."""
  path = Path(path)
  if not path.exists():
    raise DatasetFileNotFoundError(f"motion file not found: {path}")
  if path.is_dir():
    folder = path / "flame_param" if (path / "flame_param").is_dir() else path
    arrays, files = _read_frame_folder(folder)
    fps = None
  else:
    arrays, fps = _read_sequence_npz(path)
    files = ()
  file_n_expr = int(arrays["expr"].shape[1])
  arrays["expr"] = fit_expr(arrays["expr"], n_expr, path)
  motion = FlameMotion(**{k: jnp.asarray(arrays[k]) for k in FlameMotion.FIELDS})
  return MotionSequence(motion=motion, path=path, fps=fps, file_n_expr=file_n_expr, frame_files=tuple(files))


def fit_expr(expr: np.ndarray, n_expr: int, path: str | os.PathLike) -> np.ndarray:
  """expr [T,E] -> [T,n_expr]: the first n_expr components, or zero-padded (FLAME's expression
  basis is ordered by variance, so the leading components are the same ones); warns when E differs."""
  e = expr.shape[1]
  if e == n_expr:
    return expr
  if e > n_expr:
    warnings.warn(f"{path}: expr has {e} components, the avatar uses {n_expr}: truncated to the first {n_expr}")
    return expr[:, :n_expr]
  warnings.warn(f"{path}: expr has {e} components, the avatar uses {n_expr}: zero-padded to {n_expr}")
  return np.pad(expr, ((0, 0), (0, n_expr - e)))


def _read_sequence_npz(path: Path) -> tuple[dict[str, np.ndarray], float | None]:
  z = open_npz(path, "motion file")
  out: dict[str, np.ndarray] = {}
  first = None  # (key, T) of the first field read: every field has the same T
  with z:
    for key, trailing in TRAILING.items():
      shp = (None,) + trailing
      if key not in z.files:
        raise DatasetError(
          f"{path}: missing key {key!r} (expected a motion file with {', '.join(TRAILING)}; shape {_fmt(shp)})"
        )
      a = npz_float_array(z, path, key, _fmt(shp))
      if a.ndim == 1 and trailing[0] is not None:
        a = a[None]  # one unbatched frame [k]
      if a.ndim != 2 or (trailing[0] is not None and a.shape[1] != trailing[0]):
        raise DatasetError(f"{path}: key {key!r} has shape {list(a.shape)}, expected {_fmt(shp)}")
      if a.shape[0] == 0:
        raise DatasetError(f"{path}: key {key!r} has no timesteps (shape {list(a.shape)}), expected at least one")
      check_finite(a, path, key)
      if first is None:
        first = (key, a.shape[0])
      elif a.shape[0] != first[1]:
        raise DatasetError(
          f"{path}: key {key!r} has {a.shape[0]} timesteps but {first[0]!r} has {first[1]} (expected the same T)"
        )
      out[key] = a
    fps = None
    if FPS_KEY in z.files:
      f = npz_float_array(z, path, FPS_KEY, "[] (frames per second)")
      if f.size != 1 or not f.reshape(-1)[0] > 0 or not np.isfinite(f).all():
        raise DatasetError(f"{path}: key 'fps' = {f.tolist()}, expected one positive number (frames per second)")
      fps = float(f.reshape(-1)[0])
  return out, fps


def _fmt(shape) -> str:
  return "[" + ",".join("T" if i == 0 else ("E" if n is None else str(n)) for i, n in enumerate(shape)) + "]"


def _frame_number(p: Path) -> int | None:
  return int(p.stem) if p.stem.isdigit() else None


def _read_frame_folder(folder: Path) -> tuple[dict[str, np.ndarray], list[Path]]:
  """Per-frame npz files (VHAP's flame_param/<timestep>.npz), read by `io.flame_npz.read_flame_npz`
  (the dataset's own reader and checks), in the order of the numbers in their names."""
  files = sorted((p for p in folder.glob("*.npz") if _frame_number(p) is not None), key=_frame_number)
  if not files:
    raise DatasetFileNotFoundError(
      f"{folder}: no per-frame FLAME files (expected 00000.npz, 00001.npz, ... as in a VHAP flame_param/ folder)"
    )
  first = read_flame_npz(files[0], subject=False)
  n_expr = first["expr"].shape[0]
  frames = [first] + [read_flame_npz(p, n_expr=n_expr, subject=False) for p in files[1:]]
  return {k: np.stack([f[k] for f in frames]) for k in TRAILING}, files


def motion_fps(seq: MotionSequence | None, default: float) -> float:
  """The sequence's recorded frame rate, else `default`."""
  if seq is not None and seq.fps is not None and math.isfinite(seq.fps):
    return seq.fps
  return default


__all__ = ["MotionSequence", "TRAILING", "fit_expr", "motion_fps", "read_motion", "read_motion_file"]
