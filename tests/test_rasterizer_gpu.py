"""CUDA kernels against the CPU kernels and the CPU reference (run on the GPU machine).

Every test of test_rasterizer.py that takes the `device` fixture also runs on the GPU (the CUDA
kernel against the reference there: batching, vmap, jit, overflow, degenerate and non-finite
inputs, the kernels' own checks of bad settings); this module holds what needs both devices."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from raster_scenes import faint_scene, random_gaussians, ring_cameras, square_tile_pairs

from gaedit_jax.render import RenderConfig, rasterize

pytestmark = pytest.mark.gpu


def _on(device_kind: str, tree):
  dev = jax.devices(device_kind)[0]
  return jax.tree.map(lambda a: jax.device_put(a, dev), tree)


def _rel_err(a, b) -> float:
  """|a - b| / |b| over a whole gradient array: the CUDA and CPU kernels sum each Gaussian's pixels
  in different orders, so gradients agree to float rounding, not bit for bit."""
  a, b = np.asarray(a), np.asarray(b)
  return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-12))


def _render(kind, g, cams, bg, cfg=RenderConfig()):
  g, cams, bg = _on(kind, (g, cams, bg))
  return jax.jit(lambda g, c, b: rasterize(g, c, b, cfg))(g, cams, bg)


@pytest.mark.parametrize("n,views,per_view,sh_degree", [(500, 1, False, 3), (2000, 3, True, 2), (1500, 4, False, 0)])
def test_cuda_forward_matches_cpu_and_reference(n, views, per_view, sh_degree):
  g = random_gaussians(n, n, views=views if per_view else None)
  cams = ring_cameras(views, width=70, height=52, focal=60, jitter_pp=True, seed=n)
  bg = jnp.asarray(np.random.default_rng(n).uniform(size=(views, 3)), jnp.float32)
  cfg = RenderConfig(sh_degree=sh_degree)
  gpu = _render("gpu", g, cams, bg, cfg)
  cpu = _render("cpu", g, cams, bg, cfg)
  ref = _render("cpu", g, cams, bg, dataclasses.replace(cfg, backend="reference"))
  assert list(gpu.image.devices())[0].platform == "gpu"
  for other in (cpu, ref):
    np.testing.assert_allclose(np.asarray(gpu.image), np.asarray(other.image), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(gpu.alpha), np.asarray(other.alpha), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(gpu.depth), np.asarray(other.depth), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(gpu.radii), np.asarray(other.radii))
  # WABE: the same mask as the CPU kernel; weights to float rounding of the per-pixel weights
  # (the per-Gaussian sums are fixed point, so their order does not matter)
  np.testing.assert_array_equal(np.asarray(gpu.wabe_mask), np.asarray(cpu.wabe_mask))
  np.testing.assert_allclose(np.asarray(gpu.wabe_weight), np.asarray(cpu.wabe_weight), atol=1e-5)
  assert not np.any(np.asarray(gpu.overflow))


@pytest.mark.parametrize("wabe_backward", [False, True])
def test_cuda_gradients_match_cpu_and_reference(wabe_backward):
  views = 2
  g = random_gaussians(3, 600, views=None)
  g = dataclasses.replace(g, screen_offset=jnp.zeros((600, 2)))
  cams = ring_cameras(views, width=40, height=36, focal=40, jitter_pp=True)
  bg = jnp.array([0.2, 0.5, 0.9])
  wi = jax.random.uniform(jax.random.PRNGKey(0), (views, 36, 40, 3))
  wd = jax.random.uniform(jax.random.PRNGKey(1), (views, 36, 40))

  def grads(kind, cfg):
    gg, cc, bb, w1, w2 = _on(kind, (g, cams, bg, wi, wd))
    loss = lambda gg, bb: (
      jnp.sum(rasterize(gg, cc, bb, cfg).image * w1)
      + jnp.sum(rasterize(gg, cc, bb, cfg).depth * w2) * 0.3
      + jnp.sum(rasterize(gg, cc, bb, cfg).alpha)
    )
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(gg, bb)

  cfg = RenderConfig(wabe_backward=wabe_backward)
  gpu = grads("gpu", cfg)
  cpu = grads("cpu", cfg)
  ref = grads("cpu", dataclasses.replace(cfg, backend="reference"))
  for name in ("means", "quats", "scales", "opacities", "sh", "screen_offset"):
    for other in (cpu, ref):
      rel = _rel_err(getattr(gpu[0], name), getattr(other[0], name))
      assert rel < 1e-3, (name, rel)
  np.testing.assert_allclose(np.asarray(gpu[1]), np.asarray(cpu[1]), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("layout", ["shared", "per_view", "inner_axis", "mixed"])
def test_cuda_gradient_layouts(layout):
  # shared and per-view Gaussians take the kernel's plain-store path, Gaussians batched only on the
  # inner of two view axes (each one visited by non-consecutive views) the zero-fill + add path;
  # SH coefficients above the active degree get exact zeros
  grid = (2, 3)
  g = random_gaussians(5, 300, views=None if layout == "shared" else 6)
  if layout == "inner_axis":
    g = jax.tree.map(lambda a: a[:3][None], g)  # [1, 3, N, ...] against cameras [2, 3]
  elif layout == "per_view":
    g = jax.tree.map(lambda a: a.reshape(grid + a.shape[1:]), g)
  elif layout == "mixed":  # a posed avatar's layout: geometry per view, opacity and SH shared
    g = jax.tree.map(lambda a: a.reshape(grid + a.shape[1:]), g)
    g = dataclasses.replace(g, opacities=g.opacities[0, 0], sh=g.sh[0, 0])
  cams = jax.tree.map(lambda a: a.reshape(grid + a.shape[1:]), ring_cameras(6, width=40, height=36, focal=40))
  w = jax.random.uniform(jax.random.PRNGKey(2), grid + (36, 40, 3))
  cfg = RenderConfig(sh_degree=1)

  def grads(kind):
    gg, cc, ww = _on(kind, (g, cams, w))
    return jax.jit(jax.grad(lambda gg: jnp.sum(rasterize(gg, cc, jnp.zeros(3), cfg).image * ww)))(gg)

  gpu, cpu = grads("gpu"), grads("cpu")
  for name in ("means", "quats", "scales", "opacities", "sh"):
    assert _rel_err(getattr(gpu, name), getattr(cpu, name)) < 1e-3, (layout, name)
  assert np.all(np.asarray(gpu.sh)[..., 4:, :] == 0.0) and np.any(np.asarray(gpu.sh)[..., :4, :] != 0.0)


@pytest.mark.parametrize("tile", [4, 8, 12])
def test_cuda_smaller_tiles_match_cpu(tile):
  # blocks of whole warps sized to the tile (one warp for 4 x 4): images and gradients as on the CPU
  g = random_gaussians(21, 800)
  cams = ring_cameras(2, width=50, height=38, focal=45)
  bg = jnp.array([0.1, 0.2, 0.3])
  w = jax.random.uniform(jax.random.PRNGKey(5), (2, 38, 50, 3))
  cfg = RenderConfig(tile_size=tile)

  def run(kind):
    gg, cc, ww, bb = _on(kind, (g, cams, w, bg))
    f = lambda gg: jnp.sum(rasterize(gg, cc, bb, cfg).image * ww)
    return jax.jit(f)(gg), jax.jit(jax.grad(f))(gg), _render(kind, g, cams, bg, cfg).image

  (lg, gg_, ig), (lc, gc, ic) = run("gpu"), run("cpu")
  np.testing.assert_allclose(np.asarray(ig), np.asarray(ic), atol=1e-4, rtol=0)
  np.testing.assert_allclose(float(lg), float(lc), rtol=1e-4)
  for name in ("means", "quats", "scales", "opacities", "sh"):
    assert _rel_err(getattr(gg_, name), getattr(gc, name)) < 1e-3, (tile, name)


def _weighted_grads(kind: str, tile: int, wabe: bool = False) -> dict:
  """Gradients of weighted sums of image, depth and alpha for a 2-view scene on device `kind`,
  Gaussians and background (also run as a script)."""
  g = random_gaussians(21, 800)
  cams = ring_cameras(2, width=50, height=38, focal=45)
  bg = jnp.array([0.1, 0.2, 0.3])
  k = jax.random.split(jax.random.PRNGKey(5), 3)
  w = (
    jax.random.uniform(k[0], (2, 38, 50, 3)),
    jax.random.uniform(k[1], (2, 38, 50)) * 0.1,
    jax.random.uniform(k[2], (2, 38, 50)),
  )
  gg, cc, ww, bb = _on(kind, (g, cams, w, bg))
  cfg = RenderConfig(tile_size=tile, wabe_backward=wabe)

  def loss(gg, bb):
    out = rasterize(gg, cc, bb, cfg)
    return jnp.sum(out.image * ww[0]) + jnp.sum(out.depth * ww[1]) + jnp.sum(out.alpha * ww[2])

  grads, g_bg = jax.jit(jax.grad(loss, argnums=(0, 1)))(gg, bb)
  out = {n: np.asarray(getattr(grads, n)) for n in ("means", "quats", "scales", "opacities", "sh")}
  return {**out, "background": np.asarray(g_bg)}


def _in_child(tmp_path, env: dict, fn: str, *args) -> dict:
  """This module's `fn('gpu', *args)` (a dict of arrays) in a child process with `env` set (the
  kernels read their GAEDIT_FWD_* / GAEDIT_BWD_* switches once per process)."""
  out = tmp_path / "out.npz"
  script = (
    "import sys, json, numpy as np; sys.path.insert(0, sys.argv[1]); import test_rasterizer_gpu as t; "
    "np.savez(sys.argv[2], **getattr(t, sys.argv[3])('gpu', *json.loads(sys.argv[4])))"
  )
  here = Path(__file__).parent
  run = subprocess.run(
    [sys.executable, "-c", script, str(here), str(out), fn, json.dumps(list(args))],
    env={**os.environ, **env},
    capture_output=True,
    text=True,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  return dict(np.load(out))


def _grads_in_child(tmp_path, env: dict, tile: int, wabe: bool = False) -> dict:
  """`_weighted_grads` on the GPU in a child process with `env` set."""
  return _in_child(tmp_path, env, "_weighted_grads", tile, wabe)


def _assert_close_grads(gpu: dict, cpu: dict, what):
  for name, b in cpu.items():
    assert _rel_err(gpu[name], b) < 1e-3, (what, name)


@pytest.mark.parametrize("tile", [8, 16])
def test_cuda_two_pixels_per_thread_matches_cpu(tile, tmp_path):
  # The raster backward takes two pixels per thread only on workloads of more than two GPU waves
  # (16 views of 550 x 802), never in these small scenes; GAEDIT_BWD_PPT=2 (with the split
  # backward off, which takes one) forces it. Tiles 8 and 16 cover both sizes of the shared rows.
  gpu = _grads_in_child(tmp_path, {"GAEDIT_BWD_PPT": "2", "GAEDIT_BWD_SPLIT": "0"}, tile)
  _assert_close_grads(gpu, _weighted_grads("cpu", tile), tile)


@pytest.mark.parametrize("tile,wabe", [(8, False), (16, False), (8, True), (16, True)])
def test_cuda_split_backward_matches_cpu(tile, wabe, tmp_path):
  # The split backward (by default: a single view of >= 500k Gaussians) cuts each tile's list into
  # chunks walked by separate blocks, each starting from the T and S the two chunk passes computed;
  # GAEDIT_BWD_SPLIT=1 forces it on these small scenes. Chunks of 16 entries cut
  # these scenes' lists (tens to hundreds of Gaussians a tile) into many, so every chunk boundary
  # matters; the whole-tile backward (split off) must agree with it and with the CPU kernel.
  cpu = _weighted_grads("cpu", tile, wabe)
  split = _grads_in_child(tmp_path, {"GAEDIT_BWD_SPLIT": "1", "GAEDIT_BWD_CHUNK": "16"}, tile, wabe)
  whole = _grads_in_child(tmp_path, {"GAEDIT_BWD_SPLIT": "0"}, tile, wabe)
  _assert_close_grads(split, cpu, ("split", tile, wabe))
  _assert_close_grads(whole, cpu, ("whole", tile, wabe))
  _assert_close_grads(split, whole, ("split vs whole", tile, wabe))


def _opaque_outputs(kind: str, tile: int, wabe_k: int) -> dict:
  """Forward outputs and weighted-loss gradients of a 2-view scene of opaque Gaussians (opacity
  0.95: most covered pixels end their walk by the stopping rule) on device `kind`."""
  g = random_gaussians(22, 900)
  g = dataclasses.replace(g, opacities=jnp.full_like(g.opacities, 0.95))
  cams = ring_cameras(2, width=50, height=38, focal=45)
  bg = jnp.array([0.3, 0.1, 0.2])
  w = jax.random.uniform(jax.random.PRNGKey(7), (2, 38, 50, 3))
  gg, cc, ww, bb = _on(kind, (g, cams, w, bg))
  cfg = RenderConfig(tile_size=tile, wabe_k=wabe_k)
  out = jax.jit(lambda gg, bb: rasterize(gg, cc, bb, cfg))(gg, bb)
  loss = lambda gg, bb: jnp.sum(rasterize(gg, cc, bb, cfg).image * ww) + jnp.sum(rasterize(gg, cc, bb, cfg).depth)
  grads, g_bg = jax.jit(jax.grad(loss, argnums=(0, 1)))(gg, bb)
  res = {n: np.asarray(getattr(out, n)) for n in ("image", "alpha", "depth", "wabe_weight", "wabe_mask")}
  res.update({"d_" + n: np.asarray(getattr(grads, n)) for n in ("means", "quats", "scales", "opacities", "sh")})
  return {**res, "d_background": np.asarray(g_bg)}


@pytest.mark.parametrize("tile,wabe_k", [(8, 10), (16, 10), (8, 0), (16, 3), (8, 16)])
def test_cuda_split_forward_matches_cpu(tile, wabe_k, tmp_path):
  # The split forward (by default: a single view of >= 500k Gaussians) composites each chunk of a
  # tile's list on its own and combines the chunks per pixel: the first K WABE slots from the
  # chunks' contributor records (up to 10 a chunk, so K = 16 walks chunks again), the stopping
  # chunk walked by a pass of its own; GAEDIT_FWD_SPLIT=1 forces it, and chunks of 16 entries cut
  # these lists (hundreds a tile) into many. Images, alpha, depth, the WABE outputs and
  # the gradients (the backward reads the forward's last contributors and T) must agree with the
  # CPU kernel and with the whole-tile forward.
  cpu = _opaque_outputs("cpu", tile, wabe_k)
  assert np.sum(cpu["alpha"] > 0.999) > 200  # many pixels near the stopping rule's T = 1e-4
  split = _in_child(tmp_path, {"GAEDIT_FWD_SPLIT": "1", "GAEDIT_FWD_CHUNK": "16"}, "_opaque_outputs", tile, wabe_k)
  whole = _in_child(tmp_path, {"GAEDIT_FWD_SPLIT": "0"}, "_opaque_outputs", tile, wabe_k)
  for other, what in ((cpu, "cpu"), (whole, "whole")):
    for name in ("image", "alpha"):
      np.testing.assert_allclose(split[name], other[name], atol=1e-4, rtol=0, err_msg=f"{what} {name}")
    np.testing.assert_allclose(split["depth"], other["depth"], atol=1e-4, rtol=1e-4, err_msg=f"{what} depth")
    np.testing.assert_array_equal(split["wabe_mask"], other["wabe_mask"], err_msg=what)
    np.testing.assert_allclose(split["wabe_weight"], other["wabe_weight"], atol=1e-5, err_msg=what)
    _assert_close_grads(split, {k: v for k, v in other.items() if k.startswith("d_")}, (what, tile, wabe_k))
  assert wabe_k == 0 or np.sum(split["wabe_mask"]) > 100


def test_cuda_tile_lists_are_exact():
  g, cam = faint_scene()
  bg = jnp.full(3, 0.3)
  square = square_tile_pairs(g, cam, RenderConfig())
  tight = RenderConfig(max_intersections=square * 2 // 3)
  gpu, cpu = _render("gpu", g, cam, bg, tight), _render("cpu", g, cam, bg, tight)
  assert not np.any(np.asarray(gpu.overflow))
  np.testing.assert_allclose(np.asarray(gpu.image), np.asarray(cpu.image), atol=1e-4, rtol=0)
  assert np.all(np.asarray(_render("gpu", g, cam, bg, RenderConfig(max_intersections=square // 2)).overflow))


@pytest.mark.parametrize("tile,k", [(16, 10), (8, 3)])
def test_cuda_wabe_tile_matches_cpu_and_reference(tile, k):
  # per-tile WABE slots (shared-memory max weights, one thread appending per batch): the same mask
  # as the CPU kernel and the reference, weights to float rounding
  g = random_gaussians(16, 1500)
  cams = ring_cameras(2, width=70, height=52, focal=60, jitter_pp=True, seed=3)
  bg = jnp.array([0.1, 0.2, 0.3])
  cfg = RenderConfig(tile_size=tile, wabe_k=k, wabe_visibility="tile")
  gpu, cpu = _render("gpu", g, cams, bg, cfg), _render("cpu", g, cams, bg, cfg)
  ref = _render("cpu", g, cams, bg, dataclasses.replace(cfg, backend="reference"))
  pix = _render("gpu", g, cams, bg, dataclasses.replace(cfg, wabe_visibility="pixel"))
  np.testing.assert_allclose(np.asarray(gpu.image), np.asarray(cpu.image), atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(gpu.image), np.asarray(pix.image))
  for other in (cpu, ref):
    np.testing.assert_array_equal(np.asarray(gpu.wabe_mask), np.asarray(other.wabe_mask))
    np.testing.assert_allclose(np.asarray(gpu.wabe_weight), np.asarray(other.wabe_weight), atol=1e-5)
  tm, pm = np.asarray(gpu.wabe_mask), np.asarray(pix.wabe_mask)
  assert np.all(pm[tm]) and 0 < tm.sum() < pm.sum()
  # deterministic: a second call gives the same bits
  again = _render("gpu", g, cams, bg, cfg)
  np.testing.assert_array_equal(np.asarray(again.wabe_weight), np.asarray(gpu.wabe_weight))


def test_cuda_alpha_clamp_modes_match_cpu():
  # wide Gaussians, half with opacity in [0.992, 1]: o G > 0.99 near their centres
  n = 300
  g = random_gaussians(15, n, scale=0.06)
  g = dataclasses.replace(
    g, opacities=g.opacities.at[::2].set(jnp.linspace(0.992, 1.0, n // 2)), screen_offset=jnp.zeros((n, 2))
  )
  cams = ring_cameras(2, width=40, height=36, focal=40, jitter_pp=True)
  bg = jnp.array([0.2, 0.5, 0.9])
  w = jax.random.uniform(jax.random.PRNGKey(7), (2, 36, 40, 3))

  def grads(kind, mode):
    gg, cc, bb, ww = _on(kind, (g, cams, bg, w))
    cfg = RenderConfig(alpha_clamp_grad=mode)
    return jax.jit(
      jax.grad(lambda gg: jnp.sum(rasterize(gg, cc, bb, cfg).image * ww) + jnp.sum(rasterize(gg, cc, bb, cfg).alpha))
    )(gg)

  out = {(kind, mode): grads(kind, mode) for kind in ("gpu", "cpu") for mode in ("pass", "zero")}
  for mode in ("pass", "zero"):
    for name in ("means", "quats", "scales", "opacities", "sh", "screen_offset"):
      assert _rel_err(getattr(out["gpu", mode], name), getattr(out["cpu", mode], name)) < 1e-3, (mode, name)
  for name in ("opacities", "means"):  # the clamped pixels' share alone
    d = {
      kind: np.asarray(getattr(out[kind, "pass"], name)) - np.asarray(getattr(out[kind, "zero"], name))
      for kind in ("gpu", "cpu")
    }
    assert np.linalg.norm(d["cpu"]) > 0
    assert _rel_err(d["gpu"], d["cpu"]) < 2e-2, name


def test_cuda_nonfinite_gaussians_are_not_drawn():
  g = random_gaussians(10, 100)
  g = dataclasses.replace(g, screen_offset=jnp.zeros((100, 2)))
  cams = ring_cameras(2, width=32, height=32, focal=32)
  bg = jnp.array([0.3, 0.6, 0.9])
  nan, inf = jnp.nan, jnp.inf
  bad = dataclasses.replace(
    g,
    means=g.means.at[0, 1].set(nan),
    opacities=g.opacities.at[2].set(nan),
    scales=g.scales.at[3, 2].set(nan),
    quats=g.quats.at[8, 0].set(inf),
    screen_offset=g.screen_offset.at[9, 1].set(nan),
    sh=(
      g.sh.at[1, 0, 0].set(inf).at[4, 0, 1].set(nan).at[5, 0, 2].set(-inf).at[6, 2, 0].set(nan).at[7, 15, 1].set(-inf)
    ),
  )
  gpu, cpu = _render("gpu", bad, cams, bg), _render("cpu", bad, cams, bg)
  assert bool(jnp.all(jnp.isfinite(gpu.image)))
  np.testing.assert_array_equal(np.asarray(gpu.radii[:, :10]), 0)
  np.testing.assert_array_equal(np.asarray(gpu.radii), np.asarray(cpu.radii))
  np.testing.assert_allclose(np.asarray(gpu.image), np.asarray(cpu.image), atol=1e-4, rtol=0)
  w = jax.random.uniform(jax.random.PRNGKey(4), (2, 32, 32, 3))

  def grads(kind):
    gg, cc, bb, ww = _on(kind, (bad, cams, bg, w))
    return jax.jit(jax.grad(lambda gg: jnp.sum(rasterize(gg, cc, bb).image * ww)))(gg)

  ga, gc = grads("gpu"), grads("cpu")
  for name in ("means", "quats", "scales", "opacities", "sh", "screen_offset"):
    a = np.asarray(getattr(ga, name))
    assert np.all(np.isfinite(a)) and np.all(a[:10] == 0.0), name
    assert _rel_err(a, getattr(gc, name)) < 1e-3, name
