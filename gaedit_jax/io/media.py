"""Reading images (any PNG / JPEG mode as uint8, image headers without decoding) and writing images
and videos: PNG frames; mp4 (imageio-ffmpeg, yuv420p as GA's render.py) and GIF (Pillow) through one
writer, `write_video`; composing frames (`side_by_side` with captions, `tile`)."""

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


def _float_image(i) -> np.ndarray:
  a = np.asarray(i)
  return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def side_by_side(images: Sequence, pad: int = 2, value: float = 1.0, labels: Sequence[str] | None = None) -> np.ndarray:
  """Concatenates [H,W,3] images horizontally with a white gap. With `labels`, a caption strip
  (`caption_strip`) is added above, one label centred over each image; the images keep every pixel."""
  ims = [_float_image(i) for i in images]
  h = max(i.shape[0] for i in ims)
  gap = np.full((h, pad, 3), value, np.float32)
  row = []
  for k, i in enumerate(ims):
    if i.shape[0] < h:
      i = np.concatenate([i, np.full((h - i.shape[0],) + i.shape[1:], value, np.float32)], 0)
    row += ([gap] if k else []) + [i]
  out = np.concatenate(row, 1)
  if labels is None:
    return out
  if len(labels) != len(ims):
    raise ValueError(f"side_by_side: {len(labels)} labels for {len(ims)} images")
  spans, x = [], 0
  for i in ims:
    spans.append((x, x + i.shape[1]))
    x += i.shape[1] + pad
  return np.concatenate([caption_strip(out.shape[1], spans, labels, value), out], 0)


def caption_height(width: int) -> int:
  """Height of a caption strip for an image row `width` pixels wide (readable, not dominant)."""
  return int(min(48, max(14, width // 24)))


def caption_strip(
  width: int, spans: Sequence[tuple[int, int]], labels: Sequence[str], value: float = 1.0
) -> np.ndarray:
  """A [h,width,3] strip (background `value`) with each label drawn in Pillow's default font,
  centred over its column span (x0, x1) and clipped to it."""
  from PIL import Image, ImageDraw, ImageFont

  h = caption_height(width)
  bg = int(round(value * 255))
  fg = 0 if bg > 127 else 255
  strip = Image.new("RGB", (width, h), (bg, bg, bg))
  try:
    font = ImageFont.load_default(size=max(8, h - 4))
  except TypeError:  # Pillow < 10.1: the fixed-size bitmap font only
    font = ImageFont.load_default()
  for (x0, x1), text in zip(spans, labels):
    cell = Image.new("RGB", (max(1, x1 - x0), h), (bg, bg, bg))
    d = ImageDraw.Draw(cell)
    l, t, r, b = d.textbbox((0, 0), text, font=font)
    d.text(((cell.width - (r - l)) / 2 - l, (h - (b - t)) / 2 - t), text, fill=(fg, fg, fg), font=font)
    strip.paste(cell, (x0, 0))
  return np.asarray(strip, np.float32) / 255.0


def tile(images: Sequence, cols: int | None = None, pad: int = 2, value: float = 1.0) -> np.ndarray:
  """Tiles [H,W,3] images of one size into a grid (row-major, `cols` columns, default
  ceil(sqrt(n))) with `pad`-pixel gaps; empty cells take the background `value`."""
  ims = [_float_image(i) for i in images]
  n = len(ims)
  cols = int(cols or int(np.ceil(np.sqrt(n))))
  rows = -(-n // cols)
  h, w = ims[0].shape[:2]
  if any(i.shape[:2] != (h, w) for i in ims):
    raise ValueError("tile: the images differ in size")
  out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, 3), value, np.float32)
  for k, i in enumerate(ims):
    r, c = divmod(k, cols)
    out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = i
  return out


def _even(frames: list[np.ndarray]) -> list[np.ndarray]:
  """yuv420p needs even sizes: pad by one white row / column when odd."""
  h, w = frames[0].shape[:2]
  ph, pw = h % 2, w % 2
  if not (ph or pw):
    return frames
  return [np.pad(f, ((0, ph), (0, pw), (0, 0)), constant_values=255) for f in frames]


def upscale_to_height(frames: list[np.ndarray], min_height: int) -> list[np.ndarray]:
  """uint8 frames shorter than min_height resized (Lanczos, aspect ratio kept) to that height."""
  from PIL import Image

  h, w = frames[0].shape[:2]
  if not min_height or h >= min_height:
    return frames
  size = (int(round(w * min_height / h)), int(min_height))
  return [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.LANCZOS)) for f in frames]


VIDEO_SUFFIXES = (".mp4", ".gif")


def write_video(path: str | os.PathLike, frames: Sequence, fps: float = 25, *, min_height: int = 0) -> Path:
  """The one video writer: `path` ending in .mp4 (libx264, yuv420p as GA's render.py, through
  imageio-ffmpeg; odd sizes padded by a white row / column) or .gif (Pillow, looping; a GIF stores
  frame durations in 1/100 s, so fps is rounded to that). Frames [H,W,3] in [0,1] or uint8.
  min_height: frames shorter than this are upscaled (Lanczos) first. Written to a temporary file
  in the same folder and moved into place, so a reader never sees half a video."""
  path = Path(path)
  suffix = path.suffix.lower()
  if suffix not in VIDEO_SUFFIXES:
    raise InputError(f"{path}: unknown video type {path.suffix!r}, expected one of {', '.join(VIDEO_SUFFIXES)}")
  if not fps > 0:
    raise InputError(f"{path}: fps = {fps}, expected > 0")
  fr = [to_uint8(f) for f in frames]
  if not fr:
    raise ValueError(f"write_video: no frames for {path}")
  fr = upscale_to_height(fr, min_height)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{suffix}")  # the suffix tells ffmpeg the container
  try:
    if suffix == ".mp4":
      _write_mp4(tmp, fr, fps)
    else:
      _write_gif(tmp, fr, fps)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


def _write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> None:
  import imageio.v2 as imageio

  with warnings.catch_warnings():  # ffmpeg runs as a subprocess (fork+exec): JAX's fork warning is moot
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    with imageio.get_writer(
      path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error"
    ) as w:
      for f in _even(frames):
        w.append_data(f)


def _write_gif(path: Path, frames: list[np.ndarray], fps: float) -> None:
  from PIL import Image

  ims = [Image.fromarray(f) for f in frames]
  duration = 10 * max(1, int(round(100 / fps)))  # GIF frame delays are whole 1/100 s
  ims[0].save(path, format="GIF", save_all=True, append_images=ims[1:], duration=duration, loop=0)


def save_mp4(path: str | os.PathLike, frames: Sequence, fps: float = 25) -> Path:
  return write_video(path, frames, fps)


def save_gif(path: str | os.PathLike, frames: Sequence, fps: float = 10, *, min_height: int = 0) -> Path:
  return write_video(path, frames, fps, min_height=min_height)


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
  "caption_strip",
  "tile",
  "write_video",
  "upscale_to_height",
  "save_mp4",
  "save_gif",
  "save_frames",
]
