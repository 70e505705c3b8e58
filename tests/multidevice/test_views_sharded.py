"""Data parallelism over views, on 4 devices: sharded results equal the one-device ones.

Run by tests/test_sharding.py in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4
(the device count is fixed when JAX starts); skipped in a process with fewer than 4 devices.

Tolerances: the sharded step sums the replicated Gaussians' gradients per device and then across
devices, so sums run in another order (~1e-7 relative). Compared directly: losses, images,
gradients (one SGD step of lr 1 moves the parameters by exactly -grad). Adam with eps 1e-15
normalises gradients elementwise, so over several steps a near-zero gradient's rounding can flip
an update's sign; whole runs are therefore compared through their loss curves and what they decide
(densification counts, the export), not parameter by parameter.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from raster_scenes import random_gaussians, ring_cameras
from recon_data import make_tiny_dataset, tiny_config

from gaedit_jax import parallel
from gaedit_jax.flags import build
from gaedit_jax.render import RenderConfig, rasterize

pytestmark = pytest.mark.skipif(
  jax.device_count() < 4, reason="needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)"
)


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


@pytest.mark.parametrize("per_view", [False, True])
def test_rasterize_sharded_matches_one_device(per_view):
  mesh = parallel.view_mesh(4, 8)
  assert mesh is not None and mesh.size == 4
  cam = ring_cameras(8, width=40, height=32)
  g = random_gaussians(0, 300, views=8 if per_view else None)
  bg = jnp.array([1.0, 0.5, 0.0])

  def loss(g, cfg):
    o = rasterize(g, cam, bg, cfg)
    return jnp.sum(o.image**2) + jnp.sum(o.alpha * o.depth), o

  f = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (l0, o0), g0 = f(g, RenderConfig())
  (l1, o1), g1 = f(g, RenderConfig(mesh=mesh))
  assert o1.image.sharding.spec == jax.sharding.PartitionSpec(parallel.VIEWS)  # really split
  assert len(o1.image.sharding.device_set) == 4
  np.testing.assert_allclose(o1.image, o0.image, atol=1e-6)
  np.testing.assert_array_equal(o1.radii, o0.radii)
  np.testing.assert_array_equal(o1.wabe_mask, o0.wabe_mask)
  assert abs(float(l1) - float(l0)) <= 1e-6 * abs(float(l0))
  for k in ("means", "quats", "scales", "opacities", "sh"):
    assert _rel(getattr(g0, k), getattr(g1, k)) < 1e-5, k  # shared: summed over devices


def test_view_mesh_rules():
  assert parallel.view_mesh(1, 4) is None
  assert parallel.view_mesh(2, 4).size == 2
  with pytest.warns(UserWarning, match="using 3"):
    assert parallel.view_mesh(None, 6).size == 3  # default: the most devices that divide
  with pytest.raises(ValueError, match="cannot be split evenly"):
    parallel.view_mesh(4, 6)
  with pytest.raises(ValueError, match="available"):
    parallel.view_mesh(5, 10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("shard")
  return dict(
    root=root, data=make_tiny_dataset(root / "data"), paint=make_tiny_dataset(root / "facepaint", texture="facepaint")
  )


def test_train_step_gradients_match(tiny, tmp_path):
  from gaedit_jax.reconstruct import StepConfig, Trainer, train_step

  tr = {d: Trainer(tiny_config(tiny["data"], tmp_path / str(d), batch_size=4, devices=d)) for d in (1, 4)}
  assert tr[1].mesh is None and tr[4].mesh.size == 4
  b = tr[1].train_ds.batch(np.arange(4))
  # an "optimizer" that keeps the gradients as its state: the step returns them exactly
  keep = optax.GradientTransformation(lambda p: p, lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))
  out = {}
  for d, t in tr.items():
    st = dataclasses.replace(t.state, opt_state=keep.init(t.state.params()))
    views = parallel.shard_views((b.image, b.camera, b.timestep), t.mesh)
    step = jax.jit(lambda s, *a, cfg=StepConfig(render=t.render_config(1)): train_step(s, *a, optimizer=keep, cfg=cfg))
    out[d] = step(st, *views, t.model, t.background)
  (s1, m1), (s4, m4) = out[1], out[4]
  assert abs(float(m1["loss"]) - float(m4["loss"])) < 1e-6 * float(m1["loss"])
  # (not rotation: the initial Gaussians are isotropic, its gradient is rounding noise ~1e-9)
  for k in ("xyz", "log_scale", "opacity_logit", "sh_dc"):
    g1, g4 = np.asarray(s1.opt_state["gauss"][k]), np.asarray(s4.opt_state["gauss"][k])
    assert np.linalg.norm(g1) > 0, k
    assert np.linalg.norm(g4 - g1) < 1e-4 * np.linalg.norm(g1), k
  for k in ("expr", "rotation", "translation"):
    g1, g4 = np.asarray(getattr(s1.opt_state["flame"], k)), np.asarray(getattr(s4.opt_state["flame"], k))
    assert np.linalg.norm(g4 - g1) <= 1e-4 * np.linalg.norm(g1), k
  np.testing.assert_allclose(s4.stats.denom, s1.stats.denom)
  assert _rel(s1.stats.accum, s4.stats.accum) < 1e-4


def test_split_state_step_gathers_each_array_once(tiny, tmp_path):
  """The compiled step on the split state: each per-Gaussian array is gathered once (not column by
  column), nothing is permuted or exchanged all-to-all, and the returned state keeps the split
  layout (the next step reuses the program)."""
  import re

  from gaedit_jax.reconstruct import Trainer

  t = Trainer(tiny_config(tiny["data"], tmp_path / "hlo", batch_size=4, devices=4))
  b = t.train_ds.batch(np.arange(4))
  views = parallel.shard_views((b.image, b.camera, b.timestep), t.mesh)
  step = t.step_fn(1)
  txt = step.lower(t.state, *views, t.model, t.background).compile().as_text()
  ops = re.findall(r" (all-gather|all-to-all|collective-permute|reduce-scatter|all-reduce)(?:-start)?\(", txt)
  per_gaussian = sum(1 for x in jax.tree.leaves(t.state.avatar) if x.ndim and x.shape[0] == t.state.avatar.capacity)
  assert 0 < ops.count("all-gather") <= per_gaussian + 2, ops
  assert "all-to-all" not in ops and "collective-permute" not in ops, ops
  new, _ = step(t.state, *views, t.model, t.background)
  new, _ = step(new, *views, t.model, t.background)
  assert step._cache_size() == 1
  assert new.avatar.sh_rest.sharding.spec == jax.sharding.PartitionSpec(parallel.VIEWS)


def test_device_frames_split_the_views_as_the_host_batches(tiny):
  from gaedit_jax.data.dataset import AvatarDataset
  from gaedit_jax.train.frames import DeviceFrames

  ds = AvatarDataset(tiny["data"], "train")
  mesh = parallel.view_mesh(4, 4)
  fr = DeviceFrames(ds, mesh)
  assert fr.images.sharding.is_fully_replicated and len(fr.images.sharding.device_set) == 4
  idx = [5, 0, 7, 0]
  b = ds.batch(idx)
  want = parallel.shard_views((b.image, b.camera, b.timestep), mesh)
  got = fr.batch(idx)
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    assert y.sharding.is_equivalent_to(x.sharding, x.ndim), (x.sharding, y.sharding)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_reconstruction_run_matches(tiny, tmp_path):
  from gaedit_jax.reconstruct import Trainer

  runs = {}
  for d in (1, 4):
    # 4 devices: the batches gathered from the frames kept on the devices (train.frames), and
    # calls of 3 steps where no host work falls between them (a scan over the split state)
    frames, k = ("on", 3) if d == 4 else ("off", 1)
    t = Trainer(
      tiny_config(
        tiny["data"],
        tmp_path / str(d),
        batch_size=4,
        devices=d,
        iterations=12,
        frames_on_device=frames,
        steps_per_call=k,
      )
    )
    assert (t.frames is not None) == (d == 4)
    runs[d] = (t.run(), t)
  (r1, t1), (r4, t4) = runs[1], runs[4]
  # the per-Gaussian state (parameters, Adam moments, statistics) stays split over the 4 devices
  # through steps, densification and the interval checkpoints; FLAME's stays replicated
  split = jax.sharding.PartitionSpec(parallel.VIEWS)
  mu = t4.state.opt_state.inner_states["lr_xyz"].inner_state[0].mu["gauss"]["xyz"]
  for x in (t4.state.avatar.xyz, t4.state.avatar.sh_rest, t4.state.stats.accum, mu):
    assert x.sharding.spec == split and len(x.sharding.device_set) == 4, x.sharding
  assert t4.state.flame.expr.sharding.is_fully_replicated
  assert r1["num_gaussians"] == r4["num_gaussians"]
  assert [x["iteration"] for x in r1["densify"]] == [x["iteration"] for x in r4["densify"]]
  l1 = np.array([h["loss"] for h in t1.history])
  l4 = np.array([h["loss"] for h in t4.history])
  np.testing.assert_allclose(l4, l1, rtol=1e-4)


def test_edit_run_matches(tiny, tmp_path):
  from gaedit_jax.edit.loop import EditConfig, EditRun
  from gaedit_jax.reconstruct import Trainer

  model = tmp_path / "model"
  Trainer(tiny_config(tiny["data"], model, iterations=6, checkpoint_interval=6, position_lr_max_steps=6)).run()
  hist = {}
  for d in (1, 4):
    cfg = build(
      EditConfig,
      avatar=model,
      out=tmp_path / f"edit{d}",
      editor="synthetic",
      target_data=tiny["paint"],
      iterations=4,
      batch_size=4,
      devices=d,
      checkpoint_interval=4,
      dump_interval=0,
      progress=False,
      tensorboard=False,
      lambda_lpips=0.0,
      log_interval=1,
    )
    run = EditRun(cfg)
    assert (run.mesh is None) == (d == 1)
    run.run()
    hist[d] = run.history
  for k in ("loss", "l1", "mouth_l1", "gan_d", "gan_g", "wabe_fraction"):
    a = np.array([h[k] for h in hist[1]])
    b = np.array([h[k] for h in hist[4]])
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=k)


def test_ip2p_edits_of_a_batch_split_over_devices(tmp_path):
  """The InstructPix2Pix call on 4 views sharded over 4 devices (XLA partitions it along the
  batch; the per-view randomness is partitionable) gives the one-device edits."""
  from gaedit_jax.edit.editors import EditContext, IP2PEditor
  from gaedit_jax.nets.ip2p import InstructPix2Pix, IP2PConfig
  from gaedit_jax.nets.tiny import make_tiny_ip2p

  tiny = make_tiny_ip2p(str(tmp_path / "ip2p"), seed=0)
  editor = IP2PEditor.create(InstructPix2Pix.from_pretrained(tiny, IP2PConfig(size=32, num_steps=2)), "paint it")
  rng = np.random.default_rng(0)
  renders = rng.random((4, 24, 20, 3), dtype=np.float32)
  photos = np.clip(renders + 0.1, 0, 1).astype(np.float32)
  ctx = EditContext.make(np.arange(4), np.zeros(4, np.int32))
  f = jax.jit(lambda e, k, r, o, c: e(k, r, o, c))
  key = jax.random.key(3)
  one = f(editor, key, renders, photos, ctx)
  mesh = parallel.view_mesh(4, 4)
  r4, p4, c4 = parallel.shard_views((renders, photos, ctx), mesh)
  rep = parallel.replicate(editor, mesh)
  four = f(rep, key, r4, p4, c4)
  assert len(four.sharding.device_set) == 4 and not four.sharding.is_fully_replicated
  np.testing.assert_allclose(np.asarray(four), np.asarray(one), atol=2e-5)
  # each device edits its own views: the partitioned program moves no data between devices (the
  # 3-way guidance batch and the VAE's render/original batch are laid out view-major)
  hlo = f.lower(rep, key, r4, p4, c4).compile().as_text()
  moved = {op: hlo.count(op) for op in ("collective-permute", "all-gather", "all-to-all", "all-reduce")}
  assert not any(moved.values()), moved


@pytest.mark.parametrize("mode", ["faithful", "standard"])
def test_adversarial_loss_of_views_split_over_devices_moves_no_activations(mode):
  """The conditional GAN term on 4 views sharded over 4 devices equals the one-device value and
  gradients, and its program holds no all-to-all, permute or all-gather: D sees each device's own
  (real, fake) pairs (view-major batch); only the scalar loss and D's gradient are reduced."""
  from gaedit_jax.edit import discriminator as D

  module, params = D.init_discriminator(jax.random.key(0), (64, 64))
  rng = np.random.default_rng(1)
  edit, render = (jnp.asarray(rng.random((4, 64, 64, 3), dtype=np.float32)) for _ in range(2))
  f = jax.jit(jax.value_and_grad(lambda p, e, r: D.adversarial_loss(module, p, e, r, mode=mode)[0], argnums=(0, 2)))
  one = f(params, edit, render)
  mesh = parallel.view_mesh(4, 4)
  args = (parallel.replicate(params, mesh), *parallel.shard_views((edit, render), mesh))
  four = f(*args)
  for a, b in zip(jax.tree.leaves(four), jax.tree.leaves(one)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  hlo = f.lower(*args).compile().as_text()
  moved = {op: hlo.count(op) for op in ("collective-permute", "all-gather", "all-to-all")}
  assert not any(moved.values()), moved
