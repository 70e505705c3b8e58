"""The edit loop `gaedit edit`: a few iterations on a tiny reconstructed synthetic avatar
with the synthetic editor and with a tiny random InstructPix2Pix; the WABE mask freezes exactly the
masked Gaussians' first update; an interrupted run resumes to the uninterrupted result; `gaedit
render` runs on the output."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from recon_data import edit_cli_args, tiny_edit_config

from gaedit_jax.cli import main as cli
from gaedit_jax.edit import wabe as W
from gaedit_jax.edit.loop import EditConfig, EditRun
from gaedit_jax.errors import InputError
from gaedit_jax.flags import build


@pytest.fixture(scope="module")
def setup(edit_setup):
  return edit_setup


def _cfg(setup, out, **kw):
  return tiny_edit_config(setup, out, **{**kw})


def test_synthetic_edit_cli_outputs_and_render(setup, tmp_path):
  out = tmp_path / "edited"
  with pytest.warns(UserWarning, match="LPIPS"):
    cli(edit_cli_args(setup, out, "--dump-interval", "2", "--checkpoint-interval", "2"))
  assert (out / "point_cloud" / "iteration_3" / "point_cloud.ply").exists()
  assert (out / "point_cloud" / "iteration_3" / "flame_param.npz").exists()
  assert sorted(p.name for p in (out / "edits").glob("*.png")) == ["iteration_00002.png", "iteration_00003.png"]
  assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [2, 3]
  hist = json.loads((out / "edit_summary.json").read_text())["history"]
  for k in ("loss", "l1", "mouth_l1", "mouth_dssim", "gan_d", "gan_g", "reg"):
    assert np.isfinite(hist[-1][k]), k
  assert "lpips" not in hist[-1]
  # the output is a reconstruction model folder: `gaedit render` works unchanged
  cli(
    [
      "render",
      "--model",
      str(out),
      "--out",
      str(tmp_path / "r"),
      "--splits",
      "test",
      "--max-frames",
      "2",
      "--orbit",
      "2",
    ]
  )
  assert (tmp_path / "r" / "test" / "ours_3" / "renders.gif").exists()
  assert (tmp_path / "r" / "orbit" / "ours_3" / "renders.gif").exists()


def _params(avatar):
  return {k: np.asarray(v) for k, v in avatar.params().items()}


def test_wabe_mask_zeroes_exactly_the_masked_gaussians_updates(setup, tmp_path):
  """Fresh Adam moments: a zero gradient gives a zero first update, so every Gaussian the WABE
  mask excludes (not among the first K of any pixel, or bound to the mouth) keeps its position,
  colour, opacity and scale exactly; with WABE off some of them move."""
  moved = {}
  for mode in ("binary", "off"):
    tile = 8 if mode == "binary" else 16  # the exactness holds at either tile size
    run = EditRun(_cfg(setup, tmp_path / mode, wabe=mode, gan=False, tile_size=tile))
    assert run.render_config().tile_size == tile
    before = _params(run.state.avatar)
    active = np.asarray(run.state.avatar.active)
    mouth = np.asarray(run.mouth)
    state, m, imgs = run.step(run.state, np.array([0]))
    after = _params(state.avatar)
    mask = np.asarray(imgs["wabe_mask"])
    changed = np.zeros(active.shape, bool)
    for f in W.MASKED_FIELDS:
      d = (before[f] != after[f]).reshape(active.shape[0], -1).any(-1)
      changed |= d
    if mode == "binary":
      assert set(np.unique(mask)) <= {0.0, 1.0}
      assert 0 < mask.sum() < active.sum()
      assert not mask[mouth].any()  # mouth Gaussians are excluded (METHOD §6)
      assert not changed[mask == 0].any()  # exactly frozen
      assert changed[mask == 1].mean() > 0.5  # the visible ones learn
      frozen = mask == 0
    else:
      moved["off"] = changed
  assert moved["off"][frozen & active].any()  # without the mask some of them would move


def test_resume_equals_uninterrupted(setup, tmp_path):
  full = EditRun(_cfg(setup, tmp_path / "full"))
  full.run()
  part = tmp_path / "part"
  r1 = EditRun(_cfg(setup, part, stop_after=2)).run()
  assert r1["iterations"] == 2 and "export" not in r1
  resumed = EditRun(_cfg(setup, part, resume=True))
  r2 = resumed.run()
  assert r2["iterations"] == 3 and (part / "point_cloud" / "iteration_3" / "point_cloud.ply").exists()
  a, b = _params(full.state.avatar), _params(resumed.state.avatar)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for x, y in zip(jax.tree.leaves(full.state.disc), jax.tree.leaves(resumed.state.disc)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_backward_wabe_mode_and_gan_start(setup, tmp_path):
  """WABE inside the rasterizer's backward (only the mouth is masked) runs; before `gan_start` the
  discriminator is not updated."""
  run = EditRun(_cfg(setup, tmp_path / "bw", wabe="backward", gan_start=5, iterations=2, checkpoint_interval=0))
  assert run.settings.render.wabe_backward
  d0 = [np.asarray(x) for x in jax.tree.leaves(run.state.disc)]
  res = run.run()
  assert res["iterations"] == 2 and np.isfinite(run.history[-1]["loss"])
  for x, y in zip(d0, jax.tree.leaves(run.state.disc)):
    np.testing.assert_array_equal(x, np.asarray(y))


def test_tiny_ip2p_loop_lpips_standard_gan_and_edit_rate(setup, tmp_path):
  from gaedit_jax.nets.lpips import save_lpips
  from gaedit_jax.nets.tiny import make_tiny_ip2p, random_lpips_params

  tiny = make_tiny_ip2p(str(tmp_path / "ip2p"), seed=0)
  (tmp_path / "lp").mkdir()
  save_lpips(random_lpips_params(0), tmp_path / "lp" / "lpips_vgg.safetensors")
  cfg = build(
    EditConfig,
    avatar=setup["model"],
    out=tmp_path / "o",
    editor="ip2p",
    ip2p=tiny,
    prompt="apply face paint",
    ip2p_size=32,
    diffusion_steps=2,
    iterations=2,
    edit_every=2,
    gan_mode="standard",
    wabe="soft",
    lpips_weights=tmp_path / "lp",
    checkpoint_interval=0,
    dump_interval=2,
    progress=False,
    tensorboard=False,
  )
  run = EditRun(cfg)
  assert run.editor.square_size == 32
  assert run.editor.model.config.attention == "cudnn"  # flash attention where it runs (not on the CPU)
  with pytest.raises(InputError, match="--ip2p-attention: .flash. is not one of cudnn, xla"):
    build(EditConfig, avatar=setup["model"], out=tmp_path / "x", ip2p_attention="flash")
  res = run.run()
  assert res["iterations"] == 2 and (tmp_path / "o" / "edits" / "iteration_00002.png").exists()
  h = run.history[-1]
  for k in ("loss", "l1", "lpips", "gan_d", "gan_g"):
    assert np.isfinite(h[k]), k
  # edit-rate option: a step without a new edit trains toward the cached one
  cached = jnp.full(run.edit_shape(1), 0.5, jnp.float32)
  st, m, imgs = run.step(run.state, np.array([1]), do_edit=False, cached=cached)
  np.testing.assert_array_equal(np.asarray(imgs["edit"]), np.asarray(cached))
  assert int(st.step) == 3 and np.isfinite(float(m["loss"]))
