"""FLAME: forward vs an independent numpy LBS, template, joints, teeth, regions, file formats."""

import copyreg
import dataclasses
import functools
import pickle
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
from scipy.spatial.transform import Rotation

from gaedit_jax import flame as F
from gaedit_jax.flame import files as flame_files
from gaedit_jax.flame import synthetic as sh

fwd = jax.jit(F.flame_forward, static_argnames="return_joints")


@functools.lru_cache(None)
def small_head():
  return sh.make_synthetic_flame(0, n_shape=6, n_expr=10, rows=20, cols=32, eye_res=(6, 8))


@functools.lru_cache(None)
def small_head_teeth():
  return F.add_teeth(small_head())


def random_model(nv=40, n_shape=4, n_expr=3, seed=0, nf=30):
  rng = np.random.default_rng(seed)
  w = rng.uniform(size=(nv, 5)) ** 3
  w /= w.sum(1, keepdims=True)
  jr = rng.uniform(size=(5, nv))
  jr /= jr.sum(1, keepdims=True)
  return F.FlameModel(
    v_template=jnp.asarray(rng.normal(size=(nv, 3)) * 0.1, jnp.float32),
    shapedirs=jnp.asarray(rng.normal(size=(nv, 3, n_shape)) * 0.01, jnp.float32),
    exprdirs=jnp.asarray(rng.normal(size=(nv, 3, n_expr)) * 0.01, jnp.float32),
    posedirs=jnp.asarray(rng.normal(size=(36, nv * 3)) * 0.01, jnp.float32),
    j_regressor=jnp.asarray(jr, jnp.float32),
    lbs_weights=jnp.asarray(w, jnp.float32),
    faces=jnp.asarray(rng.integers(0, nv, (nf, 3)), jnp.int32),
    region_masks=jnp.zeros((0, nv), bool),
  )


def random_params(model, rng, batch=(), scale=0.4):
  n = lambda *s: jnp.asarray(rng.normal(size=s) * scale, jnp.float32)
  return F.FlameParams(
    shape=n(model.n_shape),
    expr=n(*batch, model.n_expr),
    rotation=n(*batch, 3),
    neck_pose=n(*batch, 3),
    jaw_pose=n(*batch, 3),
    eyes_pose=n(*batch, 6),
    translation=n(*batch, 3) * 0.1,
    static_offset=n(model.num_vertices, 3) * 0.01,
  )


def numpy_flame(model, p):
  """Independent float64 reference: SMPL-style LBS with 4x4 matrices and scipy rotations."""
  m = {
    k: np.asarray(getattr(model, k), np.float64)
    for k in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights")
  }
  g = {k: np.asarray(getattr(p, k), np.float64) for k in dataclasses.asdict(p)}
  v = m["v_template"] + m["shapedirs"] @ g["shape"] + m["exprdirs"] @ g["expr"] + g["static_offset"]
  J = m["j_regressor"] @ v
  pose = np.concatenate([g["rotation"], g["neck_pose"], g["jaw_pose"], g["eyes_pose"]]).reshape(5, 3)
  R = Rotation.from_rotvec(pose).as_matrix()
  feat = np.concatenate([(R[j] - np.eye(3)).ravel() for j in range(1, 5)])
  v = v + (feat @ m["posedirs"]).reshape(-1, 3)
  G = []
  for j, par in enumerate(model.parents):
    local = np.eye(4)
    local[:3, :3] = R[j]
    local[:3, 3] = J[j] - (J[par] if par >= 0 else 0)
    G.append(local if par < 0 else G[par] @ local)
  out = np.zeros_like(v)
  for i in range(len(v)):
    T = sum(m["lbs_weights"][i, j] * (G[j] @ np.block([[np.eye(3), -J[j][:, None]], [0, 0, 0, 1]])) for j in range(5))
    out[i] = (T @ np.append(v[i], 1.0))[:3]
  return out + g["translation"], np.stack([Gj[:3, 3] for Gj in G]) + g["translation"]


@pytest.mark.parametrize("seed", [0, 1])
def test_forward_matches_numpy_reference(seed):
  model = random_model(seed=seed)
  p = random_params(model, np.random.default_rng(seed))
  v, j = F.flame_forward(model, p, return_joints=True)
  v_ref, j_ref = numpy_flame(model, p)
  np.testing.assert_allclose(np.asarray(v), v_ref, atol=2e-5)
  np.testing.assert_allclose(np.asarray(j), j_ref, atol=2e-5)


def test_forward_matches_numpy_on_synthetic_head_with_teeth():
  model = small_head_teeth()
  p = random_params(model, np.random.default_rng(3), scale=0.3)
  v = F.flame_forward(model, p)
  np.testing.assert_allclose(np.asarray(v), numpy_flame(model, p)[0], atol=3e-5)


def test_zero_params_give_template():
  for model in (random_model(), small_head_teeth()):
    v = F.flame_forward(model, F.FlameParams.zeros(model))
    np.testing.assert_allclose(np.asarray(v), np.asarray(model.v_template), atol=1e-6)


def test_batching_vmap_and_jit_agree():
  model = random_model()
  rng = np.random.default_rng(0)
  p = random_params(model, rng, batch=(2, 3))
  v = fwd(model, p)
  assert v.shape == (2, 3, model.num_vertices, 3)
  for a in range(2):
    for b in range(3):
      pab = dataclasses.replace(p, **{k: getattr(p, k)[a, b] for k in F.FlameParams.PER_TIMESTEP})
      np.testing.assert_allclose(np.asarray(v[a, b]), np.asarray(fwd(model, pab)), atol=1e-6)
  flat = dataclasses.replace(p, **{k: getattr(p, k)[0] for k in F.FlameParams.PER_TIMESTEP})
  vm = jax.vmap(F.flame_forward, in_axes=(None, F.FlameParams(None, 0, 0, 0, 0, 0, 0, None)))(model, flat)
  np.testing.assert_allclose(np.asarray(vm), np.asarray(v[0]), atol=1e-6)
  # a sequence [T] indexed per timestep
  seq = random_params(model, rng, batch=(4,))
  np.testing.assert_allclose(np.asarray(fwd(model, seq.at(2))), np.asarray(fwd(model, seq)[2]), atol=1e-6)


def test_differentiable_wrt_every_parameter_including_zero_pose():
  model = random_model()
  p0 = F.FlameParams.zeros(model)
  target = jnp.asarray(np.random.default_rng(1).normal(size=(model.num_vertices, 3)), jnp.float32)
  loss = lambda p: jnp.sum(F.flame_forward(model, p) * target)
  grads = jax.jit(jax.grad(loss))(p0)
  for k, g in dataclasses.asdict(grads).items():
    assert np.isfinite(np.asarray(g)).all(), k
    assert np.abs(np.asarray(g)).max() > 0, k
  # central finite differences of the jaw pose at zero (Rodrigues' small-angle branch), float64
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)) if x.dtype == jnp.float32 else x, t)
    p64, m64, t64 = to64(p0), to64(model), jnp.asarray(np.asarray(target, np.float64))

    @jax.jit
    def l64(jaw):
      return jnp.sum(F.flame_forward(m64, dataclasses.replace(p64, jaw_pose=jaw)) * t64)

    g = jax.grad(l64)(jnp.zeros(3))
    for i in range(3):
      e = np.zeros(3)
      e[i] = 1e-6
      fd = (l64(jnp.asarray(e)) - l64(jnp.asarray(-e))) / 2e-6
      np.testing.assert_allclose(float(g[i]), float(fd), rtol=1e-5, atol=1e-8)


def test_axis_angle_matches_scipy_and_is_smooth_at_zero():
  rng = np.random.default_rng(0)
  r = np.concatenate(
    [rng.normal(size=(20, 3)), rng.normal(size=(5, 3)) * 1e-5, np.zeros((1, 3)), [[np.pi, 0, 0], [0, 0, 3.0]]]
  )
  np.testing.assert_allclose(
    np.asarray(F.axis_angle_to_matrix(jnp.asarray(r, jnp.float32))), Rotation.from_rotvec(r).as_matrix(), atol=2e-6
  )
  # d R / d r_x at zero is the generator [e_x]_x
  jac = jax.jacfwd(F.axis_angle_to_matrix)(jnp.zeros(3))
  np.testing.assert_allclose(np.asarray(jac[..., 0]), [[0, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-7)


def test_jaw_neck_and_eyes_move_the_right_vertices():
  model = small_head_teeth()
  v0 = np.asarray(model.v_template)
  w = np.asarray(model.lbs_weights)
  pd = np.asarray(model.posedirs).reshape(4, 9, -1, 3)
  zeros = F.FlameParams.zeros(model)

  def moved(**kw):
    v = np.asarray(fwd(model, dataclasses.replace(zeros, **{k: jnp.asarray(x, jnp.float32) for k, x in kw.items()})))
    return np.linalg.norm(v - v0, axis=-1)

  # jaw: lower teeth, chin move; vertices without jaw weight and jaw correctives stay
  d = moved(jaw_pose=[0.3, 0, 0])
  still = (w[:, 2] == 0) & (np.abs(pd[1]).sum(axis=(0, 2)) == 0)
  assert d[still].max() < 1e-6
  assert d[model.region("teeth_lower")].min() > 1e-3
  assert d[model.region("teeth_upper")].max() < 1e-6
  assert d[model.region("left_eyeball")].max() < 1e-6
  lower_lip = model.lip_ring_lower[7]
  assert d[int(lower_lip)] > 0.01  # the mouth opens by more than a centimetre
  v = np.asarray(fwd(model, dataclasses.replace(zeros, jaw_pose=jnp.asarray([0.3, 0, 0], jnp.float32))))
  assert v[int(lower_lip), 1] < v0[int(lower_lip), 1] - 0.01  # positive x rotation opens downwards
  # neck: the skull and the upper teeth move, the base of the neck (root-weighted) stays
  d = moved(neck_pose=[0.4, 0, 0])
  base = (w[:, 0] > 0.999) & (np.abs(pd[0]).sum(axis=(0, 2)) == 0)
  assert base.sum() > 0 and d[base].max() < 1e-6
  assert d[model.region("teeth_upper")].min() > 1e-3
  top = np.argmax(v0[:, 1])
  assert d[top] > 0.02
  # eyes: only eyeballs move
  d = moved(eyes_pose=[0, 0.3, 0, 0, -0.3, 0])
  eyes = model.region("left_eyeball") | model.region("right_eyeball")
  assert d[~eyes].max() < 1e-6 and d[eyes].max() > 1e-3
  # translation translates everything
  d = moved(translation=[0.01, 0.02, -0.03])
  np.testing.assert_allclose(d, np.linalg.norm([0.01, 0.02, -0.03]), atol=1e-6)


# ---- teeth -----------------------------------------------------------------------------------------

GA_TEETH_SPOTS = {  # face -> local vertex ids, from GaussianAvatars' teeth table (commit 9b841cb)
  0: [0, 31, 30],
  13: [6, 7, 37],
  14: [7, 8, 37],
  27: [14, 44, 43],
  28: [60, 75, 76],
  42: [67, 82, 68],
  43: [68, 82, 83],
  56: [75, 30, 76],
  70: [82, 37, 38],
  83: [88, 44, 89],
  84: [45, 46, 15],
  98: [52, 23, 22],
  99: [52, 53, 23],
  112: [90, 106, 105],
  126: [97, 98, 112],
  132: [100, 101, 115],
  133: [101, 116, 115],
  140: [105, 106, 45],
  154: [112, 53, 52],
  155: [112, 113, 53],
  167: [118, 119, 59],
}


def test_teeth_table_and_face_133_fix():
  f = F.teeth_faces()
  assert f.shape == (168, 3) and f.min() == 0 and f.max() == 119
  for i, tri in GA_TEETH_SPOTS.items():
    assert f[i].tolist() == tri, i
  assert F.teeth_faces(fix_face_133=False)[133].tolist() == [101, 116, 114]

  # Why the fix matters: in each 2x15 strip every interior edge is shared by exactly two faces; the
  # old face 133 breaks that in the lower-back strip (rows 90.. and 105..).
  def interior_edge_counts(faces):
    from collections import Counter

    c = Counter()
    for t in faces:
      for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
        c[tuple(sorted((int(a), int(b))))] += 1
    return c

  strip = lambda faces: faces[112:140]
  good = interior_edge_counts(strip(F.teeth_faces()))
  bad = interior_edge_counts(strip(F.teeth_faces(False)))
  assert max(good.values()) == 2 and sum(v == 1 for v in good.values()) == 2 * 14 + 2
  assert max(bad.values()) > 2 or sum(v == 1 for v in bad.values()) != 2 * 14 + 2


def test_add_teeth_counts_geometry_and_attributes():
  base = small_head()
  m = F.add_teeth(base)
  nv, nf = base.num_vertices, base.num_faces
  assert m.num_vertices == nv + 120 and m.num_faces == nf + 168 and m.has_teeth
  np.testing.assert_array_equal(np.asarray(m.faces[nf + 133]), [nv + 101, nv + 116, nv + 115])
  v = np.asarray(m.v_template)
  up, lo = v[np.asarray(base.lip_ring_upper)], v[np.asarray(base.lip_ring_lower)]
  d = np.linalg.norm(up - lo, axis=-1).mean()
  mid = (up + lo) / 2
  mid[:, 1] = mid[:, 1].mean()
  mid[:, 2] -= 1.5 * d
  t = v[nv:].reshape(8, 15, 3)
  np.testing.assert_allclose(t[2], mid + [0, 0.1 * d, 0], atol=1e-6)  # upper edge
  np.testing.assert_allclose(t[0], mid + [0, 2.1 * d, 0], atol=1e-6)  # upper root
  np.testing.assert_allclose(t[3], mid + [0, -0.1 * d, -0.4 * d], atol=1e-6)  # lower edge
  np.testing.assert_allclose(t[1], mid + [0, -2.1 * d, -0.4 * d], atol=1e-6)  # lower root
  np.testing.assert_allclose(t[4:6], t[[0, 2]] - [0, 0, d], atol=1e-6)  # back rows
  np.testing.assert_allclose(t[6:8], t[[1, 3]] - [0, 0, d], atol=1e-6)
  w = np.asarray(m.lbs_weights)[nv:]
  assert (w.sum(1) == 1).all()
  np.testing.assert_array_equal(w[m.region("teeth_upper")[nv:]].argmax(1), 1)
  np.testing.assert_array_equal(w[m.region("teeth_lower")[nv:]].argmax(1), 2)
  assert np.abs(np.asarray(m.exprdirs)[nv:]).max() == 0
  assert np.abs(np.asarray(m.posedirs).reshape(36, -1, 3)[:, nv:]).max() == 0
  assert np.abs(np.asarray(m.j_regressor)[:, nv:]).max() == 0
  sd = np.asarray(base.shapedirs)
  mean = (sd[np.asarray(base.lip_ring_upper)] + sd[np.asarray(base.lip_ring_lower)]) / 2
  np.testing.assert_allclose(
    np.asarray(m.shapedirs)[nv:].reshape(8, 15, 3, -1), np.broadcast_to(mean, (8,) + mean.shape), atol=1e-7
  )
  assert m.region("teeth").sum() == 120
  with pytest.raises(ValueError, match="already has teeth"):
    F.add_teeth(m)


def test_add_teeth_uses_flame_lip_rings_on_the_flame_topology():
  m = random_model(nv=F.FLAME_NUM_VERTICES, n_shape=2, n_expr=1)
  t = F.add_teeth(m)
  assert t.num_vertices == 5143 and t.num_faces == 30 + 168
  np.testing.assert_array_equal(np.asarray(t.lip_ring_upper), F.FLAME_LIP_RING_UPPER)
  with pytest.raises(ValueError, match="lip rings"):
    F.add_teeth(random_model(nv=100))


# ---- regions ------------------------------------------------------------------------------------


def test_region_face_masks():
  m = small_head_teeth()
  faces = np.asarray(m.faces)
  for name in ("teeth", "lips_tight", "lip_inside", "face", "neck", "left_eyeball"):
    vm = m.region(name)
    fm = F.region_face_mask(m, name)
    np.testing.assert_array_equal(fm, vm[faces].all(1))
    assert fm.any(), name
  mouth = F.region_face_mask(m, ["teeth", "lips_tight", "lip_inside"])
  np.testing.assert_array_equal(
    mouth, F.region_face_mask(m, "teeth") | F.region_face_mask(m, "lips_tight") | F.region_face_mask(m, "lip_inside")
  )
  assert F.region_face_mask(m, "teeth").sum() == 168
  with pytest.raises(KeyError, match="available"):
    m.region("no_such_region")


# ---- files --------------------------------------------------------------------------------------


def _assert_models_equal(a, b, teeth=False):
  for k in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights", "faces"):
    np.testing.assert_allclose(np.asarray(getattr(a, k)), np.asarray(getattr(b, k)), atol=1e-7, err_msg=k)
  assert a.parents == b.parents
  assert set(a.region_names) == set(b.region_names)
  for n in a.region_names:
    np.testing.assert_array_equal(a.region(n), b.region(n))
  np.testing.assert_array_equal(np.asarray(a.lip_ring_upper), np.asarray(b.lip_ring_upper))


def test_save_and_load_official_pickle_layout_without_chumpy(tmp_path):
  assert "chumpy" not in sys.modules
  m = small_head()
  path = F.save_flame(m, tmp_path / "head.pkl")
  raw = path.read_bytes()
  assert b"chumpy.ch\nCh\n" in raw and b"scipy.sparse.csc\ncsc_matrix\n" in raw
  assert (tmp_path / "head_masks.pkl").exists()
  back = F.load_flame(path)
  _assert_models_equal(m, back)
  assert "chumpy" not in sys.modules
  # the teeth of the reloaded model match
  _assert_models_equal(F.add_teeth(m), F.add_teeth(back))
  # truncation of the components
  assert F.load_flame(path, n_shape=3, n_expr=2).shapedirs.shape[-1] == 3
  with pytest.raises(F.FlameFileError, match="n_shape=99"):
    F.load_flame(path, n_shape=99)


def test_load_pickle_written_by_a_chumpy_like_class(tmp_path):
  """A file written the way chumpy pickles itself (a Ch class whose state is its __dict__ with the
  value in 'x' and bookkeeping entries), loaded after that class is gone."""
  rng = np.random.default_rng(0)
  nv = 12
  mod = types.ModuleType("chumpy.ch")

  class Ch:
    def __init__(self, x):
      self.x = x
      self._dirty_vars = set()
      self.label = None

    def __reduce_ex__(self, proto):
      return (copyreg._reconstructor, (Ch, object, None), dict(self.__dict__))

  Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
  mod.Ch = Ch
  pkg = types.ModuleType("chumpy")
  pkg.ch = mod
  sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, mod
  vt = rng.normal(size=(nv, 3))
  sd = rng.normal(size=(nv, 3, 7))
  pd = rng.normal(size=(nv, 3, 36))
  jr = rng.uniform(size=(5, nv))
  w = rng.uniform(size=(nv, 5))
  data = {
    "v_template": Ch(vt),
    "f": rng.integers(0, nv, (9, 3)).astype(np.uint32),
    "shapedirs": Ch(sd),
    "posedirs": pd,
    "J_regressor": scipy.sparse.csc_matrix(jr),
    "weights": Ch(w),
    "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
    "bs_style": "lbs",
  }
  try:
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(data, protocol=2))
  finally:
    del sys.modules["chumpy"], sys.modules["chumpy.ch"]
  m = F.load_flame(tmp_path / "m.pkl")  # official split: all 7 columns are "shape" (< 300)
  np.testing.assert_allclose(np.asarray(m.v_template), vt, atol=1e-6)
  np.testing.assert_allclose(np.asarray(m.shapedirs), sd, atol=1e-6)
  np.testing.assert_allclose(np.asarray(m.posedirs), pd.reshape(-1, 36).T, atol=1e-6)
  np.testing.assert_allclose(np.asarray(m.j_regressor), jr, atol=1e-6)
  np.testing.assert_allclose(np.asarray(m.lbs_weights), w, atol=1e-6)
  assert m.parents == (-1, 0, 1, 1, 1) and m.n_expr == 0


def test_flame_file_errors_name_file_key_and_shape(tmp_path):
  m = small_head()
  path = F.save_flame(m, tmp_path / "h.pkl")
  d = {k: flame_files._to_numpy(v, k) for k, v in flame_files._read_pickle(path).items()}
  d2 = dict(d)
  del d2["weights"]
  bad = tmp_path / "noweights.pkl"
  bad.write_bytes(pickle.dumps(d2))
  with pytest.raises(F.FlameFileError, match=r"noweights\.pkl.*'weights'"):
    F.load_flame(bad)
  d3 = dict(d)
  d3["posedirs"] = d3["posedirs"][:, :, :30]
  bad = tmp_path / "pose.pkl"
  bad.write_bytes(pickle.dumps(d3))
  with pytest.raises(
    F.FlameFileError, match=r"pose\.pkl: key 'posedirs' has shape \[\d+,3,30\], expected \[\d+,3,36\]"
  ):
    F.load_flame(bad)
  (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
  with pytest.raises(F.FlameFileError, match="junk.pkl"):
    F.load_flame(tmp_path / "junk.pkl")
  with pytest.raises(FileNotFoundError, match="missing.pkl"):
    F.load_flame(tmp_path / "missing.pkl")
  # a non-terminal chumpy object cannot be read
  stand = flame_files._standin(flame_files._ChumpyStandIn, "chumpy.ch_ops", "add")()
  stand.__setstate__({"a": 1, "b": 2})
  with pytest.raises(F.FlameFileError, match="chumpy.ch_ops.add"):
    flame_files._to_numpy(stand, "x.pkl:shapedirs")


def test_npz_round_trip_with_teeth(tmp_path):
  m = small_head_teeth()
  back = F.load_flame(F.save_flame(m, tmp_path / "m.npz"))
  _assert_models_equal(m, back)
  assert back.has_teeth
  with pytest.raises(ValueError, match="without teeth"):
    F.save_flame(m, tmp_path / "m.pkl")
  np.savez(tmp_path / "bad.npz", v_template=np.zeros((4, 2)))
  with pytest.raises(F.FlameFileError, match=r"bad\.npz: missing key 'shapedirs'"):
    F.load_flame(tmp_path / "bad.npz")


def test_several_mask_files_are_merged(tmp_path):
  m = small_head()
  path = F.save_flame(m, tmp_path / "h.pkl", masks_path=tmp_path / "FLAME_masks.pkl")
  extra = tmp_path / "custom.pkl"
  extra.write_bytes(pickle.dumps({"my_region": np.array([0, 1, 2]), "nose": np.array([5])}, protocol=2))
  back = F.load_flame(path, masks_path=[tmp_path / "FLAME_masks.pkl", extra])
  assert back.region_vertices("my_region").tolist() == [0, 1, 2]
  assert back.region_vertices("nose").tolist() == [5]  # later files override
  assert back.region("lips_tight").any()
  assert F.load_flame(path).region("lips_tight").any()  # FLAME_masks.pkl found next to the model
  extra.write_bytes(pickle.dumps({"bad": np.array([10**6])}))
  with pytest.raises(F.FlameFileError, match=r"custom\.pkl: region 'bad' has vertex ids outside"):
    F.load_flame(path, masks_path=extra)


def test_bake_identity_gives_the_same_vertices():
  model = small_head_teeth()
  p = random_params(model, np.random.default_rng(5), batch=(3,), scale=0.3)
  baked = F.bake_identity(model, p.shape, p.static_offset)
  assert baked.n_shape == 0
  q = dataclasses.replace(p, shape=jnp.zeros(0), static_offset=jnp.zeros_like(p.static_offset))
  np.testing.assert_allclose(np.asarray(fwd(baked, q)), np.asarray(fwd(model, p)), atol=2e-6)
