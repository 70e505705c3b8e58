"""Components of the editing loop: PatchGAN and its losses (METHOD §7), WABE gradient mask
(METHOD §6), rendered mouth mask and mouth loss (METHOD §5.3), the editor protocol and the synthetic
editor. Tiny synthetic head (1340 faces), 48x64 / 72x96 renders."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaedit_jax import flame as F
from gaedit_jax import rig
from gaedit_jax.camera import make_camera
from gaedit_jax.data import mesh_raster, synthetic
from gaedit_jax.edit import discriminator as D
from gaedit_jax.edit import mouth as M
from gaedit_jax.edit import wabe as W
from gaedit_jax.edit.editors import EditContext, Editor, IP2PEditor, NoiseConfig, SyntheticEditor
from gaedit_jax.flame import synthetic as sh
from gaedit_jax.metrics import psnr, ssim
from gaedit_jax.render import RenderConfig, rasterize

# ------------------------------------------------------------------------------------------------
# discriminator
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(None)
def disc():
  return D.init_discriminator(jax.random.key(0), (64, 64))


def test_patchgan_layers_init_and_output_shapes():
  module, params = disc()
  shapes = {k: v["kernel"].shape for k, v in params.items()}
  assert shapes == {
    "conv0": (4, 4, 6, 64),
    "conv1": (4, 4, 64, 128),
    "conv2": (4, 4, 128, 128),
    "conv3": (4, 4, 128, 128),
    "conv4": (4, 4, 128, 1),
  }  # METHOD §7, no norm layers
  assert sum(x.size for x in jax.tree.leaves(params)) == 664_001  # ~0.66 M
  k = np.concatenate([np.ravel(v["kernel"]) for v in params.values()])
  assert abs(k.std() - 0.02) < 1e-3 and abs(k.mean()) < 1e-3  # N(0, 0.02)
  for name, v in params.items():  # torch default bias
    assert np.abs(v["bias"]).max() <= 1.0 / np.sqrt(v["kernel"].shape[2] * 16) + 1e-7, name
  apply = jax.jit(lambda p, x: module.apply({"params": p}, x))
  assert apply(params, jnp.zeros((2, 64, 64, 6))).shape == (2, 6, 6, 1)
  assert apply(params, jnp.zeros((1, 128, 128, 6))).shape == (1, 14, 14, 1)
  assert jax.eval_shape(apply, params, jax.ShapeDtypeStruct((1, 512, 512, 6), jnp.float32)).shape == (1, 62, 62, 1)


def test_gan_losses_for_known_logits():
  z = jnp.zeros((2, 3, 3, 1))
  np.testing.assert_allclose(D.discriminator_loss_from_logits(z, z), 2 * np.log(2), rtol=1e-6)
  np.testing.assert_allclose(D.generator_loss_from_logits(z), np.log(2), rtol=1e-6)
  real, fake = jnp.array([2.0, -1.0, 0.5]), jnp.array([-3.0, 1.0, 0.0])
  sig = lambda x: 1 / (1 + np.exp(-np.asarray(x, np.float64)))
  ld = np.mean(-np.log(sig(real)) - np.log(1 - sig(fake)))
  lg = np.mean(-np.log(sig(fake)))
  np.testing.assert_allclose(D.discriminator_loss_from_logits(real, fake), ld, rtol=1e-5)
  np.testing.assert_allclose(D.generator_loss_from_logits(fake), lg, rtol=1e-5)
  # the original's log(sigmoid + 1e-12) agrees for moderate logits and stays finite when saturated
  np.testing.assert_allclose(D.discriminator_loss_from_logits(real, fake, eps=1e-12), ld, rtol=1e-5)
  sat = D.generator_loss_from_logits(jnp.array([-100.0]), eps=1e-12)
  np.testing.assert_allclose(sat, -np.log(1e-12), rtol=1e-5)
  np.testing.assert_allclose(D.generator_loss_from_logits(jnp.array([-100.0])), 100.0, rtol=1e-5)


def _images(seed=0, b=2, s=64):
  rng = np.random.default_rng(seed)
  edit = jnp.asarray(rng.random((b, s, s, 3)), jnp.float32)
  render = jnp.asarray(np.clip(np.asarray(edit) + 0.1 * rng.standard_normal(edit.shape), 0, 1), jnp.float32)
  return edit, render


def _norm(tree):
  return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))


def test_faithful_mode_one_joint_gradient_through_render_and_discriminator():
  module, params = disc()
  edit, render = _images()

  def loss(p, r):
    return D.adversarial_loss(module, p, edit, r, mode="faithful")

  (val, parts), (gp, gr) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, render)
  np.testing.assert_allclose(val, 0.01 * (parts["gan_d"] + parts["gan_g"]), rtol=1e-6)
  assert _norm(gp) > 0 and _norm(gr) > 0
  # the discriminator also gets L_G's gradient: it differs from the detached (standard) one
  gp_std = jax.grad(lambda p: D.discriminator_loss(module, p, edit, render))(params)
  assert _norm(jax.tree.map(jnp.subtract, gp, gp_std)) > 1e-3 * _norm(gp_std)
  # the render gets both fake terms: d/dI [0.01 (L_D + L_G)] != d/dI [0.01 L_G]
  gr_g = jax.grad(lambda r: D.generator_loss(module, params, edit, r))(render)
  assert float(jnp.abs(gr - gr_g).max()) > 1e-3 * float(jnp.abs(gr_g).max())


def test_standard_mode_is_detached():
  module, params = disc()
  edit, render = _images(1)
  # generator loss: no gradient to the discriminator; discriminator loss: none to the render
  gp = jax.grad(lambda p: D.generator_loss(module, p, edit, render))(params)
  assert _norm(gp) == 0.0
  gr = jax.grad(lambda r: D.discriminator_loss(module, params, edit, r))(render)
  assert float(jnp.abs(gr).max()) == 0.0
  # joint gradient of the standard term = (dL_D/dparams, dL_G/drender)
  (_, parts), (gp_j, gr_j) = jax.value_and_grad(
    lambda p, r: D.adversarial_loss(module, p, edit, r, mode="standard"), argnums=(0, 1), has_aux=True
  )(params, render)
  gp_d = jax.grad(lambda p: D.discriminator_loss(module, p, edit, render))(params)
  gr_g = jax.grad(lambda r: D.generator_loss(module, params, edit, r))(render)
  for a, b in zip(jax.tree.leaves(gp_j), jax.tree.leaves(gp_d)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(gr_j, gr_g, rtol=1e-5, atol=1e-9)
  # alternating: one discriminator step on the detached render lowers L_D
  opt = D.make_discriminator_optimizer()
  state = opt.init(params)
  step = jax.jit(lambda p, s: D.discriminator_step(module, opt, p, s, edit, render, weight=1.0))
  p1, state, l0 = step(params, state)
  l1 = D.discriminator_loss(module, p1, edit, render, weight=1.0)
  assert float(l1) < float(l0)
  np.testing.assert_allclose(l0, parts["gan_d"], rtol=1e-5)
  with pytest.raises(ValueError):
    D.adversarial_loss(module, params, edit, render, mode="alternating")


# ------------------------------------------------------------------------------------------------
# a tiny posed avatar (shared by the WABE and mouth tests)
# ------------------------------------------------------------------------------------------------

W_, H_ = 72, 96


@functools.lru_cache(None)
def scene():
  model = F.add_teeth(sh.make_synthetic_flame(0, n_shape=4, n_expr=4, rows=16, cols=24, eye_res=(4, 6)))
  p = dataclasses.replace(F.FlameParams.zeros(model), jaw_pose=jnp.asarray([0.3, 0.0, 0.0]))
  verts = F.flame_forward(model, p)
  avatar = rig.init_avatar(
    jax.random.key(0), model.num_faces, capacity=model.num_faces + 8, sh_degree=1, init_opacity=0.95
  )
  # thin discs in the face plane (axis 1 = the normal), so the Gaussians tile the surface
  avatar = dataclasses.replace(avatar, log_scale=avatar.log_scale.at[:, 1].set(-2.0) - 0.4)
  rc = synthetic.nersemble_like_rig(9, W_, H_)
  views = [rc[8], rc[5]]  # frontal, and 27 degrees to the side
  cams = make_camera(
    np.stack([c.world_to_camera for c in views]),
    np.array([c.fx for c in views]),
    np.array([c.fy for c in views]),
    np.array([c.cx for c in views]),
    np.array([c.cy for c in views]),
    width=W_,
    height=H_,
  )
  return model, np.asarray(verts), avatar, views, cams


def _render_fn(cfg):
  model, verts, _, _, cams = scene()

  def f(params, avatar):
    g = rig.posed_gaussians(avatar.with_params(params), jnp.asarray(verts), model.faces)
    return rasterize(g, cams, jnp.ones(3), cfg)

  return f


# ------------------------------------------------------------------------------------------------
# WABE gradient mask
# ------------------------------------------------------------------------------------------------


def test_wabe_mask_zeroes_exactly_the_masked_gaussians():
  model, _, avatar, _, _ = scene()
  cfg = W.render_config("binary", RenderConfig(sh_degree=1))
  render = _render_fn(cfg)
  weights = jax.random.uniform(jax.random.key(1), (2, H_, W_, 3))
  mouth = M.mouth_gaussians(avatar.binding, M.mouth_face_mask(model), avatar.active)  # host, once

  @jax.jit
  def step(params):
    def loss(p):
      out = render(p, avatar)
      return jnp.sum(out.image * weights), out

    (_, out), g = jax.value_and_grad(loss, has_aux=True)(params)
    masked, mask = W.mask_gradients(g, out, mouth, "binary")
    return g, masked, mask, out

  g, masked, mask, out = step(avatar.params())
  mask, vis, mouth = np.asarray(mask), np.asarray(out.wabe_mask), np.asarray(mouth)
  np.testing.assert_array_equal(mask, (vis.any(0) & ~mouth).astype(np.float32))
  # the scene has all cases: visible non-mouth, visible mouth, and occluded Gaussians
  act = np.asarray(avatar.active)
  assert (mask > 0).sum() > 100 and (vis.any(0) & mouth).sum() > 10 and (~vis.any(0) & act).sum() > 100
  for f in W.MASKED_FIELDS:
    a, b = np.asarray(g[f]), np.asarray(masked[f])
    keep = mask > 0
    np.testing.assert_array_equal(b[keep], a[keep])
    assert not b[~keep].any(), f
    if f in ("xyz", "sh_dc", "opacity_logit", "log_scale"):  # the mask really removed gradient
      assert np.abs(a[~keep]).sum() > 0, f
  np.testing.assert_array_equal(np.asarray(masked["rotation"]), np.asarray(g["rotation"]))
  # the same on an Avatar-shaped gradient, and the other modes
  as_avatar = W.apply_gradient_mask(avatar.with_params(g), mask)
  np.testing.assert_array_equal(np.asarray(as_avatar.xyz), np.asarray(masked["xyz"]))
  soft = np.asarray(W.gradient_mask(out, mouth, "soft"))
  np.testing.assert_allclose(soft, np.where(mouth, 0.0, np.asarray(out.wabe_weight).max(0)))
  assert ((soft > 0) <= (mask > 0)).all() and soft.max() <= 1.0
  same, ones = W.mask_gradients(g, out, mouth, "off")
  assert same is g and (np.asarray(ones) == 1).all()
  np.testing.assert_array_equal(np.asarray(W.gradient_mask(out, mouth, "backward")), (~mouth).astype(np.float32))
  assert W.render_config("backward").wabe_backward and W.render_config("off").wabe_k == 0
  with pytest.raises(ValueError):
    W.gradient_mask(out, mouth, "tile")


# ------------------------------------------------------------------------------------------------
# mouth mask and mouth loss
# ------------------------------------------------------------------------------------------------


def test_rendered_mouth_mask_covers_the_mouth():
  model, verts, avatar, views, cams = scene()
  fm = M.mouth_face_mask(model)
  assert (
    fm.sum()
    == sum(F.region_face_mask(model, r).sum() for r in M.MOUTH_REGIONS)
    - (F.region_face_mask(model, "lips_tight") & F.region_face_mask(model, "lip_inside")).sum()
  )
  mouth = M.mouth_gaussians(avatar.binding, fm, avatar.active)
  g = rig.posed_gaussians(avatar, jnp.asarray(verts), model.faces)
  f = jax.jit(
    lambda g, th: M.render_mouth_mask(g, mouth, cams, RenderConfig(sh_degree=1), threshold=th), static_argnums=1
  )
  soft, hard = np.asarray(f(g, None)), np.asarray(f(g, 0.5))
  assert soft.shape == (2, H_, W_) and soft.min() >= 0 and soft.max() <= 1
  np.testing.assert_array_equal(hard, (soft > 0.5).astype(np.float32))
  # ground truth: pixels whose visible mesh face is a mouth face (independent numpy rasterizer)
  cull = synthetic.HeadRenderer.for_model(model).cull
  for i, c in enumerate(views):
    vc = verts @ c.world_to_camera[:3, :3].T + c.world_to_camera[:3, 3]
    fid, _ = mesh_raster.rasterize(vc, np.asarray(model.faces), c.fx, c.fy, c.cx, c.cy, W_, H_, cull=cull)
    gt = (fid >= 0) & fm[np.maximum(fid, 0)]
    h = hard[i] > 0
    assert gt.sum() > 20
    inter = (gt & h).sum()
    assert inter / gt.sum() > 0.7 and inter / h.sum() > 0.5, (i, gt.sum(), h.sum(), inter)
    rows = np.flatnonzero(h.any(1))
    assert rows.min() > H_ // 2 - 5  # the mask is in the lower face only
  # no gradient flows through the mask
  gm = jax.grad(lambda m: M.render_mouth_mask(g, mouth, cams, threshold=None).sum() + 0 * m.sum())(g.means)
  assert not np.asarray(gm).any()


def test_mouth_loss():
  rng = np.random.default_rng(0)
  photo = jnp.asarray(rng.random((2, 32, 24, 3)), jnp.float32)
  render = jnp.asarray(rng.random((2, 32, 24, 3)), jnp.float32)
  mask = jnp.zeros((2, 32, 24)).at[:, 10:20, 5:15].set(1.0)
  loss, parts = jax.jit(M.mouth_loss)(render, photo, mask)
  m = mask[..., None]
  l1 = np.mean(np.abs(np.asarray(render * m - photo * m)))
  ds = 1 - float(jnp.mean(ssim(render * m, photo * m)))
  np.testing.assert_allclose(parts["mouth_l1"], l1, rtol=1e-5)
  np.testing.assert_allclose(parts["mouth_dssim"], ds, rtol=1e-4)
  np.testing.assert_allclose(loss, 1000 * (l1 + ds), rtol=1e-4)
  assert float(M.mouth_loss(photo, photo, mask)[0]) < 1e-3
  g = np.asarray(jax.grad(lambda r: M.mouth_loss(r, photo, mask)[0])(render))
  assert not g[np.asarray(mask) == 0].any() and np.abs(g).sum() > 0


# ------------------------------------------------------------------------------------------------
# editors
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def facepaint(tmp_path_factory):
  from gaedit_jax.data.synthetic import SynthConfig, generate

  out = tmp_path_factory.mktemp("facepaint")
  generate(
    SynthConfig(
      out=out,
      width=48,
      height=64,
      num_cameras=9,
      num_timesteps=2,
      rows=16,
      cols=24,
      supersample=1,
      contact_sheet=False,
      overwrite=True,
      texture="facepaint",
    ),
    progress=False,
  )
  return out


def test_synthetic_editor(facepaint):
  from gaedit_jax.data.dataset import AvatarDataset

  ed = SyntheticEditor.from_dataset(facepaint)
  assert isinstance(ed, Editor) and ed.square_size is None and ed.image_size == (64, 48)
  ds = AvatarDataset(facepaint, "train")
  batch = ds.batch([0, 3, 5])
  ctx = EditContext.from_batch(batch)
  np.testing.assert_allclose(ed.target(ctx)[0], batch.image, atol=1e-6)  # the GT edited images
  call = jax.jit(lambda e, k, r, o, c: e(k, r, o, c))
  key = jax.random.key(0)
  renders = jnp.zeros_like(batch.image)
  a = np.asarray(call(ed, key, renders, batch.image, ctx))
  b = np.asarray(call(ed, key, renders, batch.image, ctx))
  c = np.asarray(call(ed, jax.random.key(1), renders, batch.image, ctx))
  np.testing.assert_array_equal(a, b)  # deterministic
  assert a.shape == (3, 64, 48, 3) and a.min() >= 0 and a.max() <= 1
  tgt = np.asarray(batch.image)
  assert (np.abs(a - c).reshape(3, -1).mean(1) > 1e-3).all()  # differs across keys
  assert (np.asarray(psnr(a, tgt)) > 20).all()  # close to the target
  assert (np.abs(a - tgt).reshape(3, -1).mean(1) > 1e-3).all()  # but perturbed
  # different views get different perturbations (same key, identical targets for every view)
  same = dataclasses.replace(
    ed, targets=jnp.broadcast_to(ed.targets[:1], ed.targets.shape), fg=jnp.broadcast_to(ed.fg[:1], ed.fg.shape)
  )
  v = np.asarray(call(same, key, renders[:2], renders[:2], EditContext.make([0, 1], [0, 0])))
  assert np.abs(v[0] - v[1]).mean() > 1e-3
  # strength 0: the exact targets; coverage; size mismatch
  exact = dataclasses.replace(ed, noise=NoiseConfig(strength=0.0))
  np.testing.assert_allclose(call(exact, key, renders, renders, ctx), tgt, atol=1e-6)
  np.testing.assert_array_equal(ed.covers(EditContext.make([0, 8, 9], [1, 1, 0])), [True, True, False])
  with pytest.raises(ValueError):
    ed(key, jnp.zeros((1, 32, 24, 3)), jnp.zeros((1, 32, 24, 3)), EditContext.make([0], [0]))


def test_ip2p_editor_adapter(tmp_path_factory):
  from gaedit_jax.nets.ip2p import InstructPix2Pix, IP2PConfig
  from gaedit_jax.nets.tiny import make_tiny_ip2p

  tiny = make_tiny_ip2p(str(tmp_path_factory.mktemp("ip2p") / "tiny"), seed=0)
  ed = IP2PEditor.create(InstructPix2Pix.from_pretrained(tiny, IP2PConfig(size=32)), "apply face paint")
  assert isinstance(ed, Editor) and ed.square_size == 32
  r = jnp.full((2, 40, 30, 3), 0.5)
  out = jax.jit(lambda e, k, r, c: e(k, r, r, c))(ed, jax.random.key(0), r, EditContext.make([0, 1], [0, 0]))
  assert out.shape == (2, 32, 32, 3) and np.isfinite(np.asarray(out)).all()
