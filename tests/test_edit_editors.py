"""Edits from any 2D editor and edits restricted to FLAME regions, on the tiny synthetic avatar:
`gaedit export-frames` and its manifest; `--editor frames` (missing frames are not edited);
`--editor command` (an external program; failures keep the last good edits, --strict stops with exit
status 2); `--region` (Gaussians outside stay bit-identical)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from recon_data import tiny_edit_config

from gaedit_jax.avatar import render_views
from gaedit_jax.cli import main as cli
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.edit import regions as R
from gaedit_jax.edit.editors import EditContext
from gaedit_jax.edit.external import EditCommandError, load_frames_editor, read_manifest
from gaedit_jax.edit.loop import EditRun
from gaedit_jax.errors import InputError
from gaedit_jax.io.media import read_image, save_png
from gaedit_jax.train.loop import frame_order, mixed_frame_order

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def setup(edit_setup):
  return edit_setup


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
  d = tmp_path_factory.mktemp("frames") / "frames"
  cli(["export-frames", str(setup["model"]), "--out", str(d)])
  return d


def _train(setup):
  return AvatarDataset(setup["data"], "train", cache_size=0)


def test_export_frames_manifest_round_trip(setup, exported, tmp_path):
  ds = _train(setup)
  man = read_manifest(exported)
  assert len(man["frames"]) == len(ds)
  f = man["frames"][3]
  rec = ds.records[f["frame_index"]]
  assert (f["camera_index"], f["timestep"]) == (rec.camera_index, rec.timestep)
  np.testing.assert_allclose(f["world_to_camera"], rec.world_to_camera)
  assert f["fx"] == pytest.approx(float(ds.cameras.fx[f["frame_index"]]))
  assert (exported / "photos" / f["file"]).is_file()
  # the PNG is the unedited avatar's render of that view (edit --flame-init data)
  er = EditRun(tiny_edit_config(setup, tmp_path / "run"))
  b = ds.batch([f["frame_index"]])
  img = render_views(
    er.state.avatar, er.model_local, er.state.flame, np.asarray(b.timestep), b.camera, jnp.ones(3), er.settings.render
  )[0]
  png = read_image(exported / f["file"]).astype(np.float32) / 255
  assert np.abs(png - img).max() <= 0.5 / 255 + 1e-6
  # read back: the editor returns the files for their views; a removed file is not edited
  sub = tmp_path / "edited"
  shutil.copytree(exported, sub)
  (sub / f["file"]).unlink()
  ed, rep = load_frames_editor(sub, ds)
  assert rep["edited"] == len(ds) - 1 and rep["missing"] == 1
  ctx = EditContext.make(ds.camera_indices, ds.timesteps)
  got = np.asarray(ed.edited(ctx))
  assert got.sum() == len(ds) - 1 and not got[f["frame_index"]]
  k = (f["frame_index"] + 1) % len(ds)
  renders = jnp.zeros((len(ds),) + ds.image_size + (3,))
  out = np.asarray(ed(jax.random.key(0), renders, renders, ctx))
  np.testing.assert_allclose(out[k], read_image(sub / man["frames"][k]["file"]) / 255.0, atol=1e-6)
  assert np.all(out[f["frame_index"]] == 0)  # no edit: the render itself
  # another size with the same aspect ratio is resized; another aspect ratio is refused
  g = man["frames"][k]["file"]
  big = np.repeat(np.repeat(read_image(sub / g), 2, 0), 2, 1)
  save_png(sub / g, big)
  ed2, _ = load_frames_editor(sub, ds)
  np.testing.assert_array_equal(np.asarray(ed2(jax.random.key(0), renders, renders, ctx))[k], out[k])
  save_png(sub / g, big[:, : big.shape[1] // 2])
  with pytest.raises(InputError, match="aspect ratio"):
    load_frames_editor(sub, ds)


def test_frames_editor_end_to_end_unedited_views_keep(setup, exported, tmp_path):
  """Half the views get the face-paint ground truth; the others are left out: their steps have no
  edit loss (l1 = 0) and only the keep term."""
  ds = _train(setup)
  paint = AvatarDataset(setup["paint"], "train", cache_size=0)
  man = read_manifest(exported)
  d = tmp_path / "edited"
  d.mkdir()
  shutil.copy(exported / "manifest.json", d)
  edited = set()
  for f in man["frames"][::2]:
    shutil.copy(paint.records[f["frame_index"]].image_path, d / f["file"])
    edited.add(f["frame_index"])
  for share in (0.0, 1.0):
    cfg = tiny_edit_config(
      setup, tmp_path / f"out{share}", editor="frames", target_data=None, edited=d, iterations=4, gan=False,
      edited_share=share,
    )  # fmt: skip
    er = EditRun(cfg)
    assert er.edited_frames().tolist() == sorted(edited)
    res = er.run()
    assert res["iterations"] == 4
    for h in er.history:
      i = int(mixed_frame_order(len(ds), 1, cfg.seed, h["iteration"], er.edited_frames(), share)[0])
      assert (h["l1"] > 0) == (i in edited), (h, i)
      assert h["keep_l1"] >= 0 and (h["edit_area"] == 0) == (i not in edited)
      if share == 1.0:
        assert i in edited  # --edited-share 1: every step trains on an edited view


def test_mixed_frame_order_favours_the_edited_views():
  fav = np.array([3, 17, 40])
  its = range(1, 2001)
  picks = [int(mixed_frame_order(100, 1, 0, it, fav, 0.5)[0]) for it in its]
  share = np.mean([p in fav for p in picks])
  assert 0.45 < share < 0.56  # half the steps on the 3 edited of 100 views (+ the uniform 3%)
  assert {p for p in picks if p in fav} == set(fav.tolist())
  assert picks == [int(mixed_frame_order(100, 1, 0, it, fav, 0.5)[0]) for it in its]  # resumable
  plain = [int(frame_order(100, 1, 0, it)[0]) for it in range(1, 51)]
  assert plain == [int(mixed_frame_order(100, 1, 0, it, fav, 0.0)[0]) for it in range(1, 51)]
  assert plain == [int(mixed_frame_order(100, 1, 0, it, None, 0.5)[0]) for it in range(1, 51)]
  assert mixed_frame_order(100, 4, 0, 1, fav, 1.0).shape == (4,)  # fewer favoured than the batch


def _command_cfg(setup, out, command, **kw):
  return tiny_edit_config(setup, out, editor="command", target_data=None, edit_command=command, gan=False, **kw)


def test_command_editor_matches_builtin_targets(setup, tmp_path):
  cmd = (
    f"{sys.executable} {ROOT / 'experiments' / 'synthetic_edit_command.py'} --target-data {setup['paint']} "
    "--noise 0 --iteration {iteration} {input} {output}"
  )
  er = EditRun(_command_cfg(setup, tmp_path / "out", cmd, iterations=3, edit_every=2, edit_command_batch=4))
  res = er.run()
  assert res["edit_command"]["calls"] == 2 and not res["edit_command"]["failures"]
  ext = er.external
  assert ext.valid.sum() == 8
  paint = AvatarDataset(setup["paint"], "train", cache_size=0)
  for i in np.flatnonzero(ext.valid):  # noise 0: the built-in editor's target, byte for byte
    np.testing.assert_array_equal(ext.images[i], read_image(paint.records[i].image_path)[..., :3])


FLAKY_TOOL = """
import shutil, sys, time
from pathlib import Path
state = Path(sys.argv[3])
n = int(state.read_text()) if state.exists() else 0
state.write_text(str(n + 1))
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
if n == 0:
  for p in src.glob("*.png"):
    shutil.copy(p, dst / p.name)
elif n == 1:
  print("boom: the model ran out of memory")
  sys.exit(3)
elif n == 2:
  time.sleep(20)
# n >= 3: exits 0 without writing anything
"""


def test_failing_command_keeps_last_good_edits(setup, tmp_path, capsys):
  tool = tmp_path / "tool.py"
  tool.write_text(FLAKY_TOOL)
  cmd = f"{sys.executable} {tool} {{input}} {{output}} {tmp_path / 'count'}"
  cfg = _command_cfg(
    setup, tmp_path / "out", cmd, iterations=4, edit_every=1, edit_command_batch=2, edit_command_timeout=2.0
  )
  er = EditRun(cfg)
  res = er.run()
  fails = res["edit_command"]["failures"]
  assert [f["iteration"] for f in fails] == [2, 3, 4]
  assert fails[0]["error"] == "exit status 3" and "timed out" in fails[1]["error"] and "missing" in fails[2]["error"]
  text = capsys.readouterr().out
  assert "boom: the model ran out of memory" in text and "keeping the last good edits (2 frames)" in text
  ext = er.external
  first = np.flatnonzero(ext.valid)
  assert len(first) == 2  # the first call's frames, still the identity edits of iteration 1's renders
  d1 = tmp_path / "out" / "edit_command"
  assert res["iterations"] == 4 and not (d1 / "000001").exists()  # old scratch folders are removed


def test_strict_command_failure_stops_with_exit_2(setup, tmp_path, capsys):
  cmd = f"{sys.executable} -c 'import sys; print(\"no GPU\"); sys.exit(4)' {{input}} {{output}}"
  cfg = _command_cfg(setup, tmp_path / "a", cmd, strict=True)
  with pytest.raises(EditCommandError, match="exit status 4.*no GPU.*--strict"):
    EditRun(cfg).run()
  argv = ["edit", "--avatar", str(setup["model"]), "--out", str(tmp_path / "b"), "--editor", "command"]
  argv += ["--edit-command", cmd, "--strict", "--lambda-lpips", "0", "--no-progress", "--no-tensorboard"]
  with pytest.raises(SystemExit) as e:
    cli(argv, handle_errors=True)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "exit status 4" in err[0] and "--strict" in err[0]
  with pytest.raises(InputError, match="must contain \\{output\\}"):
    _command_cfg(setup, tmp_path / "c", "mytool {input}")


def test_region_edit_leaves_outside_bit_identical(setup, tmp_path, capsys):
  cfg = tiny_edit_config(setup, tmp_path / "out", region="face", region_ring=1, wabe="off", iterations=3)
  er = EditRun(cfg)
  start = jax.tree.map(np.array, er.keep_inputs.avatar)
  w = np.asarray(er.keep_inputs.region.weight)
  er.run()
  end = jax.tree.map(np.array, er.state.avatar)
  out = w == 0
  assert out.sum() > 0 and (~out).sum() > 0
  for k in ("xyz", "log_scale", "rotation", "opacity_logit", "sh_dc", "sh_rest"):
    a, b = getattr(start, k)[out], getattr(end, k)[out]
    assert a.tobytes() == b.tobytes(), k
  moved = np.abs(end.sh_dc - start.sh_dc).reshape(len(w), -1).max(-1)
  assert moved[~out & np.asarray(start.active)].max() > 0
  h = er.history[-1]
  assert 0 < h["edit_area"] < 1 and h["keep_l1"] >= 0
  # the one-ring band: more Gaussians may move than the region's own
  core = np.asarray(er.keep_inputs.region.core)
  assert (w > 0).sum() > core.sum() and np.all(w[core] == 1) and np.all((w[~core] < 1))
  # --list-regions prints the model's regions and exits normally
  assert cli(["edit", "--avatar", str(setup["model"]), "--out", str(tmp_path / "x"), "--list-regions"]) == {}
  listing = capsys.readouterr().out
  assert "face" in listing and "teeth" in listing and not (tmp_path / "x").exists()
  with pytest.raises(InputError, match="--region: region 'antlers' is not available"):
    EditRun(tiny_edit_config(setup, tmp_path / "y", region="face,antlers"))


def test_face_rings_and_feather():
  # a strip of 7 triangles: face i = (i, i+1, i+2)
  faces = np.array([[i, i + 1, i + 2] for i in range(7)])
  core = np.arange(7) == 0
  d = R.face_rings(faces, core, 2)
  assert d.tolist() == [0, 1, 1, 2, 2, -1, -1]  # faces 1, 2 share vertices with face 0; 3, 4 with 1, 2
  np.testing.assert_allclose(R.face_weights(d, 2), [1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0, 0])
  m = jnp.zeros((1, 20, 20)).at[:, 5:15, 5:15].set(1.0)
  f = np.asarray(R.feather(m, 3.0))[0]
  assert np.all(f[5:15, 5:15] == 1) and 0.3 < f[10, 4] < 0.7 and f[10, 4] > f[10, 2] > f[10, 0] >= 0
  assert np.asarray(R.feather(m, 0)).tolist() == np.asarray(m).tolist()
