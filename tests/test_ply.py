"""ply / flame_param.npz exports (SPEC 2.9)."""

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.flame import FlameParams
from gaedit_jax.io.ply import (load_avatar_ply, load_flame_npz, read_ply, save_avatar_ply,
                               save_flame_npz, save_world_ply)
from gaedit_jax.rig import Avatar, FaceFrames, init_avatar, to_world


def _avatar():
  av = init_avatar(jax.random.key(0), 6, capacity=9, sh_degree=3)
  k = jax.random.split(jax.random.key(1), 4)
  return Avatar(xyz=jax.random.normal(k[0], (9, 3)), log_scale=jax.random.normal(k[1], (9, 3)) - 3,
                rotation=jax.random.normal(k[2], (9, 4)), opacity_logit=av.opacity_logit,
                sh_dc=av.sh_dc, sh_rest=jax.random.normal(k[3], (9, 15, 3)),
                binding=av.binding.at[5].set(2), active=av.active)


def test_avatar_ply_roundtrip(tmp_path):
  av = _avatar()
  p = save_avatar_ply(tmp_path / "point_cloud.ply", av)
  d = read_ply(p)
  names = list(d)
  assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
  assert names[-1] == "binding_0" and "f_rest_44" in d and "rot_3" in d
  assert d["x"].shape == (6,)
  back = load_avatar_ply(p)
  for f in ("xyz", "log_scale", "rotation", "opacity_logit", "sh_dc", "sh_rest"):
    np.testing.assert_allclose(np.asarray(getattr(back, f)), np.asarray(getattr(av, f))[:6], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(back.binding), np.asarray(av.binding)[:6])
  # 3DGS channel-major f_rest: f_rest_0..14 are the red coefficients
  np.testing.assert_allclose(d["f_rest_1"], np.asarray(av.sh_rest)[:6, 1, 0], rtol=1e-6)
  grown = load_avatar_ply(p, capacity=12)
  assert grown.capacity == 12 and int(grown.num_active) == 6


def test_world_ply_matches_to_world(tmp_path):
  av = _avatar()
  kf = jax.random.split(jax.random.key(3), 3)
  rot = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(6, 3, 3)))[0])
  rot = rot * jnp.sign(jnp.linalg.det(rot))[:, None, None]
  from gaedit_jax.rig import matrix_to_quat

  frames = FaceFrames(center=jax.random.normal(kf[0], (6, 3)), rotation=rot, quat=matrix_to_quat(rot),
                      scale=jax.random.uniform(kf[1], (6,), minval=0.5, maxval=2))
  save_world_ply(tmp_path / "w.ply", av, frames)
  d = read_ply(tmp_path / "w.ply")
  assert "binding_0" not in d
  g = to_world(av, frames)
  np.testing.assert_allclose(np.stack([d["x"], d["y"], d["z"]], 1), np.asarray(g.means)[:6], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.exp(np.stack([d[f"scale_{i}"] for i in range(3)], 1)), np.asarray(g.scales)[:6],
                             rtol=1e-5)
  q = np.stack([d[f"rot_{i}"] for i in range(4)], 1)
  qg = np.asarray(g.quats)[:6]
  qg = qg / np.linalg.norm(qg, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.abs(np.sum(q * qg, -1)), 1.0, atol=1e-5)


def test_flame_npz_roundtrip(tmp_path):
  T, V = 3, 7
  f0 = FlameParams(shape=jnp.arange(5.0), expr=jnp.zeros((T, 4)), rotation=jnp.ones((T, 3)),
                   neck_pose=jnp.zeros((T, 3)), jaw_pose=jnp.zeros((T, 3)), eyes_pose=jnp.zeros((T, 6)),
                   translation=jnp.zeros((T, 3)), static_offset=jnp.ones((V, 3)))
  per = {k: getattr(f0, k) + 0.5 for k in FlameParams.PER_TIMESTEP}
  p = save_flame_npz(tmp_path / "flame_param.npz", f0, per)
  with np.load(p) as z:
    assert z["static_offset"].shape == (1, V, 3) and z["dynamic_offset"].shape == (T, V, 3)
    assert z["expr"].shape == (T, 4) and z["shape"].shape == (5,)
  back = load_flame_npz(p)
  np.testing.assert_allclose(np.asarray(back.rotation), 1.5)
  np.testing.assert_allclose(np.asarray(back.static_offset), 1.0)
