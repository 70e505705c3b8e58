"""Frames per second of `gaedit view`'s render path: browser camera -> our Camera -> posed avatar
(FLAME forward, rig) -> rasterized image -> uint8 -> the encoded bytes viser streams (JPEG, as the
viewer sends, and PNG). Each frame has a new camera (an orbit around the head) and a new timestep,
as while dragging during playback. Median over --frames frames after --warmup.

  python experiments/bench_viewer.py                                   # synthetic avatar, 256 px, CPU
  python experiments/bench_viewer.py --gaussians 100000 --size 550x802 # GPU: NeRSemble-sized view
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from viser._scene_api import _encode_image_binary  # the encoder set_background_image uses

from gaedit_jax.camera import look_at, make_camera
from gaedit_jax.viewer.demo import synthetic_subject
from gaedit_jax.viewer.scene import Subject, frame_motion, matrix_to_quat, render_frame, viser_camera


def orbit_camera(k: int, n: int, center: np.ndarray, dist: float, width: int, height: int, fov_deg: float = 30.0):
  a = np.deg2rad(-40 + 80 * k / max(n - 1, 1))
  eye = center + dist * np.array([np.sin(a), 0.1, np.cos(a)])
  c2w = np.linalg.inv(look_at(eye, center).astype(np.float64))
  cam = viser_camera(matrix_to_quat(c2w[:3, :3]), c2w[:3, 3], np.deg2rad(fov_deg), width / height, max(width, height))
  if (cam.width, cam.height) != (width, height):  # the exact size asked for (viser_camera rounds to 8 px)
    cam = make_camera(
      cam.world_to_camera, cam.fx * width / cam.width, cam.fy * height / cam.height, width=width, height=height
    )
  return cam


def bench(n: int | None, width: int, height: int, frames: int, warmup: int, quality: int) -> dict:
  avatar, model, motion = synthetic_subject(n)
  subject = Subject(avatar, model)
  v = np.asarray(model.v_template)
  center, dist = v.mean(0), 0.75 * float(np.ptp(v, 0).max()) / np.tan(np.deg2rad(15))
  bg = np.ones(3, np.float32)
  t_render, t_jpeg, t_png = [], [], []
  for k in range(warmup + frames):
    cam = orbit_camera(k, warmup + frames, center, dist, width, height)
    t0 = time.perf_counter()
    img = render_frame(subject, frame_motion(motion, k % motion.num_timesteps), cam, bg, 3)
    t1 = time.perf_counter()
    jpeg = _encode_image_binary(img, "jpeg", jpeg_quality=quality)[1]
    t2 = time.perf_counter()
    _encode_image_binary(img, "png", jpeg_quality=None)[1]
    t3 = time.perf_counter()
    if k >= warmup:
      t_render.append(t1 - t0)
      t_jpeg.append(t2 - t1)
      t_png.append(t3 - t2)
  r, j, p = (float(np.median(x)) for x in (t_render, t_jpeg, t_png))
  return dict(
    gaussians=int(avatar.capacity),
    size=f"{width}x{height}",
    device=jax.devices()[0].platform,
    render_ms=1e3 * r,
    jpeg_ms=1e3 * j,
    png_ms=1e3 * p,
    fps_jpeg=1.0 / (r + j),
    fps_png=1.0 / (r + p),
    jpeg_kb=len(jpeg) / 1024,
  )


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--gaussians", type=int, default=None, help="Gaussians (default: one per face of the synthetic head)")
  ap.add_argument("--size", default="256x256", help="WIDTHxHEIGHT of the streamed image")
  ap.add_argument("--frames", type=int, default=30)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--jpeg-quality", type=int, default=85)
  a = ap.parse_args()
  w, h = (int(x) for x in a.size.lower().split("x"))
  r = bench(a.gaussians, w, h, a.frames, a.warmup, a.jpeg_quality)
  cols = ("gaussians", "size", "device", "render_ms", "jpeg_ms", "png_ms", "fps_jpeg", "fps_png", "jpeg_kb")
  print("| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  print("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
  main()
