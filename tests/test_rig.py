"""Triangle binding: frames (METHOD §2.2), avatar init (METHOD §2.3), local -> world."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gaedit_jax import flame as F
from gaedit_jax import quaternion, rig
from gaedit_jax.flame import synthetic as sh
from gaedit_jax.render.types import Gaussians


@functools.lru_cache(None)
def head():
  return F.add_teeth(sh.make_synthetic_flame(0, n_shape=4, n_expr=4, rows=16, cols=24, eye_res=(4, 6)))


def random_mesh(seed=0, nv=30, nf=40):
  rng = np.random.default_rng(seed)
  return (
    jnp.asarray(rng.normal(size=(nv, 3)), jnp.float32),
    jnp.asarray(np.stack([rng.choice(nv, 3, replace=False) for _ in range(nf)]), jnp.int32),
  )


def test_frames_are_proper_rotations_with_normal_and_edge_axes():
  v, f = random_mesh()
  fr = rig.triangle_frames(v, f)
  R = np.asarray(fr.rotation, np.float64)
  np.testing.assert_allclose(R.transpose(0, 2, 1) @ R, np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)
  tri = np.asarray(v, np.float64)[np.asarray(f)]
  e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
  n = np.cross(e1, e2)
  np.testing.assert_allclose(R[:, :, 0], e1 / np.linalg.norm(e1, axis=1, keepdims=True), atol=1e-5)
  np.testing.assert_allclose(R[:, :, 1], n / np.linalg.norm(n, axis=1, keepdims=True), atol=1e-5)
  np.testing.assert_allclose(np.asarray(fr.center), tri.mean(1), atol=1e-6)
  # k = mean of the first edge length and the height of the triangle over it (2 area / |e1|)
  k = 0.5 * (np.linalg.norm(e1, axis=1) + np.linalg.norm(n, axis=1) / np.linalg.norm(e1, axis=1))
  np.testing.assert_allclose(np.asarray(fr.scale), k, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(quaternion.quat_to_matrix(fr.quat)), R, atol=1e-5)


def test_frames_on_the_posed_head_and_batched():
  m = head()
  p = F.FlameParams.zeros(m, num_timesteps=3)
  p = p.__class__(**{**p.__dict__, "jaw_pose": jnp.asarray([[0.0, 0, 0], [0.2, 0, 0], [0.3, 0.1, 0]])})
  v = jax.jit(F.flame_forward)(m, p)  # [3,V,3]
  fr = jax.jit(rig.triangle_frames)(v, m.faces)
  assert fr.rotation.shape == (3, m.num_faces, 3, 3) and fr.scale.shape == (3, m.num_faces)
  det = np.linalg.det(np.asarray(fr.rotation, np.float64))
  np.testing.assert_allclose(det, 1.0, atol=1e-4)
  one = jax.jit(rig.triangle_frames)(v[1], m.faces)
  np.testing.assert_allclose(np.asarray(fr.quat[1]), np.asarray(one.quat), atol=1e-6)
  assert (np.asarray(fr.scale) > 0).all()


def test_matrix_quat_round_trip_including_half_turns():
  rng = np.random.default_rng(0)
  rots = Rotation.random(50, random_state=1).as_matrix()
  half = Rotation.from_rotvec(np.pi * np.eye(3)).as_matrix()
  mats = np.concatenate([rots, half, [np.eye(3)]])
  q = np.asarray(quaternion.matrix_to_quat(jnp.asarray(mats, jnp.float32)))
  np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(quaternion.quat_to_matrix(jnp.asarray(q))), mats, atol=2e-6)
  ref = Rotation.from_matrix(mats).as_quat()[:, [3, 0, 1, 2]]  # xyzw -> wxyz
  same = np.minimum(np.abs(q - ref).max(1), np.abs(q + ref).max(1))
  assert same.max() < 1e-5
  g = jax.jit(jax.grad(lambda m: quaternion.matrix_to_quat(m).sum()))(jnp.asarray(mats, jnp.float32))
  assert np.isfinite(np.asarray(g)).all()
  del rng


def test_hamilton_product_order():
  a = Rotation.random(10, random_state=2)
  b = Rotation.random(10, random_state=3)
  qa = jnp.asarray(a.as_quat()[:, [3, 0, 1, 2]], jnp.float32)
  qb = jnp.asarray(b.as_quat()[:, [3, 0, 1, 2]], jnp.float32)
  np.testing.assert_allclose(
    np.asarray(quaternion.quat_to_matrix(quaternion.quat_multiply(qa, qb))), (a * b).as_matrix(), atol=2e-6
  )  # R(a (x) b) = R_a R_b


def test_init_avatar_one_gaussian_per_face_at_the_centroid():
  m = head()
  F_ = m.num_faces
  av = rig.init_avatar(jax.random.PRNGKey(0), F_, capacity=F_ + 37)
  assert av.capacity == F_ + 37 and int(av.num_active) == F_ and av.sh_degree == 3
  np.testing.assert_array_equal(np.asarray(av.binding[:F_]), np.arange(F_))
  np.testing.assert_array_equal(np.asarray(rig.binding_counter(av, F_)), np.ones(F_))
  dc = np.asarray(av.sh_dc[:F_])
  assert dc.min() >= 0 and dc.max() < 1 / 255
  v = jax.jit(F.flame_forward)(m, F.FlameParams.zeros(m))
  fr = jax.jit(rig.triangle_frames)(v, m.faces)
  g = jax.jit(rig.to_world)(av, fr)
  assert isinstance(g, Gaussians)
  assert g.means.shape == (F_ + 37, 3) and g.sh.shape == (F_ + 37, 16, 3)
  np.testing.assert_allclose(np.asarray(g.means[:F_]), np.asarray(fr.center), atol=1e-7)
  np.testing.assert_allclose(np.asarray(g.scales[:F_]), np.repeat(np.asarray(fr.scale)[:, None], 3, 1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g.quats[:F_]), np.asarray(fr.quat), atol=1e-6)
  np.testing.assert_allclose(np.asarray(g.opacities[:F_]), 0.1, atol=1e-6)
  # free slots: invisible and finite
  assert (np.asarray(g.opacities[F_:]) == 0).all()
  for x in (g.means, g.scales, g.quats, g.sh):
    assert np.isfinite(np.asarray(x)).all()
  assert np.asarray(g.scales[F_:]).max() < 1e-6


def test_local_to_world_position_scale_rotation():
  v, f = random_mesh(1)
  fr = rig.triangle_frames(v, f)
  nf = f.shape[0]
  key = jax.random.PRNGKey(1)
  av = rig.init_avatar(key, nf)
  rng = np.random.default_rng(0)
  xyz = rng.normal(size=(nf, 3))
  ls = rng.normal(size=(nf, 3)) * 0.3
  ql = Rotation.random(nf, random_state=4)
  av = av.__class__(
    **{
      **av.__dict__,
      "xyz": jnp.asarray(xyz, jnp.float32),
      "log_scale": jnp.asarray(ls, jnp.float32),
      "rotation": jnp.asarray(ql.as_quat()[:, [3, 0, 1, 2]] * 2.5, jnp.float32),
    }
  )
  g = rig.to_world(av, fr)
  R, k, T = np.asarray(fr.rotation), np.asarray(fr.scale), np.asarray(fr.center)
  np.testing.assert_allclose(np.asarray(g.means), k[:, None] * np.einsum("fab,fb->fa", R, xyz) + T, atol=1e-5)
  np.testing.assert_allclose(np.asarray(g.scales), k[:, None] * np.exp(ls), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(quaternion.quat_to_matrix(g.quats)), R @ ql.as_matrix(), atol=1e-5)
  # scale follows k: a mesh twice as large gives twice the world scale and offsets
  g2 = rig.to_world(av, rig.triangle_frames(2 * v, f))
  np.testing.assert_allclose(np.asarray(g2.scales), 2 * np.asarray(g.scales), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g2.means), 2 * np.asarray(g.means), rtol=1e-4, atol=1e-6)
  # a rigid motion of the mesh moves the Gaussians rigidly
  Q = Rotation.random(random_state=5).as_matrix()
  t = np.array([0.1, -0.2, 0.3])
  g3 = rig.to_world(av, rig.triangle_frames(jnp.asarray(np.asarray(v) @ Q.T + t, jnp.float32), f))
  np.testing.assert_allclose(np.asarray(g3.means), np.asarray(g.means) @ Q.T + t, atol=1e-5)
  np.testing.assert_allclose(np.asarray(g3.scales), np.asarray(g.scales), rtol=1e-5)


def test_free_slots_never_leak_nan_and_gradients_flow():
  v, f = random_mesh(2)
  nf = f.shape[0]
  av = rig.init_avatar(jax.random.PRNGKey(0), nf, capacity=nf + 5)
  bad = av.__class__(
    **{
      **av.__dict__,
      "xyz": av.xyz.at[nf:].set(jnp.nan),
      "log_scale": av.log_scale.at[nf:].set(1e4),
      "rotation": av.rotation.at[nf:].set(0.0),
      "opacity_logit": av.opacity_logit.at[nf:].set(jnp.inf),
    }
  )

  def loss(params, verts):
    g = rig.posed_gaussians(bad.with_params(params), verts, f, screen_offset=True)
    return (
      jnp.sum(g.means**2)
      + jnp.sum(g.scales)
      + jnp.sum(g.opacities)
      + jnp.sum(g.quats)
      + jnp.sum(g.sh)
      + jnp.sum(g.screen_offset)
    )

  val, (ga, gv) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(bad.params(), v)
  assert np.isfinite(float(val))
  for leaf in jax.tree.leaves((ga, gv)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert np.isfinite(np.asarray(leaf)).all()
  assert np.abs(np.asarray(ga["xyz"][:nf])).max() > 0 and np.abs(np.asarray(ga["xyz"][nf:])).max() == 0


def test_batched_frames_and_vmap_agree():
  m = head()
  nf = m.num_faces
  av = rig.init_avatar(jax.random.PRNGKey(0), nf, capacity=nf + 3, sh_degree=1)
  av = av.__class__(**{**av.__dict__, "xyz": av.xyz + 0.3})
  p = F.FlameParams.zeros(m, num_timesteps=2)
  p = p.__class__(**{**p.__dict__, "neck_pose": jnp.asarray([[0.0, 0.2, 0.0], [0.1, -0.2, 0.0]])})
  v = jax.jit(F.flame_forward)(m, p)
  g = jax.jit(rig.posed_gaussians)(av, v, m.faces)
  assert g.means.shape == (2, nf + 3, 3) and g.quats.shape == (2, nf + 3, 4) and g.scales.shape == (2, nf + 3, 3)
  # opacity and SH do not depend on the frame: shared, not copied per frame (the rasterizer
  # broadcasts them and sums their gradients over the views)
  assert g.opacities.shape == (nf + 3,) and g.sh.shape == (nf + 3, 4, 3)
  gv = jax.jit(jax.vmap(lambda x: rig.posed_gaussians(av, x, m.faces)))(v)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gv)):
    np.testing.assert_allclose(np.asarray(jnp.broadcast_to(a, b.shape)), np.asarray(b), atol=1e-6)


def test_with_capacity_and_binding_counter():
  av = rig.init_avatar(jax.random.PRNGKey(0), 10)
  big = rig.with_capacity(av, 16)
  assert big.capacity == 16 and int(big.num_active) == 10
  np.testing.assert_array_equal(np.asarray(big.rotation[10:]), np.tile([1.0, 0, 0, 0], (6, 1)))
  big = big.__class__(**{**big.__dict__, "active": big.active.at[12].set(True), "binding": big.binding.at[12].set(3)})
  cnt = np.asarray(rig.binding_counter(big, 10))
  assert cnt.sum() == int(big.num_active) == 11 and cnt[3] == 2
  with pytest.raises(ValueError):
    rig.with_capacity(big, 4)
  with pytest.raises(ValueError):
    rig.init_avatar(jax.random.PRNGKey(0), 10, capacity=5)
