"""Densification with binding inheritance on crafted cases (METHOD §2.7)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gaedit_jax.density import DensifyConfig, DensityStats, densify_and_prune, map_slot_leaves, reset_opacity
from gaedit_jax.rig import Avatar, binding_counter, init_avatar

F = 4  # faces
EXTENT = 1.0
K = np.full(F, 0.05, np.float32)  # face scales: world scale = 0.05 exp(log_scale)


def _avatar(capacity=8):
  av = init_avatar(jax.random.key(0), F, capacity=capacity, sh_degree=1)
  # slots 0, 2, 3: small (world 0.005 <= 0.01 E); slot 1: large (0.05 > 0.01 E).
  # With gradients: slot 0 clones, slot 1 splits;
  # slot 2: low gradient, kept; slot 3: transparent -> prune candidate (but its face 3 has no
  # other Gaussian: binding-aware pruning keeps it).
  ls = np.zeros((capacity, 3), np.float32)
  ls[[0, 2, 3]] = np.log(0.1)
  op = np.asarray(av.opacity_logit).copy()
  op[3] = -10.0
  xyz = np.zeros((capacity, 3), np.float32)
  xyz[1] = [0.2, 0.0, 0.0]
  return Avatar(
    xyz=jnp.asarray(xyz),
    log_scale=jnp.asarray(ls),
    rotation=av.rotation,
    opacity_logit=jnp.asarray(op),
    sh_dc=av.sh_dc.at[:F, 0, 0].set(jnp.arange(F) + 1.0),
    sh_rest=av.sh_rest,
    binding=av.binding,
    active=av.active,
  )


def _stats(capacity, grads):
  g = np.zeros(capacity, np.float32)
  g[: len(grads)] = grads
  return DensityStats(accum=jnp.asarray(g * 2), denom=jnp.full((capacity,), 2.0), max_radii=jnp.zeros(capacity))


def _check_invariant(av):
  counts = np.asarray(binding_counter(av, F))
  assert counts.sum() == int(av.num_active)
  assert (counts >= 1).all()


def test_clone_split_prune_binding():
  av = _avatar()
  st = _stats(8, [1e-3, 1e-3, 1e-5, 1e-3])
  res = densify_and_prune(av, st, K, EXTENT, jax.random.key(1), DensifyConfig())
  new = res.avatar
  act = np.asarray(new.active)
  b = np.asarray(new.binding)[act]
  dc = np.asarray(new.sh_dc)[act, 0, 0]
  assert res.counts["clone"] == 2  # slot 0 and slot 3 (small, high gradient)
  assert res.counts["split"] == 1
  # face 0: original + clone (identical copy); face 1: parent replaced by two children
  assert (b == 0).sum() == 2 and np.allclose(dc[b == 0], 1.0)
  assert (b == 1).sum() == 2 and np.allclose(dc[b == 1], 2.0)
  kids = np.asarray(new.log_scale)[act][b == 1]
  np.testing.assert_allclose(kids, -np.log(1.6), rtol=1e-6)  # log((s_world / k) / 1.6)
  # children around parent xyz (GA HEAD), not equal to it
  kx = np.asarray(new.xyz)[act][b == 1]
  assert not np.allclose(kx, [0.2, 0, 0]) and np.abs(kx - [0.2, 0, 0]).max() < 0.5
  # face 3's transparent Gaussian was cloned: now 2 candidates on face 3, all would be pruned ->
  # binding-aware pruning keeps both (the face must not lose its last Gaussian)
  assert (b == 3).sum() == 2
  assert (b == 2).sum() == 1
  _check_invariant(new)
  assert res.counts["active"] == 7 and new.capacity == 8


def test_binding_aware_prune_keeps_last_and_prunes_redundant():
  av = _avatar()
  # second Gaussian on face 3 (opaque): then the transparent one may go
  op = np.asarray(av.opacity_logit).copy()
  op[4] = 2.0
  av = Avatar(
    **{
      **{k: getattr(av, k) for k in av.__dataclass_fields__},
      "opacity_logit": jnp.asarray(op),
      "active": av.active.at[4].set(True),
      "binding": av.binding.at[4].set(3),
    }
  )
  st = _stats(8, [0, 0, 0, 0, 0])
  res = densify_and_prune(av, st, K, EXTENT, jax.random.key(1))
  act = np.asarray(res.avatar.active)
  assert not act[3] and act[4]
  assert res.counts["pruned"] == 1
  _check_invariant(res.avatar)


def test_prune_large_and_no_densify():
  av = _avatar()
  st = DensityStats(accum=jnp.zeros(8), denom=jnp.ones(8), max_radii=jnp.full((8,), 30.0))
  # all faces have one Gaussian: large-pruning candidates are all kept (binding-aware)
  res = densify_and_prune(av, st, K, EXTENT, jax.random.key(1), prune_large=True)
  assert res.counts["active"] == F
  _check_invariant(res.avatar)


def test_capacity_doubles_and_moments_reindexed():
  av = _avatar(capacity=5)
  st = _stats(5, [1e-3, 1e-3, 1e-3, 1e-5])  # 0, 2 clone (2 new); 1 split (+2 -1): 4 + 3 = 7 > 5
  res = densify_and_prune(av, st, K, EXTENT, jax.random.key(1))
  assert res.avatar.capacity == 10
  assert res.counts["active"] == 7
  _check_invariant(res.avatar)
  mom = np.arange(5, dtype=np.float32) + 1
  out = res.reindex(mom)
  assert out.shape == (10,)
  act = np.asarray(res.avatar.active)
  assert out[0] == 1 and out[2] == 3 and out[3] == 4  # kept slots keep their moments
  assert out[1] == 0  # split parent's slot: freed or refilled -> zero
  assert (out[5:] == 0).all()
  assert act[1] or out[1] == 0
  # optimizer states are remapped through map_slot_leaves
  params = {"gauss": {"xyz": jnp.ones((5, 3))}, "flame": {"expr": jnp.ones((2, 3))}}
  st_opt = optax.adam(1.0).init(params)
  st_opt = jax.tree.map(lambda x: x + 1 if x.ndim else x, st_opt)
  st2 = map_slot_leaves(st_opt, res.reindex)
  assert st2[0].mu["gauss"]["xyz"].shape == (10, 3)
  assert st2[0].mu["flame"]["expr"].shape == (2, 3)


def test_reset_opacity():
  av = _avatar()
  r = reset_opacity(av)
  op = jax.nn.sigmoid(r.opacity_logit)[:F]
  assert float(op.max()) <= 0.01 + 1e-6
  assert float(jax.nn.sigmoid(r.opacity_logit[3])) < 1e-4  # lower values are kept


def _two_per_face(capacity=8):
  """Faces 0-3 with one Gaussian each (slots 0-3, small and opaque) plus a copy on faces 0 and 1
  (slots 4, 5), so that pruning may remove one of a face's two."""
  av = _avatar(capacity)
  take = lambda x: x.at[4:6].set(x[0:2])
  op = av.opacity_logit.at[:6].set(2.0)
  return Avatar(
    xyz=take(av.xyz),
    log_scale=take(av.log_scale).at[1].set(np.log(0.1)).at[5].set(np.log(0.1)),
    rotation=take(av.rotation),
    opacity_logit=op,
    sh_dc=take(av.sh_dc),
    sh_rest=take(av.sh_rest),
    binding=take(av.binding),
    active=av.active.at[4:6].set(True),
  )


def test_screen_size_pruning_is_off_by_default_as_in_gaussian_avatars():
  """GA's densify_and_prune tests max_radii2D > 20 right after densification_postfix zeroed it, so
  the test never fires; ours is off unless DensifyConfig.prune_screen_size (--prune-screen-size)."""
  av = _two_per_face()
  radii = np.zeros(8, np.float32)
  radii[4] = 30.0  # slot 4 (face 0's copy) covered 30 px on screen
  st = DensityStats(accum=jnp.zeros(8), denom=jnp.ones(8), max_radii=jnp.asarray(radii))
  res = densify_and_prune(av, st, K, EXTENT, jax.random.key(1), DensifyConfig(), prune_large=True)
  assert res.counts["pruned"] == 0 and res.counts["active"] == 6 and bool(res.avatar.active[4])
  on = densify_and_prune(av, st, K, EXTENT, jax.random.key(1), DensifyConfig(prune_screen_size=True), prune_large=True)
  assert on.counts["pruned"] == 1 and on.counts["active"] == 5 and not bool(on.avatar.active[4])
  _check_invariant(on.avatar)
  # before opacity_reset_interval (prune_large False) neither prunes by size
  off = densify_and_prune(av, st, K, EXTENT, jax.random.key(1), DensifyConfig(prune_screen_size=True))
  assert off.counts["active"] == 6
  # GA's other size test, max world scale > 0.1 x extent, does fire: it stays in the default
  big = dataclasses.replace(av, log_scale=av.log_scale.at[5].set(np.log(3.0)))  # 0.05 * 3 > 0.1 E
  st0 = dataclasses.replace(st, max_radii=jnp.zeros(8))
  res = densify_and_prune(big, st0, K, EXTENT, jax.random.key(1), DensifyConfig(), prune_large=True)
  assert res.counts["pruned"] == 1 and not bool(res.avatar.active[5]) and bool(res.avatar.active[1])
  _check_invariant(res.avatar)


def test_trainer_passes_the_screen_size_option(tmp_path):
  """`gaedit reconstruct` densification: a Gaussian that covered 30 px is kept by default and pruned
  with --prune-screen-size (after opacity_reset_interval, like GA's size_threshold)."""
  from recon_data import make_tiny_dataset, tiny_config

  from gaedit_jax.reconstruct import Trainer

  data = make_tiny_dataset(tmp_path / "data")
  active = {}
  for flag in (False, True):
    tr = Trainer(tiny_config(data, tmp_path / f"m{flag}", prune_screen_size=flag, densify_grad_threshold=1e9))
    st = tr.state
    av, f = st.avatar, tr.model.num_faces
    # copies of the Gaussians of faces 0..9 in free slots f..f+9; the copies covered 30 px
    copy = lambda x: x.at[f : f + 10].set(x[:10])
    av = dataclasses.replace(
      av,
      **{
        k: copy(getattr(av, k))
        for k in ("xyz", "log_scale", "rotation", "opacity_logit", "sh_dc", "sh_rest", "binding")
      },
      active=av.active.at[f : f + 10].set(True),
    )
    radii = jnp.zeros(av.capacity).at[f : f + 10].set(30.0)
    tr.state = dataclasses.replace(st, avatar=av, stats=dataclasses.replace(st.stats, max_radii=radii))
    it = tr.cfg.opacity_reset_interval + 1
    tr._densify(it, True, False)
    active[flag] = np.asarray(tr.state.avatar.active)
  assert active[False].sum() == f + 10 and active[False][f : f + 10].all()
  assert active[True].sum() == f and not active[True][f : f + 10].any()


def test_split_draws_padded_to_a_bucket_equal_the_exact_draws_and_compile_once():
  from gaedit_jax import density as D

  key = jax.random.key(5)
  ident = lambda size: jnp.tile(jnp.array([1.0, 0.0, 0.0, 0.0]), (size, 1))
  for n in (1, 3, 256, 257):
    size = D._bucket(n)
    assert size >= max(n, 256) and size & (size - 1) == 0
    draws, rot = D._split_draws(key, size, ident(size))
    # the split noise is exactly N(0, 1) of shape [2, n, 3] from this key, as before the padding
    np.testing.assert_array_equal(np.asarray(draws)[: 6 * n].reshape(2, n, 3), jax.random.normal(key, (2, n, 3)))
    np.testing.assert_allclose(np.asarray(rot), np.broadcast_to(np.eye(3), (size, 3, 3)), atol=1e-7)
  # densifications that split different numbers of parents (3, then 5) reuse one compiled program
  faces = 40
  big = init_avatar(jax.random.key(0), faces, capacity=64, sh_degree=1)
  big = dataclasses.replace(big, log_scale=jnp.zeros_like(big.log_scale))  # world 0.05 > 0.01 E: split
  k = np.full(faces, 0.05, np.float32)
  before = D._split_draws._cache_size()
  for n in (3, 5):
    res = densify_and_prune(big, _stats(64, [1e-3] * n), k, EXTENT, jax.random.key(2), DensifyConfig())
    assert res.counts["split"] == n
  assert D._split_draws._cache_size() - before <= 1
