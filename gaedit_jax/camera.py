"""Pinhole cameras as pytrees (OpenCV convention: x right, y down, z forward, metres).

`Camera` holds per-view data as arrays (so changing a camera never recompiles) and the image size as
static metadata. Leading dimensions of the arrays are batches of views.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Camera:
  """world_to_camera [...,4,4]; fx, fy, cx, cy [...] in pixels (pixel centres at i + 0.5)."""

  world_to_camera: jax.Array
  fx: jax.Array
  fy: jax.Array
  cx: jax.Array
  cy: jax.Array
  width: int = dataclasses.field(metadata=dict(static=True), default=0)
  height: int = dataclasses.field(metadata=dict(static=True), default=0)

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self.world_to_camera.shape[:-2])

  @property
  def intrinsics(self) -> jax.Array:
    """[...,4] = (fx, fy, cx, cy), broadcast to the batch shape."""
    shape = self.batch_shape
    return jnp.stack(
      [jnp.broadcast_to(jnp.asarray(v, jnp.float32), shape) for v in (self.fx, self.fy, self.cx, self.cy)], axis=-1
    )

  @property
  def camera_to_world(self) -> jax.Array:
    return jnp.linalg.inv(self.world_to_camera)

  @property
  def position(self) -> jax.Array:
    """Camera centre in world coordinates [...,3]."""
    r = self.world_to_camera[..., :3, :3]
    t = self.world_to_camera[..., :3, 3]
    return -jnp.einsum("...ji,...j->...i", r, t)

  def __getitem__(self, idx) -> "Camera":
    """Index the batch of views, e.g. cams[3] or cams[::2]."""
    f = lambda a: jnp.asarray(a)[idx]
    return dataclasses.replace(
      self, world_to_camera=f(self.world_to_camera), fx=f(self.fx), fy=f(self.fy), cx=f(self.cx), cy=f(self.cy)
    )


def make_camera(world_to_camera, fx, fy=None, cx=None, cy=None, *, width: int, height: int) -> Camera:
  """Builds a Camera; fy defaults to fx and the principal point to the image centre."""
  w2c = jnp.asarray(world_to_camera, jnp.float32)
  batch = w2c.shape[:-2]
  fy = fx if fy is None else fy
  cx = width / 2.0 if cx is None else cx
  cy = height / 2.0 if cy is None else cy
  arr = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), batch)
  return Camera(w2c, arr(fx), arr(fy), arr(cx), arr(cy), width=int(width), height=int(height))


def stack_cameras(cams: list[Camera]) -> Camera:
  """Stacks single views of one image size into a batch of views."""
  sizes = {(c.width, c.height) for c in cams}
  if len(sizes) != 1:
    raise ValueError(f"stack_cameras: all cameras must share one image size, got {sorted(sizes)}")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *cams)


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
  """World-to-camera [4,4] (OpenCV) for a camera at `eye` looking at `target`.

  `up` is the world direction that should appear upward in the image; in OpenCV the camera's y
  axis points down, so the camera y axis is built along -up.
  """
  eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
  z = target - eye
  z /= np.linalg.norm(z)
  x = np.cross(-up, z)  # camera y (down) is about -up, and x = y cross z
  x /= np.linalg.norm(x)
  y = np.cross(z, x)
  r = np.stack([x, y, z])  # rows: camera axes in world coordinates
  m = np.eye(4)
  m[:3, :3] = r
  m[:3, 3] = -r @ eye
  return m.astype(np.float32)


def opengl_c2w_to_opencv_w2c(c2w_gl) -> np.ndarray:
  """NeRF/Blender camera-to-world (OpenGL: x right, y up, z back) -> OpenCV world-to-camera."""
  c2w = np.array(c2w_gl, dtype=np.float64).reshape(4, 4).copy()
  c2w[:3, 1:3] *= -1.0  # flip y and z axes (GaussianAvatars: dataset_readers.py)
  return np.linalg.inv(c2w).astype(np.float32)


def opencv_w2c_to_opengl_c2w(w2c) -> np.ndarray:
  """Inverse of opengl_c2w_to_opencv_w2c."""
  c2w = np.linalg.inv(np.asarray(w2c, np.float64).reshape(4, 4))
  c2w[:3, 1:3] *= -1.0
  return c2w.astype(np.float32)
