"""Cost of one densification event (`Trainer._densify`, gaedit reconstruct's own code path) at a
fixed capacity: wall time and XLA compilations per event.

Writes a small synthetic dataset, builds a Trainer with room for the new Gaussians, then runs
--events densifications, each after setting the density statistics so that a different share of
the Gaussians clones or splits (a new split count every event, as in a real run). The first event
compiles the small programs densification uses; later ones should compile nothing.

  python experiments/bench_densify.py                 # ~1 min on a 2-core CPU
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import platform
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.data.synthetic import SynthConfig, generate
from gaedit_jax.density import DensityStats
from gaedit_jax.flags import build
from gaedit_jax.reconstruct import ReconstructConfig, Trainer
from gaedit_jax.train.loop import CompileCounter


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--events", type=int, default=8)
  ap.add_argument("--capacity", type=int, default=40_000, help="Gaussian slots (room for the new ones)")
  ap.add_argument("--rows", type=int, default=16, help="synthetic head mesh rows (faces ~ 4 rows cols)")
  ap.add_argument("--cols", type=int, default=24)
  a = ap.parse_args()
  root = Path(tempfile.mkdtemp(prefix="bench_densify_"))
  sc = dict(out=root / "data", width=48, height=64, num_cameras=4, num_timesteps=2, rows=a.rows, cols=a.cols)
  generate(build(SynthConfig, **sc, supersample=1, contact_sheet=False, overwrite=True), progress=False)
  cfg = build(
    ReconstructConfig, data=root / "data", out=root / "out", capacity=a.capacity, progress=False, overwrite=True
  )
  tr = Trainer(cfg)
  cap = int(tr.state.avatar.capacity)
  rng = np.random.default_rng(0)
  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.node()}, capacity {cap}")
  print("| event | ms | compilations (s) | Gaussians after | programs compiled |")
  print("|---|---|---|---|---|")
  for ev in range(a.events):
    g = (rng.uniform(0, 1, cap) < 0.02 + 0.01 * ev).astype(np.float32) * 1e-3  # above the 2e-4 threshold
    ones = jnp.ones(cap, jnp.float32)
    tr.state = dataclasses.replace(
      tr.state, stats=DensityStats(accum=jnp.asarray(g), denom=ones, max_radii=jnp.zeros(cap, jnp.float32))
    )
    snap = CompileCounter.snapshot()
    t = time.perf_counter()
    tr._densify(1000 + ev, True, False)
    jax.block_until_ready(tr.state)
    ms = (time.perf_counter() - t) * 1e3
    c = CompileCounter.since(snap)
    names = collections.Counter(n for n, _ in c["events"])
    top = ", ".join(f"{n} x{k}" for n, k in names.most_common(4))
    print(f"| {ev} | {ms:.0f} | {c['count']} ({c['seconds']:.2f}) | {int(tr.state.avatar.num_active)} | {top} |")


if __name__ == "__main__":
  main()
