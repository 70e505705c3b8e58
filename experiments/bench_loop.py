"""Wall time per iteration of the training loop (`gaedit reconstruct`'s Trainer, the same code path)
against its jitted step timed alone.

Writes a synthetic dataset (gaedit_jax.data.synthetic) once, then for each --prefetch value runs
`Trainer.run()` for --iterations and reports:
  loop ms/it     wall time of the loop between the first and the last metrics flush (after the
                 warm-up: every SH degree compiled), divided by the iterations in between;
  step ms        the jitted step alone on a fixed batch, synchronised per step (as
                 bench_train_step.py), median of --step-iters, same state size and SH degree;
  ratio          loop ms/it / step ms (target <= 1.3 over a long run);
  median interval
                 the median over the metric-flush intervals of ms per iteration (robust to the
                 intervals that compile or densify; defined for short runs too) and its ratio;
  compiles       XLA compilations during the run (train.loop.CompileCounter; SH-degree rises,
                 capacity growth, the evaluation's renders, small eager ops) and their seconds;
  data / metrics / densify / eval s
                 time spent making batches (with --prefetch > 0 in the prefetch thread, beside
                 the step), in the metric flushes (the one host read per log interval, which
                 waits for the queued steps), in densification and in the final evaluation.
Each (--prefetch, --frames-on-device, --steps-per-call) setting runs in a fresh process (its own compilations, as a
real run). Prints a table and writes experiments/results/loop/<tag>.json. --compile-cache DIR: with
JAX's persistent compilation cache (as the `gaedit` command); a second invocation shows the cache
hits.

  python experiments/bench_loop.py                                    # GPU: 128x176, 4000 it
  python experiments/bench_loop.py --iterations 120 --width 64 --height 88 --rows 16 --cols 24 \\
      --sh-degree-interval 40 --tag cpu_small                         # CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.monitoring
import numpy as np

from gaedit_jax.data.synthetic import SynthConfig, generate
from gaedit_jax.flags import build
from gaedit_jax.reconstruct import ReconstructConfig, Trainer
from gaedit_jax.train.config import RunSettings

try:
  from gaedit_jax.train.loop import CompileCounter
except ImportError:  # the loop before this benchmark's changes: the same count, here

  class CompileCounter:
    events: list = []
    hits = [0]

    @classmethod
    def snapshot(cls):
      if not getattr(cls, "_on", False):
        cls._on = True
        jax.monitoring.register_event_duration_secs_listener(
          lambda e, s, **kw: (
            cls.events.append((str(kw.get("fun_name", "?")), s))
            if e == "/jax/core/compile/backend_compile_duration"
            else None
          )
        )
      return len(cls.events), cls.hits[0]

    @classmethod
    def since(cls, snap):
      ev = cls.events[snap[0] :]
      return dict(count=len(ev), seconds=sum(s for _, s in ev), cache_hits=0, events=ev)


RESULTS = Path(__file__).parent / "results" / "loop"


def timed_method(obj, name: str, acc: dict, key: str):
  """Wraps obj.name so its wall time adds up in acc[key] (an instance attribute: the class stays)."""
  fn = getattr(obj, name)

  def wrapper(*a, **k):
    t = time.perf_counter()
    try:
      return fn(*a, **k)
    finally:
      acc[key] = acc.get(key, 0.0) + time.perf_counter() - t

  setattr(obj, name, wrapper)


def step_alone(tr: Trainer, iters: int, sh_degree: int) -> float:
  """Median ms of the trainer's jitted step on one fixed batch, synchronised per step."""
  b = tr.train_ds.batch([0] * tr.cfg.batch_size)
  step = tr.step_fn(sh_degree)
  st = tr.state
  st, m = step(st, b.image, b.camera, b.timestep, tr.model, tr.background)
  jax.block_until_ready(st)
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    st, m = step(st, b.image, b.camera, b.timestep, tr.model, tr.background)
    jax.block_until_ready(st)
    times.append(time.perf_counter() - t)
  tr.state = st
  return float(np.median(times) * 1e3)


def run_once(data: Path, out: Path, a, prefetch: int, frames: str = "auto", steps_per_call: int = 0) -> dict:
  kw = dict(
    data=data,
    out=out,
    iterations=a.iterations,
    batch_size=a.batch_size,
    image_scale=a.image_scale,
    sh_degree_interval=a.sh_degree_interval,
    densify_from=a.densify_from,
    densify_interval=a.densify_interval,
    densify_until=a.densify_until,
    opacity_reset_interval=10 * a.iterations,
    reset_opacity_at_densify_from=False,
    eval_interval=0,
    eval_max_frames=a.eval_max_frames,
    log_interval=a.log_interval,
    checkpoint_interval=0,
    checkpoint_minutes=0.0,
    progress=False,
    tensorboard=False,
    overwrite=True,
  )
  if "prefetch" in RunSettings.__dataclass_fields__:  # the loop before the input pipeline had none
    kw["prefetch"] = prefetch
  if "frames_on_device" in ReconstructConfig.__dataclass_fields__:  # nor frames on the device
    kw["frames_on_device"] = frames
  if "steps_per_call" in ReconstructConfig.__dataclass_fields__:  # nor several steps per call
    kw["steps_per_call"] = steps_per_call
  cfg = build(ReconstructConfig, **kw)
  tr = Trainer(cfg)
  acc: dict = {}
  flushes: list[tuple[int, float]] = []
  flush = tr._flush

  def flush_logged(pending, writer, bar, *args):
    t = time.perf_counter()
    flush(pending, writer, bar, *args)
    acc["metrics"] = acc.get("metrics", 0.0) + time.perf_counter() - t
    last = pending[-1][0]  # an iteration, or the range of a call of several steps
    flushes.append((last[-1] if isinstance(last, range) else last, time.perf_counter()))

  tr._flush = flush_logged
  timed_method(tr.train_ds, "batch", acc, "data")
  if getattr(tr, "frames", None) is not None:  # the batches gathered on the device
    timed_method(tr.frames, "batch", acc, "data")
  timed_method(tr, "_densify", acc, "densify")
  timed_method(tr, "evaluate", acc, "eval")
  timed_method(tr, "export", acc, "export")
  snap = CompileCounter.snapshot()
  t0 = time.perf_counter()
  res = tr.run()
  total = time.perf_counter() - t0
  comp = CompileCounter.since(snap)
  # steady state: from the first flush after the last SH-degree rise and the last densification
  warm = max(a.sh_degree_interval * 3, (a.densify_until or 0)) + 1
  steady = [(i, t) for i, t in flushes if i >= warm]
  if len(steady) >= 2:
    (i0, t0s), (i1, t1s) = steady[0], steady[-1]
    loop_ms = (t1s - t0s) / (i1 - i0) * 1e3
  else:
    loop_ms = float("nan")
  # the median flush interval: robust to the intervals that compile or densify, and defined for
  # runs too short to reach the steady state above
  gaps = [(t1 - t0_) / (i1 - i0) * 1e3 for (i0, t0_), (i1, t1) in zip(flushes, flushes[1:]) if i1 > i0]
  median_ms = statistics.median(gaps) if gaps else float("nan")
  sh = min(3, a.iterations // a.sh_degree_interval)
  step_ms = step_alone(tr, a.step_iters, sh)
  names: dict = {}
  for n, secs in comp["events"]:
    c, s = names.get(n, (0, 0.0))
    names[n] = (c + 1, round(s + secs, 3))
  return dict(
    prefetch=prefetch,
    frames_on_device=getattr(tr, "frames", None) is not None,
    steps_per_call=getattr(tr, "steps_per_call", 1),
    iterations=a.iterations,
    total_s=total,
    loop_ms_per_it=loop_ms,
    steady_from=warm,
    step_ms=step_ms,
    ratio=loop_ms / step_ms,
    loop_ms_median_interval=median_ms,
    ratio_median_interval=median_ms / step_ms,
    compiles=comp["count"],
    compile_s=comp["seconds"],
    compile_cache_hits=comp["cache_hits"],
    compiles_by_name=dict(sorted(names.items(), key=lambda kv: -kv[1][1])),  # name: (count, seconds)
    data_s=acc.get("data", 0.0),
    metrics_s=acc.get("metrics", 0.0),
    densify_s=acc.get("densify", 0.0),
    eval_s=acc.get("eval", 0.0),
    export_s=acc.get("export", 0.0),
    num_gaussians=res["num_gaussians"],
    val_psnr=(res.get("val") or {}).get("psnr"),
  )


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--iterations", type=int, default=4000)
  ap.add_argument("--batch-size", type=int, default=1)
  ap.add_argument("--width", type=int, default=128)
  ap.add_argument("--height", type=int, default=176)
  ap.add_argument(
    "--image-scale",
    type=float,
    default=1.0,
    help="the run's --image-scale (e.g. 4 with --width 138 --height 200: 552x800 training images without "
    "rendering a full-size dataset, which the synthetic generator does slowly)",
  )
  ap.add_argument("--rows", type=int, default=None, help="synthetic head mesh rows (default: SynthConfig's)")
  ap.add_argument("--cols", type=int, default=None, help="synthetic head mesh columns")
  ap.add_argument("--sh-degree-interval", type=int, default=1000)
  ap.add_argument("--densify-from", type=int, default=500)
  ap.add_argument("--densify-interval", type=int, default=500)
  ap.add_argument("--densify-until", type=int, default=2000)
  ap.add_argument("--log-interval", type=int, default=50)
  ap.add_argument("--eval-max-frames", type=int, default=4)
  ap.add_argument("--step-iters", type=int, default=30)
  ap.add_argument("--prefetch", type=int, nargs="+", default=[0, 2])
  ap.add_argument(
    "--frames-on-device",
    nargs="+",
    default=["auto"],
    choices=["auto", "on", "off"],
    help="the loop's --frames-on-device settings to run (each with each --prefetch)",
  )
  ap.add_argument(
    "--steps-per-call",
    type=int,
    nargs="+",
    default=[0],
    help="the loop's --steps-per-call settings to run (0: auto; each with each --prefetch / --frames-on-device)",
  )
  ap.add_argument("--data", type=Path, default=None, help="existing dataset (default: write one in a temp folder)")
  ap.add_argument("--tag", default=None)
  ap.add_argument(
    "--compile-cache",
    type=Path,
    default=None,
    help="JAX persistent compilation cache folder (as the gaedit command uses; run twice to see the hits)",
  )
  ap.add_argument("--child-json", type=Path, default=None, help=argparse.SUPPRESS)  # one run, in a subprocess
  a = ap.parse_args()
  if a.compile_cache is not None:
    jax.config.update("jax_compilation_cache_dir", str(a.compile_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if a.child_json is not None:
    p, f, k = a.prefetch[0], a.frames_on_device[0], a.steps_per_call[0]
    r = run_once(a.data, a.child_json.parent / f"model_p{p}_{f}_k{k}", a, p, f, k)
    a.child_json.write_text(json.dumps(r))
    return
  # this parent process only writes the dataset and reads the children's results: it must not hold
  # the GPU memory JAX preallocates (75%), which the children, run one after another, need
  child_env = dict(os.environ)  # the children allocate as a real run does
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  tmp = Path(tempfile.mkdtemp(prefix="bench_loop_"))
  data = a.data
  if data is None:
    data = tmp / "data"
    sc = dict(out=data, width=a.width, height=a.height, overwrite=True, contact_sheet=False)
    if a.rows:
      sc.update(rows=a.rows, cols=a.cols or a.rows)
    generate(build(SynthConfig, **sc), progress=False)
  dev = jax.devices()[0]
  print(
    f"device: {dev.device_kind} ({jax.default_backend()}), {a.width}x{a.height} x {a.image_scale:g}, B={a.batch_size}, "
    f"{a.iterations} it"
  )
  print(
    "| prefetch | frames on device | steps per call | loop ms/it | median interval ms/it | step ms | ratio | ratio (median) | compiles (s) | cache hits "
    "| data s | metrics s | densify s | eval s | total s |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  rows = []
  argv = list(sys.argv[1:])
  for opt in ("--prefetch", "--frames-on-device", "--steps-per-call"):  # each child gets one value of each
    if opt in argv:
      i = argv.index(opt)
      j = i + 1
      while j < len(argv) and not argv[j].startswith("--"):
        j += 1
      del argv[i:j]
  for p, f, k in [(p, f, k) for p in a.prefetch for f in a.frames_on_device for k in a.steps_per_call]:
    # each setting in a fresh process, so each pays its own compilations (as a real run does)
    child = tmp / f"run_p{p}_{f}_k{k}.json"
    subprocess.run(
      [sys.executable, __file__, *argv, "--prefetch", str(p), "--frames-on-device", f, "--steps-per-call", str(k)]
      + ["--data", str(data), "--child-json", str(child)],
      check=True,
      env=child_env,
    )
    r = json.loads(child.read_text())
    rows.append(r)
    print(
      f"| {p} | {f} ({'yes' if r['frames_on_device'] else 'no'}) | {r.get('steps_per_call', 1)} | {r['loop_ms_per_it']:.2f} | {r['loop_ms_median_interval']:.2f} | {r['step_ms']:.2f} | {r['ratio']:.2f} "
      f"| {r['ratio_median_interval']:.2f} | {r['compiles']} "
      f"({r['compile_s']:.1f}) | {r['compile_cache_hits']} | {r['data_s']:.2f} | {r['metrics_s']:.2f} | {r['densify_s']:.2f} | "
      f"{r['eval_s']:.2f} | {r['total_s']:.1f} |",
      flush=True,
    )
  RESULTS.mkdir(parents=True, exist_ok=True)
  tag = a.tag or f"{jax.default_backend()}_{a.width}x{a.height}_{a.iterations}"
  doc = dict(
    device=dev.device_kind,
    backend=jax.default_backend(),
    host=platform.node(),
    args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
    runs=rows,
  )
  (RESULTS / f"{tag}.json").write_text(json.dumps(doc, indent=2))
  print(f"wrote {RESULTS / f'{tag}.json'}")


if __name__ == "__main__":
  main()
