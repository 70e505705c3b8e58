"""`gaedit export` to the usual viewers' formats (commands/export.py, io/cloud.py, io/splat.py):
world-space ply sequences, antimatter15's .splat and Niantic's .spz, each read back and compared
with the avatar's world-space Gaussians (rig.to_world, not the writers' own path) within the bound
the format's bit depth allows; the spz axis convention on a known point; bad input in one line."""

import dataclasses
import gzip
import json
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from recon_data import make_tiny_dataset

from gaedit_jax.avatar import fit_flame_dims, load_flame_model, load_trained, pose, pose_frames
from gaedit_jax.cli import main as cli
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.data.synthetic import FLAME_FILE
from gaedit_jax.errors import InputError
from gaedit_jax.flame import FlameMotion
from gaedit_jax.io.cloud import SH_C0, GaussianCloud, convert_axes, world_cloud
from gaedit_jax.io.model_folder import write_model_folder
from gaedit_jax.io.ply import read_cloud_ply
from gaedit_jax.io.splat import read_splat, read_spz, read_spz_header, save_splat, save_spz
from gaedit_jax.quaternion import quat_to_matrix
from gaedit_jax.render.reference import sh_basis
from gaedit_jax.rig import Avatar, init_avatar

ITER = 7
SH_DEGREE = 2
F32 = 1e-5  # float32 rounding between the writers' path (io.cloud.world_cloud) and rig.to_world


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """Our model folder: random Gaussians (SH degree 2, some inactive slots) on the tiny synthetic
  head, with its dataset's tracked FLAME sequence (4 timesteps)."""
  root = tmp_path_factory.mktemp("exports")
  data = make_tiny_dataset(root / "data")
  flame_path = data / FLAME_FILE
  full = load_flame_model(flame_path)
  nf = int(full.num_faces)
  fp = fit_flame_dims(full, AvatarDataset(data, "train", cache_size=0).flame_params)
  k = jax.random.split(jax.random.key(3), 8)
  cap = nf + 64
  av = init_avatar(k[0], nf, capacity=cap, sh_degree=SH_DEGREE)
  m = (SH_DEGREE + 1) ** 2 - 1
  avatar = Avatar(
    xyz=0.2 * jax.random.normal(k[1], (cap, 3)),
    log_scale=0.3 * jax.random.normal(k[2], (cap, 3)) - 0.5,
    rotation=jax.random.normal(k[3], (cap, 4)),
    opacity_logit=1.5 * jax.random.normal(k[4], (cap,)),
    sh_dc=0.8 * jax.random.normal(k[5], (cap, 1, 3)),
    sh_rest=0.15 * jax.random.normal(k[6], (cap, m, 3)),
    binding=av.binding.at[nf:].set(jax.random.randint(k[7], (64,), 0, nf)),
    active=jnp.arange(cap) < nf + 40,
  )
  out = root / "ours"
  cfg = dict(sh_degree=SH_DEGREE)
  write_model_folder(out, avatar, fp, iteration=ITER, data=data, flame_model=flame_path, config=cfg)
  return dict(root=root, data=data, model=out)


def reference(model_dir, t: int) -> dict:
  """The active Gaussians at timestep t as the renderer gets them (avatar.pose -> rig.to_world)."""
  tr = load_trained(model_dir)
  g = pose(tr.avatar, tr.model, tr.flame, jnp.asarray(t))
  act = np.asarray(tr.avatar.active)
  q = np.asarray(g.quats)[act]
  sh = np.asarray(g.sh)[act]
  return dict(
    xyz=np.asarray(g.means)[act],
    scale=np.asarray(g.scales)[act],
    quat=q / np.linalg.norm(q, axis=-1, keepdims=True),
    opacity=np.asarray(g.opacities)[act],
    sh_dc=sh[:, 0],
    sh_rest=sh[:, 1:],
  )


def match(xyz_file: np.ndarray, xyz_ref: np.ndarray, tol: float) -> np.ndarray:
  """Index into the reference of each file row (nearest position, within tol, one-to-one)."""
  d = np.abs(xyz_file[:, None, :] - xyz_ref[None, :, :]).max(-1)
  idx = d.argmin(1)
  assert d[np.arange(len(idx)), idx].max() <= tol
  assert np.array_equal(np.sort(idx), np.arange(len(xyz_ref)))
  return idx


def same_sign(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """q with each row's sign chosen to agree with ref (q and -q are one rotation)."""
  return q * np.where((q * ref).sum(-1, keepdims=True) < 0, -1.0, 1.0)


# ------------------------------------------------------------------------------------------------
# ply-sequence
# ------------------------------------------------------------------------------------------------


def test_ply_sequence_files_manifest_and_values(model, tmp_path):
  out = tmp_path / "seq"
  seq = ["export", str(model["model"]), "--format", "ply-sequence"]
  cli(seq + ["--timesteps", "1:4:2", "--fps", "30", "--out", str(out)])
  files = sorted(p.name for p in out.glob("*.ply"))
  assert files == ["frame_00001.ply", "frame_00003.ply"]
  # SuperSplat's sequence loader: one prefix, a trailing frame number, .ply
  assert {re.match(r"(.*?)(\d+)\.ply$", f).group(1) for f in files} == {"frame_"}
  man = json.loads((out / "manifest.json").read_text())
  assert man["files"] == files and man["timesteps"] == [1, 3] and man["fps"] == 30.0
  assert man["axes"] == "rub" and man["units"] == "metres" and man["sh_degree"] == SH_DEGREE
  for t, f in zip([1, 3], files):
    c = read_cloud_ply(out / f)
    r = reference(model["model"], t)
    assert c.num == len(r["xyz"]) and c.sh_degree == SH_DEGREE
    np.testing.assert_allclose(c.xyz, r["xyz"], atol=1e-6)
    np.testing.assert_allclose(np.exp(c.log_scale), r["scale"], rtol=1e-5)
    np.testing.assert_allclose(same_sign(c.quat, r["quat"]), r["quat"], atol=F32)
    np.testing.assert_allclose(c.opacity, r["opacity"], atol=1e-6)
    np.testing.assert_allclose(c.sh_dc, r["sh_dc"], atol=1e-7)
    np.testing.assert_allclose(c.sh_rest, r["sh_rest"], atol=1e-7)
  # timesteps differ (the sequence moves), and a comma list + the default (all) work
  a, b = read_cloud_ply(out / files[0]), read_cloud_ply(out / files[1])
  assert np.abs(a.xyz - b.xyz).max() > 1e-4
  cli(seq + ["--timesteps", "2,0", "--out", str(tmp_path / "l")])
  assert json.loads((tmp_path / "l" / "manifest.json").read_text())["timesteps"] == [2, 0]
  cli(seq + ["--out", str(tmp_path / "all")])
  assert len(list((tmp_path / "all").glob("frame_*.ply"))) == 4


def test_ply_sequence_from_a_motion_file(model, tmp_path):
  tr = load_trained(model["model"])
  k = jax.random.split(jax.random.key(5), 2)
  mot = dict(
    expr=0.5 * np.asarray(jax.random.normal(k[0], (3, tr.model.n_expr)), np.float32),
    rotation=np.zeros((3, 3), np.float32),
    neck_pose=np.zeros((3, 3), np.float32),
    jaw_pose=np.array([[0.0, 0, 0], [0.2, 0, 0], [0.4, 0, 0]], np.float32),
    eyes_pose=np.zeros((3, 6), np.float32),
    translation=0.01 * np.asarray(jax.random.normal(k[1], (3, 3)), np.float32),
  )
  np.savez(tmp_path / "motion.npz", fps=np.float32(30), **mot)
  out = tmp_path / "seq"
  args = ["export", str(model["model"]), "--format", "ply-sequence", "--motion", str(tmp_path / "motion.npz")]
  cli(args + ["--out", str(out)])
  man = json.loads((out / "manifest.json").read_text())
  assert man["timesteps"] == [0, 1, 2] and man["fps"] == 30.0 and man["motion"] == str(tmp_path / "motion.npz")
  act = np.asarray(tr.avatar.active)
  for t in range(3):
    g = pose(tr.avatar, tr.model, FlameMotion(**{f: jnp.asarray(v) for f, v in mot.items()}), jnp.asarray(t))
    c = read_cloud_ply(out / f"frame_{t:05d}.ply")
    np.testing.assert_allclose(c.xyz, np.asarray(g.means)[act], atol=1e-6)
  with pytest.raises(InputError, match="--timesteps.*--motion's timesteps 0..2"):
    cli(args + ["--timesteps", "3", "--out", str(tmp_path / "x")])


def test_ply_axes_rdf_is_rub_turned_about_x(model, tmp_path):
  ply = ["export", str(model["model"]), "--format", "ply", "--timestep", "2"]
  cli(ply + ["--out", str(tmp_path / "a")])
  cli(ply + ["--axes", "rdf", "--out", str(tmp_path / "b")])
  a = read_cloud_ply(tmp_path / "a" / "world_timestep_00002.ply")
  b = read_cloud_ply(tmp_path / "b" / "world_timestep_00002.ply")
  np.testing.assert_array_equal(b.xyz, a.xyz * np.float32([1, -1, -1]))
  r = np.diag([1.0, -1.0, -1.0])
  ra, rb = np.asarray(quat_to_matrix(jnp.asarray(a.quat))), np.asarray(quat_to_matrix(jnp.asarray(b.quat)))
  sa = np.einsum("nij,nj,nkj->nik", ra, np.exp(2 * a.log_scale), ra)
  sb = np.einsum("nij,nj,nkj->nik", rb, np.exp(2 * b.log_scale), rb)
  np.testing.assert_allclose(sb, r @ sa @ r, atol=1e-9)  # covariance R Sigma R^T


# ------------------------------------------------------------------------------------------------
# .splat
# ------------------------------------------------------------------------------------------------


def test_splat_roundtrip_within_8_bit_quantisation(model, tmp_path):
  cli(["export", str(model["model"]), "--format", "splat", "--timestep", "3", "--out", str(tmp_path)])
  p = tmp_path / "world_timestep_00003.splat"
  r = reference(model["model"], 3)
  assert p.stat().st_size == 32 * len(r["xyz"])
  s = read_splat(p)
  i = match(s["position"], r["xyz"], 1e-6)  # float32 positions: exact up to the two code paths' rounding
  np.testing.assert_allclose(s["scale"], r["scale"][i], rtol=1e-5)  # float32 linear scales
  # colour 0.5 + C0 * dc and alpha in 8 bits: rounded, so within half a step of the clamped value
  rgb = np.clip(0.5 + SH_C0 * r["sh_dc"][i], 0, 1)
  assert np.abs(s["rgba"][:, :3] - rgb).max() <= 0.5 / 255 + F32
  assert np.abs(s["rgba"][:, 3] - r["opacity"][i]).max() <= 0.5 / 255 + F32
  # the quaternion (w,x,y,z) as q*128+128 in 8 bits: half a step of 1/128 from q clamped to 127/128
  q = same_sign(r["quat"][i], s["quat"])
  assert np.abs(s["quat"] - np.clip(q, -1, 127 / 128)).max() <= 0.5 / 128 + F32
  # antimatter15's order: descending size * alpha
  imp = np.prod(r["scale"][i], -1) * r["opacity"][i]
  assert np.all(np.diff(imp) <= 1e-12)


# ------------------------------------------------------------------------------------------------
# .spz
# ------------------------------------------------------------------------------------------------

POS_STEP = 1 / 4096  # 24-bit fixed point, 12 fractional bits
QUAT_STEP = np.sqrt(0.5) / 511  # smallest three: 9-bit magnitudes of |q_i| / sqrt(1/2)


def check_spz(c: GaussianCloud, r: dict, i: np.ndarray, sh_bits: tuple[int, int]) -> None:
  assert np.abs(c.xyz - r["xyz"][i]).max() <= POS_STEP / 2 + 1e-6
  assert np.abs(c.log_scale - np.log(r["scale"][i])).max() <= (1 / 16) / 2 + F32  # (s + 10) * 16 in 8 bits
  # three stored components within half a step; the largest, sqrt(1 - sum of squares), within
  # 3 half steps (|dq_L| <= sum |q_i| |dq_i| / q_L <= sqrt(3 (1 - q_L^2)) / q_L * half step, q_L >= 1/2)
  assert np.abs(same_sign(c.quat, r["quat"][i]) - r["quat"][i]).max() <= 3 * QUAT_STEP / 2 + F32
  assert np.abs(c.opacity - r["opacity"][i]).max() <= 0.5 / 255 + F32  # alpha in 8 bits
  assert np.abs(c.sh_dc - r["sh_dc"][i]).max() <= 0.5 / (0.15 * 255) + F32  # dc * 0.15 * 255 + 127.5 in 8 bits
  # SH rest: x*128 rounded (half of 1/128), then to buckets of 2^(8-bits) steps (half a bucket)
  for sl, bits in ((slice(0, 3), sh_bits[0]), (slice(3, None), sh_bits[1])):
    bound = (0.5 + 2 ** (8 - bits) / 2) / 128 if bits < 8 else 0.5 / 128
    assert np.abs(c.sh_rest[:, sl] - r["sh_rest"][i][:, sl]).max() <= bound + F32


def test_spz_roundtrip_within_quantisation(model, tmp_path):
  cli(["export", str(model["model"]), "--format", "spz", "--timestep", "1", "--out", str(tmp_path)])
  p = tmp_path / "world_timestep_00001.spz"
  r = reference(model["model"], 1)
  h = read_spz_header(p)
  assert h == dict(version=3, num_points=len(r["xyz"]), sh_degree=SH_DEGREE, fractional_bits=12, antialiased=False)
  c = read_spz(p)
  check_spz(c, r, match(c.xyz, r["xyz"], POS_STEP), (5, 4))  # the library's default SH bits
  # full 8-bit SH, and version 2 (x, y, z of the w >= 0 quaternion in 8 bits each)
  tr = load_trained(model["model"])
  cloud = world_cloud(tr.avatar, pose_frames(tr.model, tr.flame, jnp.asarray(1)))
  save_spz(tmp_path / "8bit.spz", cloud, sh1_bits=8, sh_rest_bits=8)
  c8 = read_spz(tmp_path / "8bit.spz")
  check_spz(c8, r, match(c8.xyz, r["xyz"], POS_STEP), (8, 8))
  save_spz(tmp_path / "v2.spz", cloud, version=2)
  c2 = read_spz(tmp_path / "v2.spz")
  i = match(c2.xyz, r["xyz"], POS_STEP)
  qw = r["quat"][i] * np.where(r["quat"][i][:, :1] < 0, -1.0, 1.0)
  assert np.abs(c2.quat[:, 1:] - qw[:, 1:]).max() <= 0.5 / 127.5 + F32


def spz_raw_positions(path) -> np.ndarray:
  """Positions straight from the bytes (header, then 3 x 24-bit little-endian per point), without
  io.splat's reader."""
  raw = gzip.decompress(path.read_bytes())
  magic, version, n, deg, frac, flags, _ = struct.unpack("<IIIBBBB", raw[:16])
  assert magic == 0x5053474E and raw[:4] == b"NGSP"
  b = np.frombuffer(raw[16 : 16 + 9 * n], np.uint8).reshape(n, 3, 3).astype(np.int64)
  v = b[..., 0] + 256 * b[..., 1] + 65536 * b[..., 2]
  return np.where(v >= 2**23, v - 2**24, v) / 2.0**frac


def test_spz_axes_known_point(model, tmp_path):
  # our world is RUB: in the synthetic rig the frontal camera sits at +z of the head and sees world +y as up
  ds = AvatarDataset(model["data"], "val", cache_size=0)
  cam = ds.batch([0]).camera
  assert float(cam.position[0, 2]) > 0.5 and abs(float(cam.position[0, 0])) < 0.1
  w2c = np.asarray(cam.world_to_camera[0])
  assert w2c[1, :3] @ np.array([0.0, 1.0, 0.0]) < -0.9  # world up -> camera y down (OpenCV)
  # one Gaussian above and in front of the origin, turned 30 degrees about z, with degree-1 SH
  a = np.deg2rad(30)
  q = np.array([[np.cos(a / 2), 0, 0, np.sin(a / 2)]])
  sh1 = np.array([[[0.25, -0.5, 0.125], [0.375, 0.0, -0.25], [-0.125, 0.5, 0.25]]])
  pt = GaussianCloud(
    xyz=[[0.1, 0.2, 0.3]],
    log_scale=[[-3.0, -4.0, -5.0]],
    quat=q,
    opacity_logit=[2.0],
    sh_dc=[[0.3, -0.2, 0.1]],
    sh_rest=sh1,
  )
  save_spz(tmp_path / "rub.spz", pt)  # our world is RUB already: written unturned
  np.testing.assert_array_equal(spz_raw_positions(tmp_path / "rub.spz"), [[410 / 4096, 819 / 4096, 1229 / 4096]])
  save_spz(tmp_path / "rdf.spz", pt, axes="rdf")  # the same numbers meant as RDF (y down, z forward)
  np.testing.assert_array_equal(spz_raw_positions(tmp_path / "rdf.spz"), [[410 / 4096, -819 / 4096, -1229 / 4096]])
  back = read_spz(tmp_path / "rdf.spz", axes="rdf")
  np.testing.assert_allclose(back.xyz, pt.xyz, atol=POS_STEP / 2)
  np.testing.assert_allclose(same_sign(back.quat, q), q, atol=3 * QUAT_STEP / 2)
  np.testing.assert_allclose(back.sh_rest, sh1, atol=4.5 / 128)
  # stored in RUB: the quaternion (w, x, -y, -z) and the degree-1 SH (odd in y, z, x) times (-1, -1, 1)
  rub = read_spz(tmp_path / "rdf.spz")
  qr = q * np.array([1, 1, -1, -1])
  np.testing.assert_allclose(same_sign(rub.quat, qr), qr, atol=3 * QUAT_STEP / 2)
  np.testing.assert_allclose(rub.sh_rest, sh1 * np.array([-1, -1, 1])[None, :, None], atol=4.5 / 128)
  # the conversion itself, without quantisation: R = diag(1,-1,-1) takes the covariance to
  # R Sigma R^T and the colour seen along d to the colour seen along R d; twice is the identity
  cv = convert_axes(pt, "rdf", "rub")
  r = np.diag([1.0, -1.0, -1.0])
  m0 = np.asarray(quat_to_matrix(jnp.asarray(pt.quat)), np.float64)[0]
  m1 = np.asarray(quat_to_matrix(jnp.asarray(cv.quat)), np.float64)[0]
  np.testing.assert_allclose(m1, r @ m0 @ r, atol=1e-6)  # same scale axes, turned: Sigma' = R Sigma R^T
  for d in np.eye(3).tolist() + [[0.6, 0.0, 0.8], [0.0, -0.6, 0.8]]:
    d = np.asarray(d)
    color = lambda sh, dirn: np.asarray(sh_basis(1, jnp.asarray(dirn, jnp.float32)))[1:] @ sh[0]
    np.testing.assert_allclose(color(cv.sh_rest, r @ d), color(pt.sh_rest, d), atol=1e-6)
  twice = convert_axes(cv, "rub", "rdf")
  for f in dataclasses.fields(pt):
    np.testing.assert_array_equal(getattr(twice, f.name), getattr(pt, f.name))


# ------------------------------------------------------------------------------------------------
# Bad input: one line, naming the flag or file
# ------------------------------------------------------------------------------------------------


def test_bad_input_is_one_line(model, tmp_path):
  m = str(model["model"])
  bad = (("0:9", "outside"), ("7", "outside"), ("1:x", "expected"), ("3:1", "no timestep"), ("0:4:0", "step"))
  for spec, what in bad:
    with pytest.raises(InputError, match=f"--timesteps.*{what}"):
      cli(["export", m, "--format", "ply-sequence", "--timesteps", spec, "--out", str(tmp_path / "s")])
  assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
  with pytest.raises(InputError, match="--timestep 4"):
    cli(["export", m, "--format", "splat", "--timestep", "4", "--out", str(tmp_path)])
  afile = tmp_path / "a_file"
  afile.write_text("x")
  with pytest.raises(InputError, match="--out .*not a folder"):
    cli(["export", m, "--format", "spz", "--out", str(afile)])
  with pytest.raises(InputError, match="--out .*cannot create"):
    cli(["export", m, "--format", "ply-sequence", "--out", str(afile / "sub")])
  with pytest.raises(InputError, match="--axes: applies to the world-space formats"):
    cli(["export", m, "--format", "gaussianavatars", "--axes", "rdf", "--out", str(tmp_path / "ga")])
  with pytest.raises(InputError, match="--axes rdf"):
    cli(["export", m, "--format", "spz", "--axes", "rdf", "--out", str(tmp_path / "z")])
  cli(["export", m, "--format", "splat", "--out", str(tmp_path / "o")])
  with pytest.raises(InputError, match="--overwrite"):
    cli(["export", m, "--format", "splat", "--out", str(tmp_path / "o")])
  # damaged files read back as one line naming the file
  p = tmp_path / "o" / "world_timestep_00000.splat"
  p.write_bytes(p.read_bytes()[:-5])
  with pytest.raises(InputError, match="world_timestep_00000.splat.*32-byte"):
    read_splat(p)
  cli(["export", m, "--format", "spz", "--out", str(tmp_path / "z")])
  z = tmp_path / "z" / "world_timestep_00000.spz"
  z.write_bytes(gzip.compress(gzip.decompress(z.read_bytes())[:-7]))
  with pytest.raises(InputError, match="world_timestep_00000.spz: truncated"):
    read_spz(z)
  # a cloud the spz fixed point cannot hold
  far = GaussianCloud(
    xyz=[[3000.0, 0, 0]],
    log_scale=[[0, 0, 0]],
    quat=[[1, 0, 0, 0]],
    opacity_logit=[0],
    sh_dc=[[0, 0, 0]],
    sh_rest=np.zeros((1, 0, 3)),
  )
  with pytest.raises(InputError, match="24-bit"):
    save_spz(tmp_path / "far.spz", far)
  assert not (tmp_path / "far.spz").exists()
  save_splat(tmp_path / "far.splat", far)  # float32: fine
