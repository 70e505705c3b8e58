"""Train-step time of the GaussianAvatars step (gaedit_jax.reconstruct.train_step).

Workload: an avatar of N Gaussians (default 100k) bound to the synthetic FLAME head
(5340 faces with teeth), images 550 x 802 (NeRSemble at GA's resolution), B = 1 and B = 16 views
of the 16-camera NeRSemble-like rig; full step: FLAME forward, rig, rasterize fwd+bwd, L1 + D-SSIM
+ regularisers, Adam over all groups, densification statistics. Median of --iters steps after
--warmup, synchronised. Prints a table; compare with experiments/bench_rasterizer.py.

  python experiments/bench_train_step.py                       # GPU: N=100k, 550x802, B=1,16
  python experiments/bench_train_step.py --n 20000 --width 138 --height 200 --batches 1 4  # CPU check
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.avatar import baked_model
from gaedit_jax.camera import make_camera
from gaedit_jax.data.synthetic import nersemble_like_rig
from gaedit_jax.density import DensityStats
from gaedit_jax.flags import build as build_config
from gaedit_jax.flame import FlameParams, add_teeth, make_synthetic_flame
from gaedit_jax.reconstruct import ReconstructConfig, StepConfig, TrainState, make_optimizer, make_step
from gaedit_jax.render.types import RenderConfig
from gaedit_jax.rig import Avatar


def isect_need(avatar, model, flame, timestep, cams, tile: int = 16, start: float = 16.0) -> float:
  """The largest intersection count of any view, per Gaussian slot (the steps' metric
  `isect_need`), from one forward at a capacity that holds it (doubled until it does)."""
  from gaedit_jax.avatar import pose
  from gaedit_jax.render import rasterize

  g = pose(avatar, model, flame, timestep)
  cap = start
  while True:
    rc = RenderConfig(sh_degree=0, isect_per_gaussian=cap, tile_size=tile)
    out = jax.jit(lambda g, c: rasterize(g, c, jnp.ones(3), rc))(g, cams)
    if not bool(jnp.any(out.overflow)):
      return float(jnp.max(out.intersections)) / avatar.capacity
    cap *= 2


def settled_isect(need: float, start: float = 16.0) -> float:
  """The capacity per Gaussian a run settles at for views that need `need` (train.loop.
  IsectCapacity from the default `start`: doubled on overflow, shrunk to a power of two >= 2x
  the need when that halves it). Benchmarks use it, so that no timed step overflows (an
  overflowing step renders fewer intersections than the image has)."""
  from gaedit_jax.train.loop import Flushed, IsectCapacity

  cap = IsectCapacity(start)
  while need > cap.value:
    cap.update(Flushed([0], need))
  cap.update(Flushed([], need))
  return cap.value


def memory_table(compiled) -> dict:
  """XLA's memory analysis of a compiled executable, in MiB."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
  out = {k.replace("_size_in_bytes", ""): getattr(m, k, 0) / 2**20 for k in keys}
  out["peak_estimate"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def build(n: int, width: int, height: int, views: int, seed: int = 0):
  model_full = add_teeth(make_synthetic_flame(0))
  T = 16
  flame = FlameParams.zeros(model_full, T)
  model = baked_model(model_full, flame)
  f = model.num_faces
  rng = np.random.default_rng(seed)
  av = Avatar(
    xyz=jnp.asarray(rng.normal(0, 0.3, (n, 3)), jnp.float32),
    log_scale=jnp.asarray(rng.normal(np.log(np.sqrt(f / n)), 0.2, (n, 3)), jnp.float32),
    rotation=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
    opacity_logit=jnp.asarray(rng.normal(0, 1, n), jnp.float32),
    sh_dc=jnp.asarray(rng.normal(0, 0.3, (n, 1, 3)), jnp.float32),
    sh_rest=jnp.asarray(rng.normal(0, 0.05, (n, 15, 3)), jnp.float32),
    binding=jnp.asarray(np.arange(n) % f, jnp.int32),
    active=jnp.ones(n, bool),
  )
  cfg = build_config(ReconstructConfig, data=".", out=".", iterations=600_000)
  opt = make_optimizer(cfg, 1.0)
  fl = flame.motion
  state = TrainState(
    avatar=av,
    flame=fl,
    opt_state=opt.init({"gauss": av.params(), "flame": fl}),
    stats=DensityStats.zeros(n),
    step=jnp.zeros((), jnp.int32),
    key=jax.random.key_data(jax.random.key(0)),
  )
  rig = nersemble_like_rig(16, width, height)
  sel = [rig[i % 16] for i in range(views)]
  cams = make_camera(
    np.stack([c.world_to_camera for c in sel]),
    np.array([c.fx for c in sel], np.float32),
    np.array([c.fy for c in sel], np.float32),
    np.array([c.cx for c in sel], np.float32),
    np.array([c.cy for c in sel], np.float32),
    width=width,
    height=height,
  )
  img = jnp.asarray(rng.uniform(0, 1, (views, height, width, 3)), jnp.float32)
  ts = jnp.asarray(np.arange(views) % T, jnp.int32)
  return state, opt, model, cams, img, ts


def bench(n, width, height, views, iters, warmup, sh_degree, isect):
  state, opt, model, cams, img, ts = build(n, width, height, views)
  step = make_step(opt, StepConfig(render=RenderConfig(sh_degree=sh_degree, isect_per_gaussian=isect)))
  bg = jnp.ones(3)
  t0 = time.perf_counter()
  state, m = step(state, img, cams, ts, model, bg)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t0
  if bool(m["overflow"]):
    raise SystemExit(f"intersection buffer overflow at N={n}, B={views}: raise --isect")
  for _ in range(warmup):
    state, m = step(state, img, cams, ts, model, bg)
  jax.block_until_ready(state)
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    state, m = step(state, img, cams, ts, model, bg)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  return float(np.median(times) * 1e3), compile_s


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--n", type=int, nargs="+", default=[100_000])
  ap.add_argument("--width", type=int, default=550)
  ap.add_argument("--height", type=int, default=802)
  ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
  ap.add_argument("--iters", type=int, default=20)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--sh-degree", type=int, default=3)
  ap.add_argument("--isect", type=float, default=16.0)
  a = ap.parse_args()
  print(
    f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), image {a.width}x{a.height}, "
    f"SH degree {a.sh_degree}"
  )
  print("| N | B | step ms (median) | ms per view | compile s |")
  print("|---|---|---|---|---|")
  for n in a.n:
    for b in a.batches:
      ms, cs = bench(n, a.width, a.height, b, a.iters, a.warmup, a.sh_degree, a.isect)
      print(f"| {n} | {b} | {ms:.2f} | {ms / b:.2f} | {cs:.1f} |", flush=True)


if __name__ == "__main__":
  main()
