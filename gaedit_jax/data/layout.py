"""The GaussianAvatars / VHAP export layout (METHOD §3): reading and writing.

```
images/{timestep:05d}_{camera:02d}.png     RGB (or RGBA), background already composited
fg_masks/{timestep:05d}_{camera:02d}.png   foreground alpha
flame_param/{timestep:05d}.npz             translation, rotation, neck_pose, jaw_pose [1,3],
                                           eyes_pose [1,6], shape [n_shape], expr [1,n_expr],
                                           static_offset [1,V,3] (optional dynamic_offset)
canonical_flame_param.npz                  zero pose/expression, jaw_pose [[0.3,0,0]]
transforms.json, transforms_{train,val,test}.json
```
Frame paths are relative to the json's folder, so UNION folders (json files only, paths into sibling
sequence folders `../<seq>/images/...`) read the same way. `transform_matrix` is camera-to-world in
OpenGL axes; we convert to OpenCV world-to-camera (`camera.opengl_c2w_to_opencv_w2c`).

Errors name the file, the key and what was expected (`DatasetError`, a ValueError; missing files
raise `DatasetFileNotFoundError`, also a FileNotFoundError).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gaedit_jax.camera import opencv_w2c_to_opengl_c2w, opengl_c2w_to_opencv_w2c
from gaedit_jax.errors import DatasetError, DatasetFileNotFoundError, InputError
from gaedit_jax.flame import FlameParams
from gaedit_jax.io.flame_npz import PER_TIMESTEP, read_flame_npz, write_flame_npz
from gaedit_jax.io.media import ImageError, image_size, to_uint8

SPLITS = ("train", "val", "test")
VAL_CAMERA = 8  # NeRSemble's frontal camera is the novel-view (validation) camera (METHOD §3)
FLAME_FILE = "flame/synthetic_flame.pkl"  # a synthetic dataset's own FLAME model, relative to its folder


class DatasetExistsError(DatasetError, FileExistsError):
  """The output folder already holds a dataset."""


# ------------------------------------------------------------------------------------------------
# transforms*.json
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FrameRecord:
  """One (timestep, camera) image of a transforms json, with resolved absolute paths."""

  json_path: Path
  index: int  # position in the json's frame list
  timestep: int  # timestep_index (0-based, contiguous within the folder)
  camera_index: int
  image_path: Path
  mask_path: Path | None
  flame_param_path: Path | None
  world_to_camera: np.ndarray  # [4,4] OpenCV world-to-camera
  fx: float
  fy: float
  cx: float
  cy: float
  width: int
  height: int
  camera_id: str | None = None
  timestep_id: str | None = None
  timestep_original: int | None = None


def _read_json(path: Path) -> dict:
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise DatasetFileNotFoundError(f"dataset file not found: {path}") from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: malformed json ({e.msg} at line {e.lineno} column {e.colno})") from None
  if not isinstance(data, dict):
    raise DatasetError(f"{path}: expected a json object at the top level, got {type(data).__name__}")
  return data


def _get(d: dict, key: str, where: str, top: dict | None = None, cast=None):
  if key in d:
    v = d[key]
  elif top is not None and key in top:
    v = top[key]
  else:
    raise DatasetError(f"{where}: missing key {key!r}")
  if cast is not None:
    try:
      v = cast(v)
    except (TypeError, ValueError):
      raise DatasetError(f"{where}: key {key!r} = {v!r} is not a valid {cast.__name__}") from None
  return v


def _image_size(path: Path, where: str) -> tuple[int, int]:
  """(w, h) from the image file's header (no decoding)."""
  try:
    return image_size(path)
  except FileNotFoundError:
    raise DatasetFileNotFoundError(f"{where}: image not found: {path}") from None
  except ImageError as e:
    raise DatasetError(f"{where}: cannot read image {path} ({e.reason})") from None


def check_image_size(
  record: "FrameRecord", actual: tuple[int, int], path: Path | None = None, what: str = "image"
) -> None:
  """The file's (w, h) must be the json's w x h or a uniform scale of it (same aspect ratio, up to
  a pixel of rounding): such a file is resampled to w x h; another aspect ratio is an error."""
  (aw, ah), (w, h) = actual, (record.width, record.height)
  if (aw, ah) == (w, h):
    return
  lo, hi = max((aw - 1) / w, (ah - 1) / h), min((aw + 1) / w, (ah + 1) / h)
  if lo <= hi and hi > 0:
    return
  raise DatasetError(
    f"{record.json_path}: frames[{record.index}]: {what} {path or record.image_path} is "
    f"{aw}x{ah} pixels but the json says w x h = {w}x{h} (another aspect ratio; only a "
    "uniform scale is resampled)"
  )


def _integer(v, where: str, key: str, minimum: int | None = None) -> int:
  """A json integer (an integral float such as 3.0 too); bools, strings and 2.5 are errors."""
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v):
    raise DatasetError(f"{where}: key {key!r} = {v!r} is not an integer")
  v = int(v)
  if minimum is not None and v < minimum:
    raise DatasetError(f"{where}: key {key!r} = {v} must be >= {minimum}")
  return v


def _number(v, where: str, key: str) -> float:
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    raise DatasetError(f"{where}: key {key!r} = {v!r} is not a number")
  v = float(v)
  if not math.isfinite(v):
    raise DatasetError(f"{where}: key {key!r} = {v} is not finite")
  return v


def _lookup(fr: dict, top: dict, key: str, path: Path, where: str):
  """(value or None, where it was found): the frame's key, else the file's top-level key."""
  if key in fr:
    return fr[key], where
  if key in top:
    return top[key], f"{path}: top level"
  return None, where


def _transform_matrix(fr: dict, where: str) -> np.ndarray:
  """The frame's camera-to-world matrix, checked: 4x4 (or 3x4), finite, a rotation + translation."""
  raw = _get(fr, "transform_matrix", where)
  try:
    m = np.asarray(raw, dtype=np.float64)
  except (TypeError, ValueError):
    raise DatasetError(f"{where}: key 'transform_matrix' is not a numeric 4x4 matrix") from None
  if m.shape == (3, 4):
    m = np.concatenate([m, [[0, 0, 0, 1]]])
  if m.shape != (4, 4):
    raise DatasetError(
      f"{where}: key 'transform_matrix' has shape {list(m.shape)}, expected [4,4] (finite camera-to-world, OpenGL axes)"
    )
  if not np.isfinite(m).all():
    bad = [f"[{i}][{j}]" for i, j in zip(*np.nonzero(~np.isfinite(m)))]
    raise DatasetError(
      f"{where}: key 'transform_matrix' has non-finite entries {', '.join(bad[:4])} "
      "(expected a finite camera-to-world matrix)"
    )
  if np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-6:
    raise DatasetError(f"{where}: key 'transform_matrix' has last row {m[3].tolist()}, expected [0, 0, 0, 1]")
  r = m[:3, :3]
  dev = float(np.abs(r.T @ r - np.eye(3)).max())
  det = float(np.linalg.det(r))
  if dev > 1e-3 or det <= 0:
    raise DatasetError(
      f"{where}: key 'transform_matrix' is not rigid: its 3x3 part is not a rotation "
      f"(max |R^T R - I| = {dev:.3g}, det R = {det:.3g}; expected orthonormal, det +1)"
    )
  return m


INTRINSICS = ("file", "fov_x")
"""How `read_transforms` builds a frame's pinhole intrinsics:

* "file" (this project's reading): fl_x, fl_y, cx, cy of the frame (else of the file's top level);
  fl_x from camera_angle_x when absent, fl_y = fl_x, principal point at the image centre when absent.
* "fov_x" (GaussianAvatars, scene/dataset_readers.py readCamerasFromTransforms): only the horizontal
  field of view camera_angle_x (else fl_x) and w, h: FoVy = focal2fov(fov2focal(FoVx, w), h), so
  fx = fy = w / (2 tan(FoVx / 2)); its projection matrix is symmetric, so cx = w/2, cy = h/2.
"""


def _intrinsics(
  fr: dict, top: dict, path: Path, where: str, w: int, h: int, mode: str
) -> tuple[float, float, float, float]:
  def focal(key):
    v, at = _lookup(fr, top, key, path, where)
    if v is None:
      return None
    f = _number(v, at, key)
    if f <= 0:
      raise DatasetError(f"{at}: key {key!r} = {f} must be > 0 (a focal length in pixels)")
    return f

  def from_angle():
    v, at = _lookup(fr, top, "camera_angle_x", path, where)
    if v is None:
      return None
    a = _number(v, at, "camera_angle_x")
    if not 0 < a < math.pi:
      raise DatasetError(f"{at}: key 'camera_angle_x' = {a} must be in (0, pi) (horizontal field of view, rad)")
    return 0.5 * w / math.tan(0.5 * a)

  if mode == "fov_x":
    fx = from_angle()
    if fx is None:
      fx = focal("fl_x")
    if fx is None:
      raise DatasetError(f"{where}: missing key 'camera_angle_x' (or 'fl_x')")
    return fx, fx, w / 2.0, h / 2.0
  fx = focal("fl_x")
  if fx is None:
    fx = from_angle()
  if fx is None:
    raise DatasetError(f"{where}: missing key 'fl_x' (or 'camera_angle_x')")
  fy = focal("fl_y")
  out = [fx, fx if fy is None else fy]
  for key, default in (("cx", w / 2.0), ("cy", h / 2.0)):
    v, at = _lookup(fr, top, key, path, where)
    out.append(default if v is None else _number(v, at, key))
  return tuple(out)


def read_transforms(path: str | os.PathLike, *, intrinsics: str = "file") -> tuple[dict, list[FrameRecord]]:
  """Reads one transforms json -> (top-level entries without 'frames', frame records).

  Every frame is checked: a finite rigid transform_matrix, positive finite focal lengths, finite
  principal point, positive integer w / h, integer timestep_index / camera_index >= 0.
  `intrinsics`: "file" or "fov_x" (GaussianAvatars' camera), see `INTRINSICS`."""
  if intrinsics not in INTRINSICS:
    raise InputError(f"intrinsics must be one of {INTRINSICS}, got {intrinsics!r}")
  path = Path(path)
  data = _read_json(path)
  frames = data.get("frames")
  if not isinstance(frames, list):
    raise DatasetError(f"{path}: missing key 'frames' (a list of frame objects)")
  top = {k: v for k, v in data.items() if k != "frames"}
  base = path.parent
  out = []
  for i, fr in enumerate(frames):
    where = f"{path}: frames[{i}]"
    if not isinstance(fr, dict):
      raise DatasetError(f"{where}: expected an object, got {type(fr).__name__}")
    m = _transform_matrix(fr, where)
    file_path = _get(fr, "file_path", where)
    if not isinstance(file_path, str) or not file_path:
      raise DatasetError(f"{where}: key 'file_path' = {file_path!r} is not a relative image path")
    image_path = base / file_path
    if image_path.suffix == "":  # NeRF-synthetic style paths without extension
      image_path = image_path.with_suffix(".png")
    size = []
    for key in ("w", "h"):
      v, at = _lookup(fr, top, key, path, where)
      size.append(None if v is None else _integer(v, at, key, minimum=1))
    if None in size:
      w, h = _image_size(image_path, where)
    else:
      w, h = size
    fx, fy, cx, cy = _intrinsics(fr, top, path, where, w, h, intrinsics)
    mask = fr.get("fg_mask_path")
    fpp = fr.get("flame_param_path")
    for key, v in (("fg_mask_path", mask), ("flame_param_path", fpp)):
      if v is not None and (not isinstance(v, str) or not v):
        raise DatasetError(f"{where}: key {key!r} = {v!r} is not a relative file path")
    out.append(
      FrameRecord(
        json_path=path,
        index=i,
        timestep=_integer(_get(fr, "timestep_index", where), where, "timestep_index", minimum=0),
        camera_index=_integer(_get(fr, "camera_index", where), where, "camera_index", minimum=0),
        image_path=image_path,
        mask_path=None if mask is None else base / mask,
        flame_param_path=None if fpp is None else base / fpp,
        world_to_camera=opengl_c2w_to_opencv_w2c(m),
        fx=float(fx),
        fy=float(fy),
        cx=float(cx),
        cy=float(cy),
        width=w,
        height=h,
        camera_id=None if fr.get("camera_id") is None else str(fr["camera_id"]),
        timestep_id=fr.get("timestep_id"),
        timestep_original=fr.get("timestep_index_original"),
      )
    )
  return top, out


def split_json_path(root: str | os.PathLike, split: str | None) -> Path:
  return Path(root) / ("transforms.json" if split in (None, "all") else f"transforms_{split}.json")


# ------------------------------------------------------------------------------------------------
# flame_param/*.npz (the file format itself: io.flame_npz)
# ------------------------------------------------------------------------------------------------


def flame_param_paths(records: Iterable[FrameRecord]) -> dict[int, Path]:
  """timestep -> its flame_param npz, checked: every frame names one, one file per timestep, and
  the timesteps are 0..T-1 without gaps (per-timestep parameters are indexed by timestep_index)."""
  by_t: dict[int, Path] = {}
  for r in records:
    if r.flame_param_path is None:
      raise DatasetError(f"{r.json_path}: frames[{r.index}] is missing key 'flame_param_path'")
    prev = by_t.setdefault(r.timestep, r.flame_param_path)
    if prev.resolve() != r.flame_param_path.resolve():
      raise DatasetError(
        f"{r.json_path}: frames[{r.index}]: timestep {r.timestep} refers to "
        f"{r.flame_param_path} but another frame refers to {prev}"
      )
  if not by_t:
    raise DatasetError("FLAME parameters: no frames")
  T = max(by_t) + 1
  missing = sorted(set(range(T)) - set(by_t))
  if missing:
    raise DatasetError(
      f"FLAME parameters: timesteps {missing[:10]} (of 0..{T - 1}) have no "
      "flame_param_path in the transforms json files"
    )
  return dict(sorted(by_t.items()))


def load_flame_sequence(records: Iterable[FrameRecord], *, num_vertices: int | None = None):
  """FLAME parameters of every timestep the records refer to, as a `FlameParams` with [T,...]
  per-timestep fields (indexed by timestep_index) and the subject fields (shape, static_offset)
  of timestep 0, as GaussianAvatars does (METHOD §3)."""
  import jax.numpy as jnp

  by_t = flame_param_paths(records)
  T = len(by_t)
  first = read_flame_npz(by_t[0], num_vertices=num_vertices)
  n_shape, n_expr = first["shape"].shape[0], first["expr"].shape[0]
  nv = (
    num_vertices
    if num_vertices is not None
    else (None if first["static_offset"] is None else first["static_offset"].shape[0])
  )
  seq = [first] + [read_flame_npz(by_t[t], n_shape=n_shape, n_expr=n_expr, num_vertices=nv) for t in range(1, T)]
  so = first["static_offset"]
  if so is None:
    if nv is None:
      raise DatasetError(f"{by_t[0]}: no key 'static_offset'; pass num_vertices to use zeros")
    so = np.zeros((nv, 3), np.float32)
  return FlameParams(
    shape=jnp.asarray(first["shape"]),
    static_offset=jnp.asarray(so),
    **{k: jnp.asarray(np.stack([s[k] for s in seq])) for k in PER_TIMESTEP},
  )


# ------------------------------------------------------------------------------------------------
# Splits (VHAP split_json) and the writer
# ------------------------------------------------------------------------------------------------


def vhap_splits(
  timesteps: Sequence[int], cameras: Sequence[int], *, train_ratio: float = 0.7, val_camera: int = VAL_CAMERA
) -> dict[str, tuple[list[int], list[int]]]:
  """VHAP's rule (METHOD §3): the first ceil(ratio * T) timesteps are train (all cameras but the
  validation camera) and val (that camera); the rest are test (all cameras). The validation camera
  is 8 when present, else the last one; a single camera gives an empty val set.
  Returns split -> (timesteps, cameras)."""
  if not 0 < train_ratio <= 1:
    raise ValueError(f"train_ratio must be in (0,1], got {train_ratio}")
  ts, cams = sorted(timesteps), sorted(cameras)
  nt = int(math.ceil(len(ts) * train_ratio))
  if len(cams) > 1:
    vc = val_camera if val_camera in cams else cams[-1]
    train_c, val_c = [c for c in cams if c != vc], [vc]
  else:
    train_c, val_c = cams, []
  return {"train": (ts[:nt], train_c), "val": (ts[:nt], val_c), "test": (ts[nt:], cams)}


class DatasetWriter:
  """Writes a dataset in the GaussianAvatars/VHAP layout.

  add_frame(...) for every (timestep, camera) image, add_flame_param(t, params) for every timestep,
  add_canonical(params) once, then finish() writes transforms.json and the train/val/test splits.
  """

  def __init__(self, root: str | os.PathLike, *, overwrite: bool = False):
    self.root = Path(root)
    if (self.root / "transforms.json").exists():
      if not overwrite:
        raise DatasetExistsError(
          f"{self.root} already holds a dataset (transforms.json); pass overwrite=True to replace it"
        )
      # remove what a previous dataset wrote here, so no stale frames remain (nothing else)
      import shutil

      for sub in ("images", "fg_masks", "flame_param"):
        if (self.root / sub).is_dir():
          shutil.rmtree(self.root / sub)
      for f in list(self.root.glob("transforms*.json")) + [self.root / "canonical_flame_param.npz"]:
        if f.is_file():
          f.unlink()
    self.root.mkdir(parents=True, exist_ok=True)
    self.frames: list[dict] = []
    self.flame_paths: dict[int, str] = {}

  def add_frame(
    self,
    *,
    timestep: int,
    camera_index: int,
    image: np.ndarray,
    world_to_camera,
    fx: float,
    fy: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
    mask: np.ndarray | None = None,
    camera_id: str | None = None,
    timestep_id: str | None = None,
    timestep_original: int | None = None,
  ) -> dict:
    """image [H,W,3] (float in [0,1] or uint8), composited on the background; mask [H,W]."""
    from PIL import Image

    img = to_uint8(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
      raise ValueError(f"add_frame: image must be [H,W,3|4], got {list(img.shape)}")
    h, w = img.shape[:2]
    fy = fx if fy is None else fy
    cx = w / 2.0 if cx is None else cx
    cy = h / 2.0 if cy is None else cy
    rel = f"images/{timestep:05d}_{camera_index:02d}.png"
    (self.root / "images").mkdir(exist_ok=True)
    Image.fromarray(img).save(self.root / rel)
    c2w = opencv_w2c_to_opengl_c2w(np.asarray(world_to_camera, np.float64))
    fr = {
      "timestep_index": int(timestep),
      "timestep_index_original": int(timestep if timestep_original is None else timestep_original),
      "timestep_id": timestep_id if timestep_id is not None else f"frame_{timestep:05d}",
      "camera_index": int(camera_index),
      "camera_id": str(camera_id if camera_id is not None else f"{camera_index:02d}"),
      "cx": float(cx),
      "cy": float(cy),
      "fl_x": float(fx),
      "fl_y": float(fy),
      "h": int(h),
      "w": int(w),
      "camera_angle_x": 2 * math.atan(w / (2 * fx)),
      "camera_angle_y": 2 * math.atan(h / (2 * fy)),
      "transform_matrix": np.asarray(c2w, np.float64).tolist(),
      "file_path": rel,
    }
    if mask is not None:
      m = to_uint8(mask)
      if m.shape != (h, w):
        raise ValueError(f"add_frame: mask must be [{h},{w}], got {list(m.shape)}")
      mrel = f"fg_masks/{timestep:05d}_{camera_index:02d}.png"
      (self.root / "fg_masks").mkdir(exist_ok=True)
      Image.fromarray(m).save(self.root / mrel)
      fr["fg_mask_path"] = mrel
    self.frames.append(fr)
    return fr

  def add_flame_param(self, timestep: int, params) -> Path:
    rel = f"flame_param/{timestep:05d}.npz"
    self.flame_paths[int(timestep)] = rel
    return write_flame_npz(self.root / rel, params)

  def add_canonical(self, params) -> Path:
    """canonical_flame_param.npz: the subject fields of `params` with zero pose and expression and
    an open jaw (0.3 rad), as VHAP writes it."""
    import jax.numpy as jnp

    z = lambda x: jnp.zeros(jnp.shape(x)[-1:], jnp.float32)
    p = dataclasses.replace(params, **{k: z(getattr(params, k)) for k in PER_TIMESTEP})
    return write_flame_npz(self.root / "canonical_flame_param.npz", p, jaw_pose=[0.3, 0.0, 0.0])

  def finish(self, *, train_ratio: float = 0.7, val_camera: int = VAL_CAMERA) -> dict[str, Path]:
    if not self.frames:
      raise ValueError("DatasetWriter.finish: no frames were added")
    for fr in self.frames:
      rel = self.flame_paths.get(fr["timestep_index"])
      if rel is not None:
        fr["flame_param_path"] = rel
    frames = sorted(self.frames, key=lambda f: (f["timestep_index"], f["camera_index"]))
    last = frames[-1]
    shared = {k: last[k] for k in ("cx", "cy", "fl_x", "fl_y", "h", "w", "camera_angle_x", "camera_angle_y")}
    ts = sorted({f["timestep_index"] for f in frames})
    cams = sorted({f["camera_index"] for f in frames})
    out = {}
    db = dict(shared, timestep_indices=ts, camera_indices=cams, frames=frames)
    out["all"] = self._write("transforms.json", db)
    for split, (sts, scams) in vhap_splits(ts, cams, train_ratio=train_ratio, val_camera=val_camera).items():
      sset, cset = set(sts), set(scams)
      sf = [f for f in frames if f["timestep_index"] in sset and f["camera_index"] in cset]
      out[split] = self._write(
        f"transforms_{split}.json", dict(shared, timestep_indices=sts, camera_indices=scams, frames=sf)
      )
    return out

  def _write(self, name: str, db: dict) -> Path:
    p = self.root / name
    p.write_text(json.dumps(db, indent=2))
    return p
