"""experiments/bench_scaling.py --smoke on 4 CPU devices, in a fresh process (JAX fixes its device
count when it starts): the table has its rows, and the losses on 4 devices equal one device's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow  # ~70 s on 2 free cores: compiling 5 steps
def test_scaling_smoke_on_4_cpu_devices(tmp_path):
  root = Path(__file__).parent.parent
  flags = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"  # compile faster
  env = dict(
    os.environ,
    XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip(),
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
  )
  cmd = [sys.executable, str(root / "experiments" / "bench_scaling.py"), "--smoke", "--views", "4"]
  cmd += ["--devices", "1", "4", "8", "--reps", "1", "--state", "split", "replicated", "--out", str(tmp_path)]
  r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
  tail = (r.stdout + r.stderr)[-6000:]
  assert r.returncode == 0, tail
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  got = [(x["workload"], x["views"], x["devices"], x["state"]) for x in rows]
  # 8 devices do not exist: dropped; the edit runs one view per device, and its batch on one device
  assert got == [
    ("train", 4, 1, "split"),
    ("train", 4, 4, "split"),
    ("train", 4, 4, "replicated"),
    ("edit", 1, 1, "split"),
    ("edit", 4, 1, "split"),
    ("edit", 4, 4, "split"),
  ], got
  for x in rows:
    assert len(x["losses"]) == 2 and all(v > 0 for v in x["losses"]), x
    assert not x["overflow"] and 0 < x["isect_need"] <= x["isect"], x  # the capacity a run settles at
    if x["devices"] > 1:
      assert x["loss_rel_diff"] < 1e-5 and x["loss_ok"], x
  md = (tmp_path / "table.md").read_text()
  assert (
    md.count("\n| train N=2k B=4 |") == 3
    and "| 4 (replicated state) | 4 |" in md
    and md.count("\n| edit N=2k (B = views) |") == 3
  ), md
  assert "| 1 (batch 4) | 4 |" in md, md


def test_benchmarks_time_the_capacity_a_run_settles_at():
  """settled_isect follows train.loop.IsectCapacity from the default 16 per Gaussian: kept while
  the views need more than 4, shrunk to a power of two >= 2x the need, doubled past 16."""
  sys.path.insert(0, str(Path(__file__).parent.parent / "experiments"))
  from bench_train_step import settled_isect

  got = {need: settled_isect(need) for need in (0.4, 2.6, 4.0, 4.1, 8.58, 16.0, 23.6)}
  assert got == {0.4: 2.0, 2.6: 8.0, 4.0: 8.0, 4.1: 16.0, 8.58: 16.0, 16.0: 16.0, 23.6: 32.0}, got
