"""ply / flame_param.npz exports (METHOD §2.9)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaedit_jax.errors import InputError
from gaedit_jax.flame import FlameParams
from gaedit_jax.io.ply import (
  _write_ply,
  load_avatar_ply,
  load_flame_npz,
  read_ply,
  save_avatar_ply,
  save_flame_npz,
  save_world_ply,
)
from gaedit_jax.rig import Avatar, FaceFrames, init_avatar, to_world


def _avatar():
  av = init_avatar(jax.random.key(0), 6, capacity=9, sh_degree=3)
  k = jax.random.split(jax.random.key(1), 4)
  return Avatar(
    xyz=jax.random.normal(k[0], (9, 3)),
    log_scale=jax.random.normal(k[1], (9, 3)) - 3,
    rotation=jax.random.normal(k[2], (9, 4)),
    opacity_logit=av.opacity_logit,
    sh_dc=av.sh_dc,
    sh_rest=jax.random.normal(k[3], (9, 15, 3)),
    binding=av.binding.at[5].set(2),
    active=av.active,
  )


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
  from gaedit_jax.quaternion import matrix_to_quat

  frames = FaceFrames(
    center=jax.random.normal(kf[0], (6, 3)),
    rotation=rot,
    quat=matrix_to_quat(rot),
    scale=jax.random.uniform(kf[1], (6,), minval=0.5, maxval=2),
  )
  save_world_ply(tmp_path / "w.ply", av, frames)
  d = read_ply(tmp_path / "w.ply")
  assert "binding_0" not in d
  g = to_world(av, frames)
  np.testing.assert_allclose(np.stack([d["x"], d["y"], d["z"]], 1), np.asarray(g.means)[:6], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    np.exp(np.stack([d[f"scale_{i}"] for i in range(3)], 1)), np.asarray(g.scales)[:6], rtol=1e-5
  )
  q = np.stack([d[f"rot_{i}"] for i in range(4)], 1)
  qg = np.asarray(g.quats)[:6]
  qg = qg / np.linalg.norm(qg, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.abs(np.sum(q * qg, -1)), 1.0, atol=1e-5)


def test_flame_npz_roundtrip(tmp_path):
  T, V = 3, 7
  f0 = FlameParams(
    shape=jnp.arange(5.0),
    expr=jnp.zeros((T, 4)),
    rotation=jnp.ones((T, 3)),
    neck_pose=jnp.zeros((T, 3)),
    jaw_pose=jnp.zeros((T, 3)),
    eyes_pose=jnp.zeros((T, 6)),
    translation=jnp.zeros((T, 3)),
    static_offset=jnp.ones((V, 3)),
  )
  per = jax.tree.map(lambda v: v + 0.5, f0.motion)
  p = save_flame_npz(tmp_path / "flame_param.npz", f0, per)
  with np.load(p) as z:
    assert z["static_offset"].shape == (1, V, 3) and z["dynamic_offset"].shape == (T, V, 3)
    assert z["expr"].shape == (T, 4) and z["shape"].shape == (5,)
  back = load_flame_npz(p)
  np.testing.assert_allclose(np.asarray(back.rotation), 1.5)
  np.testing.assert_allclose(np.asarray(back.static_offset), 1.0)


# ------------------------------------------------------------------------------------------------
# Validation of what the readers read
# ------------------------------------------------------------------------------------------------


def _saved(tmp_path, av=None):
  return save_avatar_ply(tmp_path / "point_cloud.ply", _avatar() if av is None else av)


def _split(p):
  raw = p.read_bytes()
  i = raw.index(b"end_header\n") + len(b"end_header\n")
  return raw[:i].decode("ascii"), raw[i:]


def _rewrite(p, header=None, body=None, name="bad.ply"):
  h, b = _split(p)
  q = p.with_name(name)
  q.write_bytes((h if header is None else header(h)).encode("ascii") + (b if body is None else body(b)))
  return q


def test_truncated_ply_names_the_property(tmp_path):
  p = _saved(tmp_path)
  nprop = len(read_ply(p))
  # cut inside the last vertex, 3 properties (12 bytes) before its end -> in property nprop-3
  q = _rewrite(p, body=lambda b: b[:-10])
  names = list(read_ply(p))
  with pytest.raises(
    InputError,
    match=rf"bad\.ply: truncated: the header says 6 vertices \({6 * nprop * 4} "
    rf"bytes\) .* in vertex 5, property '{names[-3]}'",
  ):
    read_ply(q)
  q = _rewrite(p, header=lambda h: h.replace("element vertex 6", "element vertex 7"))
  with pytest.raises(InputError, match=r"truncated: .* in vertex 6, property 'x'"):
    load_avatar_ply(q)
  q.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 2\n")
  with pytest.raises(InputError, match=r"bad\.ply: truncated header"):
    read_ply(q)


def test_vertex_count_must_match_the_data(tmp_path):
  p = _saved(tmp_path)
  q = _rewrite(p, header=lambda h: h.replace("element vertex 6", "element vertex 5"))
  with pytest.raises(
    InputError,
    match=r"bad\.ply: the header says 5 vertices but .* hold 6 vertices .* "
    r"disagrees with the data size",
  ):
    load_avatar_ply(q)


@pytest.mark.parametrize("fmt", ["ascii", "binary_big_endian"])
def test_unsupported_formats_are_named(fmt, tmp_path):
  q = _rewrite(_saved(tmp_path), header=lambda h: h.replace("binary_little_endian", fmt))
  with pytest.raises(InputError, match=rf"bad\.ply: ply format '{fmt}' is not supported"):
    load_avatar_ply(q)


def test_unknown_property_types_and_elements_are_named(tmp_path):
  p = _saved(tmp_path)
  q = _rewrite(p, header=lambda h: h.replace("property float opacity", "property half opacity"))
  with pytest.raises(InputError, match=r"bad\.ply: property 'opacity' has unknown type 'half'"):
    read_ply(q)
  q = _rewrite(p, header=lambda h: h.replace("property float nz", "property list uchar int nz"))
  with pytest.raises(InputError, match=r"bad\.ply: property 'nz' is a list"):
    read_ply(q)
  faces = lambda n: (
    lambda h: h.replace("end_header", f"element face {n}\nproperty list uchar int vertex_indices\nend_header")
  )
  q = _rewrite(p, header=faces(3))
  with pytest.raises(InputError, match=r"bad\.ply: element 'face' \(3 entries\) is not supported"):
    read_ply(q)
  # an empty extra element is harmless
  q = _rewrite(p, header=faces(0))
  np.testing.assert_array_equal(read_ply(q)["x"], read_ply(p)["x"])


@pytest.mark.parametrize("prop", ["opacity", "rot_3", "binding_0", "f_dc_2"])
def test_missing_required_property_is_named(prop, tmp_path):
  d = read_ply(_saved(tmp_path))
  del d[prop]
  q = tmp_path / "missing.ply"
  _write_ply(q, d)
  with pytest.raises(InputError, match=rf"missing\.ply: missing property '{prop}'"):
    load_avatar_ply(q)


def test_f_rest_must_have_no_gaps(tmp_path):
  d = read_ply(_saved(tmp_path))
  d["f_rest_45"] = d.pop("f_rest_7")
  q = tmp_path / "gap.ply"
  _write_ply(q, d)
  with pytest.raises(InputError, match=r"gap\.ply: missing property 'f_rest_7'"):
    load_avatar_ply(q)


@pytest.mark.parametrize(
  "value,num_faces,expect",
  [
    (6, 6, r"holds 6 at Gaussian 2 .* integers in \[0, 6\)"),
    (-1, None, r"holds -1 at Gaussian 2"),
    (2.5, None, r"holds 2.5 at Gaussian 2"),
  ],
)
def test_binding_must_be_a_face_id(value, num_faces, expect, tmp_path):
  d = read_ply(_saved(tmp_path))
  assert d["binding_0"].max() < 6
  assert int(load_avatar_ply(_saved(tmp_path), num_faces=6).binding.max()) == int(d["binding_0"].max())
  d["binding_0"][2] = value
  q = tmp_path / "binding.ply"
  _write_ply(q, d)
  with pytest.raises(InputError, match=rf"binding\.ply: property 'binding_0' {expect}"):
    load_avatar_ply(q, num_faces=num_faces)


def test_nonfinite_values_error_or_drop(tmp_path):
  av = _avatar()
  d = read_ply(_saved(tmp_path, av))
  d["opacity"][1] = np.nan
  d["scale_2"][1] = np.inf
  d["rot_0"][4] = -np.inf
  q = tmp_path / "nan.ply"
  _write_ply(q, d)
  with pytest.raises(
    InputError,
    match=r"nan\.ply: non-finite values \(NaN or inf\) in property 'opacity' "
    r"\(1\), 'scale_2' \(1\), 'rot_0' \(1\), in 2 of 6 vertices",
  ):
    load_avatar_ply(q)
  with pytest.warns(UserWarning, match=r"nan\.ply: dropped 2 of 6 vertices with non-finite values"):
    back = load_avatar_ply(q, nonfinite="drop")
  keep = np.array([0, 2, 3, 5])
  assert back.capacity == 4
  np.testing.assert_allclose(np.asarray(back.xyz), np.asarray(av.xyz)[keep], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(back.binding), np.asarray(av.binding)[keep])
  with pytest.raises(InputError, match=r"nonfinite='skip': expected one of error, drop"):
    read_ply(q, nonfinite="skip")


def test_flame_npz_reader_refuses_pickled_objects(tmp_path):
  p = tmp_path / "flame_param.npz"
  np.savez(p, shape=np.zeros(3), rotation=np.array([{"a": 1}], dtype=object))
  with pytest.raises(InputError, match=r"flame_param\.npz: not a readable npz"):
    load_flame_npz(p)
  np.savez(p, shape=np.zeros(3))
  with pytest.raises(InputError, match=r"flame_param\.npz: missing keys \['expr'"):
    load_flame_npz(p)
