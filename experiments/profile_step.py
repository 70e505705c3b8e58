"""Where a jitted step spends its time and memory: device-kernel profile and XLA's memory analysis.

  python experiments/profile_step.py --workload train --views 16            # GaussianAvatars step
  python experiments/profile_step.py --workload edit                        # edit step, cached edit
  python experiments/profile_step.py --workload edit --with-ip2p            # + InstructPix2Pix
  python experiments/profile_step.py --workload ip2p                        # the IP2P call alone
  python experiments/profile_step.py --workload train --n 6000 --width 138 --height 200 --views 2  # CPU

Each workload is built as its benchmark builds it (bench_train_step.py, bench_edit_step.py,
bench_ip2p.py: random weights, the full-size architectures). The step is compiled ahead of time
and XLA's memory analysis of the executable printed (arguments, outputs, temporaries, aliased
(donated) bytes: the step's device-memory peak is about arguments + outputs + temporaries -
aliased). Then --iters calls run under `jax.profiler.trace`; the trace is read back
(`jax.profiler.ProfileData`) and device events are summed by kernel name and by XLA op: a table of
ms per call, sorted, plus the sum of kernel time against the wall time per call (a large gap =
the device waits on launches or the host). On a CPU backend the XLA ops of the host threads are
summed instead.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import jax
import jax.numpy as jnp
import numpy as np
from bench_train_step import memory_table


def auto_isect(a, avatar, model, flame, ts, cams) -> None:
  """--isect auto (None): the capacity a run settles at for these views (bench_train_step)."""
  from bench_train_step import isect_need, settled_isect

  need = isect_need(avatar, model, flame, ts, cams, a.tile)
  a.isect_need = need
  if a.isect is None:
    a.isect = settled_isect(need)
  print(f"intersections: the views need {need:.2f} per Gaussian; capacity {a.isect:g}", flush=True)


def workload(a):
  """(jitted fn, args builder, state threading) for --workload: fn(*args) -> (new first arg, ...)."""
  if a.workload == "train":
    from bench_train_step import build

    from gaedit_jax.reconstruct import StepConfig, make_step
    from gaedit_jax.render.types import RenderConfig

    state, opt, model, cams, img, ts = build(a.n, a.width, a.height, a.views)
    auto_isect(a, state.avatar, model, state.flame, ts, cams)
    rc = RenderConfig(sh_degree=3, isect_per_gaussian=a.isect, tile_size=a.tile, wabe_k=0)
    step = make_step(opt, StepConfig(render=rc, lambda_dssim=a.lambda_dssim))
    return step, [state, img, cams, ts, model, jnp.ones(3)], True
  if a.workload in ("edit",):
    from bench_edit_step import build_edit, build_editor

    from gaedit_jax.edit.loop import make_step
    from gaedit_jax.nets.tiny import random_lpips_params

    e = build_edit(a.n, a.width, a.height, 16.0, lpips_on=True)
    auto_isect(a, e.state.avatar, e.model, e.state.flame, e.timestep, e.camera)
    s = e.settings
    render = dataclasses.replace(s.render, tile_size=a.tile, isect_per_gaussian=a.isect)
    s = dataclasses.replace(s, render=render, lpips_dtype=a.lpips_dtype)
    editor = build_editor(a.tiny, a.size, 20, "bfloat16", "cudnn" if jax.default_backend() == "gpu" else "xla")
    lp = jax.device_put(random_lpips_params(0))
    sq = a.size
    cached = jnp.zeros((1, sq, sq, 3), jnp.float32) + 0.5
    step = make_step(e.run.optimizer, e.run.disc_module, e.run.disc_optimizer, s, a.with_ip2p)
    args = [e.state, e.photo, e.camera, e.timestep, e.camera_index, cached, e.model, e.background, e.mouth, editor, lp]
    return step, args, True
  if a.workload == "ip2p":
    from bench_edit_step import build_editor

    from gaedit_jax.edit.editors import EditContext

    editor = build_editor(a.tiny, a.size, 20, "bfloat16", "cudnn" if jax.default_backend() == "gpu" else "xla")
    img = jax.random.uniform(jax.random.key(1), (1, a.height, a.width, 3))
    ctx = EditContext.make(jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))
    fn = jax.jit(lambda k, r, p: editor(k, r, p, ctx))
    return fn, [jax.random.key(0), img, img], False
  raise SystemExit(f"unknown workload {a.workload}")


def summarise(trace_dir: str, calls: int, top: int) -> dict:
  from jax.profiler import ProfileData

  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
  pd = ProfileData.from_file(path)
  by_name: dict[str, float] = collections.Counter()
  by_op: dict[str, float] = collections.Counter()
  count: dict[str, int] = collections.Counter()
  device = [p for p in pd.planes if p.name.startswith("/device:")]
  planes = device or [p for p in pd.planes if p.name.startswith("/host:CPU")]
  for plane in planes:
    for line in plane.lines:
      if not device and not line.name.startswith("tf_XLA"):
        continue
      if device and "Stream" not in line.name and "stream" not in line.name:
        continue
      for ev in line.events:
        ms = ev.duration_ns / 1e6
        stats = {}
        try:
          stats = dict(ev.stats)
        except Exception:  # noqa: BLE001 - stats are optional in the profile format
          pass
        by_name[ev.name] += ms
        count[ev.name] += 1
        op = stats.get("hlo_op") or stats.get("tf_op") or ev.name
        by_op[str(op)] += ms
  total = sum(by_name.values())
  rows = [(k, v / calls, count[k] / calls) for k, v in by_name.most_common(top)]
  ops = [(k, v / calls) for k, v in by_op.most_common(top)]
  return dict(
    kernel_ms_per_call=total / calls,
    launches_per_call=sum(count.values()) / calls,
    kernels=rows,
    ops=ops,
    planes=[p.name for p in planes],
  )


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workload", choices=("train", "edit", "ip2p"), default="train")
  ap.add_argument("--n", type=int, default=100_000)
  ap.add_argument("--width", type=int, default=550)
  ap.add_argument("--height", type=int, default=802)
  ap.add_argument("--views", type=int, default=16, help="train: views per step")
  ap.add_argument(
    "--isect", type=float, default=None, help="intersection capacity per Gaussian (default: what a run settles at)"
  )
  ap.add_argument("--tile", type=int, default=16)
  ap.add_argument("--lambda-dssim", type=float, default=0.2, help="train: D-SSIM weight (0 drops the term)")
  ap.add_argument("--lpips-dtype", default="float32", help="edit: LPIPS-VGG compute dtype")
  ap.add_argument("--with-ip2p", action="store_true", help="edit: the step with the IP2P edit inside")
  ap.add_argument("--size", type=int, default=512, help="IP2P square size")
  ap.add_argument("--tiny", action="store_true", help="tiny IP2P architecture (CPU check)")
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--top", type=int, default=25)
  ap.add_argument("--no-trace", action="store_true", help="memory analysis and wall time only")
  ap.add_argument("--out", default=None, help="write the summary as JSON here")
  a = ap.parse_args()
  dev = jax.devices()[0]
  print(f"# {a.workload}: {vars(a)}; {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
  fn, args, threads_state = workload(a)
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  mem = memory_table(compiled)
  print(f"compile {compile_s:.1f} s; memory MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in mem.items()), flush=True)

  def call():
    out = compiled(*args)
    if threads_state:
      args[0] = out[0]
    return out

  first = jax.block_until_ready(call())
  m = first[1] if isinstance(first, tuple) and len(first) > 1 and isinstance(first[1], dict) else {}
  if bool(m.get("overflow", False)):  # a skipped, truncated step is not the workload
    raise SystemExit(f"intersection buffer overflow at --isect {a.isect}: raise it (or leave it to auto)")
  for _ in range(a.warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(a.iters):
    t = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t)
  wall = 1e3 * float(np.median(times))
  print(f"wall ms per call (median of {a.iters}, synchronised): {wall:.2f}", flush=True)
  summary = dict(args=vars(a), device=dev.device_kind, compile_s=compile_s, memory_mib=mem, wall_ms=wall)
  stats = dev.memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    summary["process_peak_gib"] = stats["peak_bytes_in_use"] / 2**30
    print(f"process peak device memory so far: {summary['process_peak_gib']:.2f} GiB")
  if not a.no_trace:
    d = tempfile.mkdtemp(prefix="gaedit_profile_")
    with jax.profiler.trace(d):
      for _ in range(a.iters):
        jax.block_until_ready(call())
    s = summarise(d, a.iters, a.top)
    summary.update(s)
    print(
      f"kernel time per call {s['kernel_ms_per_call']:.2f} ms in {s['launches_per_call']:.0f} device events "
      f"vs wall {wall:.2f} ms ({s['planes']})"
    )
    print("| kernel | ms per call | launches per call |\n|---|---|---|")
    for k, v, c in s["kernels"]:
      print(f"| {k[:90]} | {v:.3f} | {c:.0f} |")
    print("| XLA op | ms per call |\n|---|---|")
    for k, v in s["ops"]:
      print(f"| {k[:90]} | {v:.3f} |")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(summary, f, indent=1)


if __name__ == "__main__":
  main()
