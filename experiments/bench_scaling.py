"""Multi-GPU scaling on one host: data parallelism over views (gaedit_jax.parallel).

  python experiments/bench_scaling.py --devices 1 2                 # GPU: full sizes (README)
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python experiments/bench_scaling.py --smoke   # CPU, ~2-3 min

Workloads, each timed on 1, 2, 4, 8 devices (those of --devices that exist):
- train: the GaussianAvatars step (reconstruct.make_step) exactly as `gaedit reconstruct
  --devices N` runs it: the per-Gaussian state split over the devices (parallel.split_gaussians),
  FLAME model and background replicated, the batch's views split over the "views" mesh
  (parallel.shard_views), the rasterizer under shard_map (RenderConfig.mesh). `--state replicated`
  adds rows with the whole state on every device (StepConfig.split_state=False), as before the
  split. Avatar, rig and images from bench_train_step.build (550x802, SH degree 3). Strong
  scaling: the same B views per step on every device count.
- edit: the GaussianAvatar-Editor step (edit.loop.make_step) as `gaedit edit --devices N
  --batch-size N` runs it: one view per device per iteration, InstructPix2Pix with the full SD 1.5
  architecture and random weights (bench_edit_step.build_editor: 512x512, 20 DDIM steps, bf16),
  WABE binary, faithful GAN, mouth loss, LPIPS-VGG (random weights). Weak scaling: B = N views,
  so speedup = edited views per second relative to one device with one view. For every N > 1 the
  same N views also run on one device ("1 (batch N)" rows): the losses' reference, and the gain
  of batching alone.
Writes table.md and results.json to --out (default experiments/results/scaling; --smoke:
experiments/results/scaling_cpu_smoke). --profile DIR: a jax.profiler trace of a few steps of each
workload on the largest device count (TensorBoard / Perfetto: all-reduces, host gaps).
Time per step: median of --reps calls after --warmup (each synchronised: jax.block_until_ready).
Losses: the first --check-steps steps on N devices against the one-device run of the same batch;
max relative difference per row, flagged ("!") above --rtol (sums over devices run in another
order: ~1e-7 in float32). The edit rows use --edit-rtol: in bf16 the IP2P's convolutions may run
another algorithm (another summation order) for another per-device batch, differences of the order
of bf16's rounding (2^-8) then pass through 20 DDIM steps; in float32 it is --rtol.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # bench_train_step, bench_edit_step, bench_ip2p (builders reused)
sys.path.insert(0, os.path.dirname(HERE))

import jax
import jax.numpy as jnp
import numpy as np
from bench_edit_step import build_edit, build_editor, timed
from bench_train_step import build as build_train
from bench_train_step import isect_need, settled_isect

from gaedit_jax import parallel
from gaedit_jax.reconstruct import StepConfig
from gaedit_jax.reconstruct import make_step as make_train_step
from gaedit_jax.render.types import RenderConfig

SMOKE = dict(
  size="64x88",
  gaussians=[2000],
  views=[4, 8],
  edit_gaussians=2000,
  tiny_ip2p=True,
  dtype="float32",  # bf16 rounding would hide a wrong sum in the loss check
  ip2p_size=32,
  ip2p_steps=2,
  lpips=False,
  reps=2,
  warmup=0,
)


@dataclasses.dataclass
class Case:
  """One row: a workload on `devices` devices with `views` views per step."""

  workload: str  # "train" | "edit"
  gaussians: int
  views: int
  devices: int
  state: str = "split"  # train on several devices: "split" | "replicated" per-Gaussian state

  @property
  def name(self) -> str:
    n = f"{self.gaussians / 1e6:g}M" if self.gaussians >= 1_000_000 else f"{self.gaussians / 1e3:g}k"
    if self.workload == "train":
      return f"train N={n} B={self.views}"
    return f"edit N={n} (B = views)"

  @property
  def reference(self) -> tuple:
    """The one-device row with the same batch (the losses' reference)."""
    return (self.workload, self.gaussians, self.views, 1, "split")


def train_call(case: Case, a, mesh):
  """fn(i) -> (state, metrics): one train step; the state threads through (donated)."""
  w, h = a.width, a.height
  state, opt, model, cams, img, ts = build_train(case.gaussians, w, h, case.views)
  need = isect_need(state.avatar, model, state.flame, ts, cams)
  isect = a.isect or settled_isect(need)
  split = case.state == "split"
  rc = RenderConfig(sh_degree=a.sh_degree, isect_per_gaussian=isect, mesh=mesh)
  step = make_train_step(opt, StepConfig(render=rc, split_state=split))
  model, bg = parallel.replicate((model, jnp.ones(3, jnp.float32)), mesh)
  cap = int(state.avatar.capacity)
  box = [parallel.split_gaussians(state, mesh, cap) if split else parallel.replicate(state, mesh)]
  views = parallel.shard_views((img, cams, ts), mesh)

  def call(i):
    box[0], m = step(box[0], *views, model, bg)
    return box[0], m

  call.isect, call.need = isect, need
  return call


def edit_call(case: Case, a, mesh, editor, lpips_params):
  """fn(i) -> (state, metrics): one edit step with the edit (what every `gaedit edit` iteration runs)."""
  from gaedit_jax.edit.loop import make_step

  e = build_edit(case.gaussians, a.width, a.height, 16.0, lpips_params is not None, views=case.views, mesh=mesh)
  need = isect_need(e.state.avatar, e.model, e.state.flame, e.timestep, e.camera)
  isect = a.isect or settled_isect(need)
  settings = dataclasses.replace(e.settings, render=dataclasses.replace(e.settings.render, isect_per_gaussian=isect))
  r = e.run
  step = make_step(r.optimizer, r.disc_module, r.disc_optimizer, settings, True)
  sq = editor.square_size
  cached = jnp.zeros((case.views, sq, sq, 3), jnp.float32)  # unused with the edit (do_edit=True)
  views = parallel.shard_views((e.photo, e.camera, e.timestep, e.camera_index, cached), mesh)
  tail = parallel.replicate((e.model, e.background, e.mouth, editor, lpips_params), mesh)
  box = [parallel.replicate(e.state, mesh)]

  def call(i):
    box[0], m, _ = step(box[0], *views, *tail)
    return box[0], m

  call.isect, call.need = isect, need
  return call


def measure(call, a, profile_dir: Path | None = None) -> dict:
  """Times `call` (bench_edit_step.timed) and keeps the metrics of its first --check-steps calls."""
  kept: list[dict] = []

  def fn(i):
    out = call(i)
    if len(kept) < a.check_steps:
      kept.append(out[1])
    return out

  ms, first_s = timed(fn, a.reps, a.warmup)
  if profile_dir is not None:
    profile_dir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(profile_dir)):
      for i in range(a.profile_steps):
        with jax.profiler.StepTraceAnnotation("step", step_num=i):
          jax.block_until_ready(call(i))
  return dict(
    ms=ms,
    first_s=first_s,
    losses=[float(m["loss"]) for m in kept],
    overflow=any(bool(m["overflow"]) for m in kept),
  )


def cases(a, devices: list[int]) -> list[Case]:
  out = []
  if "train" in a.workloads:
    for n in a.gaussians:
      for b in a.views:
        for d in devices:
          if b % d == 0:
            out += [Case("train", n, b, d, st) for st in (a.state if d > 1 else ["split"])]
  if "edit" in a.workloads:
    for d in devices:
      if d > 1:
        out.append(Case("edit", a.edit_gaussians, d, 1))  # the same batch on one device
      out.append(Case("edit", a.edit_gaussians, d, d))
  return out


def summarise(rows: list[dict], rtol: dict[str, float]) -> None:
  """Adds speedup, efficiency, views/s and the loss check to every row (in place)."""
  by = {(r["workload"], r["gaussians"], r["views"], r["devices"], r["state"]): r for r in rows}
  for r in rows:
    r["views_per_s"] = 1000.0 * r["views"] / r["ms"]
    if r["workload"] == "train":
      base = by.get(("train", r["gaussians"], r["views"], 1, "split"))
      r["speedup"] = base["ms"] / r["ms"] if base else float("nan")
    else:  # throughput against one device with one view
      base = by.get(("edit", r["gaussians"], 1, 1, "split"))
      r["speedup"] = r["views_per_s"] / base["views_per_s"] if base else float("nan")
    r["efficiency"] = r["speedup"] / r["devices"]
    ref = by.get((r["workload"], r["gaussians"], r["views"], 1, "split"))
    if r["devices"] == 1 or ref is None:
      r["loss_rel_diff"] = None
    else:
      k = min(len(r["losses"]), len(ref["losses"]))
      a, b = np.asarray(r["losses"][:k]), np.asarray(ref["losses"][:k])
      r["loss_rel_diff"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if k else float("nan")
    r["loss_ok"] = r["loss_rel_diff"] is None or r["loss_rel_diff"] <= rtol[r["workload"]]


def table(header: str, rows: list[dict], rtol: dict[str, float]) -> str:
  lines = [
    header,
    "",
    "| workload | devices | views per step | isect/N (need) | ms per step | speedup | efficiency | edited views/s "
    f"| loss rel. diff vs 1 device (first steps; ! > {rtol['train']:g} train, {rtol['edit']:g} edit) | first call s |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    batch_ref = r["workload"] == "edit" and r["devices"] == 1 and r["views"] > 1
    dev = f"1 (batch {r['views']})" if batch_ref else r["devices"]
    if r["workload"] == "train" and r["devices"] > 1 and r["state"] != "split":
      dev = f"{dev} ({r['state']} state)"
    vps = f"{r['views_per_s']:.2f}" if r["workload"] == "edit" else ""
    d = r["loss_rel_diff"]
    chk = "reference" if d is None else f"{d:.1e}" + ("" if r["loss_ok"] else " !")
    if r["overflow"]:
      chk += " (overflow: raise --isect)"
    lines.append(
      f"| {r['name']} | {dev} | {r['views']} | {r['isect']:g} ({r['isect_need']:.1f}) | {r['ms']:.2f} | {r['speedup']:.2f} | {r['efficiency']:.0%} "
      f"| {vps} | {chk} | {r['first_s']:.1f} |"
    )
  return "\n".join(lines) + "\n"


def parse(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  smoke = " ".join(f"{k}={v}" for k, v in SMOKE.items())
  ap.add_argument("--smoke", action="store_true", help=f"CPU smoke test: {smoke}, devices 1 4 (explicit flags win)")
  ap.add_argument(
    "--devices", type=int, nargs="+", default=None, help="device counts, those that exist (default 1 2 4 8)"
  )
  ap.add_argument("--workloads", nargs="+", default=["train", "edit"], choices=("train", "edit"))
  ap.add_argument("--size", default="550x802", help="image WIDTHxHEIGHT")
  ap.add_argument("--gaussians", type=int, nargs="+", default=[100_000, 1_000_000], help="train: avatar sizes")
  ap.add_argument("--views", type=int, nargs="+", default=[16, 32], help="train: views per step")
  ap.add_argument("--edit-gaussians", type=int, default=100_000, help="edit: avatar size")
  ap.add_argument("--tiny-ip2p", action="store_true", help="edit: the tiny test InstructPix2Pix, not SD 1.5")
  ap.add_argument("--ip2p-size", type=int, default=512, help="edit: IP2P square size")
  ap.add_argument("--ip2p-steps", type=int, default=20, help="edit: DDIM steps per edit")
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="edit: IP2P dtype")
  ap.add_argument("--attention", default=None, choices=("cudnn", "xla"), help="IP2P attention (default: cudnn on GPU)")
  ap.add_argument("--lpips", action=argparse.BooleanOptionalAction, default=True, help="edit: LPIPS-VGG term")
  ap.add_argument(
    "--state",
    nargs="+",
    default=["split"],
    choices=("split", "replicated"),
    help="train on several devices: per-Gaussian state split over them (as gaedit reconstruct) and/or replicated",
  )
  ap.add_argument("--sh-degree", type=int, default=3)
  ap.add_argument(
    "--isect",
    type=float,
    default=None,
    help="rasterizer intersections per Gaussian (default: what a run settles at for the views' need)",
  )
  ap.add_argument("--reps", type=int, default=10, help="timed steps per row")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (compiling) one")
  ap.add_argument("--check-steps", type=int, default=3, help="steps whose losses are compared")
  ap.add_argument("--rtol", type=float, default=1e-5, help="flag rows whose losses differ more (relative)")
  ap.add_argument("--edit-rtol", type=float, default=None, help="the same for the edit (default: --rtol; bf16 1e-2)")
  ap.add_argument("--profile", type=Path, default=None, help="jax.profiler trace of the largest device count here")
  ap.add_argument("--profile-steps", type=int, default=3)
  ap.add_argument("--out", type=Path, default=None, help="table.md, results.json here (default results/scaling)")
  a = ap.parse_args(argv)
  if a.smoke:  # the smoke sizes, unless given explicitly
    ap.set_defaults(**SMOKE)
    a = ap.parse_args(argv)
  if a.out is None:
    a.out = Path(HERE) / "results" / ("scaling_cpu_smoke" if a.smoke else "scaling")
  if a.devices is None:
    a.devices = [1, 4] if a.smoke else [1, 2, 4, 8]
  a.width, a.height = (int(x) for x in a.size.lower().split("x"))
  a.check_steps = min(a.check_steps, 1 + a.warmup + a.reps)
  return a


def main(argv=None) -> list[dict]:
  a = parse(argv)
  have = jax.device_count()
  devices = sorted({d for d in a.devices if d <= have})
  if not devices or devices[0] != 1:
    devices = [1] + devices  # the reference
  attention = a.attention or ("cudnn" if jax.default_backend() == "gpu" else "xla")
  dev = jax.devices()[0]
  header = (
    f"scaling over views: {have} x {dev.device_kind} ({jax.default_backend()}); images {a.width}x{a.height}, "
    f"SH degree {a.sh_degree}; edit: IP2P {'tiny' if a.tiny_ip2p else 'SD 1.5'} {a.ip2p_size}x{a.ip2p_size} "
    f"{a.ip2p_steps} DDIM steps {a.dtype} attention={attention}, WABE binary, faithful GAN, mouth loss, "
    f"LPIPS {'on (random VGG)' if a.lpips else 'off'}; median of {a.reps} steps after {1 + a.warmup}; "
    f"jax {jax.__version__}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {platform.node()}"
  )
  print(header, flush=True)
  t0 = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", flush=True)
  todo = cases(a, devices)
  editor = lpips_params = None
  if "edit" in a.workloads:
    from gaedit_jax.nets.tiny import random_lpips_params

    editor = build_editor(a.tiny_ip2p, a.ip2p_size, a.ip2p_steps, a.dtype, attention)
    lpips_params = jax.device_put(random_lpips_params(0)) if a.lpips else None
    log("InstructPix2Pix (random weights) ready")
  rows: list[dict] = []
  for c in todo:
    mesh = parallel.view_mesh(c.devices, c.views, what="bench_scaling")
    call = train_call(c, a, mesh) if c.workload == "train" else edit_call(c, a, mesh, editor, lpips_params)
    last = c.devices == devices[-1] and c.devices > 1 or devices == [1]
    tag = "" if c.state == "split" else f"_{c.state}"
    prof = a.profile / f"{c.workload}_N{c.gaussians}_B{c.views}_d{c.devices}{tag}" if a.profile and last else None
    r = dict(dataclasses.asdict(c), name=c.name, isect=call.isect, isect_need=call.need, **measure(call, a, prof))
    del call  # free this row's state before the next
    rows.append(r)
    log(
      f"{c.name}, {c.devices} device(s) ({c.state} state), {c.views} views: {r['ms']:.2f} ms (first {r['first_s']:.1f} s), "
      f"losses {r['losses']}"
    )
  rtol = dict(train=a.rtol, edit=a.edit_rtol or (a.rtol if a.dtype == "float32" else 1e-2))
  summarise(rows, rtol)
  md = table(header, rows, rtol)
  print("\n" + md, flush=True)
  bad = [f"{r['name']} on {r['devices']}" for r in rows if not r["loss_ok"]]
  if bad:
    print(f"losses differ from one device by more than the tolerance {rtol}: {', '.join(bad)}")
  a.out.mkdir(parents=True, exist_ok=True)
  (a.out / "table.md").write_text(md)
  args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
  (a.out / "results.json").write_text(json.dumps(dict(header=header, args=args, rows=rows), indent=2))
  return rows


if __name__ == "__main__":
  main()
