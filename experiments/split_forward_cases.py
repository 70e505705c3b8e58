"""Counts the split forward's per-pixel cases on the benchmark's shell (docs/METHOD.md §2.4).

  python experiments/split_forward_cases.py --n 1000000 --tile 8 --isect-per-gaussian 1.9

Runs the CPU kernel's forward on the anchors scene of bench_rasterizer.py (one 550x802 view) and,
from its sorted lists and projected Gaussians, recomputes every (entry, pixel) alpha with numpy to
count, per tile, what the split forward's passes do with chunks of 128 entries: how many distinct
chunks its pixels stop in (walked by separate blocks), how many chunks the combine pass walks with
WABE outputs on (K = 10: a chunk with more than two of a pixel's first K contributors), and how many
pixels end a chunk with T just above 1e-4 (the stopping-rule margin) and how far the next
contributor lies. CPU only: the counts explain GPU timings, they are not timings.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
from bench_rasterizer import ring_cameras, shell_scene

from gaedit_jax.camera import make_camera
from gaedit_jax.render import Gaussians, RenderConfig, _ffi, _inputs, api

W, H, FOCAL = 550, 802, 1200.0
T_MIN, MARGIN, K, RECS = 1e-4, 1e-3, 10, 2


def residuals(n: int, tile: int, isect: float):
  g = Gaussians(**{k: jnp.asarray(v) for k, v in shell_scene(n).items()})
  cam = make_camera(jnp.asarray(ring_cameras(1, W, H, FOCAL)), FOCAL, width=W, height=H)
  cfg = RenderConfig(tile_size=tile, isect_per_gaussian=isect, wabe_k=0)
  _ffi.ensure_registered()
  named, batch = _inputs.prepare_inputs(g, cam, jnp.zeros((1, 3)), cfg)
  st = api._Static(W, H, tile, 3, 0.2, 0, 6.0, False, cfg.capacity(n), False, False)
  _, (_, res) = api._rasterize_fwd(st, *_inputs.aligned(named, batch))
  _, m2, co, _, _, _, _, isect_ids, ranges, _ = [np.asarray(r) for r in res]
  return m2.reshape(-1, 2), co.reshape(-1, 4), isect_ids.reshape(-1), ranges.reshape(-1, 2)


def tile_cases(m2, co, ids, tile, tx, ty, chunk):
  ys, xs = np.mgrid[ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile]
  ok = (ys < H) & (xs < W)
  dx, dy = m2[ids, :1] - (xs[ok] + 0.5)[None], m2[ids, 1:] - (ys[ok] + 0.5)[None]
  power = -0.5 * (co[ids, :1] * dx * dx + co[ids, 2:3] * dy * dy) - co[ids, 1:2] * dx * dy
  alpha = np.minimum(0.99, co[ids, 3:] * np.exp(np.minimum(power, 0.0)))
  contrib = (power <= 0) & (alpha >= 1 / 255)
  alpha = np.where(contrib, alpha, 0.0)
  e = len(ids)
  t_after = np.exp(np.cumsum(np.log1p(-alpha.astype(np.float64)), axis=0))
  starts = np.arange(0, e, chunk)
  t_end = t_after[np.minimum(starts + chunk, e) - 1]  # [chunks, pixels], no stopping rule
  n_c = np.add.reduceat(contrib.astype(np.int64), starts, axis=0)
  stops = contrib & (t_after < T_MIN)
  first = np.where(stops.any(0), stops.argmax(0), -1)
  stop_chunks = len(set((first[first >= 0] // chunk).tolist()))
  cand = (t_end < T_MIN * (1 + MARGIN)) & (n_c > 0)
  c_stop = np.where(cand.any(0), cand.argmax(0), len(starts))
  cols = np.arange(len(starts))
  at = c_stop < len(starts)
  near = np.zeros(len(c_stop), bool)
  near[at] = t_end[c_stop[at], np.nonzero(at)[0]] >= T_MIN
  gaps = []
  for p in np.nonzero(near)[0]:  # entries from the chunk's end to the pixel's next contributor
    start = min(e, (c_stop[p] + 1) * chunk)
    after = np.nonzero(contrib[start:, p])[0]
    gaps.append(int(after[0]) + 1 if len(after) else e - start)
  before = np.vstack([np.zeros((1, n_c.shape[1]), np.int64), np.cumsum(n_c, 0)[:-1]])
  walk = (before < K) & (n_c > RECS) & (cols[:, None] < c_stop[None])
  walk |= (cols[:, None] == c_stop[None]) & (before < K)
  return e, stop_chunks, int(walk.any(1).sum()), gaps


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--n", type=int, default=1_000_000)
  ap.add_argument("--tile", type=int, default=8)
  ap.add_argument("--isect-per-gaussian", type=float, default=1.9)
  ap.add_argument("--chunk", type=int, default=128)
  args = ap.parse_args()
  m2, co, ids, ranges = residuals(args.n, args.tile, args.isect_per_gaussian)
  gx = (W + args.tile - 1) // args.tile
  rows = []
  for vt, (lo, hi) in enumerate(ranges):
    if hi > lo:
      ty, tx = divmod(vt, gx)
      rows.append(tile_cases(m2, co, ids[lo:hi], args.tile, tx, ty, args.chunk))
  lens = np.array([r[0] for r in rows])
  stops, walks = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
  gaps = np.array([g for r in rows for g in r[3]], np.int64)
  dense = lens >= np.percentile(lens, 95)
  print(
    f"N = {args.n:,}, {args.tile}x{args.tile} tiles, chunks of {args.chunk}, one {W}x{H} view (CPU kernel residuals)"
  )
  print("| per tile | mean | densest 5% of tiles | max |")
  print("|---|---|---|---|")
  print(f"| list entries | {lens.mean():.0f} | {lens[dense].mean():.0f} | {lens.max()} |")
  print(f"| distinct stopping chunks | {stops.mean():.1f} | {stops[dense].mean():.1f} | {stops.max()} |")
  print(
    f"| chunks the combine walks with WABE on (K = {K}) | {walks.mean():.1f} | {walks[dense].mean():.1f} | {walks.max()} |"
  )
  far = f"mean {gaps.mean():.0f}, max {gaps.max()}" if len(gaps) else "-"
  print(f"pixels ending a chunk with T in [1e-4, 1e-4 (1 + {MARGIN:g})): {len(gaps)}; entries from there to the")
  print(f"pixel's next contributor: {far}")


if __name__ == "__main__":
  main()
