"""InstructPix2Pix edit-call benchmark: our jitted Flax call (bf16) vs diffusers' PyTorch modules (fp16).

  python experiments/bench_ip2p.py                  # full-size SD 1.5 InstructPix2Pix, 512x512 (GPU)
  python experiments/bench_ip2p.py --tiny --size 64 --reps 2 --warmup 1    # CPU smoke test

Workload (docs/PERF_ANCHORS.md, "InstructPix2Pix edit step"): the original editor's per-iteration
2D edit with random weights (speed does not depend on the values): encode the render (posterior
sample) and the original (mode), noise at t, 20 DDIM steps with 3-way guidance (UNet batch 3 x
images), decode. Full-size Stable Diffusion 1.5 InstructPix2Pix architecture: UNet 8 -> 4 channels,
(320, 640, 1280, 1280), 2 layers per block, 8 heads, cross-attention 768; VAE (128, 256, 512, 512).

- PyTorch: diffusers' UNet2DConditionModel / AutoencoderKL / DDIMScheduler in fp16, eager, SDPA
  attention, the original's loop (GaussianAvatar-Editor's `edit_latents`, `num_train_timesteps = t`).
- Ours: `InstructPix2Pix.edit` (one jitted call) in bf16, with the UNet self-attention as
  diffusers' einsum ("xla") or cuDNN flash attention ("cudnn").
Time = median of `reps` calls after `warmup` calls, synchronised; a new t and key every call.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

SD15_UNET = dict(
  sample_size=64,
  in_channels=8,
  out_channels=4,
  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
  block_out_channels=(320, 640, 1280, 1280),
  layers_per_block=2,
  attention_head_dim=8,
  cross_attention_dim=768,
)
SD15_VAE = dict(
  in_channels=3,
  out_channels=3,
  down_block_types=("DownEncoderBlock2D",) * 4,
  up_block_types=("UpDecoderBlock2D",) * 4,
  block_out_channels=(128, 256, 512, 512),
  layers_per_block=2,
  latent_channels=4,
  norm_num_groups=32,
  sample_size=512,
)
SCHED = dict(
  num_train_timesteps=1000,
  beta_start=0.00085,
  beta_end=0.012,
  beta_schedule="scaled_linear",
  clip_sample=False,
  set_alpha_to_one=False,
  steps_offset=1,
)


T0 = time.perf_counter()
ROWS: list[dict] = []
OUT: str | None = None
HEADER = ""


def add_row(row):
  ROWS.append(row)
  log(row)
  if OUT:
    with open(OUT, "w") as f:
      json.dump({"header": HEADER, "rows": ROWS}, f, indent=2)


def log(msg):
  print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", flush=True)


def _median_ms(times):
  return 1000.0 * statistics.median(times)


# ---------------------------------------------------------------------------------------------
# PyTorch reference
# ---------------------------------------------------------------------------------------------


def bench_torch(args, unet_cfg, vae_cfg, batches):
  import torch
  from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

  dev = "cuda" if torch.cuda.is_available() else "cpu"
  dt = torch.float16 if dev == "cuda" else torch.float32
  torch.manual_seed(0)
  with torch.device(dev):
    unet = UNet2DConditionModel(**unet_cfg).to(dt).eval()
    vae = AutoencoderKL(**vae_cfg).to(dt).eval()
  sched = DDIMScheduler(**SCHED)
  sf = vae.config.scaling_factor
  d = unet_cfg["cross_attention_dim"]
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  rng = np.random.default_rng(0)
  log("PyTorch models ready")
  for b in batches:
    emb = torch.randn(3, 77, d, device=dev, dtype=dt).repeat_interleave(b, 0)  # [text]*B, [""]*B, [""]*B
    renders = torch.rand(b, 3, args.size, args.size, device=dev, dtype=dt)
    originals = torch.rand(b, 3, args.size, args.size, device=dev, dtype=dt)

    @torch.no_grad()
    def call(t):
      lat = vae.encode(renders * 2 - 1).latent_dist.sample() * sf
      c = vae.encode(originals * 2 - 1).latent_dist.mode()
      c = torch.cat([c, c, torch.zeros_like(c)])
      sched.config.num_train_timesteps = t
      sched.set_timesteps(args.steps)
      lat = sched.add_noise(lat, torch.randn_like(lat), torch.tensor([t]))
      for tt in sched.timesteps:
        e = unet(torch.cat([torch.cat([lat] * 3), c], dim=1), tt, encoder_hidden_states=emb).sample
        e_text, e_img, e_unc = e.chunk(3)
        e = e_unc + 7.5 * (e_text - e_img) + 1.5 * (e_img - e_unc)
        lat = sched.step(e, tt, lat).prev_sample
      return (vae.decode(lat / sf).sample * 0.5 + 0.5).clamp(0, 1)

    if dev == "cuda":
      torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.reps):
      t = int(rng.integers(20, 981))
      sync()
      t0 = time.perf_counter()
      call(t)
      sync()
      if i >= args.warmup:
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else float("nan")
    # one UNet step alone (batch 3 x images)
    x = torch.randn(
      3 * b,
      8,
      args.size // 8 if not args.tiny else args.size // 4,
      args.size // 8 if not args.tiny else args.size // 4,
      device=dev,
      dtype=dt,
    )
    st = []
    with torch.no_grad():
      for i in range(args.warmup + args.reps):
        sync()
        t0 = time.perf_counter()
        unet(x, 500, encoder_hidden_states=emb)
        sync()
        if i >= args.warmup:
          st.append(time.perf_counter() - t0)
    add_row(
      dict(
        impl=f"PyTorch diffusers {str(dt).replace('torch.', '')} eager",
        batch=b,
        ms=_median_ms(times),
        unet_step_ms=_median_ms(st),
        first_ms=float("nan"),
        peak_gib=peak,
      )
    )


# ---------------------------------------------------------------------------------------------
# ours
# ---------------------------------------------------------------------------------------------


def _random_params(shapes, seed, dtype):
  """Random well-scaled parameters drawn on the host with numpy (float32 ziggurat: ~10 s for the
  1.2 G values of UNet + VAE) and put on the device in `dtype`. (Drawing them with jax.random
  on the device compiles one threefry kernel per shape or one enormous program: minutes.)"""
  import jax
  import jax.numpy as jnp
  from flax.traverse_util import flatten_dict, unflatten_dict

  rng = np.random.default_rng(seed)
  out = {}
  for k, s in sorted(flatten_dict(shapes).items()):
    if k[-1] == "kernel":
      v = rng.standard_normal(s.shape, dtype=np.float32) / np.float32(np.sqrt(np.prod(s.shape[:-1])))
    elif k[-1] == "scale":
      v = np.ones(s.shape, np.float32)
    else:
      v = 0.02 * rng.standard_normal(s.shape, dtype=np.float32)
    out[k] = jax.device_put(jnp.asarray(v, dtype))
  return unflatten_dict(out)


def random_ip2p(unet_cfg, vae_cfg, size, dtype, attention, steps=20):
  """Our InstructPix2Pix with random parameters (the benchmarks' model; no text encoder)."""
  import jax.numpy as jnp
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel

  from gaedit_jax.nets import flax_patches
  from gaedit_jax.nets.ip2p import DDIMSchedule, InstructPix2Pix, IP2PConfig, IP2PModel, unet_shapes, vae_shapes

  flax_patches.silence_library_logs()
  dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  unet, vae = FlaxUNet2DConditionModel(**unet_cfg), FlaxAutoencoderKL(**vae_cfg)
  params = {
    "unet": _random_params(unet_shapes(unet), 0, dt),
    "vae": _random_params(vae_shapes(vae), 1, dt),
    "text_encoder": {},
  }
  model = IP2PModel(unet=unet, vae=vae, text_encoder=None, tokenizer=None, schedule=DDIMSchedule(), source="random")
  return InstructPix2Pix(model, params, IP2PConfig(size=size, dtype=dtype, attention=attention, num_steps=steps))


def unet_step_fn(ip, attention):
  """One jitted UNet call (params, latents [B,8,h,w], text [B,77,C]) -> eps at t = 500."""
  import jax
  import jax.numpy as jnp

  from gaedit_jax.nets import flax_patches

  def step(p, x, e):
    with flax_patches.attention_implementation(attention):
      return ip.unet.apply({"params": p}, x, jnp.full((x.shape[0],), 500, jnp.int32), encoder_hidden_states=e).sample

  return jax.jit(step)


def bench_ours(args, unet_cfg, vae_cfg, batches, attention):
  import jax
  import jax.numpy as jnp

  dt = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  key = jax.random.PRNGKey(0)
  ip = random_ip2p(unet_cfg, vae_cfg, args.size, args.dtype, attention, args.steps)
  log("random parameters ready")
  emb = jax.random.normal(key, (3, 77, unet_cfg["cross_attention_dim"]), jnp.float32)
  for b in batches:
    renders = jax.random.uniform(jax.random.fold_in(key, 2), (b, args.size, args.size, 3))
    originals = jax.random.uniform(jax.random.fold_in(key, 3), (b, args.size, args.size, 3))
    log(f"ours attention={attention} batch={b}: first call (trace + compile + run)")
    t0 = time.perf_counter()
    jax.block_until_ready(ip.edit(renders, originals, emb, jax.random.PRNGKey(100)))
    first = time.perf_counter() - t0
    log(f"  first call took {first:.1f} s")
    times = []
    for i in range(args.warmup + args.reps):
      t0 = time.perf_counter()
      jax.block_until_ready(ip.edit(renders, originals, emb, jax.random.PRNGKey(i)))
      if i >= args.warmup:
        times.append(time.perf_counter() - t0)
    if attention not in args.unet_step_for.split(","):
      add_row(
        dict(
          impl=f"ours Flax {args.dtype} jit, attention={attention}",
          batch=b,
          ms=_median_ms(times),
          unet_step_ms=float("nan"),
          first_ms=1000 * first,
          peak_gib=(jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", float("nan")) / 2**30,
        )
      )
      continue
    ds = 8 if not args.tiny else 4
    x = jnp.zeros((3 * b, 8, args.size // ds, args.size // ds), dt)
    e3 = jnp.repeat(emb, b, 0).astype(dt)
    step = unet_step_fn(ip, attention)
    log("  compiling the UNet step alone")
    jax.block_until_ready(step(ip.params["unet"], x, e3))
    st = []
    for i in range(args.warmup + args.reps):
      t0 = time.perf_counter()
      jax.block_until_ready(step(ip.params["unet"], x, e3))
      if i >= args.warmup:
        st.append(time.perf_counter() - t0)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use", float("nan")) / 2**30
    add_row(
      dict(
        impl=f"ours Flax {args.dtype} jit, attention={attention}",
        batch=b,
        ms=_median_ms(times),
        unet_step_ms=_median_ms(st),
        first_ms=1000 * first,
        peak_gib=peak,
      )
    )


def main():
  global OUT, HEADER
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batches", default="1,4", help="PyTorch batches (images per call)")
  ap.add_argument(
    "--ours", default="cudnn:1,4;xla:1,4", help="our variants: attention:batches;... (attention = cudnn or xla)"
  )
  ap.add_argument("--size", type=int, default=512)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--unet-step-for", default="cudnn", help="our variants whose UNet step is timed alone")
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--tiny", action="store_true", help="the tiny test architecture (CPU smoke test)")
  ap.add_argument("--out", default=None, help="write the rows as JSON here (after every row)")
  args = ap.parse_args()
  import jax

  if args.tiny:
    from gaedit_jax.nets.tiny import TINY_UNET, TINY_VAE

    unet_cfg, vae_cfg = dict(TINY_UNET), dict(TINY_VAE)
  else:
    unet_cfg, vae_cfg = SD15_UNET, SD15_VAE
  OUT = args.out
  dev = jax.devices()[0]
  HEADER = (
    f"InstructPix2Pix edit call, {'tiny' if args.tiny else 'SD 1.5'} architecture, {args.size}x{args.size}, "
    f"{args.steps} DDIM steps, 3-way guidance; {dev.device_kind}; jax {jax.__version__}; "
    f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {platform.node()}"
  )
  print(HEADER, flush=True)
  if not args.no_torch:
    try:
      bench_torch(args, unet_cfg, vae_cfg, [int(b) for b in args.batches.split(",")])
      import gc

      import torch

      gc.collect()
      if torch.cuda.is_available():
        torch.cuda.empty_cache()  # give the PyTorch models' memory back before XLA allocates
    except Exception as e:  # noqa: BLE001  (report and go on to ours)
      log(f"PyTorch run failed: {type(e).__name__}: {e}")
  for spec in args.ours.split(";"):
    att, bs = spec.split(":")
    try:
      bench_ours(args, unet_cfg, vae_cfg, [int(b) for b in bs.split(",")], att)
    except Exception as e:  # noqa: BLE001
      log(f"ours (attention={att}) failed: {type(e).__name__}: {str(e)[:2000]}")
  print_table(HEADER, ROWS)


def print_table(header, rows):
  print("\n" + header)
  ref = {r["batch"]: r["ms"] for r in rows if r["impl"].startswith("PyTorch")}
  print(
    "| implementation | images | ms per call (median) | x PyTorch | UNet step ms (batch 3 x images) "
    "| first call ms (compile) | peak GiB |"
  )
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    ratio = r["ms"] / ref[r["batch"]] if r["batch"] in ref else float("nan")
    print(
      f"| {r['impl']} | {r['batch']} | {r['ms']:.1f} | {ratio:.2f} | {r['unet_step_ms']:.1f} | "
      f"{r['first_ms']:.0f} | {r['peak_gib']:.1f} |"
    )


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "--table":  # re-print a saved JSON as the table
    with open(sys.argv[2]) as f:
      j = json.load(f)
    print_table(j["header"], j["rows"])
  else:
    main()
