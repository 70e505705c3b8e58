"""Time of one GaussianAvatar-Editor iteration (`gaedit_jax.edit.loop.edit_step`) and its parts.

  python experiments/bench_edit_step.py                  # GPU: 100k Gaussians, 550x802, SD 1.5 IP2P bf16
  python experiments/bench_edit_step.py --tiny           # CPU smoke test (< 2 min)

Workload: the original's edit iteration, B = 1 view (the frontal camera 8 of
the 16-camera rig), an avatar of N Gaussians bound to the synthetic FLAME head (built as in
bench_train_step.py), InstructPix2Pix of the full-size SD 1.5 architecture with random weights
(built as in bench_ip2p.py; 512x512, 20 DDIM steps, 3-way guidance), WABE binary mask, mouth
loss, faithful conditional GAN, LPIPS-VGG with random weights (--no-lpips to drop it), Adam.
Speed does not depend on the weight values. Rows (median of --reps after --warmup, each call
synchronised with jax.block_until_ready; "first" = the first call, i.e. compile + run):

  (a) the IP2P edit call alone          (b) the render forward alone (FLAME + rig + rasterize)
  (c) the jitted edit step minus the edit (do_edit=False: trains toward a cached edit)
  (d) the jitted edit step with the edit (what every iteration of `gaedit edit` runs)
  + parts: render forward+backward, mouth-mask render, LPIPS fwd+bwd, GAN fwd+bwd (512x512)
and the projection of a 1000-iteration edit (1000 x (d); target: < 5 minutes on one H100).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from gaedit_jax.flags import build as build_config

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # bench_ip2p, bench_train_step (builders reused)
sys.path.insert(0, os.path.dirname(HERE))

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn, reps: int, warmup: int) -> tuple[float, float]:
  """(median ms over reps after warmup, seconds of the first call). fn(i) -> arrays to wait on."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(0))
  first = time.perf_counter() - t0
  times = []
  for i in range(1, 1 + warmup + reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(i))
    if i > warmup:
      times.append(time.perf_counter() - t0)
  return 1000.0 * statistics.median(times), first


def build_editor(tiny: bool, size: int, steps: int, dtype: str, attention: str):
  """IP2PEditor around InstructPix2Pix with random weights (full SD 1.5 or the tiny test
  architecture) and a random prompt embedding (there is no text encoder)."""
  from bench_ip2p import SD15_UNET, SD15_VAE, random_ip2p

  from gaedit_jax.edit.editors import IP2PEditor
  from gaedit_jax.nets.tiny import TINY_UNET, TINY_VAE

  unet_cfg, vae_cfg = (TINY_UNET, TINY_VAE) if tiny else (SD15_UNET, SD15_VAE)
  ip = random_ip2p(unet_cfg, vae_cfg, size, dtype, attention, steps)
  emb = jax.random.normal(jax.random.key(7), (3, 77, unet_cfg["cross_attention_dim"]), jnp.float32)
  return IP2PEditor(ip.params, emb, ip, "square")


def build_edit(n: int, width: int, height: int, isect: float, lpips_on: bool, views: int = 1, mesh=None):
  """The edit state and static pieces as `EditRun` makes them, on bench_train_step's avatar, for
  a batch of `views` views (cameras 8, 9, ... of the rig: the frontal one first); `mesh`: the
  view mesh the rasterizer splits its views over (gaedit_jax.parallel; None: one device)."""
  from bench_train_step import build

  from gaedit_jax.edit import discriminator as D
  from gaedit_jax.edit import wabe as W
  from gaedit_jax.edit.loop import EditConfig, StepSettings, init_edit_state, make_optimizer
  from gaedit_jax.edit.mouth import mouth_face_mask, mouth_gaussians
  from gaedit_jax.render.types import RenderConfig

  tstate, _, model, cams, img, ts = build(n, width, height, views=16)
  sel = np.array([(8 + i) % 16 for i in range(views)])  # camera 8: the frontal view
  front = lambda x: x[sel]
  cfg = build_config(EditConfig, avatar=Path("."), out=Path("."), seed=0)
  run = SimpleNamespace(
    cfg=cfg,
    optimizer=make_optimizer(cfg, 1.0),
    disc_module=D.PatchDiscriminator(),
    disc_optimizer=D.make_discriminator_optimizer(cfg.disc_lr),
  )
  state = init_edit_state(cfg.seed, tstate.avatar, tstate.flame, run.optimizer, run.disc_module, run.disc_optimizer)
  settings = StepSettings(
    render=W.render_config("binary", RenderConfig(sh_degree=3, isect_per_gaussian=isect, mesh=mesh)),
    wabe="binary",
    lambda_lpips=10.0 if lpips_on else 0.0,
    gan=True,
    gan_mode="faithful",
  )
  mouth = mouth_gaussians(state.avatar.binding, mouth_face_mask(model), state.avatar.active)
  return SimpleNamespace(
    run=run,
    state=state,
    settings=settings,
    model=model,
    mouth=mouth,
    camera=jax.tree.map(front, cams),
    photo=front(img),
    timestep=front(ts),
    camera_index=jnp.asarray(sel, jnp.int32),
    background=jnp.ones(3, jnp.float32),
  )


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument(
    "--tiny", action="store_true", help="CPU smoke test: tiny IP2P, 6k Gaussians, 138x200 images, 64x64 IP2P"
  )
  ap.add_argument("--n", type=int, default=None, help="Gaussians (default 100k; --tiny 6k)")
  ap.add_argument("--width", type=int, default=None, help="image width (default 550; --tiny 138)")
  ap.add_argument("--height", type=int, default=None, help="image height (default 802; --tiny 200)")
  ap.add_argument("--size", type=int, default=None, help="IP2P square size (default 512; --tiny 64)")
  ap.add_argument("--steps", type=int, default=20, help="DDIM steps per edit")
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="IP2P UNet / VAE dtype")
  ap.add_argument(
    "--attention",
    default=None,
    choices=("cudnn", "xla"),
    help="IP2P self-attention (default: cudnn on GPU, xla elsewhere)",
  )
  ap.add_argument("--no-lpips", action="store_true", help="drop the LPIPS-VGG term (weight 10)")
  ap.add_argument(
    "--isect",
    type=float,
    default=None,
    help="rasterizer intersections per Gaussian (default: what a run settles at for the view's need)",
  )
  ap.add_argument("--reps", type=int, default=None, help="timed calls (default 10; --tiny 3)")
  ap.add_argument("--warmup", type=int, default=None, help="untimed calls after the first (default 3; --tiny 1)")
  ap.add_argument("--iterations", type=int, default=1000, help="edit length for the projection")
  ap.add_argument("--out", default=None, help="also write the rows as JSON here")
  a = ap.parse_args()
  t = a.tiny
  n = a.n or (6_000 if t else 100_000)
  width, height = a.width or (138 if t else 550), a.height or (200 if t else 802)
  size = a.size or (64 if t else 512)
  reps, warmup = a.reps or (3 if t else 10), a.warmup if a.warmup is not None else (1 if t else 3)
  attention = a.attention or ("cudnn" if jax.default_backend() == "gpu" else "xla")
  dev = jax.devices()[0]
  header = (
    f"edit iteration: N={n} Gaussians, {width}x{height}, B=1, IP2P {'tiny' if t else 'SD 1.5'} {size}x{size} "
    f"{a.steps} DDIM steps {a.dtype} attention={attention}, WABE binary, faithful GAN, mouth loss, "
    f"LPIPS {'off' if a.no_lpips else 'on (random VGG)'}; {dev.device_kind} ({jax.default_backend()}); "
    f"jax {jax.__version__}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
    f"{platform.node()}"
  )
  print(header, flush=True)
  t0 = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", flush=True)

  from bench_train_step import isect_need, memory_table, settled_isect

  from gaedit_jax.avatar import pose
  from gaedit_jax.edit import discriminator as D
  from gaedit_jax.edit.editors import EditContext
  from gaedit_jax.edit.loop import make_step
  from gaedit_jax.edit.mouth import render_mouth_mask
  from gaedit_jax.nets.images import to_square
  from gaedit_jax.nets.lpips import lpips
  from gaedit_jax.nets.tiny import random_lpips_params
  from gaedit_jax.render import rasterize

  editor = build_editor(t, size, a.steps, a.dtype, attention)
  log("InstructPix2Pix (random weights) ready")
  e = build_edit(n, width, height, a.isect or 16.0, not a.no_lpips)
  need = isect_need(e.state.avatar, e.model, e.state.flame, e.timestep, e.camera)
  a.isect = a.isect or settled_isect(need)
  log(f"intersections: the view needs {need:.2f} per Gaussian; capacity {a.isect:g}")
  lp = None if a.no_lpips else jax.device_put(random_lpips_params(0))
  s, st, r = e.settings, e.state, e.run
  s = dataclasses.replace(s, render=dataclasses.replace(s.render, isect_per_gaussian=a.isect))
  log("avatar and edit state ready")
  rows: list[dict] = []

  def row(name, ms, first, note=""):
    rows.append(dict(part=name, ms=ms, first_s=first, note=note))
    log(f"{name}: {ms:.2f} ms (first call {first:.1f} s)")

  def posed(avatar, flame):
    return pose(avatar, e.model, flame, e.timestep)

  # (b) render forward (+ parts of the step that run outside the edit)
  fwd = jax.jit(lambda av, fl: rasterize(posed(av, fl), e.camera, e.background, s.render).image)
  row(
    "(b) render forward (FLAME + rig + rasterize, WABE outputs)",
    *timed(lambda i: fwd(st.avatar, st.flame), reps, warmup),
  )
  render = fwd(st.avatar, st.flame)
  if not bool(jnp.isfinite(render).all()):
    raise SystemExit("render is not finite")

  # (a) the IP2P edit call alone (a new key per call: new t and noise)
  ctx = EditContext.make(e.camera_index, e.timestep)
  row(
    "(a) IP2P edit call",
    *timed(lambda i: editor(jax.random.key(i), jnp.clip(render, 0, 1), e.photo, ctx), reps, warmup),
  )
  cached = editor(jax.random.key(0), jnp.clip(render, 0, 1), e.photo, ctx)

  def fwd_bwd(av, fl, cot):
    params = {"gauss": av.params(), "flame": fl}
    img, vjp = jax.vjp(
      lambda p: rasterize(posed(av.with_params(p["gauss"]), p["flame"]), e.camera, e.background, s.render).image, params
    )
    return vjp(cot)

  fb = jax.jit(fwd_bwd)
  cot = jnp.ones_like(render) / render.size
  row("render forward + backward", *timed(lambda i: fb(st.avatar, st.flame, cot), reps, warmup))
  mm = jax.jit(lambda av, fl: render_mouth_mask(posed(av, fl), e.mouth, e.camera, s.render))
  row("mouth-mask render", *timed(lambda i: mm(st.avatar, st.flame), reps, warmup))
  x_sq = to_square(render, size)
  if lp is not None:
    lg = jax.jit(jax.grad(lambda x: jnp.mean(lpips(lp, x, cached, normalize=True))))
    row(f"LPIPS-VGG fwd+bwd ({size}x{size})", *timed(lambda i: lg(x_sq), reps, warmup))
  gg = jax.jit(
    jax.grad(
      lambda x, d: D.adversarial_loss(r.disc_module, d, cached, x, mode="faithful", weight=s.gan_weight)[0],
      argnums=(0, 1),
    )
  )
  row(f"GAN fwd+bwd, D and render ({size}x{size})", *timed(lambda i: gg(x_sq, st.disc), reps, warmup))

  # (c), (d): the real jitted step (state donated: thread it through)
  args = lambda: (e.photo, e.camera, e.timestep, e.camera_index)
  tail = (e.model, e.background, e.mouth, editor, lp)
  step_mem = {}
  for do_edit, name in ((False, "(c) edit step minus the edit (cached edit)"), (True, "(d) edit step with the edit")):
    step = make_step(r.optimizer, r.disc_module, r.disc_optimizer, s, do_edit)
    box = [jax.tree.map(lambda x: jnp.array(x, copy=True), st)]
    step_mem[name[:3]] = memory_table(step.lower(box[0], *args(), cached, *tail).compile())

    def call(i):
      box[0], m, _ = step(box[0], *args(), cached, *tail)
      return box[0], m

    ms, first = timed(call, reps, warmup)
    _, m = call(0)
    if bool(m["overflow"]):
      raise SystemExit(f"intersection buffer overflow: raise --isect (now {a.isect})")
    if not np.isfinite(float(m["loss"])):
      raise SystemExit(f"non-finite loss in {name}")
    row(name, ms, first, note=f"loss {float(m['loss']):.4g}, WABE fraction {float(m['wabe_fraction']):.3f}")

  get = {r_["part"][:3]: r_ for r_ in rows}
  a_ms, b_ms, c_ms, d_ms = (get[k]["ms"] for k in ("(a)", "(b)", "(c)", "(d)"))
  proj_s = a.iterations * d_ms / 1000.0
  compile_s = get["(c)"]["first_s"] + get["(d)"]["first_s"]
  stats = dev.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use", float("nan")) / 2**30
  step_gib = step_mem["(d)"].get("peak_estimate", float("nan")) / 2**10
  print("\n" + header)
  print("| part | ms (median) | first call s (compile + run) | note |")
  print("|---|---|---|---|")
  for x in sorted(rows, key=lambda x: (not x["part"].startswith("("), x["part"])):  # (a)-(d) first
    print(f"| {x['part']} | {x['ms']:.2f} | {x['first_s']:.1f} | {x['note']} |")
  print(f"| (d) - (c): the edit inside the step | {d_ms - c_ms:.2f} | | (a) alone: {a_ms:.2f} |")
  print(
    f"| (c) - (b): the step besides the render forward | {c_ms - b_ms:.2f} | | "
    "backward, mouth mask, LPIPS, GAN, regularisers, WABE, Adam |"
  )
  verdict = (
    "smoke test, no verdict"
    if t
    else f"target < 5 min on one H100: {'met' if proj_s < 300.0 else 'NOT met'} on {dev.device_kind}"
  )
  print(
    f"\nprojected {a.iterations}-iteration edit: {a.iterations} x (d) = {proj_s:.1f} s = {proj_s / 60:.2f} min "
    f"(+ {compile_s:.0f} s compile of (c) and (d)); {verdict}; IP2P share of (d) {a_ms / d_ms:.0%}"
    + f"; device memory of (d) by XLA's analysis (arguments + outputs + temporaries - donated): {step_gib:.2f} GiB"
    + (
      f"; process peak {peak:.1f} GiB (includes the convolution autotuner's scratch, which takes "
      "what is free; run with XLA_PYTHON_CLIENT_MEM_FRACTION to test a smaller card)"
      if np.isfinite(peak)
      else ""
    )
  )
  if a.out:
    with open(a.out, "w") as f:
      json.dump(
        dict(
          header=header,
          rows=rows,
          projected_s=proj_s,
          compile_s=compile_s,
          peak_gib=peak,
          step_memory_mib=step_mem,
          args=vars(a),
        ),
        f,
        indent=2,
      )


if __name__ == "__main__":
  main()
