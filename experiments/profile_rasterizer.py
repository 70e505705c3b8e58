"""One jitted forward+backward of the anchors workload, for `ncu --print-summary per-kernel`.

ncu --print-summary per-kernel python experiments/profile_rasterizer.py --n 1000000 --views 16
ncu --print-summary per-kernel python experiments/profile_rasterizer.py --impl gsplat   # gsplat 1.5.3
"""

import argparse

import jax
import jax.numpy as jnp
from bench_rasterizer import ring_cameras, shell_scene

from gaedit_jax.camera import make_camera
from gaedit_jax.render import Gaussians, RenderConfig, rasterize

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=1_000_000)
ap.add_argument("--views", type=int, default=16)
ap.add_argument("--isect-per-gaussian", type=float, default=2.0)
ap.add_argument("--wabe-k", type=int, default=0)
ap.add_argument("--iters", type=int, default=1)
ap.add_argument("--tile", type=int, default=16)
ap.add_argument("--impl", choices=["ours", "gsplat"], default="ours")
args = ap.parse_args()
if args.impl == "gsplat":  # the same scene, cameras and loss through gsplat (torch), unpacked
  import numpy as np
  import torch
  from gsplat import rasterization

  t = {k: torch.tensor(np.asarray(v), device="cuda", requires_grad=True) for k, v in shell_scene(args.n).items()}
  vm = torch.tensor(ring_cameras(args.views, 550, 802, 1200.0), device="cuda")
  K = torch.tensor([[1200.0, 0, 275], [0, 1200.0, 401], [0, 0, 1]], device="cuda").expand(args.views, 3, 3).contiguous()
  w = torch.rand((args.views, 802, 550, 3), device="cuda")
  for _ in range(args.iters):
    img, _, _ = rasterization(
      t["means"], t["quats"], t["scales"], t["opacities"], t["sh"], vm, K, 550, 802, sh_degree=3, packed=False
    )
    (img * w).sum().backward()
  torch.cuda.synchronize()
  print("done")
  raise SystemExit(0)
g = Gaussians(**{k: jnp.asarray(v) for k, v in shell_scene(args.n).items()})
cams = make_camera(jnp.asarray(ring_cameras(args.views, 550, 802, 1200.0)), 1200.0, width=550, height=802)
cfg = RenderConfig(isect_per_gaussian=args.isect_per_gaussian, wabe_k=args.wabe_k, tile_size=args.tile)
w = jax.random.uniform(jax.random.PRNGKey(0), cams.batch_shape + (802, 550, 3))
f = jax.jit(jax.value_and_grad(lambda g: jnp.sum(rasterize(g, cams, jnp.zeros(3), cfg).image * w)))
for _ in range(args.iters):
  jax.block_until_ready(f(g))
print("done")
