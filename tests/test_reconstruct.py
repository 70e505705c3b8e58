"""The jitted GaussianAvatars train step and the training loop (tiny synthetic dataset)."""

import json

import jax
import numpy as np
from recon_data import tiny_config

from gaedit_jax.flags import build
from gaedit_jax.reconstruct import Trainer
from gaedit_jax.rig import binding_counter
from gaedit_jax.train.loop import frame_order
from gaedit_jax.train.optimizer import position_lr


def test_step_lowers_loss_on_fixed_batch(tiny, tmp_path):
  tr = Trainer(tiny_config(tiny, tmp_path / "m"))
  b = tr.train_ds.batch([0, 5])  # B = 2 views in one native batch
  step = tr.step_fn(0)
  losses = []
  for _ in range(25):
    tr.state, m = step(tr.state, b.image, b.camera, b.timestep, tr.model, tr.background)
    losses.append(m["loss"])
  losses = np.asarray(jax.device_get(losses))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.8 * losses[0], losses
  assert int(tr.state.step) == 25
  # densification statistics were accumulated for visible Gaussians
  assert float(tr.state.stats.denom.max()) > 0 and float(tr.state.stats.accum.max()) > 0
  # only the two batch timesteps' FLAME parameters moved (expr lr 1e-3)
  d = np.abs(np.asarray(tr.state.flame.expr) - np.asarray(tr.flame0.expr)).sum(-1)
  moved = set(np.flatnonzero(d > 0).tolist())
  assert moved and moved <= set(np.asarray(b.timestep).tolist())


def test_schedule_and_data_order():
  from pathlib import Path

  from gaedit_jax.reconstruct import ReconstructConfig

  cfg = build(ReconstructConfig, data=Path("."), out=Path("."), iterations=100)
  f = position_lr(cfg.position_schedule(), 2.0)
  np.testing.assert_allclose(float(f(0)), 5e-3 * 2, rtol=1e-5)
  np.testing.assert_allclose(float(f(100)), 5e-5 * 2, rtol=1e-5)
  np.testing.assert_allclose(float(f(50)), np.sqrt(5e-3 * 5e-5) * 2, rtol=1e-4)  # log-linear
  np.testing.assert_allclose(float(f(1000)), 5e-5 * 2, rtol=1e-5)
  seen = np.concatenate([frame_order(10, 3, 0, it) for it in range(1, 4)])
  assert len(set(seen.tolist())) == 9  # one epoch without repeats
  np.testing.assert_array_equal(frame_order(10, 3, 0, 5), frame_order(10, 3, 0, 5))


def test_training_loop_densifies_and_exports(tiny, tmp_path):
  cfg = tiny_config(tiny, tmp_path / "m", iterations=20, densify_grad_threshold=1e-5)
  tr = Trainer(cfg)
  res = tr.run()
  assert res["iterations"] == 20
  f = tr.model.num_faces
  counts = np.asarray(binding_counter(tr.state.avatar, f))
  assert counts.sum() == int(tr.state.avatar.num_active) and (counts >= 1).all()
  assert res["densify"] and res["densify"][0]["iteration"] == 5
  assert any(d["clone"] + d["split"] > 0 for d in res["densify"])
  out = tmp_path / "m"
  assert (out / "point_cloud" / "iteration_20" / "point_cloud.ply").exists()
  assert (out / "point_cloud" / "iteration_20" / "flame_param.npz").exists()
  from gaedit_jax.io.ply import read_ply

  w = read_ply(out / "point_cloud" / "iteration_20" / "world_timestep_00000.ply")
  assert w["x"].shape[0] == int(tr.state.avatar.num_active) and "binding_0" not in w
  r = json.loads((out / "results_val.json").read_text())
  assert r["num_frames"] == 3 and np.isfinite(r["mean"]["psnr"])
  assert "val" in res and "test" in res


def test_overflow_skips_step_and_grows_buffer(tiny, tmp_path, capsys):
  tr = Trainer(
    tiny_config(
      tiny,
      tmp_path / "m",
      iterations=2,
      isect_per_gaussian=0.0,
      log_interval=1,
      sh_degree=0,
      eval_max_frames=1,
      tile_size=8,
    )
  )
  assert tr.render_config(0).tile_size == 8  # the faster GPU setting runs the same loop
  b = tr.train_ds.batch([0])
  before = np.asarray(tr.state.avatar.opacity_logit)
  st, m = tr.step_fn(0)(tr.state, b.image, b.camera, b.timestep, tr.model, tr.background)
  assert bool(m["overflow"]) and int(st.step) == 1
  np.testing.assert_array_equal(np.asarray(st.avatar.opacity_logit), before)  # update skipped
  tr.state = st
  tr.run()
  assert tr.isect >= 4.0 and "overflow" in capsys.readouterr().out
