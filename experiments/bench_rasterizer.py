"""Rasterizer benchmark: jitted forward and forward+backward, median time, extra memory.

  python experiments/bench_rasterizer.py --suite cpu        # small scenes on the CPU kernel
  python experiments/bench_rasterizer.py --suite anchors    # docs/PERF_ANCHORS.md workload (GPU)
  python experiments/bench_rasterizer.py --suite anchors --gsplat   # + gsplat 1.5.3, same scenes

The anchors workload: 550 wide x 802 high, fx = fy = 1200, N Gaussians on a shell of radius 0.1 m
seen from 1 m, scales ~ 0.7 sqrt(4 pi r^2 / N) with log-normal jitter, opacity U[0.05, 0.95], SH
degree 3; C = 1 frontal camera or 16 on a ring at +-10 degrees elevation; loss = sum(render * U).
Time = median of R iterations after W warm-ups (synchronised). Memory = XLA's temporary + output
bytes of the compiled program (the extra memory over the inputs).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.camera import look_at, make_camera
from gaedit_jax.render import Gaussians, RenderConfig, rasterize


def shell_scene(n: int, seed: int = 0, radius: float = 0.1):
  rng = np.random.default_rng(seed)
  d = rng.normal(size=(n, 3))
  d /= np.linalg.norm(d, axis=1, keepdims=True)
  means = d * radius
  s = 0.7 * np.sqrt(4 * np.pi * radius**2 / n)
  scales = s * np.exp(rng.normal(0, 0.3, (n, 3)))
  quats = rng.normal(size=(n, 4))
  opac = rng.uniform(0.05, 0.95, n)
  sh = rng.normal(0, 0.2, (n, 16, 3))
  sh[:, 0] = rng.uniform(-1, 1, (n, 3))
  f = lambda x: np.asarray(x, np.float32)
  return dict(means=f(means), quats=f(quats), scales=f(scales), opacities=f(opac), sh=f(sh))


def ring_cameras(c: int, width: int, height: int, focal: float, dist: float = 1.0):
  mats = []
  for i in range(c):
    if c == 1:
      eye = np.array([0.0, 0.0, -dist])
    else:
      az = 2 * np.pi * i / c
      el = np.deg2rad(10.0 if i % 2 == 0 else -10.0)
      eye = dist * np.array([np.cos(el) * np.sin(az), np.sin(el), -np.cos(el) * np.cos(az)])
    mats.append(look_at(eye, np.zeros(3)))
  return np.stack(mats).astype(np.float32)


def _median_ms(fn, args, warmup: int, repeat: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(repeat):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(ts))


def _extra_mib(fn, args) -> float:
  try:
    m = fn.lower(*args).compile().memory_analysis()
    return (m.temp_size_in_bytes + m.output_size_in_bytes) / 2**20
  except Exception:  # memory analysis is not available on every backend
    return float("nan")


def bench_ours(scene, viewmats, width, height, focal, warmup, repeat, config: RenderConfig, factors):
  g = Gaussians(**{k: jnp.asarray(v) for k, v in scene.items()})
  cams = make_camera(jnp.asarray(viewmats), focal, width=width, height=height)
  bg = jnp.zeros(3)
  w = jax.random.uniform(jax.random.PRNGKey(0), cams.batch_shape + (height, width, 3))

  fwd = jax.jit(lambda g, c: rasterize(g, c, bg, config).image)

  def loss(g, c):
    return jnp.sum(rasterize(g, c, bg, config).image * w)

  fwdbwd = jax.jit(jax.value_and_grad(loss))
  # the smallest of a few capacities that holds every intersection (capacity = sort work)
  for factor in factors:
    config = dataclasses.replace(config, isect_per_gaussian=factor)
    if not bool(jnp.any(rasterize(g, cams, bg, config).overflow)):
      break
  else:
    raise RuntimeError(f"intersection buffer overflow even at {factors[-1]} per Gaussian")
  t_f = _median_ms(fwd, (g, cams), warmup, repeat)
  t_fb = _median_ms(fwdbwd, (g, cams), warmup, repeat)
  return t_f, t_fb, _extra_mib(fwdbwd, (g, cams)), config.isect_per_gaussian


def bench_gsplat(scene, viewmats, width, height, focal, warmup, repeat, tile=16):
  import torch
  from gsplat import rasterization

  dev = "cuda"
  t = {k: torch.tensor(v, device=dev, requires_grad=True) for k, v in scene.items()}
  vm = torch.tensor(viewmats, device=dev)
  c = vm.shape[0]
  k = (
    torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], device=dev, dtype=torch.float32)
    .expand(c, 3, 3)
    .contiguous()
  )
  w = torch.rand((c, height, width, 3), device=dev)
  results = {}
  for packed in (False,):

    def fwd():
      img, _, _ = rasterization(
        t["means"],
        t["quats"],
        t["scales"],
        t["opacities"],
        t["sh"],
        vm,
        k,
        width,
        height,
        sh_degree=3,
        packed=packed,
        tile_size=tile,
      )
      return img

    def fwdbwd():
      img = fwd()
      (img * w).sum().backward()

    def timed(fn):
      for _ in range(warmup):
        fn()
      torch.cuda.synchronize()
      ts = []
      for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
      return 1e3 * float(np.median(ts))

    with torch.no_grad():
      t_f = timed(fwd)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t_fb = timed(fwdbwd)
    extra = (torch.cuda.max_memory_allocated() - base) / 2**20
    results[packed] = (t_f, t_fb, extra)
  return results[False]


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--suite", choices=["cpu", "anchors"], default="cpu")
  ap.add_argument("--gsplat", action="store_true", help="also run gsplat 1.5.3 (torch, CUDA)")
  ap.add_argument("--sizes", default=None, help="comma list of N overriding the suite's")
  ap.add_argument("--views", default=None, help="comma list of view counts overriding the suite's")
  ap.add_argument("--warmup", type=int, default=None)
  ap.add_argument("--repeat", type=int, default=None)
  ap.add_argument("--isect-per-gaussian", type=float, default=None)
  ap.add_argument(
    "--capacities",
    default=None,
    help="per-size intersection capacities, e.g. 100000:3,1000000:1.9 (skips the search for the sizes named)",
  )
  ap.add_argument("--tile", type=int, default=16, help="tile size (both implementations)")
  ap.add_argument(
    "--wabe-k",
    type=int,
    default=0,
    help="WABE slots per pixel (0: off, as the peers compute no WABE; 10: the editor's)",
  )
  args = ap.parse_args()

  dev = jax.devices()[0]
  print(
    f"# {datetime.date.today()} | {dev.platform}: {getattr(dev, 'device_kind', '')} | "
    f"{platform.processor() or platform.machine()} | jax {jax.__version__} | tile {args.tile}"
  )
  if args.suite == "cpu":
    sizes = [1_000, 10_000]
    views = [1, 8]
    resolutions = [(64, 64), (256, 256)]
    warmup, repeat = args.warmup or 1, args.repeat or 5
  else:
    sizes = [100_000, 300_000, 1_000_000]
    views = [1, 16]
    resolutions = [(550, 802)]
    warmup, repeat = args.warmup or 5, args.repeat or 30
  if args.sizes:
    sizes = [int(s) for s in args.sizes.split(",")]
  if args.views:
    views = [int(v) for v in args.views.split(",")]
  cfg = RenderConfig(wabe_k=args.wabe_k, tile_size=args.tile)
  factors = (
    [args.isect_per_gaussian] if args.isect_per_gaussian else [1.25, 1.4, 1.5, 1.6, 1.75, 1.9, 2, 2.5, 3, 4, 6, 8, 16]
  )

  capacities = {}
  for item in (args.capacities or "").split(","):
    if item.strip():
      n, f = item.split(":")
      capacities[int(n)] = float(f)

  head = "| N | views | W x H | isect/N | ours fwd ms | ours fwd+bwd ms | ours extra MiB |"
  sep = "|---|---|---|---|---|---|---|"
  if args.gsplat:
    head += " gsplat fwd ms | gsplat fwd+bwd ms | gsplat extra MiB | fwd+bwd ratio |"
    sep += "---|---|---|---|"
  print(head)
  print(sep)
  for width, height in resolutions:
    focal = 1200.0 if args.suite == "anchors" else 1.2 * max(width, height)
    for n in sizes:
      scene = shell_scene(n)
      for c in views:
        vms = ring_cameras(c, width, height, focal)
        t_f, t_fb, mem, cap = bench_ours(
          scene, vms, width, height, focal, warmup, repeat, cfg, [capacities[n]] if n in capacities else factors
        )
        row = f"| {n:,} | {c} | {width}x{height} | {cap:g} | {t_f:.2f} | {t_fb:.2f} | {mem:.0f} |"
        if args.gsplat:
          gf, gfb, gmem = bench_gsplat(scene, vms, width, height, focal, warmup, repeat, args.tile)
          row += f" {gf:.2f} | {gfb:.2f} | {gmem:.0f} | {t_fb / gfb:.2f} |"
        print(row, flush=True)


if __name__ == "__main__":
  main()
