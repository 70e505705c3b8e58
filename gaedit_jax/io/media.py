"""Reading images (any PNG / JPEG mode as uint8, image headers without decoding) and writing images
and videos: PNG frames, mp4 (imageio-ffmpeg, yuv420p as GA's render.py) and GIF."""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from gaedit_jax.errors import InputError


class ImageError(InputError):
  """An image file exists but cannot be read; `reason` is the cause without the path."""

  def __init__(self, path, reason: str):
    super().__init__(f"{os.fspath(path)}: {reason}")
    self.path = Path(path)
    self.reason = reason


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
# PNG colour type -> allowed bit depths (PNG spec, table 11.1)
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def image_size(path: str | os.PathLike) -> tuple[int, int]:
  """(width, height) of an image file from its header, without decoding the pixels.

  PNG: the IHDR chunk is parsed and checked (size, bit depth / colour type) and the file must end
  with the IEND chunk (a truncated file does not). Other formats: Pillow's lazy header read.
  Raises FileNotFoundError (missing), ImageError (unreadable, with the reason)."""
  path = Path(path)
  with open(path, "rb") as f:  # FileNotFoundError / IsADirectoryError / PermissionError pass through
    head = f.read(33)
    if head[:8] == _PNG_SIGNATURE:
      if len(head) < 33 or head[12:16] != b"IHDR" or struct.unpack(">I", head[8:12])[0] != 13:
        raise ImageError(path, "corrupt PNG (no IHDR header chunk)")
      w, h, depth, colour = struct.unpack(">IIBB", head[16:26])
      if w == 0 or h == 0:
        raise ImageError(path, f"PNG header says {w}x{h} pixels")
      if depth not in _PNG_DEPTHS.get(colour, ()):
        raise ImageError(path, f"corrupt PNG header (colour type {colour}, bit depth {depth})")
      size = f.seek(0, os.SEEK_END)
      f.seek(max(size - 4096, 0))
      if _PNG_IEND not in f.read():  # IEND is the last chunk; allow some trailing bytes after it
        raise ImageError(path, "truncated or corrupt PNG (no IEND chunk at the end of the file)")
      return int(w), int(h)
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(path) as im:
      return tuple(int(v) for v in im.size)
  except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
      raise
    raise ImageError(path, f"not a readable image ({e})") from None


def _decoded(path: Path):
  """Opens and fully decodes an image with Pillow; errors as ImageError (missing: FileNotFoundError)."""
  from PIL import Image, UnidentifiedImageError

  try:
    im = Image.open(path)
    im.load()
    return im
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
      raise
    raise ImageError(path, f"cannot decode ({e})") from None


def _gray16_to_u8(a: np.ndarray, path: Path) -> np.ndarray:
  """16-bit gray (Pillow mode I;16* or I) -> uint8 by v * 255 / 65535, rounded."""
  a = np.asarray(a)
  if a.size and (a.min() < 0 or a.max() > 65535):
    raise ImageError(path, f"integer image with values in [{a.min()}, {a.max()}], expected 16-bit [0, 65535]")
  return np.rint(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
  """An image file as uint8: [H,W,3] RGB, or [H,W,4] RGBA (straight alpha) when it has alpha.

  Every PNG / JPEG mode is converted by value: 1-bit, 8-bit gray (replicated to RGB), 16-bit gray
  (v * 255 / 65535, rounded), gray + alpha, palette (RGBA when it has transparency), RGB, RGBA,
  CMYK / YCbCr JPEG. 16-bit colour PNGs come as Pillow decodes them: the high byte of each sample
  (v // 256, within 1/255 of v / 65535). Raises FileNotFoundError or ImageError."""
  path = Path(path)
  im = _decoded(path)
  with im:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
      g = _gray16_to_u8(np.asarray(im), path)
      return np.repeat(g[..., None], 3, axis=-1)
    if mode == "F":
      raise ImageError(path, "floating-point images are not supported (expected 8- or 16-bit PNG / JPEG)")
    if mode == "RGBA":
      return np.asarray(im)
    if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in im.info):
      return np.asarray(im.convert("RGBA"))
    if mode == "RGB":
      return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def read_mask(path: str | os.PathLike) -> np.ndarray:
  """A mask / alpha image as uint8 [H,W]: gray as stored (16-bit scaled by 255 / 65535, rounded),
  colour images by their luminance, 1-bit as 0 / 255. Raises FileNotFoundError or ImageError."""
  path = Path(path)
  im = _decoded(path)
  with im:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
      return _gray16_to_u8(np.asarray(im), path)
    if mode == "F":
      raise ImageError(path, "floating-point masks are not supported (expected an 8- or 16-bit gray PNG)")
    if mode in ("LA", "La"):
      return np.asarray(im.getchannel("L"))
    return np.asarray(im.convert("L"))


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def to_uint8(img) -> np.ndarray:
  """[0, 1] floats -> uint8 with the original's rounding, uint8(clamp(x * 255 + 0.5)); uint8 unchanged."""
  a = np.asarray(img)
  if a.dtype == np.uint8:
    return a
  return np.clip(a.astype(np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_png(path: str | os.PathLike) -> np.ndarray:
  """An RGB image as float32 [H, W, 3] in [0, 1], read by value (`read_image`); RGBA is composited
  on white (GaussianAvatars)."""
  x = read_image(path).astype(np.float32) / 255.0
  if x.shape[-1] == 4:
    return x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
  return x


def save_png(path: str | os.PathLike, img) -> Path:
  from PIL import Image

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(to_uint8(img)).save(path)
  return path


def side_by_side(images: Sequence, pad: int = 2, value: float = 1.0) -> np.ndarray:
  """Concatenates [H,W,3] images horizontally with a white gap."""
  ims = [
    np.asarray(i, np.float32) if np.asarray(i).dtype != np.uint8 else np.asarray(i, np.float32) / 255.0 for i in images
  ]
  h = max(i.shape[0] for i in ims)
  gap = np.full((h, pad, 3), value, np.float32)
  row = []
  for k, i in enumerate(ims):
    if i.shape[0] < h:
      i = np.concatenate([i, np.full((h - i.shape[0],) + i.shape[1:], value, np.float32)], 0)
    row += ([gap] if k else []) + [i]
  return np.concatenate(row, 1)


def _even(frames: list[np.ndarray]) -> list[np.ndarray]:
  """yuv420p needs even sizes: pad by one white row / column when odd."""
  h, w = frames[0].shape[:2]
  ph, pw = h % 2, w % 2
  if not (ph or pw):
    return frames
  return [np.pad(f, ((0, ph), (0, pw), (0, 0)), constant_values=255) for f in frames]


def save_mp4(path: str | os.PathLike, frames: Sequence, fps: int = 25) -> Path:
  import imageio.v2 as imageio

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fr = _even([to_uint8(f) for f in frames])
  with warnings.catch_warnings():  # ffmpeg runs as a subprocess (fork+exec): JAX's fork warning is moot
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    with imageio.get_writer(
      path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error"
    ) as w:
      for f in fr:
        w.append_data(f)
  return path


def save_gif(path: str | os.PathLike, frames: Sequence, fps: int = 10) -> Path:
  from PIL import Image

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  ims = [Image.fromarray(to_uint8(f)) for f in frames]
  ims[0].save(path, save_all=True, append_images=ims[1:], duration=int(round(1000 / fps)), loop=0)
  return path


def save_frames(folder: str | os.PathLike, frames: Sequence) -> list[Path]:
  return [save_png(Path(folder) / f"{i:05d}.png", f) for i, f in enumerate(frames)]


__all__ = [
  "ImageError",
  "image_size",
  "read_image",
  "read_mask",
  "to_uint8",
  "read_png",
  "save_png",
  "side_by_side",
  "save_mp4",
  "save_gif",
  "save_frames",
]
