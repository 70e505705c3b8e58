"""The pure parts of experiments/bench_edit_synthetic.py: flicker, aggregates, claim check, table."""

import importlib.util
import math
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
  "bench_edit_synthetic", Path(__file__).parents[1] / "experiments" / "bench_edit_synthetic.py"
)
B = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(B)


def test_flicker_constant_residual_is_zero_and_alternating_is_measured():
  gt = np.zeros((6, 4, 4, 3), np.float32)
  cams = np.array([0, 0, 0, 1, 1, 1])
  ts = np.array([2, 0, 1, 0, 1, 2])  # unsorted: flicker sorts by timestep per camera
  assert B.flicker(gt + 0.3, gt, cams, ts) == 0.0  # a steady error does not flicker
  r = np.zeros_like(gt)
  r[3:] = np.array([0.0, 0.2, 0.0])[:, None, None, None]  # camera 1: 0, .2, 0 -> |diff| .2, .2
  assert math.isclose(B.flicker(gt + r, gt, cams, ts), 0.1, rel_tol=1e-6)  # mean over cameras (0, .2)


def _runs(vals):
  return {
    str(s): dict(metrics={"test/psnr": v, "test_open/psnr": v, "test/flicker": 0.01}, edit_seconds=1.0)
    for s, v in enumerate(vals)
  }


def test_aggregate_and_claim_check():
  runs = dict(plain=_runs([20.0, 20.2, 20.4]), wabe=_runs([21.0, 21.2, 21.4]), gan=_runs([20.1, 20.3, 20.5]))
  agg = B.aggregate(runs, ["plain", "wabe", "gan"], [0, 1, 2])
  assert math.isclose(agg["plain"]["test/psnr"]["mean"], 20.2)
  assert math.isclose(agg["plain"]["test/psnr"]["std"], 0.2)  # sample std (ddof 1)
  rows = {(r["variant"], r["metric"]): r for r in B.claim_check(agg)}
  assert rows["wabe", "test/psnr"]["exceeds_spread"] is True  # +1.0 dB > 0.2
  assert rows["gan", "test/psnr"]["exceeds_spread"] is False  # +0.1 dB < 0.2
  assert rows["gan", "test/flicker"]["exceeds_spread"] is False  # no change
  # only the requested seeds count; one seed: no spread, no verdict
  one = B.claim_check(B.aggregate(runs, ["plain", "wabe"], [0]))
  assert all(r["exceeds_spread"] is None for r in one)
  before = {k: 1.0 for k, _, _ in B.COLUMNS}
  md = B.table(dict(aggregate=agg, before=before), ["plain", "wabe", "gan", "both"])
  assert md.count("\n") == 5 and "+WABE" in md and "20.20 ± 0.20" in md
