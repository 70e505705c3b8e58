"""Writing images and videos: PNG frames, mp4 (imageio-ffmpeg, yuv420p as GA's render.py) and GIF."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np


def to_uint8(img) -> np.ndarray:
  a = np.asarray(img)
  if a.dtype == np.uint8:
    return a
  return np.clip(np.rint(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, img) -> Path:
  from PIL import Image

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(to_uint8(img)).save(path)
  return path


def side_by_side(images: Sequence, pad: int = 2, value: float = 1.0) -> np.ndarray:
  """Concatenates [H,W,3] images horizontally with a white gap."""
  ims = [np.asarray(i, np.float32) if np.asarray(i).dtype != np.uint8 else np.asarray(i, np.float32) / 255.0
         for i in images]
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
    with imageio.get_writer(path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1,
                            ffmpeg_log_level="error") as w:
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


__all__ = ["to_uint8", "save_png", "side_by_side", "save_mp4", "save_gif", "save_frames"]
