"""Reading a GaussianAvatars / VHAP dataset folder for training and evaluation.

`AvatarDataset(root, split)` lists the frames of `transforms_{split}.json` (cameras as arrays, FLAME
parameters of all the folder's timesteps as one `FlameParams` [T,...]) and loads images lazily,
keeping an LRU cache of decoded images, so a 16-camera sequence of hundreds of timesteps never needs
all its images in memory. `dataset[i]` is a `Frame` (numpy image); `dataset.batch(indices)` and
`dataset.batches(batch_size, seed=...)` give `Batch` pytrees of device arrays for a jitted step.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
import threading
from pathlib import Path
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.camera import Camera, make_camera
from gaedit_jax.data.layout import (
  INTRINSICS,
  SPLITS,
  FrameRecord,
  check_image_size,
  load_flame_sequence,
  read_transforms,
  split_json_path,
)
from gaedit_jax.errors import DatasetError, DatasetFileNotFoundError, InputError
from gaedit_jax.flame import FlameParams
from gaedit_jax.io.flame_npz import read_flame_npz
from gaedit_jax.io.media import ImageError, read_image, read_mask


@dataclasses.dataclass(frozen=True)
class Frame:
  """One image: image [H,W,3] float32 in [0,1] (background composited), mask [H,W] float32 or None,
  camera (unbatched Camera), timestep / camera_index ints, and the json record."""

  image: np.ndarray
  mask: np.ndarray | None
  camera: Camera
  timestep: int
  camera_index: int
  record: FrameRecord


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
  """A batch of B images: image [B,H,W,3] float32; mask [B,H,W] (None if not loaded);
  camera: Camera with batch [B]; timestep [B] int32 (index into the FLAME sequence);
  camera_index [B] int32; frame_index [B] int32 (position in the split)."""

  image: jax.Array
  camera: Camera
  timestep: jax.Array
  camera_index: jax.Array
  frame_index: jax.Array
  mask: jax.Array | None = None


class AvatarDataset:
  """A split ('train', 'val', 'test', or 'all' = transforms.json) of a dataset folder.

  white_background: composite RGBA images over white (else black); RGB images are used as stored
  (VHAP already composited them). image_scale: resample images and intrinsics (e.g. 0.5 for a
  faster CPU run). cache_size: number of decoded images kept (LRU, uint8). load_masks: also read
  fg_masks. num_vertices: FLAME vertex count, only needed when the npz files have no static_offset.
  intrinsics: "file" (fl_x, fl_y, cx, cy) or "fov_x" (GaussianAvatars' camera: fx = fy from
  camera_angle_x, principal point at the centre); see `layout.INTRINSICS`.
  Images of any PNG / JPEG mode are read by value (`io.media.read_image`: 16-bit, gray, palette,
  RGBA); a file whose size is not the json's w x h or a uniform scale of it is an error.
  """

  def __init__(
    self,
    root: str | os.PathLike,
    split: str = "train",
    *,
    white_background: bool = True,
    image_scale: float = 1.0,
    cache_size: int = 256,
    load_masks: bool = False,
    num_vertices: int | None = None,
    intrinsics: str = "file",
  ):
    self.root = Path(root)
    if split not in SPLITS + ("all",):
      raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
    if not self.root.is_dir():
      raise DatasetFileNotFoundError(f"dataset folder not found: {self.root}")
    if not (isinstance(image_scale, (int, float)) and math.isfinite(image_scale) and image_scale > 0):
      raise InputError(f"image_scale must be a finite number > 0, got {image_scale!r}")
    if intrinsics not in INTRINSICS:
      raise InputError(f"intrinsics must be one of {INTRINSICS}, got {intrinsics!r}")
    self.split = split
    self.intrinsics = intrinsics
    self.json_path = split_json_path(self.root, split)
    self.meta, self.records = read_transforms(self.json_path, intrinsics=intrinsics)
    self.background = np.ones(3, np.float32) if white_background else np.zeros(3, np.float32)
    self.image_scale = float(image_scale)
    self.load_masks = load_masks
    self.num_vertices = num_vertices
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.RLock()  # the loops' prefetch thread and the main thread share the cache
    self._ahead: dict[int, concurrent.futures.Future] = {}  # frames being decoded (read_ahead)
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self.cache_size = int(cache_size)
    self._flame = None
    self._canonical = None
    s = self.image_scale
    self._size = [(max(1, round(r.width * s)), max(1, round(r.height * s))) for r in self.records]
    w2c = np.stack([r.world_to_camera for r in self.records]) if self.records else np.zeros((0, 4, 4))
    sizes = set(self._size)
    if len(sizes) > 1:
      self.cameras = None  # mixed sizes: use frame(i).camera
    else:
      w, h = sizes.pop() if sizes else (0, 0)
      self.cameras = make_camera(
        w2c,
        np.array([r.fx * w / r.width for r in self.records], np.float32),
        np.array([r.fy * h / r.height for r in self.records], np.float32),
        np.array([r.cx * w / r.width for r in self.records], np.float32),
        np.array([r.cy * h / r.height for r in self.records], np.float32),
        width=w,
        height=h,
      )

  # ---- listing ----------------------------------------------------------------------------------

  def __len__(self) -> int:
    return len(self.records)

  @property
  def timesteps(self) -> np.ndarray:
    if getattr(self, "_timesteps", None) is None or len(self._timesteps) != len(self.records):
      self._timesteps = np.array([r.timestep for r in self.records], np.int32)
    return self._timesteps.copy()

  @property
  def camera_indices(self) -> np.ndarray:
    if getattr(self, "_camera_indices", None) is None or len(self._camera_indices) != len(self.records):
      self._camera_indices = np.array([r.camera_index for r in self.records], np.int32)
    return self._camera_indices.copy()

  @property
  def image_size(self) -> tuple[int, int]:
    """(height, width) shared by all frames (error if they differ)."""
    if self.cameras is None:
      raise DatasetError(f"{self.json_path}: frames have different image sizes")
    return self.cameras.height, self.cameras.width

  def camera_extent(self) -> float:
    """GaussianAvatars' cameras_extent: 1.1 x the largest distance of a camera centre from their
    mean (over the distinct cameras of this split)."""
    centres = {}
    for r in self.records:
      c2w = np.linalg.inv(r.world_to_camera)
      centres.setdefault(r.camera_index, c2w[:3, 3])
    c = np.stack(list(centres.values()))
    return float(1.1 * np.linalg.norm(c - c.mean(0), axis=-1).max())

  # ---- FLAME ------------------------------------------------------------------------------------

  @property
  def flame_params(self):
    """`FlameParams` for every timestep of the folder (the union of the available split files),
    per-timestep fields [T,...] indexed by `timestep`; shape and static_offset from timestep 0."""
    if self._flame is None:
      records = []
      for s in SPLITS:
        p = split_json_path(self.root, s)
        if p.exists():
          records += read_transforms(p, intrinsics=self.intrinsics)[1] if p != self.json_path else self.records
      if not records:
        records = self.records
      self._flame = load_flame_sequence(records, num_vertices=self.num_vertices)
    return self._flame

  @property
  def canonical_flame_params(self):
    """canonical_flame_param.npz as an unbatched `FlameParams` (None if the file is absent)."""
    if self._canonical is None:
      p = self.root / "canonical_flame_param.npz"
      if not p.exists():
        return None

      d = read_flame_npz(p, num_vertices=self.num_vertices)
      if d["static_offset"] is None:
        d["static_offset"] = np.asarray(self.flame_params.static_offset)
      self._canonical = FlameParams(**{k: jnp.asarray(v) for k, v in d.items()})
    return self._canonical

  # ---- images -----------------------------------------------------------------------------------

  def rgb(self, i: int) -> np.ndarray:
    """Frame i's image [H,W,3] uint8 as the batches use it: composited over the background,
    resized to the split's size (cached; shared with the loops' prefetch thread). A frame that
    `read_ahead` started is taken from its decoder thread."""
    key = ("rgb", i)
    with self._lock:
      if key in self._cache:
        self._cache.move_to_end(key)
        return self._cache[key]
      started = self._ahead.pop(i, None)
    arr = started.result() if started is not None else self._decode_rgb(i)
    with self._lock:
      self._put(key, arr)
    return arr

  def read_ahead(self, indices: Sequence[int], workers: int) -> None:
    """Starts decoding the frames `indices` that are neither cached nor started, in a pool of
    `workers` threads (PNG / JPEG decoding and zlib release the interpreter lock, so they run in
    parallel with each other and with the loop). `rgb(i)` then waits for frame i instead of decoding
    it: same values, and a file's error is raised there, by the frame that needs it."""
    if workers <= 0:
      return
    with self._lock:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="gaedit-decode")
      for i in indices:
        i = int(i)
        if ("rgb", i) not in self._cache and i not in self._ahead:
          self._ahead[i] = self._pool.submit(self._decode_rgb, i)

  def _decode_rgb(self, i: int) -> np.ndarray:
    """Reads frame i's image from its file (no shared state: runs in the decoder threads)."""
    r = self.records[i]
    try:
      arr = read_image(r.image_path)
    except FileNotFoundError:
      raise DatasetFileNotFoundError(f"{r.json_path}: frames[{r.index}]: image not found: {r.image_path}") from None
    except ImageError as e:
      raise DatasetError(f"{r.json_path}: frames[{r.index}]: cannot read image {r.image_path} ({e.reason})") from None
    check_image_size(r, (arr.shape[1], arr.shape[0]))
    if arr.shape[2] == 4:  # composite over the background (GA: RGBA over bg)
      a = arr[..., 3:4].astype(np.float32) / 255.0
      rgb = arr[..., :3].astype(np.float32) / 255.0 * a + self.background * (1 - a)
      arr = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    w, h = self._size[i]
    if (arr.shape[1], arr.shape[0]) != (w, h):
      arr = _resize(arr, w, h)
    return arr

  def _load_mask(self, i: int) -> np.ndarray | None:
    with self._lock:
      return self._load_mask_locked(i)

  def _load_mask_locked(self, i: int) -> np.ndarray | None:
    r = self.records[i]
    if r.mask_path is None:
      return None
    key = ("mask", i)
    if key in self._cache:
      self._cache.move_to_end(key)
      return self._cache[key]
    try:
      arr = read_mask(r.mask_path)
    except FileNotFoundError:
      raise DatasetFileNotFoundError(f"{r.json_path}: frames[{r.index}]: fg mask not found: {r.mask_path}") from None
    except ImageError as e:
      raise DatasetError(f"{r.json_path}: frames[{r.index}]: cannot read fg mask {r.mask_path} ({e.reason})") from None
    check_image_size(r, (arr.shape[1], arr.shape[0]), r.mask_path, what="fg mask")
    w, h = self._size[i]
    if (arr.shape[1], arr.shape[0]) != (w, h):
      arr = _resize(arr, w, h)
    self._put(key, arr)
    return arr

  def _put(self, key, arr):
    if self.cache_size <= 0:
      return
    self._cache[key] = arr
    while len(self._cache) > self.cache_size:
      self._cache.popitem(last=False)

  def camera(self, i: int) -> Camera:
    r = self.records[i]
    w, h = self._size[i]
    return make_camera(
      r.world_to_camera,
      r.fx * w / r.width,
      r.fy * h / r.height,
      r.cx * w / r.width,
      r.cy * h / r.height,
      width=w,
      height=h,
    )

  def __getitem__(self, i: int) -> Frame:
    if not -len(self) <= i < len(self):
      raise IndexError(f"frame {i} out of range for {len(self)} frames")
    i = i % len(self)
    img = self.rgb(i).astype(np.float32) / 255.0
    mask = self._load_mask(i) if self.load_masks else None
    r = self.records[i]
    return Frame(
      image=img,
      mask=None if mask is None else mask.astype(np.float32) / 255.0,
      camera=self.camera(i),
      timestep=r.timestep,
      camera_index=r.camera_index,
      record=r,
    )

  def batch(self, indices: Sequence[int]) -> Batch:
    """Frames `indices` stacked into a Batch (all frames must share one image size)."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    if self.cameras is None:
      raise DatasetError(f"{self.json_path}: frames have different image sizes; cannot batch")
    imgs = np.stack([self.rgb(int(i)) for i in idx]).astype(np.float32) / 255.0
    masks = None
    if self.load_masks:
      ms = [self._load_mask(int(i)) for i in idx]
      if any(m is None for m in ms):
        raise DatasetError(f"{self.json_path}: some frames have no 'fg_mask_path'")
      masks = np.stack(ms).astype(np.float32) / 255.0
    if getattr(self, "_cameras_host", None) is None:  # host copies: indexing them dispatches nothing
      self._cameras_host = jax.tree.map(np.asarray, self.cameras)
    # assembled on the host, then one transfer of the whole batch (the loops call this once a step)
    return jax.device_put(
      Batch(
        image=imgs,
        camera=jax.tree.map(lambda a: a[idx], self._cameras_host),
        timestep=self.timesteps[idx],
        camera_index=self.camera_indices[idx],
        frame_index=idx.astype(np.int32),
        mask=masks,
      )
    )

  def batches(
    self, batch_size: int = 1, *, seed: int = 0, shuffle: bool = True, drop_last: bool = True, epochs: int | None = None
  ) -> Iterator[Batch]:
    """Batches over the split, reshuffled every epoch (GaussianAvatars: shuffled single images);
    epochs=None repeats forever."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    rng = np.random.default_rng(seed)
    n = len(self)
    if n == 0:
      raise DatasetError(f"{self.json_path}: no frames")
    e = 0
    while epochs is None or e < epochs:
      order = rng.permutation(n) if shuffle else np.arange(n)
      stop = n - (n % batch_size) if drop_last else n
      if stop == 0:
        raise DatasetError(f"batch_size {batch_size} > {n} frames with drop_last")
      for s in range(0, stop, batch_size):
        yield self.batch(order[s : s + batch_size])
      e += 1


def _resize(arr: np.ndarray, w: int, h: int) -> np.ndarray:
  from PIL import Image

  im = Image.fromarray(arr)
  down = w < arr.shape[1]
  return np.asarray(im.resize((w, h), Image.Resampling.BOX if down else Image.Resampling.BILINEAR))


def load_dataset(root: str | os.PathLike, splits: Sequence[str] = SPLITS, **kw) -> dict[str, AvatarDataset]:
  """The available splits of a folder as datasets (missing split files are skipped)."""
  out = {}
  for s in splits:
    if split_json_path(root, s).exists():
      out[s] = AvatarDataset(root, s, **kw)
  if not out:
    raise DatasetFileNotFoundError(f"{root}: no transforms_{{{','.join(splits)}}}.json found")
  return out
