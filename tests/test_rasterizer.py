"""The native rasterizer against the dense jnp reference: values, gradients, batching, edge cases.

Tests taking the `device` fixture (conftest.py) run once per device: on the CPU (the C++ kernel)
and, where a CUDA device is present, on the GPU (the CUDA kernel, marked `gpu`), each against the
reference computed on the same device. CPU-versus-CUDA comparisons are in test_rasterizer_gpu.py."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from raster_scenes import faint_scene, random_gaussians, ring_cameras, square_tile_pairs

from gaedit_jax.camera import make_camera
from gaedit_jax.errors import InputError
from gaedit_jax.render import Gaussians, RenderConfig, _inputs, rasterize
from gaedit_jax.render import api as render_api

REF = RenderConfig(backend="reference")


def _ref_cfg(cfg: RenderConfig) -> RenderConfig:
  return dataclasses.replace(cfg, backend="reference")


def _cpu(tree):
  """The reference runs on the CPU whatever the test's device, as the CUDA tests always compared: the
  oracle must not take XLA GPU's approximate exp (a Gaussian at the 1/255 acceptance threshold can
  flip between devices). Arrays committed to the CPU put the computation there."""
  cpu = jax.devices("cpu")[0]
  return jax.tree.map(lambda a: jax.device_put(a, cpu), tree)


def _assert_outputs_match(out, ref, atol=1e-4):
  np.testing.assert_allclose(out.image, ref.image, atol=atol, rtol=0)
  np.testing.assert_allclose(out.alpha, ref.alpha, atol=atol, rtol=0)
  np.testing.assert_allclose(out.depth, ref.depth, atol=atol, rtol=1e-4)
  np.testing.assert_array_equal(out.radii, ref.radii)
  np.testing.assert_array_equal(out.wabe_mask, ref.wabe_mask)
  np.testing.assert_allclose(out.wabe_weight, ref.wabe_weight, atol=1e-5)
  assert not np.any(out.overflow)


@pytest.mark.parametrize(
  "n,views,width,height,sh_degree,per_view",
  [
    (200, 1, 32, 32, 0, False),
    (600, 3, 48, 40, 1, False),
    (1000, 2, 64, 64, 2, True),
    (2000, 2, 70, 52, 3, False),  # partial tiles on both axes
  ],
)
def test_forward_matches_reference(n, views, width, height, sh_degree, per_view, device):
  g = random_gaussians(n, n, sh_degree=3, views=views if per_view else None)
  cams = ring_cameras(views, width=width, height=height, focal=0.9 * width, jitter_pp=True, seed=n)
  bg = jnp.asarray(np.random.default_rng(n).uniform(size=(views, 3)), jnp.float32)
  cfg = RenderConfig(sh_degree=sh_degree)
  out = rasterize(g, cams, bg, cfg)
  ref = rasterize(*_cpu((g, cams, bg)), _ref_cfg(cfg))
  assert out.image.shape == (views, height, width, 3) and out.radii.shape == (views, n)
  assert int(jnp.sum(out.radii > 0)) > n // 2  # the scene is really drawn
  assert int(jnp.sum(out.wabe_mask)) > 10
  _assert_outputs_match(out, ref)
  assert out.image.devices() == {device} and ref.image.devices() == {jax.devices("cpu")[0]}


def _loss_fn(cams, cfg, seed=0):
  h, w = cams.height, cams.width
  lead = cams.batch_shape
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  wi = jax.random.uniform(k[0], lead + (h, w, 3))
  wa = jax.random.uniform(k[1], lead + (h, w))
  wd = jax.random.uniform(k[2], lead + (h, w))

  def loss(g, bg):
    o = rasterize(g, cams, bg, cfg)
    return jnp.sum(o.image * wi) + jnp.sum(o.alpha * wa) + 0.5 * jnp.sum(o.depth * wd)

  return loss


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-12))


@pytest.mark.parametrize("wabe_backward", [False, True])
@pytest.mark.parametrize("per_view", [False, True])
def test_gradients_match_reference(wabe_backward, per_view, device):
  views = 2
  g = random_gaussians(3, 400, views=views if per_view else None)
  g = dataclasses.replace(g, screen_offset=jnp.zeros(g.means.shape[:-1] + (2,)))
  cams = ring_cameras(views, width=40, height=36, focal=40, jitter_pp=True)
  bg = jnp.array([0.2, 0.5, 0.9])
  cfg = RenderConfig(wabe_backward=wabe_backward)
  gn = jax.grad(_loss_fn(cams, cfg), argnums=(0, 1))(g, bg)
  gr = jax.grad(_loss_fn(_cpu(cams), _ref_cfg(cfg)), argnums=(0, 1))(*_cpu((g, bg)))
  for name in ("means", "quats", "scales", "opacities", "sh", "screen_offset"):
    a, b = getattr(gn[0], name), getattr(gr[0], name)
    assert a.shape == b.shape
    assert float(jnp.linalg.norm(b)) > 0, name
    assert _rel(a, b) < 1e-3, (name, _rel(a, b))
  assert _rel(gn[1], gr[1]) < 1e-3


def test_wabe_backward_changes_gradients(device):
  g = random_gaussians(4, 400)
  cams = ring_cameras(1, width=32, height=32, focal=32)
  bg = jnp.zeros(3)
  plain = jax.grad(_loss_fn(cams, RenderConfig()))(g, bg)
  wabe = jax.grad(_loss_fn(cams, RenderConfig(wabe_backward=True)))(g, bg)
  # occluded contributions are damped: the weighted gradient is smaller, not just different
  assert float(jnp.linalg.norm(wabe.sh)) < 0.9 * float(jnp.linalg.norm(plain.sh))


def test_finite_differences(device):
  # Splatting is discontinuous where a pixel crosses alpha = 1/255, where depths swap and where
  # T reaches 1e-4; the analytic gradient ignores those jumps (as every 3DGS rasterizer does). So
  # central differences are checked on a scene without any: four wide splats at distinct depths
  # whose 1/255 rings lie outside the image, colours away from the clamp at 0, an O(1) loss.
  rng = np.random.default_rng(0)
  cam = ring_cameras(1, width=32, height=32, focal=36)[0]
  rot = np.asarray(cam.world_to_camera[:3, :3])
  centre = -rot.T @ np.asarray(cam.world_to_camera[:3, 3])  # camera centre
  view_dir = rot[2]
  means = centre + np.outer([0.8, 0.9, 1.0, 1.1], view_dir) + rng.normal(0, 0.01, (4, 3)) @ np.diag([1, 1, 1])
  sh = rng.normal(0, 0.1, (4, 4, 3))
  sh[:, 0] = rng.uniform(0.5, 1.5, (4, 3))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  g = Gaussians(
    f32(means),
    f32(rng.normal(size=(4, 4))),
    f32(rng.uniform(0.3, 0.7, (4, 3)) * [0.5, 1.0, 1.5]),
    f32(rng.uniform(0.3, 0.6, 4)),
    f32(sh),
  )
  cfg = RenderConfig(sh_degree=1)
  bg = jnp.array([0.1, 0.2, 0.3])
  target = jax.random.uniform(jax.random.PRNGKey(1), (32, 32, 3))

  def loss(gg):
    o = rasterize(gg, cam, bg, cfg)
    return (
      jnp.mean((o.image - target) ** 2) + jnp.mean(o.alpha * target[..., 0]) + 0.1 * jnp.mean(o.depth * target[..., 1])
    )

  out = rasterize(g, cam, bg, cfg)
  assert bool(jnp.all(out.radii > 48)) and float(out.alpha.min()) > 0.05  # no ring in view
  grads = jax.grad(loss)(g)
  for name in ("sh", "opacities", "means", "scales", "quats"):
    x = getattr(g, name)
    d = f32(rng.normal(size=x.shape))
    f = lambda s: loss(dataclasses.replace(g, **{name: x + s * d}))
    eps = 1e-2 if name in ("means", "quats") else 1e-3
    fd = (f(eps) - f(-eps)) / (2 * eps)
    an = jnp.sum(getattr(grads, name) * d)
    assert abs(float(an)) > 1e-4, name
    assert abs(float(fd - an)) < 0.02 * abs(float(an)) + 1e-5, (name, float(fd), float(an))


def test_vmap_equals_stacked_calls(device):
  g = random_gaussians(6, 300)
  cams = ring_cameras(3, width=32, height=24, focal=30)
  bg = jnp.ones(3)
  batched = rasterize(g, cams, bg)
  mapped = jax.vmap(lambda c: rasterize(g, c, bg))(cams)
  for i in range(3):
    single = rasterize(g, cams[i], bg)
    np.testing.assert_allclose(batched.image[i], single.image, atol=1e-6)
    np.testing.assert_allclose(mapped.image[i], single.image, atol=1e-6)
    np.testing.assert_array_equal(mapped.wabe_mask[i], single.wabe_mask)
  # vmap over per-view Gaussians (shared camera) and over the background only
  gs = random_gaussians(7, 300, views=2)
  m2 = jax.vmap(lambda gg: rasterize(gg, cams[0], bg))(gs)
  for i in range(2):
    single = rasterize(jax.tree.map(lambda a: a[i], gs), cams[0], bg)
    np.testing.assert_allclose(m2.image[i], single.image, atol=1e-6)
  bgs = jnp.eye(3)
  m3 = jax.vmap(lambda b: rasterize(g, cams[0], b))(bgs)
  np.testing.assert_allclose(m3.image[2], rasterize(g, cams[0], bgs[2]).image, atol=1e-6)


def test_per_view_geometry_with_shared_colour_and_opacity(device):
  # the posed avatar's layout (rig.to_world): means / quats / scales per view [B,N,...], opacity and
  # SH shared [N,...]. Images equal the fully broadcast input's, and the shared operands' gradients
  # equal the per-view copies' gradients summed over the views.
  cams = ring_cameras(4, width=32, height=28, focal=30)
  per = random_gaussians(9, 250, views=4)
  shared = random_gaussians(10, 250)
  mixed = dataclasses.replace(per, opacities=shared.opacities, sh=shared.sh)
  copies = dataclasses.replace(
    per, opacities=jnp.broadcast_to(shared.opacities, (4, 250)), sh=jnp.broadcast_to(shared.sh, (4,) + shared.sh.shape)
  )
  w = jax.random.uniform(jax.random.PRNGKey(3), (4, 28, 32, 3))
  cfg = RenderConfig(sh_degree=2)
  loss = jax.jit(lambda gg: jnp.sum(rasterize(gg, cams, jnp.ones(3), cfg).image * w))
  np.testing.assert_allclose(
    rasterize(mixed, cams, jnp.ones(3), cfg).image, rasterize(copies, cams, jnp.ones(3), cfg).image, atol=1e-6
  )
  gm, gc = jax.grad(loss)(mixed), jax.grad(loss)(copies)
  tol = dict(rtol=1e-4, atol=1e-6) if device.platform == "cpu" else dict(rtol=1e-3, atol=1e-5)
  assert gm.sh.shape == shared.sh.shape and gm.opacities.shape == shared.opacities.shape
  np.testing.assert_allclose(gm.sh, jnp.sum(gc.sh, 0), **tol)
  np.testing.assert_allclose(gm.opacities, jnp.sum(gc.opacities, 0), **tol)
  for name in ("means", "quats", "scales"):
    np.testing.assert_allclose(getattr(gm, name), getattr(gc, name), **tol)
  assert float(jnp.abs(gm.sh).sum()) > 0 and float(jnp.abs(gm.opacities).sum()) > 0


def test_nested_vmap_and_vmap_of_grad(device):
  cams = ring_cameras(6, width=24, height=24, focal=24)
  grid = jax.tree.map(lambda a: a.reshape((2, 3) + a.shape[1:]), cams)
  g = random_gaussians(8, 200)
  bg = jnp.zeros(3)
  nested = jax.vmap(jax.vmap(lambda c: rasterize(g, c, bg).image))(grid)
  flat = rasterize(g, cams, bg).image
  np.testing.assert_allclose(nested.reshape(flat.shape), flat, atol=1e-6)
  # the CUDA backward sums per-pixel terms with float atomics in a varying order
  tol = dict(rtol=1e-4, atol=1e-6) if device.platform == "cpu" else dict(rtol=1e-3, atol=1e-5)
  # vmap over views of grad w.r.t. shared Gaussians == per-view grads
  loss = lambda gg, c: jnp.sum(rasterize(gg, c, bg).image ** 2)
  per_view = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(g, cams)
  for i in (0, 4):
    single = jax.grad(loss)(g, cams[i])
    np.testing.assert_allclose(per_view.means[i], single.means, **tol)
  # vmap over the cotangent only: unbatched residuals, batched cotangents (a Jacobian-style use)
  img, vjp = jax.vjp(lambda gg: rasterize(gg, cams[1], bg).image, g)
  cts = jax.random.normal(jax.random.PRNGKey(0), (3,) + img.shape)
  rows = jax.vmap(vjp)(cts)[0]
  for i in range(3):
    np.testing.assert_allclose(
      rows.means[i], vjp(cts[i])[0].means, **(dict(rtol=1e-5, atol=1e-6) if device.platform == "cpu" else tol)
    )
  # grad of a sum over the native batch == sum of per-view grads
  total = jax.grad(lambda gg: jnp.sum(rasterize(gg, cams, bg).image ** 2))(g)
  np.testing.assert_allclose(total.sh, jnp.sum(per_view.sh, 0), rtol=1e-3, atol=1e-5)


def test_jit_compiles_once_for_any_camera(device):
  g = random_gaussians(9, 200)
  bg = jnp.ones(3)
  f = jax.jit(lambda c: rasterize(g, c, bg).image)
  for seed in range(3):
    cams = ring_cameras(2, width=32, height=32, focal=30 + seed, seed=seed, jitter_pp=True)
    f(cams).block_until_ready()
  assert f._cache_size() == 1


def _one_view(width=32, height=32):
  return ring_cameras(1, width=width, height=height, focal=32)[0]


def _single(means, scales=0.03, opac=0.8, quat=(1.0, 0, 0, 0)):
  n = len(means)
  return Gaussians(
    means=jnp.asarray(means, jnp.float32),
    quats=jnp.tile(jnp.asarray(quat, jnp.float32), (n, 1)),
    scales=jnp.broadcast_to(jnp.asarray(scales, jnp.float32), (n, 3)),
    opacities=jnp.broadcast_to(jnp.asarray(opac, jnp.float32), (n,)),
    sh=jnp.full((n, 16, 3), 0.5, jnp.float32),
  )


def test_degenerate_inputs_are_finite_and_not_drawn(device):
  cam = _one_view()
  center = np.asarray(cam.position) * 0.0  # the ring cameras look at the origin
  behind = 2.0 * np.asarray(cam.position)  # behind the camera
  g = _single([center, behind, center + 0.01, center - 0.01, [40.0, 0, 0], center + 0.02], scales=0.03)
  g = dataclasses.replace(
    g,
    scales=g.scales.at[2].set(0.0).at[5].set(1e4),  # zero and huge scales
    opacities=g.opacities.at[3].set(0.0),  # zero opacity
    quats=g.quats.at[0].set(0.0),
  )  # zero-norm quaternion
  bg = jnp.array([1.0, 1.0, 1.0])
  out = rasterize(g, cam, bg)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in (out.image, out.alpha, out.depth, out.wabe_weight))
  radii = np.asarray(out.radii)
  assert radii[0] == 0 and radii[1] == 0 and radii[4] == 0  # zero quaternion, behind, off-screen
  assert radii[2] > 0 and radii[5] > 0  # zero scale: a 0.3 px splat; huge: covers the image
  grads = jax.grad(lambda gg: jnp.sum(rasterize(gg, cam, bg).image))(g)
  for leaf in jax.tree.leaves(grads):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  for i in (0, 1, 3, 4):  # not drawn, or drawn with zero opacity: no gradient
    assert float(jnp.abs(grads.means[i]).sum() + jnp.abs(grads.sh[i]).sum()) == 0.0
  ref = rasterize(*_cpu((g, cam, bg)), REF)
  np.testing.assert_allclose(out.image, ref.image, atol=1e-4)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_nonfinite_gaussians_are_not_drawn(backend, device):
  """Documented behaviour: a Gaussian with any non-finite parameter it is drawn with (incl. the SH
  coefficients of the active degree: NaN and -inf would be clamped to a finite colour 0, and the
  screen offset) is not drawn (radius 0) and gets zero gradient; the rest stays finite."""
  g = random_gaussians(10, 100)
  g = dataclasses.replace(g, screen_offset=jnp.zeros((100, 2)))
  cam = _one_view()
  bg = jnp.array([0.3, 0.6, 0.9])
  cfg = RenderConfig(backend=backend)
  nan, inf = jnp.nan, jnp.inf
  bad = dataclasses.replace(
    g,
    means=g.means.at[0, 1].set(nan),
    opacities=g.opacities.at[2].set(nan),
    scales=g.scales.at[3, 2].set(nan),
    quats=g.quats.at[8, 0].set(inf),
    screen_offset=g.screen_offset.at[9, 1].set(nan),
    sh=(
      g.sh.at[1, 0, 0]
      .set(inf)
      .at[4, 0, 1]
      .set(nan)
      .at[5, 0, 2]
      .set(-inf)  # DC term
      .at[6, 2, 0]
      .set(nan)
      .at[7, 15, 1]
      .set(-inf)
    ),
  )  # degree 1 and 3
  nb = 10
  assert np.all(np.asarray(rasterize(g, cam, bg, cfg).radii[:nb]) > 0)  # all drawn when finite
  out = rasterize(bad, cam, bg, cfg)
  for x in (out.image, out.alpha, out.depth, out.wabe_weight):
    assert bool(jnp.all(jnp.isfinite(x)))
  np.testing.assert_array_equal(np.asarray(out.radii[:nb]), 0)
  assert not np.any(np.asarray(out.wabe_mask[:nb]))
  ok = dataclasses.replace(g, opacities=g.opacities.at[:nb].set(0.0))  # the scene without them
  np.testing.assert_allclose(out.image, rasterize(ok, cam, bg, cfg).image, atol=1e-6)
  w = jax.random.uniform(jax.random.PRNGKey(4), out.image.shape)
  grads = jax.grad(lambda gg: jnp.sum(rasterize(gg, cam, bg, cfg).image * w))(bad)
  for name in ("means", "quats", "scales", "opacities", "sh", "screen_offset"):
    leaf = getattr(grads, name)
    assert bool(jnp.all(jnp.isfinite(leaf))), name
    assert float(jnp.abs(leaf[:nb]).sum()) == 0.0, name
  assert float(jnp.abs(grads.means[nb:]).sum()) > 0.0
  # coefficients above the active degree are not read: a NaN there changes nothing
  cfg1 = dataclasses.replace(cfg, sh_degree=1)
  unread = rasterize(dataclasses.replace(g, sh=g.sh.at[0, 9, 0].set(nan)), cam, bg, cfg1)
  np.testing.assert_array_equal(unread.image, rasterize(g, cam, bg, cfg1).image)


def test_nonfinite_sh_native_matches_reference(device):
  g = random_gaussians(18, 300)
  g = dataclasses.replace(g, sh=g.sh.at[::7, 0, 0].set(jnp.nan).at[3::11, 1, 2].set(-jnp.inf))
  cams = ring_cameras(2, width=40, height=36, focal=40)
  bg = jnp.array([0.2, 0.5, 0.9])
  cfg = RenderConfig()
  ref = rasterize(*_cpu((g, cams, bg)), _ref_cfg(cfg))
  gr = jax.grad(_loss_fn(_cpu(cams), _ref_cfg(cfg)))(*_cpu((g, bg)))
  _assert_outputs_match(rasterize(g, cams, bg, cfg), ref)
  gn = jax.grad(_loss_fn(cams, cfg))(g, bg)
  for name in ("means", "quats", "scales", "opacities", "sh"):
    a, b = getattr(gn, name), getattr(gr, name)
    assert bool(jnp.all(jnp.isfinite(a))) and bool(jnp.all(jnp.isfinite(b))), name
    assert _rel(a, b) < 1e-3, (name, _rel(a, b))


def test_overflow_is_flagged(device):
  g = random_gaussians(11, 300)
  cams = ring_cameras(2, width=32, height=32, focal=32)
  bg = jnp.ones(3)
  ok = rasterize(g, cams, bg)
  assert not np.any(ok.overflow)
  small = rasterize(g, cams, bg, RenderConfig(max_intersections=50))
  assert np.all(small.overflow)
  # under jit nothing reads back: the flag is an ordinary output
  flag = jax.jit(lambda gg: rasterize(gg, cams, bg, RenderConfig(max_intersections=50)).overflow)(g)
  assert np.all(flag)


def test_intersection_count_is_the_capacity_needed(device):
  # RenderOutput.intersections is what each view's share of the buffer must hold: exactly that
  # capacity draws the view, one less overflows it; the count does not depend on the capacity
  g = random_gaussians(12, 300)
  cams = ring_cameras(2, width=32, height=32, focal=32)
  bg = jnp.ones(3)
  out = rasterize(g, cams, bg)
  need = np.asarray(out.intersections)
  assert need.shape == (2,) and np.all(need > 0) and need[0] != need[1]
  assert np.all(np.asarray(rasterize(g, cams, bg, RenderConfig(max_intersections=50)).intersections) == need)
  for v in range(2):
    one = jax.tree.map(lambda x: x[v], cams)
    fits = rasterize(g, one, bg, RenderConfig(max_intersections=int(need[v])))
    assert not bool(fits.overflow) and int(fits.intersections) == need[v]
    np.testing.assert_allclose(np.asarray(fits.image), np.asarray(out.image[v]), atol=1e-6)
    assert bool(rasterize(g, one, bg, RenderConfig(max_intersections=int(need[v]) - 1)).overflow)


def test_tile_lists_are_exact(device):
  # a tile enters a Gaussian's list only where alpha can reach 1/255: the lists fit in far fewer
  # slots than the 3-sigma squares, and the image and gradients stay the reference's
  g, cam = faint_scene()
  bg = jnp.full(3, 0.3)
  square = square_tile_pairs(g, cam, RenderConfig())
  tight = RenderConfig(max_intersections=square * 2 // 3)  # measured: 60% of the squares
  out = rasterize(g, cam, bg, tight)
  assert not np.any(out.overflow)
  ref_out = rasterize(*_cpu((g, cam, bg)), REF)
  _assert_outputs_match(out, ref_out)
  assert np.all(rasterize(g, cam, bg, RenderConfig(max_intersections=square // 2)).overflow)
  w = jax.random.uniform(jax.random.PRNGKey(3), out.image.shape)
  loss = lambda cfg: lambda gg: jnp.sum(rasterize(gg, cam, bg, cfg).image * w)
  ours = jax.grad(loss(tight))(g)
  cam_cpu, bg_cpu, w_cpu = _cpu((cam, bg, w))
  ref = jax.grad(lambda gg: jnp.sum(rasterize(gg, cam_cpu, bg_cpu, REF).image * w_cpu))(_cpu(g))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.abs(b).max()) + 1e-7)


def test_screen_offset_gradient_is_the_2d_mean_gradient(device):
  g = random_gaussians(12, 100)
  cam = _one_view()
  bg = jnp.zeros(3)
  g0 = dataclasses.replace(g, screen_offset=jnp.zeros((100, 2)))
  grad = jax.grad(lambda gg: jnp.sum(rasterize(gg, cam, bg).image[..., 0]))(g0).screen_offset
  # moving every splat right by one pixel == a unit screen offset: check one Gaussian by FD
  i = int(jnp.argmax(jnp.linalg.norm(grad, axis=-1)))
  f = lambda s: jnp.sum(
    rasterize(dataclasses.replace(g0, screen_offset=g0.screen_offset.at[i, 0].set(s)), cam, bg).image[..., 0]
  )
  fd = (f(1e-2) - f(-1e-2)) / 2e-2
  assert abs(float(fd) - float(grad[i, 0])) < 0.05 * abs(float(grad[i, 0])) + 1e-3


def test_bad_arguments_raise_clear_errors():
  g = random_gaussians(13, 10)
  cam = _one_view()
  for backend in ("auto", "reference"):
    cfg = RenderConfig(backend=backend)
    with pytest.raises(InputError, match=re.escape("sh_degree = 3 needs (d+1)^2 = 16") + ".*K = 4"):
      rasterize(dataclasses.replace(g, sh=g.sh[:, :4]), cam, jnp.zeros(3), cfg)
    with pytest.raises(InputError, match="quats must be"):
      rasterize(dataclasses.replace(g, quats=g.quats[:, :3]), cam, jnp.zeros(3), cfg)
    cams = ring_cameras(3, width=32, height=32)
    with pytest.raises(InputError, match="do not broadcast"):
      rasterize(random_gaussians(1, 10, views=2), cams, jnp.zeros(3), cfg)


def test_principal_point_is_honoured(device):
  g = _single([[0.0, 0.0, 0.0]], scales=0.01, opac=0.9)
  eye = np.eye(4, dtype=np.float32)
  eye[2, 3] = 1.0  # camera 1 m in front of the origin, looking along +z
  for cx, cy in ((16.5, 16.5), (10.5, 20.5)):  # pixel i has its centre at i + 0.5
    cam = make_camera(eye, 40.0, cx=cx, cy=cy, width=32, height=32)
    img = rasterize(g, cam, jnp.zeros(3)).alpha
    y, x = np.unravel_index(int(jnp.argmax(img)), img.shape)
    assert (x, y) == (int(cx), int(cy))


# ------------------------------------------------------------------ static settings are validated
_BAD_SETTINGS = [
  ("tile_size", 0, "an integer in [1, 16]"),
  ("tile_size", -1, "an integer in [1, 16]"),
  ("tile_size", -1000, "an integer in [1, 16]"),
  ("tile_size", 17, "an integer in [1, 16]"),
  ("tile_size", 8.0, "an integer"),
  ("tile_size", True, "an integer"),
  ("max_intersections", 0, "None or an integer in [1, 2^31)"),
  ("max_intersections", -5, "None or an integer in [1, 2^31)"),
  ("isect_per_gaussian", -2.0, ">= 0"),
  ("isect_per_gaussian", math.nan, "a finite number >= 0"),
  ("wabe_k", -1, "an integer in [1, 32], or 0"),
  ("wabe_k", 33, "an integer in [1, 32], or 0"),
  ("wabe_beta", -0.5, "a finite number >= 0"),
  ("wabe_beta", math.inf, "a finite number >= 0"),
  ("wabe_beta", math.nan, "a finite number >= 0"),
  ("sh_degree", -1, "an integer in [0, 3]"),
  ("sh_degree", 4, "an integer in [0, 3]"),
  ("near_plane", 0.0, "a finite number > 0"),
  ("near_plane", -0.2, "a finite number > 0"),
  ("near_plane", math.nan, "a finite number > 0"),
  ("wabe_visibility", "tiles", '"pixel" or "tile"'),
  ("alpha_clamp_grad", "clip", '"pass" or "zero"'),
  ("backend", "cuda", '"auto" or "reference"'),
  ("backend", "native", '"auto" or "reference"'),
  ("wabe_backward", "yes", "True or False"),
]


@pytest.mark.parametrize("field,value,expected", _BAD_SETTINGS)
def test_bad_settings_raise_one_line_input_errors(field, value, expected):
  # before any kernel sees them (a zero or negative tile size used to corrupt the CPU kernel's heap
  # or return a black image; 17 only fails on the GPU): the message names the setting, the value
  # and what was expected
  with pytest.raises(InputError) as e:
    rasterize(random_gaussians(13, 10), _one_view(), jnp.zeros(3), RenderConfig(**{field: value}))
  msg = str(e.value)
  assert msg.startswith(f"RenderConfig.{field} = {value!r}: expected ") and expected in msg, msg
  assert "\n" not in msg


def test_settings_are_checked_again_before_the_kernel():
  g, cam = random_gaussians(13, 10), _one_view()
  cfg = RenderConfig()
  object.__setattr__(cfg, "tile_size", -1)  # built around the constructor's check
  for backend in ("auto", "reference"):
    object.__setattr__(cfg, "backend", backend)
    with pytest.raises(InputError, match=re.escape("RenderConfig.tile_size = -1")):
      rasterize(g, cam, jnp.zeros(3), cfg)
  for w, h, name in ((0, 32, "width"), (32, 20000, "height"), (-3, 32, "width")):
    bad = make_camera(np.eye(4), 30.0, width=w, height=h)
    with pytest.raises(
      InputError, match=re.escape(f"camera.{name} = {w if name == 'width' else h}:") + r".*\[1, 16384\]"
    ):
      rasterize(g, bad, jnp.zeros(3))


def _static(**kw):
  base = dict(
    width=32,
    height=32,
    tile_size=16,
    sh_degree=3,
    near_plane=0.2,
    wabe_k=10,
    wabe_beta=6.0,
    wabe_backward=False,
    capacity=4096,
  )
  return render_api._Static(**{**base, **kw})


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("tile_size", 0, "tile_size is 0, expected an integer in [1, 16]"),
    ("tile_size", -1, "tile_size is -1, expected"),
    ("tile_size", -1000, "tile_size is -1000"),
    ("tile_size", 17, "tile_size is 17"),
    ("width", 0, "image size is 0x32"),
    ("height", 20000, "image size is 32x20000"),
    ("sh_degree", 4, "sh_degree is 4"),
    ("near_plane", 0.0, "near_plane is 0"),
    ("wabe_beta", math.nan, "wabe_beta is nan"),
    ("wabe_k", 33, "wabe_k is 33"),
    ("capacity", 0, "intersection capacity is 0"),
  ],
)
def test_native_entry_points_refuse_bad_settings(field, value, match, device):
  """The kernels check the static settings themselves (an FFI error, not a corrupted heap), for a
  call made around `rasterize`'s checks."""
  g, cam, bg = random_gaussians(14, 50), _one_view(), jnp.zeros(3)
  named, batch = _inputs.prepare_inputs(g, cam, bg, RenderConfig())
  ops = _inputs.aligned(named, batch)
  bad = _static(**{field: value})
  with pytest.raises(Exception, match=re.escape(match)):
    jax.block_until_ready(render_api._fwd_call(bad, *ops))
  if field not in ("wabe_k", "capacity"):  # (forward-only settings)
    outs, res = render_api._rasterize_fwd(_static(), *ops)  # good residuals, bad backward settings
    cts = (jnp.ones_like(outs[0]), jnp.zeros_like(outs[1]), jnp.zeros_like(outs[2]))
    with pytest.raises(Exception, match=re.escape(match)):
      jax.block_until_ready(render_api._rasterize_bwd(bad, res, cts))
  # the device is still usable afterwards
  assert not np.any(np.asarray(rasterize(g, cam, bg).overflow))


# ------------------------------------------------------------------ alpha = min(0.99, o G) backward
def _opaque_scene(seed=15, n=300):
  """Wide Gaussians, half of them with opacity in [0.992, 1]: o G > 0.99 near their centres."""
  g = random_gaussians(seed, n, scale=0.06)
  opac = g.opacities.at[::2].set(jnp.linspace(0.992, 1.0, (n + 1) // 2))
  return dataclasses.replace(g, opacities=opac, screen_offset=jnp.zeros((n, 2)))


def test_alpha_clamp_gradient_modes_match_reference(device):
  g = _opaque_scene()
  cams = ring_cameras(2, width=40, height=36, focal=40, jitter_pp=True)
  bg = jnp.array([0.2, 0.5, 0.9])
  grads = {}
  for mode in ("pass", "zero"):
    cfg = RenderConfig(alpha_clamp_grad=mode)
    gn = jax.grad(_loss_fn(cams, cfg), argnums=(0, 1))(g, bg)
    gr = jax.grad(_loss_fn(_cpu(cams), _ref_cfg(cfg)), argnums=(0, 1))(*_cpu((g, bg)))
    for name in ("means", "quats", "scales", "opacities", "sh", "screen_offset"):
      a, b = getattr(gn[0], name), getattr(gr[0], name)
      assert _rel(a, b) < 1e-3, (mode, name, _rel(a, b))
    assert _rel(gn[1], gr[1]) < 1e-3
    grads[mode] = gn[0], gr[0]
  # the clamped pixels' share (pass - zero) on its own: the kernel's equals the reference's
  for name in ("opacities", "means", "screen_offset"):
    dn = getattr(grads["pass"][0], name) - getattr(grads["zero"][0], name)
    dr = getattr(grads["pass"][1], name) - getattr(grads["zero"][1], name)
    assert float(jnp.linalg.norm(dr)) > 1e-4 * float(jnp.linalg.norm(getattr(grads["pass"][1], name))), name
    assert _rel(dn, dr) < 2e-2, (name, _rel(dn, dr))


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_alpha_clamp_pass_is_the_3dgs_gradient(backend, device):
  # One wide Gaussian of opacity 1 facing the camera, loss = sum(alpha): dL/dalpha = 1 at every
  # pixel. The 3DGS backward (dL/do = G dL/dalpha, clamp or not) gives dL/do = sum of G over the
  # accepted pixels; "zero" leaves out the clamped ones, where G > 0.99. So the difference lies in
  # [0.99 n, n] for the n clamped pixels of the image.
  cam = _one_view()
  g = _single([[0.0, 0.0, 0.0]], scales=0.5, opac=1.0)
  bg = jnp.zeros(3)
  alpha = rasterize(g, cam, bg, RenderConfig(backend=backend)).alpha
  n = int(jnp.sum(alpha > 0.9899))
  assert 5 <= n < 200
  d = {
    m: jax.grad(lambda gg: jnp.sum(rasterize(gg, cam, bg, RenderConfig(alpha_clamp_grad=m, backend=backend)).alpha))(g)
    for m in ("pass", "zero")
  }
  diff = float(d["pass"].opacities[0] - d["zero"].opacities[0])
  assert 0.99 * n - 1e-3 <= diff <= n * 1.0001, (diff, n)


# ------------------------------------------------------------------ WABE visibility per tile
@pytest.mark.parametrize("tile,k,views", [(16, 10, 2), (8, 3, 1), (16, 1, 1)])
def test_wabe_tile_matches_reference(tile, k, views, device):
  g = random_gaussians(16, 1500)
  cams = ring_cameras(views, width=70, height=52, focal=60, jitter_pp=True, seed=3)
  bg = jnp.array([0.1, 0.2, 0.3])
  cfg = RenderConfig(tile_size=tile, wabe_k=k, wabe_visibility="tile")
  out = rasterize(g, cams, bg, cfg)
  ref = rasterize(*_cpu((g, cams, bg)), _ref_cfg(cfg))
  _assert_outputs_match(out, ref)
  pix = rasterize(g, cams, bg, dataclasses.replace(cfg, wabe_visibility="pixel"))
  np.testing.assert_array_equal(out.image, pix.image)  # only the WABE outputs differ
  tm, pm = np.asarray(out.wabe_mask), np.asarray(pix.wabe_mask)
  # each tile slot is among the first K of every pixel that accepts it: a subset of the pixel mask,
  # at most K Gaussians per tile
  assert np.all(pm[tm]) and 0 < tm.sum() < pm.sum()
  ntiles = math.ceil(70 / tile) * math.ceil(52 / tile)
  assert np.all(tm.sum(-1) <= k * ntiles)
  w = np.asarray(out.wabe_weight)
  assert np.all((w >= 0) & (w <= 1)) and np.all(w[~tm] == 0)


def test_wabe_tile_definition_on_one_tile(device):
  # A 16x16 image is one tile: the tile mode marks the K nearest of the Gaussians that some pixel
  # accepts. Those are what the pixel mode marks with K = 32 >= N.
  g = random_gaussians(17, 30, scale=0.02, radius=0.5)
  cam = ring_cameras(1, width=16, height=16, focal=20)[0]
  bg = jnp.zeros(3)
  accepted = np.asarray(rasterize(g, cam, bg, RenderConfig(wabe_k=32)).wabe_mask)
  w2c = np.asarray(cam.world_to_camera)
  z = np.asarray(g.means) @ w2c[2, :3] + w2c[2, 3]
  nearest = [i for i in np.argsort(z, kind="stable") if accepted[i]][:3]
  assert 3 < accepted.sum() < 30
  for backend in ("auto", "reference"):
    out = rasterize(g, cam, bg, RenderConfig(wabe_k=3, wabe_visibility="tile", backend=backend))
    assert sorted(np.flatnonzero(np.asarray(out.wabe_mask))) == sorted(nearest)
    # all 256 pixels carry the same 3 slots: the weights are the tile's normalised slot weights
    w = np.sort(np.asarray(out.wabe_weight)[nearest])
    assert w[0] == pytest.approx(0.0, abs=1e-6) and w[2] == pytest.approx(1.0, abs=1e-6)
