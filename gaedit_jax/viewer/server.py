"""The viewer session: a viser server, the GUI panel, one render thread per browser, playback,
screenshots and recordings.

Each browser has a single-slot request (`LatestRequest`): a camera move or a setting change
replaces whatever request is waiting, and the browser's render thread always renders the newest
camera and settings when it wakes. While the user drags, the server renders as fast as it can and
skips the poses it had no time for; nothing queues up behind a slow frame."""

from __future__ import annotations

import dataclasses
import itertools
import math
import socket
import threading
import time
from pathlib import Path

import jax
import numpy as np
import viser

from gaedit_jax.avatar import pose_vertices
from gaedit_jax.camera import Camera, look_at
from gaedit_jax.errors import InputError
from gaedit_jax.flame import FlameMotion
from gaedit_jax.io.media import save_mp4, save_png
from gaedit_jax.viewer.controls import FREE_CAMERA, Controls, ViewSettings
from gaedit_jax.viewer.scene import (
  Subject,
  ViserPose,
  compose,
  fit_camera,
  frame_motion,
  letterbox,
  matrix_to_quat,
  render_frame,
  same_pose,
  split_camera,
  viser_camera,
  viser_pose,
)

# How long after the server sets a preset's pose a browser may still report its previous camera
# (its report and the server's pose cross on the socket) before a different pose counts as a move.
PRESET_SYNC_S = 3.0

_pose_vertices_jit = jax.jit(pose_vertices)


class LatestRequest:
  """A single-slot mailbox: `put` replaces the waiting item (stale requests are dropped), `take`
  blocks until an item is there (or the slot is closed: None)."""

  def __init__(self):
    self._cv = threading.Condition()
    self._item = None
    self._closed = False
    self.dropped = 0  # requests replaced before they were rendered

  def put(self, item=True) -> None:
    with self._cv:
      if self._item is not None:
        self.dropped += 1
      self._item = item
      self._cv.notify()

  def take(self, timeout: float | None = None):
    with self._cv:
      self._cv.wait_for(lambda: self._item is not None or self._closed, timeout)
      item, self._item = self._item, None
      return item

  def close(self) -> None:
    with self._cv:
      self._closed = True
      self._cv.notify_all()

  @property
  def closed(self) -> bool:
    return self._closed


def check_port(host: str, port: int) -> None:
  """InputError when `port` cannot be listened on at `host` (in use, or not an address of ours);
  viser would silently move to another port."""
  if not 0 < int(port) < 65536:
    raise InputError(f"--port {port}: expected a TCP port in 1..65535")
  try:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
  except socket.gaierror as e:
    raise InputError(f"--host {host}: cannot resolve ({e.strerror})") from None
  family, kind, proto, _, addr = infos[0]
  with socket.socket(family, kind, proto) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(addr)
    except OSError as e:
      raise InputError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); pass another --port") from None


@dataclasses.dataclass
class _Preset:
  camera: Camera
  pose: ViserPose


class Viewer:
  """Serves `subjects` (one avatar, or original + edited) posed by `motion` on host:port.

  presets: named dataset cameras (single views) the camera menu offers; default_preset the view a
  new browser starts from (the frontal validation camera when a dataset is given). out_dir: where
  screenshots and recordings go."""

  def __init__(
    self,
    subjects: list[Subject],
    motion: FlameMotion,
    *,
    background=(1.0, 1.0, 1.0),
    presets: dict[str, Camera] | None = None,
    default_preset: str | None = None,
    out_dir: str | Path = "viewer",
    host: str = "127.0.0.1",
    port: int = 8080,
    fps: float = 25.0,
    max_size: int = 512,
    n_expr_sliders: int = 10,
  ):
    check_port(host, port)
    self._lock = threading.RLock()
    self.subjects = list(subjects)
    self.motion = motion
    self.background = np.asarray(background, np.float32)
    self.out_dir = Path(out_dir)
    self._frames = itertools.count()
    center, extent = self._head_box()
    self.presets = {
      n: _Preset(c, viser_pose(c, float(np.linalg.norm(np.asarray(c.position) - center))))
      for n, c in (presets or {}).items()
    }
    self.default_preset = default_preset if default_preset in self.presets else None
    self._home = self._home_pose(center, extent)
    # client id -> (preset name, when it was set; -inf once the browser has reported its pose)
    self._client_preset: dict[int, tuple[str, float]] = {}
    self._views: dict[int, _ClientView] = {}
    self._closed = threading.Event()
    self.watcher = None  # a RunWatcher feeding replace() (gaedit view --watch)

    self.server = viser.ViserServer(host=host, port=port, verbose=False)
    if self.server.get_port() != port:  # viser moved to a free port: someone took ours meanwhile
      self.server.stop()
      raise InputError(f"--port {port}: in use on {host}; pass another --port")
    self.server.scene.set_up_direction("+y")
    self.controls = Controls(
      self.server,
      motion=motion,
      sh_degree=max(s.avatar.sh_degree for s in self.subjects),
      max_size=max_size,
      fps=fps,
      presets=[FREE_CAMERA, *self.presets],
      compare=len(self.subjects) > 1,
      n_expr_sliders=n_expr_sliders,
      on_change=self._changed,
      on_preset=self._preset_chosen,
      on_screenshot=lambda c: self._spawn(self.screenshot, c),
      on_record=lambda c: self._spawn(self.record, c),
    )
    self.server.on_client_connect(self._connect)
    self.server.on_client_disconnect(self._disconnect)
    self._player = threading.Thread(target=self._play_loop, name="viewer-playback", daemon=True)
    self._player.start()

  # -- geometry of the default view -----------------------------------------------------------

  def _head_box(self) -> tuple[np.ndarray, float]:
    v = self._vertices(self.subjects[0], frame_motion(self.motion, 0))
    return v.mean(0), float(np.ptp(v, 0).max())

  def _home_pose(self, center: np.ndarray, extent: float) -> ViserPose:
    fov = np.deg2rad(30.0)
    eye = center + np.array([0.0, 0.0, 0.75 * extent / np.tan(fov / 2)])
    c2w = np.linalg.inv(look_at(eye, center))
    return ViserPose(matrix_to_quat(c2w[:3, :3]), eye, float(fov), center)

  @staticmethod
  def _vertices(subject: Subject, motion1: FlameMotion) -> np.ndarray:
    return np.asarray(_pose_vertices_jit(subject.model, motion1, 0))

  # -- clients ----------------------------------------------------------------------------------

  @property
  def port(self) -> int:
    return int(self.server.get_port())

  def _connect(self, client: viser.ClientHandle) -> None:
    name = self.default_preset
    self._set_client_pose(client, self.presets[name].pose if name else self._home)
    with self._lock:
      if name:
        self._client_preset[client.client_id] = (name, time.monotonic())
      view = _ClientView(self, client)
      self._views[client.client_id] = view
    client.camera.on_update(lambda _cam: view.request())
    view.request()

  def _disconnect(self, client: viser.ClientHandle) -> None:
    with self._lock:
      view = self._views.pop(client.client_id, None)
      self._client_preset.pop(client.client_id, None)
    if view is not None:
      view.close()

  @staticmethod
  def _set_client_pose(client: viser.ClientHandle, pose: ViserPose) -> None:
    with client.atomic():
      client.camera.fov = pose.fov_y
      client.camera.position = pose.position
      client.camera.look_at = pose.look_at
      r = np.asarray(viser.transforms.SO3(np.asarray(pose.wxyz)).as_matrix())
      client.camera.up_direction = -r[:, 1]

  def _preset_chosen(self, name: str, client: viser.ClientHandle | None) -> None:
    clients = [client] if client is not None else list(self.server.get_clients().values())
    for c in clients:
      with self._lock:
        if name in self.presets:
          self._client_preset[c.client_id] = (name, time.monotonic())
        else:
          self._client_preset.pop(c.client_id, None)
      if name in self.presets:
        self._set_client_pose(c, self.presets[name].pose)
      view = self._views.get(c.client_id)
      if view is not None:
        view.request()

  def client_camera(self, client: viser.ClientHandle, max_size: int) -> tuple[Camera, bool]:
    """The camera to render for a browser and whether it is a dataset camera: the chosen preset
    (its exact intrinsics) while the user has not moved away from it, else the browser's own."""
    cam = client.camera
    with self._lock:
      entry = self._client_preset.get(client.client_id)
    if entry is not None:
      name, since = entry
      p = self.presets[name]
      if same_pose(p.pose, cam.wxyz, cam.position, tol=1e-3):
        with self._lock:
          if client.client_id in self._client_preset:
            self._client_preset[client.client_id] = (name, -math.inf)  # reported: a move now leaves it
        return fit_camera(p.camera, max_size), True
      # The browser reports its own camera until it has applied the pose set with the preset (a
      # report can cross that message); only a pose away from the preset after that is a move.
      if time.monotonic() - since < PRESET_SYNC_S:
        return fit_camera(p.camera, max_size), True
      with self._lock:
        self._client_preset.pop(client.client_id, None)
    return viser_camera(cam.wxyz, cam.position, cam.fov, cam.aspect, max_size), False

  def render_client(self, client: viser.ClientHandle, settings: ViewSettings) -> np.ndarray:
    """What a browser shows: its camera's image, a dataset camera's letterboxed to the canvas."""
    cam, preset = self.client_camera(client, settings.max_size)
    img = self.render(settings, cam)
    return letterbox(img, client.camera.aspect, self.background) if preset else img

  # -- rendering --------------------------------------------------------------------------------

  def render(self, settings: ViewSettings, camera: Camera) -> np.ndarray:
    """The image [H,W,3] uint8 of the frame `settings` describes, seen by `camera`."""
    with self._lock:
      subjects, motion = list(self.subjects), self.motion
    t = min(settings.timestep, motion.num_timesteps - 1)
    m1 = frame_motion(motion, t, settings.override_map)
    if len(subjects) > 1 and settings.show == "side by side":
      shown = subjects
    elif len(subjects) > 1 and settings.show == "edited":
      shown = subjects[1:2]
    else:
      shown = subjects[:1]
    panel = split_camera(camera, len(shown))
    return compose([render_frame(s, m1, panel, self.background, settings.sh_degree) for s in shown])

  def _changed(self) -> None:
    self._update_wireframe()
    with self._lock:
      views = list(self._views.values())
    for v in views:
      v.request()

  def _update_wireframe(self) -> None:
    s = self.controls.settings()
    if not s.wireframe or s.show == "side by side" and len(self.subjects) > 1:
      self.server.scene.remove_by_name("/flame")
      return
    with self._lock:
      subject = self.subjects[1] if s.show == "edited" and len(self.subjects) > 1 else self.subjects[0]
      motion = self.motion
    m1 = frame_motion(motion, min(s.timestep, motion.num_timesteps - 1), s.override_map)
    self.server.scene.add_mesh_simple(
      "/flame",
      vertices=self._vertices(subject, m1),
      faces=np.asarray(subject.model.faces),
      color=(40, 40, 40),
      wireframe=True,
    )

  def replace(self, subjects: list[Subject] | None = None, motion: FlameMotion | None = None) -> None:
    """Shows new avatars / a new sequence (a reloaded export) to every browser."""
    with self._lock:
      if subjects is not None:
        self.subjects = list(subjects)
      if motion is not None:
        self.motion = motion
    if motion is not None:
      self.controls.set_motion(motion)
    self._changed()

  # -- playback and capture ---------------------------------------------------------------------

  def _play_loop(self) -> None:
    while not self._closed.is_set():
      if self.controls.playing:
        self.controls.advance()
      self._closed.wait(1.0 / max(float(self.controls.fps.value), 1.0))

  def _spawn(self, fn, client) -> None:
    threading.Thread(target=fn, args=(client,), daemon=True).start()

  def _capture_camera(self, client: viser.ClientHandle | None, max_size: int) -> Camera:
    if client is None:
      clients = list(self.server.get_clients().values())
      if not clients:
        raise RuntimeError("no browser is connected: nothing to capture")
      client = clients[0]
    return self.client_camera(client, max_size)[0]

  def screenshot(self, client: viser.ClientHandle | None = None) -> Path:
    """Saves the browser's current view (settings of the panel) as a PNG under OUT/screenshots."""
    s = self.controls.settings()
    img = self.render(s, self._capture_camera(client, s.max_size))
    path = self.out_dir / "screenshots" / f"view_{time.strftime('%Y%m%d_%H%M%S')}_{next(self._frames):03d}.png"
    save_png(path, img)
    self.controls.set_status(f"saved `{path}`")
    return path

  def record(self, client: viser.ClientHandle | None = None) -> Path:
    """Renders the whole sequence from the browser's current view (FLAME overrides held) and
    writes OUT/recordings/*.mp4 at the playback frame rate."""
    s = self.controls.settings()
    cam = self._capture_camera(client, s.max_size)
    n = self.motion.num_timesteps
    frames = []
    for t in range(n):
      frames.append(self.render(dataclasses.replace(s, timestep=t), cam))
      if t % 10 == 0:
        self.controls.set_status(f"recording {t + 1}/{n}")
    path = self.out_dir / "recordings" / f"motion_{time.strftime('%Y%m%d_%H%M%S')}_{next(self._frames):03d}.mp4"
    save_mp4(path, frames, fps=int(self.controls.fps.value))
    self.controls.set_status(f"saved `{path}` ({n} frames)")
    return path

  def close(self) -> None:
    self._closed.set()
    with self._lock:
      views = list(self._views.values())
      self._views.clear()
    for v in views:
      v.close()
    self.server.stop()


class _ClientView:
  """One browser: its render thread renders the newest request and streams it as the scene's
  background image (JPEG)."""

  def __init__(self, viewer: Viewer, client: viser.ClientHandle):
    self.viewer = viewer
    self.client = client
    self.slot = LatestRequest()
    self.frames = 0
    self.last_error: str | None = None
    self._thread = threading.Thread(target=self._loop, name=f"viewer-render-{client.client_id}", daemon=True)
    self._thread.start()

  def request(self) -> None:
    self.slot.put(True)

  def _loop(self) -> None:
    while self.slot.take() is not None:
      try:
        s = self.viewer.controls.settings()
        img = self.viewer.render_client(self.client, s)
        if self.slot.closed:  # the browser left while we rendered
          return
        self.client.scene.set_background_image(img, format="jpeg", jpeg_quality=s.jpeg_quality)
        self.frames += 1
      except Exception as e:  # keep serving: show the error in the panel, render the next request
        self.last_error = f"{type(e).__name__}: {e}"
        self.viewer.controls.set_status(f"render error: {self.last_error}")

  def close(self) -> None:
    self.slot.close()


__all__ = ["LatestRequest", "Viewer", "check_port"]
