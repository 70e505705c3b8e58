"""GaussianAvatars / VHAP FLAME parameter files (`flame_param/<timestep>.npz`,
`canonical_flame_param.npz`, GaussianAvatars' `point_cloud/iteration_N/flame_param.npz`): read
without pickle support (files are data, never code) and checked field by field; a malformed file
raises `DatasetError` naming the file, the key and what was expected."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gaedit_jax.errors import DatasetError, DatasetFileNotFoundError

# key -> trailing shape (None: the model's size, checked for consistency across files)
FLAME_NPZ_KEYS = {
  "translation": (3,),
  "rotation": (3,),
  "neck_pose": (3,),
  "jaw_pose": (3,),
  "eyes_pose": (6,),
  "expr": (None,),
  "shape": (None,),
  "static_offset": (None, 3),
}
PER_TIMESTEP = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")


def open_npz(path: str | os.PathLike, what: str = "FLAME parameter file"):
  """An npz archive opened without pickle support (files are data, never code): DatasetFileNotFoundError
  when missing, DatasetError when it is not an npz archive (a pickle, a bare .npy, garbage)."""
  path = Path(path)
  try:
    z = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise DatasetFileNotFoundError(f"{what} not found: {path}") from None
  except IsADirectoryError:
    raise DatasetError(f"{path}: is a folder, expected an npz file") from None
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise DatasetError(f"{path}: not a readable npz ({e})") from None
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise DatasetError(f"{path}: not a readable npz (a single .npy array, expected an npz archive of named arrays)")
  return z


def npz_float_array(z, path: str | os.PathLike, key: str, expected: str) -> np.ndarray:
  """Array `key` of the open npz `z` as float32, checked: stored as numbers (not a pickled object
  array, not strings). `expected` describes the wanted shape for the messages. Check the shape,
  then `check_finite`."""
  try:
    a = z[key]
  except ValueError:  # an object array: numpy refuses to unpickle it (allow_pickle=False)
    raise DatasetError(f"{path}: key {key!r} holds pickled objects, expected a numeric array {expected}") from None
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise DatasetError(f"{path}: key {key!r} cannot be read ({e})") from None
  if a.dtype.kind not in "fiub":
    raise DatasetError(f"{path}: key {key!r} has dtype {a.dtype}, expected a numeric array {expected}")
  return np.asarray(a, np.float32)


def check_finite(a: np.ndarray, path: str | os.PathLike, key: str) -> None:
  if not np.isfinite(a).all():
    raise DatasetError(f"{path}: key {key!r} has non-finite values (expected finite numbers)")


def read_flame_npz(
  path: str | os.PathLike,
  *,
  n_shape: int | None = None,
  n_expr: int | None = None,
  num_vertices: int | None = None,
  subject: bool = True,
) -> dict[str, np.ndarray]:
  """One GaussianAvatars FLAME npz -> dict with per-timestep fields [k] (the leading 1 dropped),
  shape [n_shape] and static_offset [V,3] (None if absent). Sizes given are checked.
  subject=False reads only the per-timestep fields (a motion frame: shape is not required)."""
  path = Path(path)
  z = open_npz(path)
  expect = {
    "expr": (1, n_expr),
    "shape": (n_shape,),
    "static_offset": (1, num_vertices, 3),
    "translation": (1, 3),
    "rotation": (1, 3),
    "neck_pose": (1, 3),
    "jaw_pose": (1, 3),
    "eyes_pose": (1, 6),
  }
  if not subject:
    del expect["shape"], expect["static_offset"]
  out: dict[str, Any] = {}
  with z:
    for key, shp in expect.items():
      if key not in z.files:
        if key == "static_offset":
          out[key] = None
          continue
        raise DatasetError(f"{path}: missing key {key!r} (expected shape {_fmt(shp)})")
      a = npz_float_array(z, path, key, _fmt(shp))
      a2 = a
      if key == "shape" and a.ndim == 2 and a.shape[0] == 1:
        a2 = a[0]  # tolerate [1,n]
      elif key != "shape" and a.ndim == len(shp) - 1:
        a2 = a[None]  # tolerate a missing leading 1
      if a2.ndim != len(shp) or any(s is not None and s != t for s, t in zip(shp, a2.shape)):
        raise DatasetError(f"{path}: key {key!r} has shape {list(a.shape)}, expected {_fmt(shp)}")
      check_finite(a2, path, key)
      out[key] = a2[0] if key != "shape" else a2
  return out


def _fmt(shape) -> str:
  return "[" + ",".join("*" if s is None else str(s) for s in shape) + "]"


def write_flame_npz(path: str | os.PathLike, params, *, jaw_pose=None) -> Path:
  """Writes one timestep of `FlameParams` (unbatched per-timestep fields) in the GA layout."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  a = lambda x: np.asarray(x, np.float32)
  d = {k: a(getattr(params, k))[None] for k in PER_TIMESTEP}
  if jaw_pose is not None:
    d["jaw_pose"] = a(jaw_pose).reshape(1, 3)
  d["shape"] = a(params.shape)
  d["static_offset"] = a(params.static_offset)[None]
  for k in PER_TIMESTEP:
    if d[k].ndim != 2:
      raise ValueError(f"write_flame_npz: {k} must be one timestep ([k]), got {list(d[k].shape[1:])}")
  np.savez(path, **d)
  return path
