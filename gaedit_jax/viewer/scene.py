"""The viewer's pure parts: browser camera <-> our Camera, the FLAME state of the shown frame, and the
render path (posed avatar -> rasterized uint8 image) every view of the viewer goes through.

viser reports a client's camera as the camera-to-world pose in OpenCV axes (x right, y down,
z forward: `P_world = R p_camera + t`, R from `wxyz`), its vertical field of view and the canvas
size; three.js draws with square pixels and the principal point at the centre. `viser_camera`
turns that into our Camera at a render size of at most `max_size` pixels on the long side; the
image is stretched to the canvas, so the horizontal focal length follows from the canvas aspect, not
from the rounded render size.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from gaedit_jax.avatar import pose_vertices, render_views
from gaedit_jax.camera import Camera, make_camera
from gaedit_jax.flame import FlameModel, FlameMotion
from gaedit_jax.io.media import to_uint8
from gaedit_jax.render.types import RenderConfig
from gaedit_jax.rig import Avatar

# ------------------------------------------------------------------------------------------------
# Cameras
# ------------------------------------------------------------------------------------------------


def quat_to_matrix(wxyz) -> np.ndarray:
  w, x, y, z = (float(v) for v in np.asarray(wxyz, np.float64) / np.linalg.norm(wxyz))
  return np.array(
    [
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
  )


def matrix_to_quat(r) -> np.ndarray:
  """Rotation matrix [3,3] -> unit quaternion wxyz (Shepperd's method: the largest pivot)."""
  r = np.asarray(r, np.float64)
  tr = np.trace(r)
  if tr > 0:
    s = 2.0 * math.sqrt(1.0 + tr)
    q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
  elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
    s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
    q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
  elif r[1, 1] > r[2, 2]:
    s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
    q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
  else:
    s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
    q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
  q = np.asarray(q)
  return q / np.linalg.norm(q) * (1.0 if q[0] >= 0 else -1.0)


def render_size(aspect: float, max_size: int, multiple: int = 8) -> tuple[int, int]:
  """(width, height) of the render for a canvas of aspect width/height: the long side is max_size,
  both rounded to `multiple` pixels (fewer distinct sizes, hence fewer compilations)."""
  if aspect >= 1.0:
    w, h = max_size, max_size / aspect
  else:
    w, h = max_size * aspect, max_size
  rnd = lambda v: max(multiple, int(round(v / multiple)) * multiple)
  return rnd(w), rnd(h)


def viser_camera(wxyz, position, fov_y: float, aspect: float, max_size: int) -> Camera:
  """The browser's view (viser camera: camera-to-world wxyz + position in OpenCV axes, vertical
  field of view in radians, canvas aspect width/height) as our Camera [single view]."""
  w, h = render_size(aspect, max_size)
  c2w = np.eye(4)
  c2w[:3, :3] = quat_to_matrix(wxyz)
  c2w[:3, 3] = np.asarray(position, np.float64)
  tan_y = math.tan(0.5 * float(fov_y))
  fy = 0.5 * h / tan_y
  fx = 0.5 * w / (tan_y * float(aspect))  # the image is stretched to the canvas: same angular extent
  return make_camera(np.linalg.inv(c2w), fx, fy, w / 2.0, h / 2.0, width=w, height=h)


@dataclasses.dataclass(frozen=True)
class ViserPose:
  """A view as viser sets a client's camera: camera-to-world wxyz + position, vertical fov."""

  wxyz: np.ndarray
  position: np.ndarray
  fov_y: float
  look_at: np.ndarray


def viser_pose(cam: Camera, look_distance: float = 1.0) -> ViserPose:
  """Our Camera [single view] as a viser camera pose (the inverse of `viser_camera` for a centred
  principal point); look_at lies `look_distance` ahead on the optical axis."""
  c2w = np.linalg.inv(np.asarray(cam.world_to_camera, np.float64))
  fov_y = 2.0 * math.atan(0.5 * cam.height / float(cam.fy))
  pos = c2w[:3, 3]
  return ViserPose(matrix_to_quat(c2w[:3, :3]), pos, fov_y, pos + look_distance * c2w[:3, 2])


def fit_camera(cam: Camera, max_size: int) -> Camera:
  """A dataset camera [single view] scaled so its long side is at most max_size (intrinsics scaled
  with the image, as GaussianAvatars' --resolution does); unchanged when it already fits."""
  s = max_size / max(cam.width, cam.height)
  if s >= 1.0:
    return cam
  w, h = max(1, round(cam.width * s)), max(1, round(cam.height * s))
  sx, sy = w / cam.width, h / cam.height
  return make_camera(cam.world_to_camera, cam.fx * sx, cam.fy * sy, cam.cx * sx, cam.cy * sy, width=w, height=h)


def letterbox(img: np.ndarray, aspect: float, background) -> np.ndarray:
  """Pads an image [H,W,3] uint8 left/right (or top/bottom) with the background to the canvas
  aspect width/height, centred: a dataset camera's exact image shown in a browser of another shape
  (the browser's vertical field of view is the camera's, so the height spans the canvas)."""
  h, w = img.shape[:2]
  bg = to_uint8(np.asarray(background, np.float32))
  tw = int(round(h * aspect))
  if tw > w:
    left = (tw - w) // 2
    out = np.empty((h, tw, 3), np.uint8)
    out[:] = bg
    out[:, left : left + w] = img
    return out
  th = int(round(w / aspect))
  if th > h:
    top = (th - h) // 2
    out = np.empty((th, w, 3), np.uint8)
    out[:] = bg
    out[top : top + h] = img
    return out
  return img


def same_pose(a: ViserPose, wxyz, position, tol: float = 1e-4) -> bool:
  """Whether a browser camera (wxyz, position) is still at pose `a` (the user has not moved)."""
  q = np.asarray(wxyz, np.float64)
  return bool(np.allclose(a.position, position, atol=tol) and abs(abs(float(q @ a.wxyz)) - 1.0) < tol)


# ------------------------------------------------------------------------------------------------
# The FLAME state of the shown frame
# ------------------------------------------------------------------------------------------------

# FLAME slider groups: (field, component index) -> label, the order of the GUI.
POSE_COMPONENTS: tuple[tuple[str, str, int], ...] = (
  ("rotation x", "rotation", 0),
  ("rotation y", "rotation", 1),
  ("rotation z", "rotation", 2),
  ("neck x", "neck_pose", 0),
  ("neck y", "neck_pose", 1),
  ("neck z", "neck_pose", 2),
  ("jaw", "jaw_pose", 0),
  ("jaw side", "jaw_pose", 1),
  ("eyes yaw", "eyes_pose", 1),
  ("eyes pitch", "eyes_pose", 0),
)


def frame_motion(motion: FlameMotion, t: int, overrides: dict[tuple[str, int], float] | None = None) -> FlameMotion:
  """The single-timestep motion [1,...] shown at timestep t: the sequence's parameters with the
  user's slider values replacing single components ((field, index) -> value; the eyes' index i
  sets both eyes, eyes_pose = [left(3), right(3)])."""
  fields = {k: np.array(v[t : t + 1], np.float32) for k, v in ((k, np.asarray(v)) for k, v in motion.items())}
  for (field, i), value in (overrides or {}).items():
    if field == "eyes_pose":
      fields[field][0, [i, i + 3]] = value
    else:
      fields[field][0, i] = value
  return FlameMotion(**{k: jnp.asarray(v) for k, v in fields.items()})


def motion_value(motion: FlameMotion, t: int, field: str, i: int) -> float:
  return float(np.asarray(getattr(motion, field))[t, i])


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Subject:
  """One avatar the viewer shows: its Gaussians and its (baked) FLAME model."""

  avatar: Avatar
  model: FlameModel
  name: str = "avatar"


def render_frame(subject: Subject, motion1: FlameMotion, camera: Camera, background, sh_degree: int) -> np.ndarray:
  """The viewer's image [H,W,3] uint8 of `subject` posed by the single-timestep motion [1,...]
  (frame_motion) seen by `camera` [single view]: avatar.render_views, as `gaedit render` renders."""
  cam = camera[None] if camera.batch_shape == () else camera
  rc = RenderConfig(sh_degree=min(int(sh_degree), subject.avatar.sh_degree))
  img = render_views(
    subject.avatar, subject.model, motion1, np.zeros(1, np.int32), cam, jnp.asarray(background, jnp.float32), rc
  )
  return to_uint8(img[0])


def compose(images: list[np.ndarray], pad: int = 4, value: int = 255) -> np.ndarray:
  """Images [H,W,3] uint8 side by side with a `pad`-pixel gap (original | edited)."""
  if len(images) == 1:
    return images[0]
  h = images[0].shape[0]
  gap = np.full((h, pad, 3), value, np.uint8)
  row = []
  for k, im in enumerate(images):
    row += ([gap] if k else []) + [im]
  return np.concatenate(row, 1)


def split_camera(cam: Camera, n: int, pad: int = 4) -> Camera:
  """The camera of one of n side-by-side panels filling cam's image: the panel keeps the full
  height and the central (width - pad*(n-1))/n columns, so the head stays centred in each."""
  if n == 1:
    return cam
  w = max(8, (cam.width - pad * (n - 1)) // n)
  return make_camera(
    cam.world_to_camera, cam.fx, cam.fy, cam.cx - (cam.width - w) / 2.0, cam.cy, width=w, height=cam.height
  )


def mesh_vertices(model: FlameModel, motion1: FlameMotion) -> np.ndarray:
  """Posed FLAME vertices [V,3] of the shown frame (the wireframe overlay)."""
  return np.asarray(pose_vertices(model, motion1, jnp.asarray(0)))


__all__ = [
  "POSE_COMPONENTS",
  "Subject",
  "ViserPose",
  "compose",
  "fit_camera",
  "frame_motion",
  "letterbox",
  "matrix_to_quat",
  "mesh_vertices",
  "motion_value",
  "quat_to_matrix",
  "render_frame",
  "render_size",
  "same_pose",
  "split_camera",
  "viser_camera",
  "viser_pose",
]
