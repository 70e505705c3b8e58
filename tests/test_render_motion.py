"""`gaedit render --motion / --compare / --grid` end to end on the tiny synthetic avatar, and the one
video writer (io.media.write_video)."""

from __future__ import annotations

import shutil
import warnings

import imageio.v2 as imageio
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gaedit_jax.avatar import load_trained, pose_vertices
from gaedit_jax.cli import main as cli
from gaedit_jax.commands.render import RenderConfigCLI
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.errors import InputError
from gaedit_jax.flags import flag_args
from gaedit_jax.flame import FlameMotion
from gaedit_jax.io.media import read_image, write_video
from gaedit_jax.io.ply import load_avatar_ply, save_avatar_ply

TINY = flag_args(
  iterations=8,
  position_lr_max_steps=20,
  densify_from=3,
  densify_interval=3,
  sh_degree=0,
  checkpoint_interval=8,
  eval_interval=0,
  eval_max_frames=1,
  progress=False,
)
W, H = 48, 64  # recon_data's tiny images


@pytest.fixture(scope="module")
def model(tiny, tmp_path_factory):
  out = tmp_path_factory.mktemp("rm") / "model"
  cli(["reconstruct", "--data", str(tiny), "--out", str(out)] + TINY)
  return out


@pytest.fixture(scope="module")
def edited(model, tmp_path_factory):
  """A copy of the model with redder Gaussians (its point_cloud.ply rewritten), as an edit would."""
  out = tmp_path_factory.mktemp("rm") / "edited"
  shutil.copytree(model, out, ignore=shutil.ignore_patterns("renders", "checkpoints", "tb"))
  ply = out / "point_cloud" / "iteration_8" / "point_cloud.ply"
  a = load_avatar_ply(ply)
  a = a.__class__(**{**a.__dict__, "sh_dc": a.sh_dc + jnp.asarray([1.0, -0.5, -0.5])})
  save_avatar_ply(ply, a)
  return out


def frames_of(folder, sub="renders"):
  return [read_image(p) for p in sorted((folder / sub).glob("*.png"))]


def mp4_info(path):
  with warnings.catch_warnings():  # ffmpeg is a subprocess (fork+exec): JAX's fork warning is moot
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    r = imageio.get_reader(path)
  try:
    fr = [f for f in r]
    return len(fr), fr[0].shape, r.get_meta_data()["fps"]
  finally:
    r.close()


def gif_info(path):
  with Image.open(path) as im:
    return im.n_frames, im.size, im.info["duration"]


def write_motion(path, n_expr, jaw, fps=None):
  t = len(jaw)
  d = {k: np.zeros((t, n), np.float32) for k, n in (("rotation", 3), ("neck_pose", 3), ("translation", 3))}
  d.update(expr=np.zeros((t, n_expr), np.float32), eyes_pose=np.zeros((t, 6), np.float32))
  d["jaw_pose"] = np.zeros((t, 3), np.float32)
  d["jaw_pose"][:, 0] = jaw
  if fps is not None:
    d["fps"] = np.float32(fps)
  np.savez(path, **d)
  return path


# ------------------------------------------------------------------------------------------------
# --motion
# ------------------------------------------------------------------------------------------------


def test_motion_file_drives_the_mouth(model, tiny, tmp_path):
  tr = load_trained(model)
  n_expr = tr.model.n_expr
  # the dataset's own tracked sequence carries the model's head pose; the motion opens the jaw
  m = write_motion(tmp_path / "jaw.npz", n_expr, [0.0, 0.5, 0.0])
  out = tmp_path / "r"
  res = cli(["render", "--model", str(model), "--out", str(out), "--motion", str(m)])
  assert set(res) == {"motion_jaw"}  # --motion renders no dataset splits unless asked
  d = out / "motion_jaw" / "ours_8"
  f = [x.astype(np.float64) for x in frames_of(d)]
  assert len(f) == 3 and f[0].shape == (H, W, 3)
  np.testing.assert_array_equal(f[0], f[2])  # the same FLAME state renders the same image
  diff = np.abs(f[1] - f[0]).sum(-1)
  assert diff.sum() > 50  # opening the jaw changes the image ...
  # ... at the mouth and below it (the chin drops), not above: the region from the top of the
  # vertices that the jaw moves, as the frontal val camera sees them, down to the image's bottom
  flame = FlameMotion(**{k: jnp.asarray(np.load(m)[k]) for k in FlameMotion.FIELDS})
  v0 = np.asarray(pose_vertices(tr.model, flame, jnp.asarray(0)))
  v1 = np.asarray(pose_vertices(tr.model, flame, jnp.asarray(1)))
  moved = np.linalg.norm(v1 - v0, axis=-1) > 1e-3 * np.ptp(v0, axis=0).max()
  assert 0 < moved.sum() < 0.7 * len(moved)
  cam = AvatarDataset(tiny, "val", cache_size=0).camera(0)
  w2c = np.asarray(cam.world_to_camera)
  pc = np.concatenate([v0[moved], v1[moved]]) @ w2c[:3, :3].T + w2c[:3, 3]
  u = float(cam.fx) * pc[:, 0] / pc[:, 2] + float(cam.cx)
  v = float(cam.fy) * pc[:, 1] / pc[:, 2] + float(cam.cy)
  region = np.zeros((H, W), bool)
  region[max(0, int(v.min()) - 2) :, max(0, int(u.min()) - 2) : int(u.max()) + 3] = True
  assert region.mean() < 0.6  # the lower face is a part of the image, not all of it
  assert diff[region].sum() / diff.sum() > 0.95
  n, shape, fps = mp4_info(d / "renders.mp4")
  assert (n, shape, fps) == (3, (H, W, 3), 25.0)
  assert gif_info(d / "renders.gif") == (3, (W, H), 40)


def test_motion_fps_expression_fit_and_frontal_camera_without_dataset(model, tmp_path):
  n_expr = load_trained(model).model.n_expr
  m = write_motion(tmp_path / "talk.npz", n_expr + 3, [0.0, 0.2, 0.4, 0.2], fps=30)
  out = tmp_path / "r"
  with pytest.warns(UserWarning, match=rf"talk\.npz: expr has {n_expr + 3} components.*truncated"):
    cli(
      [
        "render",
        "--model",
        str(model),
        "--out",
        str(out),
        "--motion",
        str(m),
        "--data",
        str(tmp_path / "no_dataset"),
        "--frontal-size",
        "40",
        "--gif-min-height",
        "80",
      ]
    )
  d = out / "motion_talk" / "ours_8"
  f = frames_of(d)
  assert len(f) == 4 and f[0].shape == (40, 40, 3)
  # the frontal camera frames the head: it covers the image centre and leaves a white border
  fg = np.abs(f[0].astype(np.float64) - 255).sum(-1) > 30
  assert fg[15:25, 15:25].mean() > 0.8 and not fg[0].any() and not fg[-1].any()
  assert mp4_info(d / "renders.mp4") == (4, (40, 40, 3), 30.0)
  n, size, dur = gif_info(d / "renders.gif")
  assert n == 4 and size == (80, 80) and dur == 30  # GIF upscaled; delays in 1/100 s


# ------------------------------------------------------------------------------------------------
# --compare
# ------------------------------------------------------------------------------------------------


def test_compare_halves_are_the_two_plain_renders(model, edited, tmp_path):
  out, o1, o2 = tmp_path / "c", tmp_path / "p1", tmp_path / "p2"
  common = ["--splits", "test", "--max-frames", "2", "--fps", "10"]
  labels = ["--compare", str(edited), "--labels", "before,after"]
  cli(["render", "--model", str(model), "--out", str(out)] + labels + common)
  cli(["render", "--model", str(model), "--out", str(o1)] + common)
  cli(["render", "--model", str(edited), "--out", str(o2)] + common)
  d = out / "test" / "ours_8"
  cmp, a, b = frames_of(d, "compare"), frames_of(o1 / "test" / "ours_8"), frames_of(o2 / "test" / "ours_8")
  assert len(cmp) == len(a) == len(b) == 2
  hc = cmp[0].shape[0] - H  # the caption strip above the images
  assert 10 <= hc <= 48 and cmp[0].shape[1] == 2 * W + 2
  for c, x, y in zip(cmp, a, b):
    np.testing.assert_array_equal(c[hc:, :W], x)
    np.testing.assert_array_equal(c[hc:, W + 2 :], y)
    assert not np.array_equal(x, y)  # the edit is visible
    for half in (c[:hc, :W], c[:hc, W + 2 :]):  # a label drawn over each half
      assert (half.min(-1) < 128).sum() > 5
  hh, ww = cmp[0].shape[:2]
  assert mp4_info(d / "compare.mp4") == (2, (hh + hh % 2, ww + ww % 2, 3), 10.0)
  assert gif_info(d / "compare.gif") == (2, (ww, hh), 100)


def test_compare_with_motion_and_grid(model, edited, tmp_path):
  n_expr = load_trained(model).model.n_expr
  m = write_motion(tmp_path / "jaw.npz", n_expr, [0.0, 0.4])
  out = tmp_path / "g"
  cli(
    [
      "render",
      "--model",
      str(model),
      "--out",
      str(out),
      "--motion",
      str(m),
      "--grid",
      "--cameras",
      "0,4,8",
      "--compare",
      str(edited),
    ]
  )
  d = out / "motion_jaw_grid" / "ours_8"
  g = frames_of(d)
  gh, gw = 2 * H + 2, 2 * W + 2  # three cameras in a 2 x 2 grid
  assert len(g) == 2 and g[0].shape == (gh, gw, 3)
  assert (g[0][H + 2 :, W + 2 :] == 255).all()  # the empty cell
  c = frames_of(d, "compare")
  hc = c[0].shape[0] - gh
  np.testing.assert_array_equal(c[0][hc:, :gw], g[0])
  assert c[0].shape[1] == 2 * gw + 2
  assert mp4_info(d / "renders.mp4")[:2] == (2, (gh, gw, 3))


# ------------------------------------------------------------------------------------------------
# --grid
# ------------------------------------------------------------------------------------------------


def test_grid_tiles_the_dataset_cameras(model, tmp_path):
  out = tmp_path / "g"
  res = cli(["render", "--model", str(model), "--out", str(out), "--grid", "--cameras", "0,4,8", "--max-frames", "2"])
  assert set(res) == {"grid"}
  d = out / "grid" / "ours_8"
  g = frames_of(d)
  assert len(g) == 2 and g[0].shape == (2 * H + 2, 2 * W + 2, 3)
  # the third cell (camera 8, timestep 0) is the val split's first frame (camera 8, timestep 0)
  cli(["render", "--model", str(model), "--out", str(tmp_path / "v"), "--splits", "val", "--max-frames", "1"])
  v = frames_of(tmp_path / "v" / "val" / "ours_8")[0]
  assert np.abs(g[0][H + 2 :, :W].astype(int) - v.astype(int)).max() <= 1
  assert not np.array_equal(g[0][:H, :W], g[0][:H, W + 2 :])  # cameras 0 and 4 differ
  assert mp4_info(d / "renders.mp4") == (2, (2 * H + 2, 2 * W + 2, 3), 25.0)
  assert gif_info(d / "renders.gif")[:2] == (2, (2 * W + 2, 2 * H + 2))


def test_flag_errors_are_one_line(model, tmp_path):
  with pytest.raises(InputError, match=r"--cameras 'a,b': expected comma-separated camera indices"):
    RenderConfigCLI(model=model, grid=True, cameras="a,b")
  with pytest.raises(InputError, match=r"--labels 'one': expected two comma-separated labels"):
    RenderConfigCLI(model=model, compare=model, labels="one")
  with pytest.raises(InputError, match=r"--cameras: camera indices \[42\] are not in the dataset"):
    cli(["render", "--model", str(model), "--out", str(tmp_path), "--grid", "--cameras", "0,42"], handle_errors=False)
  with pytest.raises(InputError, match=r"motion file not found: .*nope\.npz"):
    cli(
      ["render", "--model", str(model), "--out", str(tmp_path), "--motion", str(tmp_path / "nope.npz")],
      handle_errors=False,
    )


# ------------------------------------------------------------------------------------------------
# The video writer
# ------------------------------------------------------------------------------------------------


def test_write_video_mp4_gif_atomic(tmp_path):
  rng = np.random.default_rng(0)
  fr = [rng.random((37, 50, 3)) for _ in range(4)]
  write_video(tmp_path / "v.mp4", fr, 12.5)
  write_video(tmp_path / "v.gif", fr, 20, min_height=256)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif", "v.mp4"]  # no temporary files left
  assert mp4_info(tmp_path / "v.mp4") == (4, (38, 50, 3), 12.5)  # odd height padded for yuv420p
  n, size, dur = gif_info(tmp_path / "v.gif")
  assert n == 4 and size == (round(50 * 256 / 37), 256) and dur == 50
  with pytest.raises(InputError, match=r"v\.avi: unknown video type"):
    write_video(tmp_path / "v.avi", fr, 10)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    write_video(tmp_path / "v.gif", fr[:1], 10)  # replaced in place
  assert gif_info(tmp_path / "v.gif")[0] == 1
