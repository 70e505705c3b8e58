"""The synthetic head, the numpy mesh rasterizer and `gaedit synth`."""

import dataclasses
import functools
import json
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaedit_jax import flame as F
from gaedit_jax.data import mesh_raster, synthetic
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.flame import synthetic as sh

SMALL = dict(rows=20, cols=32, eye_res=(6, 8))
fwd = jax.jit(F.flame_forward)


@functools.lru_cache(None)
def base():
  return sh.make_synthetic_flame(0, n_shape=6, n_expr=10, **SMALL)


@functools.lru_cache(None)
def head():
  return F.add_teeth(base())


def edge_counts(faces):
  c = Counter()
  for f in np.asarray(faces):
    for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
      c[(int(a), int(b))] += 1
  return c


def test_flame_keys_tree_and_sizes():
  m = base()
  V = m.num_vertices
  assert m.parents == (-1, 0, 1, 1, 1)
  assert m.shapedirs.shape == (V, 3, 6) and m.exprdirs.shape == (V, 3, 10)
  assert m.posedirs.shape == (36, V * 3) and m.j_regressor.shape == (5, V) and m.lbs_weights.shape == (V, 5)
  np.testing.assert_allclose(np.asarray(m.j_regressor).sum(1), 1, atol=1e-6)
  np.testing.assert_allclose(np.asarray(m.lbs_weights).sum(1), 1, atol=1e-6)
  assert (np.asarray(m.lbs_weights) >= 0).all()
  assert np.abs(np.asarray(m.posedirs)).max() > 0  # pose correctives exist
  for name in (
    "face",
    "neck",
    "scalp",
    "boundary",
    "left_eyeball",
    "right_eyeball",
    "left_ear",
    "right_ear",
    "forehead",
    "eye_region",
    "nose",
    "lips",
    "lips_tight",
    "lip_inside",
    "mouth_interior",
  ):
    assert m.region(name).any(), name
  assert np.asarray(m.lip_ring_upper).shape == (15,) and np.asarray(m.lip_ring_lower).shape == (15,)
  # default size: a few thousand vertices, 2-6k faces with teeth
  full = F.add_teeth(sh.make_synthetic_flame())
  assert 2000 < full.num_vertices < 4000 and 4000 < full.num_faces < 6000
  v = np.asarray(full.v_template)
  extent = v.max(0) - v.min(0)
  assert 0.15 < extent[0] < 0.2 and 0.25 < extent[1] < 0.4 and 0.18 < extent[2] < 0.25  # metres


def test_surfaces_closed_and_outward():
  m = base()
  faces = np.asarray(m.faces)
  c = edge_counts(faces)
  assert max(c.values()) == 1  # consistently oriented: no directed edge twice
  assert all((b, a) in c for (a, b) in c)  # closed: every edge has its twin
  v = np.asarray(m.v_template, np.float64)
  eyes = m.region("left_eyeball") | m.region("right_eyeball")
  head_faces = faces[~eyes[faces].any(1)]
  vol = np.einsum("ij,ij->i", v[head_faces[:, 0]], np.cross(v[head_faces[:, 1]], v[head_faces[:, 2]])).sum() / 6
  assert 0.003 < vol < 0.006  # ~4 litres, positive: normals point outwards
  for name in ("left_eyeball", "right_eyeball"):
    ef = faces[m.region(name)[faces].all(1)]
    vol = np.einsum("ij,ij->i", v[ef[:, 0]], np.cross(v[ef[:, 1]], v[ef[:, 2]])).sum() / 6
    assert 0.5 * 4 / 3 * np.pi * sh.EYE_RADIUS**3 < vol < 4 / 3 * np.pi * sh.EYE_RADIUS**3


def test_bases_are_smooth_and_eyes_rigid():
  m = base()
  v = np.asarray(m.v_template)
  faces = np.asarray(m.faces)
  e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
  length = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=-1)
  for dirs in (np.asarray(m.shapedirs), np.asarray(m.exprdirs)):
    for k in range(dirs.shape[-1]):
      d = dirs[..., k]
      assert np.linalg.norm(d, axis=-1).max() > 1e-3
      jump = np.linalg.norm(d[e[:, 0]] - d[e[:, 1]], axis=-1)
      assert (jump / np.maximum(length, 1e-4)).max() < 1.0, k  # displacement varies slowly along edges
  for name in ("left_eyeball", "right_eyeball"):
    ids = m.region(name)
    assert np.abs(np.asarray(m.exprdirs)[ids]).max() == 0
    sd = np.asarray(m.shapedirs)[ids]
    np.testing.assert_allclose(sd, np.broadcast_to(sd[:1], sd.shape), atol=1e-7)  # rigid


def test_pickle_layout_round_trip(tmp_path):
  m = base()
  back = F.load_flame(F.save_flame(m, tmp_path / "synthetic_flame.pkl"))
  for k in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights", "faces"):
    np.testing.assert_allclose(np.asarray(getattr(back, k)), np.asarray(getattr(m, k)), atol=1e-7)
  assert F.add_teeth(back).num_faces == head().num_faces


def _frontal_cam(w=80, h=110):
  return synthetic.nersemble_like_rig(16, w, h)[8]


def visible_parts(model, params, cam):
  r = synthetic.HeadRenderer.for_model(model)
  v = np.asarray(fwd(model, params))
  vc = v @ cam.world_to_camera[:3, :3].T + cam.world_to_camera[:3, 3]
  fid, _ = mesh_raster.rasterize(vc, r.faces, cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height, cull=r.cull)
  part = r.face_part[fid[fid >= 0]]
  return {p: int((part == p).sum()) for p in range(5)}, fid


def test_mouth_opens_to_show_interior_and_teeth():
  m = head()
  p0 = F.FlameParams.zeros(m)
  closed, fid = visible_parts(m, p0, _frontal_cam())
  assert closed[1] == 0 and closed[4] == 0  # nothing of the mouth interior or teeth
  assert closed[2] > 10 and closed[3] > 10  # both eyes visible
  opened, _ = visible_parts(m, dataclasses.replace(p0, jaw_pose=jnp.asarray([0.3, 0.0, 0.0])), _frontal_cam())
  assert opened[4] > 20 and opened[1] > 20
  # no camera of the rig sees teeth or mouth interior through the closed head
  for cam in synthetic.nersemble_like_rig(16, 40, 56):
    vis, _ = visible_parts(m, p0, cam)
    assert vis[1] == 0 and vis[4] == 0, cam.index


# ---- rasterizer -----------------------------------------------------------------------------------


def test_rasterizer_area_depth_order_culling_and_perspective():
  W = H = 64
  f, cx, cy = 64.0, 32.0, 32.0
  tri = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [-0.5, 0.5, 2.0]])
  faces = np.array([[0, 2, 1]])  # wound so that its normal points to the camera (-z)
  fid, bary = mesh_raster.rasterize(tri, faces, f, f, cx, cy, W, H)
  area_px = (fid == 0).sum()
  assert abs(area_px - 0.5 * (f * 1.0 / 2.0) ** 2) < 40  # projected area 0.5 * 32^2 = 512 px
  np.testing.assert_allclose(bary[fid == 0].sum(-1), 1, atol=1e-6)
  fid_b, _ = mesh_raster.rasterize(tri, faces[:, ::-1], f, f, cx, cy, W, H)
  assert (fid_b < 0).all()  # back face culled
  fid_b, _ = mesh_raster.rasterize(tri, faces[:, ::-1], f, f, cx, cy, W, H, cull=False)
  assert (fid_b == 0).sum() == area_px
  # nearer triangle wins regardless of order
  two = np.concatenate([tri, tri * [1, 1, 0] + [0.1, 0.1, 3.0]])
  for order in ([[0, 2, 1], [3, 5, 4]], [[3, 5, 4], [0, 2, 1]]):
    fid2, _ = mesh_raster.rasterize(two, np.array(order), f, f, cx, cy, W, H)
    near = order.index([0, 2, 1])
    assert ((fid2 == near).sum()) == area_px
  # perspective-correct barycentrics: a slanted triangle, interpolated 3D point lies on the pixel ray
  slant = np.array([[-0.5, -0.5, 1.5], [0.6, -0.4, 3.0], [-0.4, 0.6, 2.2]])
  fid, bary = mesh_raster.rasterize(slant, np.array([[0, 1, 2]]), f, f, cx, cy, W, H, cull=False)
  ys, xs = np.nonzero(fid == 0)
  p = np.einsum("nk,kc->nc", bary[ys, xs], slant)
  np.testing.assert_allclose(f * p[:, 0] / p[:, 2] + cx, xs + 0.5, atol=1e-4)
  np.testing.assert_allclose(f * p[:, 1] / p[:, 2] + cy, ys + 0.5, atol=1e-4)


# ---- the dataset ---------------------------------------------------------------------------------


TINY = dict(width=40, height=56, num_cameras=10, num_timesteps=4, n_shape=4, n_expr=10, rows=20, cols=32, supersample=1)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
  out = tmp_path_factory.mktemp("synth") / "ds"
  info = synthetic.generate(synthetic.SynthConfig(out=out, **TINY), progress=False)
  return out, info


def test_synthetic_dataset_loads_through_the_reader(tiny_dataset):
  out, info = tiny_dataset
  assert info["num_images"] == 40 and info["splits"] == {"all": 40, "train": 27, "val": 3, "test": 10}
  assert (out / "contact_sheet.png").exists() and (out / "synth_info.json").exists()
  ds = {s: AvatarDataset(out, s, load_masks=True) for s in ("train", "val", "test")}
  assert {r.camera_index for r in ds["val"].records} == {8}
  assert {r.timestep for r in ds["test"].records} == {3}
  assert ds["train"].image_size == (56, 40)
  model = F.add_teeth(F.load_flame(out / synthetic.FLAME_FILE))
  fp = ds["train"].flame_params
  assert fp.expr.shape == (4, 10) and fp.static_offset.shape == (model.num_vertices, 3)
  ref = synthetic.make_motion(model, 4, 0)
  np.testing.assert_allclose(np.asarray(fp.jaw_pose), np.asarray(ref.jaw_pose), atol=1e-7)
  # the images agree with the FLAME parameters and the cameras: visible vertices land on the mask
  verts = np.asarray(fwd(model, fp))
  normals = [mesh_raster.vertex_normals(verts[t], np.asarray(model.faces)) for t in range(4)]
  hits = []
  for i in range(len(ds["train"])):
    fr = ds["train"][i]
    assert fr.image[0, 0].tolist() == [1.0, 1.0, 1.0]  # white background
    w2c = np.asarray(fr.camera.world_to_camera, np.float64)
    v = verts[fr.timestep]
    pc = v @ w2c[:3, :3].T + w2c[:3, 3]
    cam_pos = np.linalg.inv(w2c)[:3, 3]
    facing = np.einsum("vc,vc->v", normals[fr.timestep], cam_pos - v) > 0.5 * np.linalg.norm(cam_pos - v, axis=-1)
    u = np.floor(float(fr.camera.fx) * pc[:, 0] / pc[:, 2] + float(fr.camera.cx)).astype(int)
    w = np.floor(float(fr.camera.fy) * pc[:, 1] / pc[:, 2] + float(fr.camera.cy)).astype(int)
    ok = facing & (u >= 0) & (u < 40) & (w >= 0) & (w < 56)
    hits.append(fr.mask[w[ok], u[ok]] > 0.5)
    # background pixels are white and foreground is not all white
    assert (fr.image[fr.mask == 0] == 1).all() and (fr.image[fr.mask == 1] < 0.99).any()
  assert np.concatenate(hits).mean() > 0.98


def test_cli_and_facepaint_same_motion(tiny_dataset, tmp_path):
  from gaedit_jax.cli import main

  out, _ = tiny_dataset
  args = ["synth", str(tmp_path / "paint"), "--texture", "facepaint"]
  for k, v in TINY.items():
    args += [f"--{k.replace('_', '-')}", str(v)]
  main(args)
  a = AvatarDataset(out, "val", load_masks=True)
  b = AvatarDataset(tmp_path / "paint", "val", load_masks=True)
  info = json.loads((tmp_path / "paint" / "synth_info.json").read_text())
  assert info["config"]["texture"] == "facepaint"
  for i in range(len(a)):
    np.testing.assert_array_equal(a[i].mask, b[i].mask)  # same geometry and motion
    assert np.abs(a[i].image - b[i].image).max() > 0.3  # different appearance
  np.testing.assert_array_equal(np.asarray(a.flame_params.expr), np.asarray(b.flame_params.expr))
  with pytest.raises(FileExistsError):
    main(args)


def test_textures_in_one_pass_equal_separate_datasets(tiny_dataset, tmp_path):
  # generate(also=...) writes the face-paint dataset from the same rasterization as the skin one:
  # every file equals what two separate runs write (images, masks, cameras, FLAME)
  out, _ = tiny_dataset
  one, paint = tmp_path / "skin", tmp_path / "paint"
  synthetic.generate(synthetic.SynthConfig(out=one, **TINY), progress=False, also={"facepaint": paint})
  alone = tmp_path / "paint_alone"
  synthetic.generate(synthetic.SynthConfig(out=alone, texture="facepaint", **TINY), progress=False)
  for ref, got in ((out, one), (alone, paint)):
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file() and p.name != "synth_info.json")
    assert files and files == sorted(
      p.relative_to(got) for p in got.rglob("*") if p.is_file() and p.name != "synth_info.json"
    )
    for f in files:
      assert (ref / f).read_bytes() == (got / f).read_bytes(), f
  assert json.loads((paint / "synth_info.json").read_text())["config"]["texture"] == "facepaint"


def test_rig_and_motion():
  rig = synthetic.nersemble_like_rig(16, 128, 176)
  assert len(rig) == 16
  pos = np.stack([np.linalg.inv(c.world_to_camera)[:3, 3] for c in rig])
  np.testing.assert_allclose(np.linalg.norm(pos - [0, -0.025, 0], axis=1), 1.0, atol=0.04)
  assert abs(pos[8, 0]) < 1e-6 and pos[8, 2] > 0.99  # camera 8 is frontal
  az = np.degrees(np.arctan2(pos[:, 0], pos[:, 2]))
  assert (np.diff(az) > 0).all() and az.min() < -60 and az.max() > 55
  m = head()
  mo = synthetic.make_motion(m, 12, seed=3)
  for k in ("expr", "jaw_pose", "neck_pose", "eyes_pose", "rotation", "translation"):
    assert np.asarray(getattr(mo, k)).std(0).max() > 0, k
  assert np.asarray(mo.jaw_pose)[:, 0].max() > 0.15 and np.asarray(mo.jaw_pose)[:, 0].min() >= 0
  np.testing.assert_array_equal(np.asarray(mo.expr), np.asarray(synthetic.make_motion(m, 12, seed=3).expr))


def test_synth_errors_name_the_flags(tiny_dataset, tmp_path):
  from gaedit_jax.cli import main
  from gaedit_jax.errors import InputError

  out, _ = tiny_dataset
  args = []
  for k, v in TINY.items():
    args += [f"--{k.replace('_', '-')}", str(v)]
  with pytest.raises(FileExistsError, match=r"already holds a dataset; pass --overwrite to replace it"):
    main(["synth", str(out)] + args)
  with pytest.raises(InputError, match=r"^--num-cameras must be >= 2"):
    main(["synth", str(tmp_path / "a")] + args + ["--num-cameras", "1"])
  with pytest.raises(InputError, match=r"^--num-timesteps 3 leaves no test timesteps at --train-ratio 0.7"):
    main(["synth", str(tmp_path / "a")] + args + ["--num-timesteps", "3"])
  with pytest.raises(InputError, match=r"^--num-timesteps 8 leaves no test timesteps at --train-ratio 1.0"):
    main(["synth", str(tmp_path / "a")] + args + ["--num-timesteps", "8", "--train-ratio", "1"])
  with pytest.raises(InputError, match=r"^--rows must be an integer >= 16, got 8"):
    main(["synth", str(tmp_path / "a")] + args + ["--rows", "8"])
  with pytest.raises(InputError, match=r"^--seed must be an integer >= 0, got -1"):
    main(["synth", str(tmp_path / "a")] + args + ["--seed", "-1"])
  assert not (tmp_path / "a").exists()
  # the library generator itself accepts smaller grids (e.g. a 2-timestep edit target)
  synthetic.SynthConfig(out=tmp_path / "b", num_cameras=1, num_timesteps=1)
