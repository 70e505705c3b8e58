"""Options of the original edit script in `gaedit edit`: mouth masks read from files (--mouth-masks),
the SSIM phase (--ssim-last), evaluation / export / checkpoint every --eval-every iterations, and
training on all splits (--no-eval). Tiny synthetic avatar and the synthetic editor, as
test_edit_loop.py."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from recon_data import edit_cli_args, tiny_edit_config

from gaedit_jax.cli import main as cli
from gaedit_jax.cli import parse_config
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.edit.loop import EditConfig, EditRun
from gaedit_jax.errors import InputError


@pytest.fixture(scope="module")
def setup(edit_setup):
  return edit_setup


def _cfg(setup, out, **kw):
  return tiny_edit_config(setup, out, **{"eval_every": 0, **kw})


def _copy(tree):
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def _block_mask(h, w, t, c):
  """A frame-dependent rectangle (uint8, 255 inside)."""
  m = np.zeros((h, w), np.uint8)
  y0, x0 = 8 + 3 * t, 4 + 2 * c
  m[y0 : y0 + 24, x0 : x0 + 20] = 255
  return m


def _write_png_masks(folder, ds, fn=_block_mask):
  folder.mkdir(parents=True, exist_ok=True)
  h, w = ds.image_size
  for r in ds.records:
    Image.fromarray(fn(h, w, r.timestep, r.camera_index)).save(folder / (r.image_path.stem + ".png"))
  return folder


# ------------------------------------------------------------------------------------------------
# --mouth-masks
# ------------------------------------------------------------------------------------------------


def test_mouth_mask_files_in_the_original_layouts(setup, tmp_path):
  """PNG folder, LangSAM-style per-image tensors (unpadded names, photo resolution, box-resampled to
  a half-size run) and the original's {sequence: [T, C, H, W]} file give the same masks; a missing
  or mis-sized mask is refused when the masks are opened."""
  from gaedit_jax.edit.mouth import MouthMasks

  ds = AvatarDataset(setup["data"], "train")
  h, w = ds.image_size
  png = _write_png_masks(tmp_path / "png", ds)
  mm = MouthMasks(png, ds)
  idx = [0, 5, 23]
  want = np.stack([_block_mask(h, w, ds.records[i].timestep, ds.records[i].camera_index) for i in idx]) / 255.0
  np.testing.assert_array_equal(mm.batch(idx), want.astype(np.float32))

  # .pth tensors (bool, True = mouth) named <t>_<c> without padding, at the photos' size, for a
  # half-resolution run: 2x2 box averages of the block (even corners) are exact
  half = AvatarDataset(setup["data"], "train", image_scale=0.5)
  pth = tmp_path / "pth"
  pth.mkdir()
  full = np.zeros((4, 9, h, w), bool)
  for r in ds.records:
    m = _block_mask(h, w, r.timestep, r.camera_index) > 0
    full[r.timestep, r.camera_index] = m
    torch.save(torch.from_numpy(m), pth / f"{r.timestep}_{r.camera_index}.pth")
  down = want.reshape(len(idx), h // 2, 2, w // 2, 2).mean((2, 4))
  np.testing.assert_allclose(MouthMasks(pth, half).batch(idx), down, atol=1e-6)
  # the original's cached dict file (one sequence: its only key is used)
  torch.save({"EMO-1": torch.from_numpy(full)}, tmp_path / "306_EMO-1_mouth_mask.pth")
  np.testing.assert_array_equal(MouthMasks(tmp_path / "306_EMO-1_mouth_mask.pth", ds).batch(idx), want)

  missing = ds.records[7].image_path.stem
  (png / f"{missing}.png").unlink()
  with pytest.raises(InputError, match=f"no mouth mask for frame {missing}.png.*expected .*{missing}.png"):
    MouthMasks(png, ds)
  Image.fromarray(np.zeros((h + 2, w), np.uint8)).save(png / f"{missing}.png")
  with pytest.raises(InputError, match=f"{missing}.png.*expected the photo's {w}x{h}"):
    MouthMasks(png, ds)


def test_mouth_masks_from_a_folder_drive_the_mouth_term(setup, tmp_path):
  """The step uses the file masks (its mouth mask and mouth L1 are those of the files), a run with
  all-zero masks has a zero mouth term, and a missing mask stops the run before its first step."""
  ds = AvatarDataset(setup["data"], "train")
  masks = _write_png_masks(tmp_path / "masks", ds)
  run = EditRun(_cfg(setup, tmp_path / "o", mouth_masks=masks, gan=False))
  idx = np.array([4])
  b = run.train_ds.batch(idx)
  st, m, imgs = run.step(_copy(run.state), idx)
  r = ds.records[4]
  want = _block_mask(*ds.image_size, r.timestep, r.camera_index)[None] / 255.0
  np.testing.assert_array_equal(np.asarray(imgs["mouth_mask"]), want)
  mm = want[..., None]
  l1 = np.mean(np.abs(np.asarray(imgs["render"]) * mm - np.asarray(b.image) * mm))
  np.testing.assert_allclose(float(m["mouth_l1"]), l1, rtol=1e-5)
  assert float(m["mouth_l1"]) > 0

  zeros = _write_png_masks(tmp_path / "zeros", ds, fn=lambda h, w, t, c: np.zeros((h, w), np.uint8))
  run0 = EditRun(_cfg(setup, tmp_path / "o0", mouth_masks=zeros, gan=False, iterations=1))
  run0.run()
  assert run0.history[-1]["mouth_l1"] == 0.0 and abs(run0.history[-1]["mouth_dssim"]) < 1e-6

  (zeros / f"{ds.records[11].image_path.stem}.png").unlink()
  with pytest.raises(InputError, match=f"{ds.records[11].image_path.stem}"):
    EditRun(_cfg(setup, tmp_path / "o1", mouth_masks=zeros, gan=False)).run()
  assert not (tmp_path / "o1" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------------
# --ssim-last
# ------------------------------------------------------------------------------------------------


def test_ssim_phase_start_mirrors_the_original_threshold():
  from gaedit_jax.edit.schedule import ssim_phase_start

  # GAE: iteration > round(0.9 * (iterations - first_iter)); 1000 iterations -> 900..1000
  assert ssim_phase_start(1000, 0.1) == 899
  assert ssim_phase_start(1000, 1.0) == 0  # the released code with its flag: the whole edit
  assert ssim_phase_start(1000, 0.0) is None
  with pytest.raises(InputError, match="ssim-last"):
    ssim_phase_start(1000, 1.5)


def test_ssim_term_replaces_lpips_without_its_gradient():
  from gaedit_jax.edit.schedule import edit_dssim, ssim_phase

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((1, 16, 16, 3), np.float32))
  t = jnp.asarray(rng.random((1, 16, 16, 3), np.float32))

  def total(lp, step):  # the edit loss's LPIPS and SSIM terms as the step combines them
    phase = ssim_phase(jnp.asarray(step), 5)
    return (1.0 - phase) * 10.0 * lp + phase * 10.0 * edit_dssim(x, t)

  assert float(jax.grad(total)(jnp.float32(0.3), 5)) == 0.0  # in the phase: no LPIPS gradient
  assert float(jax.grad(total)(jnp.float32(0.3), 4)) == 10.0  # before: LPIPS as usual


def test_ssim_term_is_off_before_the_last_fraction_and_on_in_it(setup, tmp_path):
  """10 iterations, --ssim-last 0.1: steps 0..7 train as without the option (same loss, same
  update), steps 8, 9 add 10 (1 - SSIM(render, edit)) to the loss and change the update."""
  run = EditRun(
    _cfg(setup, tmp_path / "s", iterations=10, ssim_last=0.1, gan=False, lambda_mouth=0.0, synthetic_noise=0.0)
  )
  assert run.settings.ssim_start == 8

  def at(k):
    st = dataclasses.replace(_copy(run.state), step=jnp.asarray(k, jnp.int32))
    new, m, _ = run.step(st, np.array([2]))
    return {k: float(v) for k, v in m.items()}, {k: np.asarray(v) for k, v in new.avatar.params().items()}

  (m0, p0), (m7, p7), (m8, p8) = at(0), at(7), at(8)
  for m in (m0, m7):
    assert m["ssim_phase"] == 0.0
    np.testing.assert_allclose(m["loss"], 10 * m["l1"] + m["reg"], rtol=1e-6)
  assert m8["ssim_phase"] == 1.0 and m8["edit_dssim"] > 0.01
  np.testing.assert_allclose(m8["loss"], 10 * m8["l1"] + m8["reg"] + 10 * m8["edit_dssim"], rtol=1e-6)
  np.testing.assert_allclose(m8["loss"] - m0["loss"], 10 * m0["edit_dssim"], rtol=1e-5)
  for k in p0:
    np.testing.assert_array_equal(p0[k], p7[k], err_msg=k)  # no gradient from the term before
  assert any(not np.array_equal(p0[k], p8[k]) for k in p0)  # a different update in the phase


# ------------------------------------------------------------------------------------------------
# --eval-every, --eval / --no-eval
# ------------------------------------------------------------------------------------------------


def test_eval_every_writes_metrics_ply_and_checkpoint(setup, tmp_path):
  out = tmp_path / "e"
  cli(
    edit_cli_args(
      setup,
      out,
      "--eval-every",
      "2",
      "--eval-max-frames",
      "2",
      "--checkpoint-interval",
      "0",
      "--dump-interval",
      "0",
      "--lambda-lpips",
      "0",
    )
  )
  assert sorted(p.name for p in (out / "eval").iterdir()) == ["iteration_2.json", "iteration_3.json"]
  for it in (2, 3):
    assert (out / "point_cloud" / f"iteration_{it}" / "point_cloud.ply").exists()
    assert (out / "point_cloud" / f"iteration_{it}" / "flame_param.npz").exists()
  assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [2, 3]
  res = json.loads((out / "eval" / "iteration_3.json").read_text())
  assert res["iteration"] == 3 and set(res["splits"]) == {"val", "test"}
  for s in ("val", "test"):
    for what in ("photos", "edit_targets"):
      r = res["splits"][s][what]
      assert r["num_frames"] == 2 and np.isfinite(r["mean"]["psnr"]) and 0 < r["mean"]["ssim"] <= 1
  # the numbers are those of the exported avatar (renders of point_cloud/iteration_3 vs the photos)
  from gaedit_jax.eval_recon import evaluate_model

  again = evaluate_model(out, splits=("val",), max_frames=2, out=tmp_path / "re")
  np.testing.assert_allclose(again["val"]["mean"]["psnr"], res["splits"]["val"]["photos"]["mean"]["psnr"], rtol=1e-4)


def test_no_eval_trains_on_all_splits(setup, tmp_path):
  assert parse_config(EditConfig, ["--avatar", "a", "--out", "o"]).eval
  assert not parse_config(EditConfig, ["--avatar", "a", "--out", "o", "--no-eval"]).eval
  held = EditRun(_cfg(setup, tmp_path / "held"))
  assert len(held.train_ds) == len(AvatarDataset(setup["data"], "train")) == 24
  assert set(held.eval_ds) == {"val", "test"}

  run = EditRun(_cfg(setup, tmp_path / "all", eval=False, iterations=2, eval_every=1))
  n = {s: len(AvatarDataset(setup["data"], s)) for s in ("train", "val", "test")}
  assert len(run.train_ds) == sum(n.values()) == 36 and run.eval_ds == {}
  every = AvatarDataset(setup["data"], "all")
  assert sorted(zip(run.train_ds.camera_indices.tolist(), run.train_ds.timesteps.tolist())) == sorted(
    zip(every.camera_indices.tolist(), every.timesteps.tolist())
  )
  b = run.train_ds.batch([n["train"], n["train"] + n["val"] + 1])  # a val and a test frame
  assert b.camera_index.tolist() == [8, run.train_ds.camera_indices[n["train"] + n["val"] + 1]]
  assert b.timestep.tolist()[1] == 3 and b.frame_index.tolist() == [24, 28]
  res = run.run()
  assert res["iterations"] == 2 and not (tmp_path / "all" / "eval").exists()  # nothing held out
  assert (tmp_path / "all" / "point_cloud" / "iteration_1" / "point_cloud.ply").exists()
