"""CLI smoke runs on a tiny synthetic dataset: reconstruct, render, eval functions; clear errors for
bad data; a run killed mid-way resumes from its last checkpoint."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gaedit_jax.cli import main as cli
from gaedit_jax.errors import DatasetError
from gaedit_jax.flags import flag_args
from gaedit_jax.flame import make_synthetic_flame, save_flame

TINY = flag_args(
  iterations=8,
  position_lr_max_steps=20,
  densify_from=3,
  densify_interval=3,
  sh_degree=0,
  checkpoint_interval=4,
  eval_interval=0,
  eval_max_frames=3,
  progress=False,
)


@pytest.fixture(scope="module")
def model(tiny, tmp_path_factory):
  out = tmp_path_factory.mktemp("cli") / "model"
  cli(["reconstruct", "--data", str(tiny), "--out", str(out)] + TINY)
  return out


def test_reconstruct_outputs(model):
  assert (model / "cfg.json").exists() and (model / "tb").is_dir()
  assert (model / "point_cloud" / "iteration_8" / "point_cloud.ply").exists()
  for s in ("val", "test"):
    r = json.loads((model / f"results_{s}.json").read_text())
    assert set(r["mean"]) == {"psnr", "ssim"}
  steps = sorted(int(p.name) for p in (model / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [4, 8]


def test_render_splits_orbit_and_cross_identity(model, tiny, tmp_path):
  out = tmp_path / "r"
  cli(
    [
      "render",
      "--model",
      str(model),
      "--out",
      str(out),
      "--splits",
      "test",
      "--orbit",
      "3",
      "--max-frames",
      "3",
      "--target",
      str(tiny),
    ]
  )
  sets = [p for p in out.rglob("renders.gif")]
  assert len(sets) >= 3  # orbit + cross-identity splits of the target
  cross = out / "data" / "val" / "ours_8"
  assert (cross / "renders.mp4").stat().st_size > 0 and (cross / "side_by_side.gif").exists()
  assert len(list((cross / "renders").glob("*.png"))) == 3
  out2 = tmp_path / "r2"
  cli(["render", "--model", str(model), "--out", str(out2), "--splits", "val", "test", "--camera-index", "8"])
  assert (out2 / "test_8" / "ours_8" / "gt.mp4").exists()
  # cross-identity from the held-out camera: the target's train split has no camera 8 and is skipped
  out3 = tmp_path / "r3"
  cli(
    [
      "render",
      "--model",
      str(model),
      "--out",
      str(out3),
      "--max-frames",
      "2",
      "--splits",
      "val",
      "--camera-index",
      "8",
      "--target",
      str(tiny),
    ]
  )
  assert (out3 / "data_8" / "val" / "ours_8" / "renders.gif").exists()
  assert not (out3 / "data_8" / "train").exists()


def test_render_again_replaces_stale_frames(model, tmp_path):
  out = tmp_path / "r"
  cli(["render", "--model", str(model), "--out", str(out), "--splits", "test", "--max-frames", "3"])
  d = out / "test" / "ours_8"
  assert len(list((d / "renders").glob("*.png"))) == 3
  (d / "renders" / "notes.txt").write_text("mine")
  cli(["render", "--model", str(model), "--out", str(out), "--splits", "test", "--max-frames", "2"])
  assert sorted(p.name for p in (d / "renders").iterdir()) == ["00000.png", "00001.png", "notes.txt"]
  assert sorted(p.name for p in (d / "gt").iterdir()) == ["00000.png", "00001.png"]


def test_eval_recon_and_world_export(model, tmp_path):
  from gaedit_jax.avatar import load_trained
  from gaedit_jax.eval_recon import evaluate_model
  from gaedit_jax.nets.lpips import save_lpips
  from gaedit_jax.nets.tiny import random_lpips_params

  (tmp_path / "lp").mkdir()
  save_lpips(random_lpips_params(0), tmp_path / "lp" / "lpips_vgg.safetensors")
  res = evaluate_model(model, ("val",), max_frames=2, out=tmp_path, lpips_weights=str(tmp_path / "lp"))
  assert res["val"]["num_frames"] == 2 and (tmp_path / "results_val.json").exists()
  assert set(res["val"]["mean"]) == {"psnr", "ssim", "lpips"} and res["val"]["mean"]["lpips"] >= 0
  avatar, m, flame, fp, cfg, it_dir = load_trained(model)
  assert int(avatar.num_active) > 0 and flame.expr.shape[0] == 4


def test_gaedit_eval_command(model, tmp_path):
  out = tmp_path / "eval.json"
  res = cli(["eval", "--model", str(model), "--splits", "val", "--out", str(out)])
  saved = json.loads(out.read_text())
  assert set(saved["recon"]["val"]) == {"psnr", "ssim"} and saved["recon"]["val"]["psnr"] > 5
  assert res is None or "recon" in res


def test_installed_command_returns_no_result(model, tmp_path, monkeypatch):
  """The console script runs `sys.exit(main())`: the stage's result (a dict) must not become the exit
  status (it printed the dict and exited 1 after a successful run)."""
  out = tmp_path / "eval.json"
  # --no-compile-cache: the command would point this test process's JAX at the persistent cache
  argv = ["gaedit", "--no-compile-cache", "eval", "--model", str(model), "--splits", "val", "--out", str(out)]
  monkeypatch.setattr(sys, "argv", argv)
  with pytest.raises(SystemExit) as e:
    sys.exit(cli())
  assert e.value.code is None and out.exists()


def test_bad_data_errors(tiny, tmp_path):
  with pytest.raises(DatasetError, match="dataset folder not found"):
    cli(["reconstruct", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")] + TINY)
  broken = tmp_path / "broken"
  shutil.copytree(tiny, broken)
  with pytest.raises(DatasetError, match="FLAME model not found"):
    cli(
      [
        "reconstruct",
        "--data",
        str(broken),
        "--out",
        str(tmp_path / "o"),
        "--flame-model",
        str(tmp_path / "missing.pkl"),
      ]
      + TINY
    )
  # a FLAME model that does not match the tracking (other vertex count)
  save_flame(make_synthetic_flame(0, n_shape=20, n_expr=20, rows=18, cols=24), tmp_path / "other.pkl")
  with pytest.raises(DatasetError, match="static_offset"):
    cli(
      ["reconstruct", "--data", str(broken), "--out", str(tmp_path / "o"), "--flame-model", str(tmp_path / "other.pkl")]
      + TINY
    )
  for p in (broken / "images").glob("*.png"):
    p.write_bytes(b"not a png")
  with pytest.raises(DatasetError, match="cannot read image"):
    cli(["reconstruct", "--data", str(broken), "--out", str(tmp_path / "o2")] + TINY)


def test_killed_run_resumes(tiny, tmp_path):
  out = tmp_path / "k"
  cmd = [
    sys.executable,
    "-m",
    "gaedit_jax.cli",
    "reconstruct",
    "--data",
    str(tiny),
    "--out",
    str(out),
    "--iterations",
    "100000",
    "--sh-degree",
    "0",
    "--checkpoint-interval",
    "3",
    "--no-progress",
    "--no-tensorboard",
  ]
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    t0 = time.time()
    while time.time() - t0 < 120:
      ck = out / "checkpoints"
      if ck.is_dir() and len([p for p in ck.iterdir() if p.name.isdigit()]) >= 2:
        break
      time.sleep(0.2)
    else:
      pytest.fail("no checkpoint written")
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  from recon_data import tiny_config

  from gaedit_jax.io.checkpoint import CheckpointManager
  from gaedit_jax.reconstruct import Trainer

  last = CheckpointManager(out / "checkpoints").latest_step()
  assert last is not None and last >= 3
  tr = Trainer(tiny_config(tiny, out, iterations=last + 2, resume=True, sh_degree=0))
  r = tr.run()
  assert r["iterations"] == last + 2
