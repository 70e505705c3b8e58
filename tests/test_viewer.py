"""`gaedit view`: the pure parts (browser camera -> Camera, the shown frame's FLAME state, dataset
camera presets rendered as `gaedit render` renders them), the single-slot render request, the run
watcher, the user errors, and the viewer in a real headless Chromium (skipped without chromium)."""

from __future__ import annotations

import math
import socket
import time

import imageio.v2 as imageio
import jax.numpy as jnp
import numpy as np
import pytest
from cdp_browser import Browser, chromium_path
from recon_data import make_tiny_dataset

from gaedit_jax.avatar import baked_model, fit_flame_dims, load_flame_model, load_trained, pose_vertices, render_views
from gaedit_jax.camera import look_at
from gaedit_jax.commands.view import ViewConfig, dataset_cameras, start
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.data.layout import FLAME_FILE
from gaedit_jax.errors import InputError
from gaedit_jax.io.media import read_png, to_uint8
from gaedit_jax.io.model_folder import write_model_folder
from gaedit_jax.render.types import RenderConfig
from gaedit_jax.viewer.demo import synthetic_avatar
from gaedit_jax.viewer.scene import (
  Subject,
  fit_camera,
  frame_motion,
  letterbox,
  matrix_to_quat,
  render_frame,
  viser_camera,
  viser_pose,
)
from gaedit_jax.viewer.server import LatestRequest, check_port
from gaedit_jax.viewer.watch import RunWatcher, finished_exports

ITER = 6


def _write_model(root, data, iteration=ITER):
  full = load_flame_model(data / FLAME_FILE)
  tracking = fit_flame_dims(full, AvatarDataset(data, "train", cache_size=0).flame_params)
  avatar = synthetic_avatar(baked_model(full, tracking), sh_degree=1)
  write_model_folder(
    root,
    avatar,
    tracking,
    iteration=iteration,
    data=data,
    flame_model=data / FLAME_FILE,
    config=dict(image_scale=1.0, white_background=True, sh_degree=1),
  )
  return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("viewer")
  data = make_tiny_dataset(root / "data")
  return dict(root=root, data=data, model=_write_model(root / "model", data))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# Pure parts
# ------------------------------------------------------------------------------------------------


def test_viser_camera_is_the_browser_view():
  """A browser camera at (0.3, 0.1, 1) looking at the origin, y up (viser's OpenCV camera-to-world
  pose): our Camera has the look_at world-to-camera, square pixels, the centred principal point;
  the origin projects to the image centre and a point above it to a smaller row."""
  eye, target = np.array([0.3, 0.1, 1.0]), np.zeros(3)
  w2c = look_at(eye, target)
  c2w = np.linalg.inv(w2c.astype(np.float64))
  fov = math.radians(40.0)
  cam = viser_camera(matrix_to_quat(c2w[:3, :3]), c2w[:3, 3], fov, 1.5, 480)
  assert (cam.width, cam.height) == (480, 320)
  np.testing.assert_allclose(np.asarray(cam.world_to_camera), w2c, atol=1e-5)
  np.testing.assert_allclose([float(cam.fx), float(cam.fy)], [160 / math.tan(fov / 2)] * 2, rtol=1e-5)

  def project(p):
    q = np.asarray(cam.world_to_camera) @ np.append(p, 1.0)
    return float(cam.fx) * q[0] / q[2] + float(cam.cx), float(cam.fy) * q[1] / q[2] + float(cam.cy)

  np.testing.assert_allclose(project(target), (240.0, 160.0), atol=1e-3)
  assert project(np.array([0.0, 0.1, 0.0]))[1] < 160.0 - 10  # world up is up in the image
  assert project(np.array([0.1, 0.0, 0.0]))[0] > 240.0 + 10  # world +x is to the right
  back = viser_pose(cam)  # and back to what viser is told
  np.testing.assert_allclose(back.position, eye, atol=1e-5)
  assert abs(abs(float(back.wxyz @ matrix_to_quat(c2w[:3, :3]))) - 1.0) < 1e-6
  assert back.fov_y == pytest.approx(fov, rel=1e-5)


def test_frame_motion_overrides_components(setup):
  tr = load_trained(setup["model"])
  motion = tr.flame
  m1 = frame_motion(motion, 2, {("jaw_pose", 0): 0.4, ("eyes_pose", 1): -0.2, ("expr", 3): 1.5})
  assert m1.num_timesteps == 1
  np.testing.assert_allclose(np.asarray(m1.jaw_pose)[0], [0.4, *np.asarray(motion.jaw_pose)[2, 1:]], atol=1e-7)
  np.testing.assert_allclose(np.asarray(m1.eyes_pose)[0, [1, 4]], [-0.2, -0.2])
  assert float(m1.expr[0, 3]) == pytest.approx(1.5)
  np.testing.assert_allclose(np.asarray(m1.rotation), np.asarray(motion.rotation)[2:3])


def test_preset_renders_as_gaedit_render(setup):
  """The image for dataset camera 8 (the default preset) equals avatar.render_views for that
  camera and timestep, and the letterboxed image shown in a wider browser holds it unchanged."""
  tr = load_trained(setup["model"])
  presets, default, white = dataset_cameras(setup["data"], tr.cfg, None)
  assert default == "camera 08 (val)" and white
  ds = AvatarDataset(setup["data"], "val", cache_size=0)
  i = int(np.flatnonzero(ds.camera_indices == 8)[0])
  t = int(ds.timesteps[i])
  cam = fit_camera(presets[default], 512)
  got = render_frame(Subject(tr.avatar, tr.model), frame_motion(tr.flame, t), cam, ds.background, 1)
  ref = render_views(
    tr.avatar, tr.model, tr.flame, [t], ds.cameras[i : i + 1], jnp.asarray(ds.background), RenderConfig(sh_degree=1)
  )
  assert got.shape == (64, 48, 3)
  np.testing.assert_array_equal(got, to_uint8(ref[0]))
  assert (got < 200).any(axis=-1).mean() > 0.2  # the head is there
  wide = letterbox(got, 1.5, ds.background)
  assert wide.shape == (64, 96, 3)
  np.testing.assert_array_equal(wide[:, 24:72], got)
  assert (wide[:, :24] == 255).all()


def test_latest_request_keeps_only_the_newest():
  slot = LatestRequest()
  for cam in ("drag 1", "drag 2", "drag 3"):
    slot.put(cam)
  assert slot.take() == "drag 3"
  assert slot.dropped == 2
  assert slot.take(timeout=0.05) is None  # nothing waiting
  slot.close()
  assert slot.take() is None


# ------------------------------------------------------------------------------------------------
# User errors, watching a run
# ------------------------------------------------------------------------------------------------


def test_user_errors(setup, tmp_path):
  with pytest.raises(InputError, match="no such avatar"):
    start(ViewConfig(model=tmp_path / "missing", port=_free_port()))
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    with pytest.raises(InputError, match=f"--port {port}"):
      check_port("127.0.0.1", port)
  bad = tmp_path / "motion.npz"
  bad.write_bytes(b"not a zip archive")
  with pytest.raises(InputError, match="motion.npz"):
    start(ViewConfig(model=setup["model"], motion=bad, port=_free_port()))
  with pytest.raises(InputError, match="exactly one of"):
    ViewConfig(model=setup["model"], synthetic=True)


def test_watcher_loads_each_finished_export(setup, tmp_path):
  run = tmp_path / "run"
  shown = []
  w = RunWatcher(run, load=lambda it: load_trained(run, it), on_load=lambda it, tr: shown.append(it), settle=0.0)
  assert not w.poll()  # nothing exported yet
  _write_model(run, setup["data"], iteration=10)
  half = run / "point_cloud" / "iteration_20"
  half.mkdir()
  (half / "point_cloud.ply").write_bytes(b"ply\n")  # a training process still writing
  assert sorted(finished_exports(run, 0.0)) == [10]
  assert w.poll() and shown == [10]
  assert not w.poll()  # nothing newer
  _write_model(run, setup["data"], iteration=30)
  assert sorted(finished_exports(run, settle=3600.0, now=time.time())) == []  # just written: not settled
  assert w.poll() and shown == [10, 30]


# ------------------------------------------------------------------------------------------------
# In a real browser
# ------------------------------------------------------------------------------------------------

_JAW_SLIDER_RECT = """(() => {
  for (const el of document.querySelectorAll('[role=slider]')) {
    let row = el;
    for (let k = 0; k < 8 && row; k++) {
      row = row.parentElement;
      if (row && row.innerText && row.innerText.split('\\n')[0].trim() === 'jaw') {
        const track = el.parentElement.getBoundingClientRect();
        return [track.left, track.right, track.top + track.height / 2];
      }
    }
  }
  return null;
})()"""


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # ffmpeg reading the mp4 back
@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium)")
def test_viewer_in_chromium(setup, tmp_path):
  """The page shows the avatar (drawn pixels in the middle of the view); clicking the right end of
  the jaw slider in the page opens the jaw: the next frame changes around the mouth."""
  viewer = start(ViewConfig(model=setup["model"], port=_free_port(), out=tmp_path, max_size=256))
  try:
    with Browser(f"http://127.0.0.1:{viewer.port}", width=1000, height=700) as b:
      end = time.time() + 40
      while not viewer._views or next(iter(viewer._views.values())).frames == 0:
        assert time.time() < end, "no frame rendered for the browser"
        time.sleep(0.2)
      view = next(iter(viewer._views.values()))
      client = view.client
      time.sleep(1.5)  # the browser decodes and draws the frame
      before = b.screenshot().astype(np.int16)
      h, w = before.shape[:2]
      # the view area is the page left of the panel; the head is in its middle
      mid = before[h // 3 : 2 * h // 3, int(w * 0.4) : int(w * 0.6)]
      drawn = (255 - mid).max(axis=-1) > 40  # differs from the white background
      assert drawn.mean() > 0.5, "no avatar in the middle of the page"

      rect = b.wait_for(_JAW_SLIDER_RECT)
      frames = view.frames
      b.click(rect[1] - 2, rect[2])  # the right end of the track: jaw = its maximum
      end = time.time() + 20
      while ("jaw_pose", 0) not in viewer.controls.settings().override_map or view.frames <= frames:
        assert time.time() < end, "the jaw slider did not reach the server / no new frame"
        time.sleep(0.1)
      assert viewer.controls.settings().override_map[("jaw_pose", 0)] > 0.3
      time.sleep(1.5)
      after = b.screenshot().astype(np.int16)

      # where the mouth is on the page: project the lips' centre with the browser's camera
      tr = load_trained(setup["model"])
      lips = np.asarray(tr.model.region("lips"))
      v = np.asarray(pose_vertices(tr.model, tr.flame, jnp.asarray(0)))[lips].mean(0)
      cam = viser_camera(client.camera.wxyz, client.camera.position, client.camera.fov, client.camera.aspect, 256)
      q = np.asarray(cam.world_to_camera) @ np.append(v, 1.0)
      u = (float(cam.fx) * q[0] / q[2] + float(cam.cx)) / cam.width * w
      r = (float(cam.fy) * q[1] / q[2] + float(cam.cy)) / cam.height * h
      changed = np.abs(after - before).max(axis=-1) > 30
      changed[:, int(w * 0.7) :] = False  # the panel (its slider moved too)
      assert changed.sum() > 50, "the frame did not change"
      k = int(0.06 * h)  # a window around the mouth: the lips part, the teeth show
      near = changed[int(r) - k : int(r) + k, int(u) - k : int(u) + k]
      assert near.mean() > 0.2, (near.mean(), u, r)
      assert changed[: int(r) - 3 * k].sum() < 0.1 * changed.sum()  # the forehead and eyes stay

      # capture: a PNG of the current view and an mp4 of the sequence (4 timesteps), wireframe on
      viewer.controls.wireframe.value = True
      # the browser connected now (a page may reconnect its websocket after a failed handshake,
      # under load: the client of the first connection is then gone, with its preset)
      png = viewer.screenshot()
      mp4 = viewer.record()
      shot = read_png(png).shape[:2]
      assert shot == (64, 48), (shot, viewer.default_preset, viewer._client_preset, list(viewer._views))  # camera 8
      with imageio.get_reader(mp4) as rd:
        assert sum(1 for _ in rd) == 4
      assert view.last_error is None
  finally:
    viewer.close()


def test_preset_survives_the_browsers_report_that_crosses_the_servers_pose(setup, tmp_path):
  """A browser reports its own camera until it has applied the preset pose the server set (the two
  messages can cross): within PRESET_SYNC_S that report keeps the preset; once the browser has
  reported the preset pose, a different pose is the user's move and leaves the preset."""
  from types import SimpleNamespace

  from gaedit_jax.viewer import server as S

  viewer = start(ViewConfig(model=setup["model"], port=_free_port(), out=tmp_path, max_size=256))
  try:
    name = viewer.default_preset
    p = viewer.presets[name].pose
    away = dict(wxyz=np.array([1.0, 0.0, 0.0, 0.0]), position=np.asarray(p.position) + 0.5)
    cam = SimpleNamespace(fov=p.fov_y, aspect=1.0, **away)
    client = SimpleNamespace(client_id=12345, camera=cam)
    viewer._client_preset[client.client_id] = (name, time.monotonic())  # as on connect
    assert viewer.client_camera(client, 256)[1]  # the browser's stale report: still the preset
    cam.wxyz, cam.position = np.asarray(p.wxyz), np.asarray(p.position)
    assert viewer.client_camera(client, 256)[1]  # the browser applied the preset pose
    cam.wxyz, cam.position = away["wxyz"], away["position"]
    assert not viewer.client_camera(client, 256)[1]  # now a move: the free camera
    assert client.client_id not in viewer._client_preset
    # a report away from the preset after the window is a move too
    viewer._client_preset[client.client_id] = (name, time.monotonic() - 2 * S.PRESET_SYNC_S)
    assert not viewer.client_camera(client, 256)[1]
  finally:
    viewer.close()
