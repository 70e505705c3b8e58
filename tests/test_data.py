"""GaussianAvatars/VHAP layout: writer/reader round trip, UNION folders, splits, clear errors."""

import json
import math
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gaedit_jax.camera import look_at, opencv_w2c_to_opengl_c2w
from gaedit_jax.data.dataset import AvatarDataset, Batch, load_dataset
from gaedit_jax.data.layout import (
  DatasetError,
  DatasetFileNotFoundError,
  DatasetWriter,
  read_flame_npz,
  read_transforms,
  vhap_splits,
)
from gaedit_jax.errors import InputError
from gaedit_jax.flame import FlameParams

NV, NS, NE = 7, 5, 4
H, W = 12, 10


def make_params(T, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return FlameParams(
    shape=f(NS),
    expr=f(T, NE),
    rotation=f(T, 3),
    neck_pose=f(T, 3),
    jaw_pose=f(T, 3),
    eyes_pose=f(T, 6),
    translation=f(T, 3),
    static_offset=f(NV, 3),
  )


def cam_pose(c):
  a = 0.3 * (c - 8)
  return look_at([np.sin(a), 0.1 * c, np.cos(a)], [0, 0, 0])


def write_tiny(root, T=4, cams=(0, 8, 9), seed=0, offset=0, rgba=False):
  rng = np.random.default_rng(seed)
  w = DatasetWriter(root)
  params = make_params(T, seed)
  imgs = {}
  for t in range(T):
    w.add_flame_param(t, params.at(t))
    for c in cams:
      img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
      mask = rng.uniform(size=(H, W)).astype(np.float32)
      imgs[t, c] = img
      w.add_frame(
        timestep=t,
        camera_index=c,
        image=img,
        mask=mask,
        world_to_camera=cam_pose(c),
        fx=20.0 + c,
        fy=21.0 + c,
        cx=5.5,
        cy=6.25,
        camera_id=f"2222{c:04d}",
        timestep_original=t + offset,
      )
  w.add_canonical(params)
  paths = w.finish()
  return params, imgs, paths


def test_round_trip(tmp_path):
  params, imgs, paths = write_tiny(tmp_path)
  assert set(paths) == {"all", "train", "val", "test"}
  ds = load_dataset(tmp_path, load_masks=True)
  # VHAP split: ceil(0.7 * 4) = 3 train timesteps; camera 8 is val; test = last timestep, all cams
  assert sorted({(r.timestep, r.camera_index) for r in ds["train"].records}) == [
    (t, c) for t in range(3) for c in (0, 9)
  ]
  assert sorted({(r.timestep, r.camera_index) for r in ds["val"].records}) == [(t, 8) for t in range(3)]
  assert sorted({(r.timestep, r.camera_index) for r in ds["test"].records}) == [(3, c) for c in (0, 8, 9)]
  tr = ds["train"]
  for i in range(len(tr)):
    fr = tr[i]
    np.testing.assert_array_equal(np.rint(fr.image * 255).astype(np.uint8), imgs[fr.timestep, fr.camera_index])
    assert fr.mask.shape == (H, W) and 0 <= fr.mask.min() and fr.mask.max() <= 1
    c = fr.camera_index
    np.testing.assert_allclose(np.asarray(fr.camera.world_to_camera), cam_pose(c), atol=1e-5)
    np.testing.assert_allclose(
      [float(fr.camera.fx), float(fr.camera.fy), float(fr.camera.cx), float(fr.camera.cy)],
      [20.0 + c, 21.0 + c, 5.5, 6.25],
      atol=1e-6,
    )
    assert (fr.camera.width, fr.camera.height) == (W, H)
    assert fr.record.camera_id == f"2222{c:04d}"
  # FLAME parameters of all timesteps, exact
  fp = tr.flame_params
  for k in ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation", "shape", "static_offset"):
    np.testing.assert_array_equal(np.asarray(getattr(fp, k)), np.asarray(getattr(params, k)), err_msg=k)
  cano = tr.canonical_flame_params
  np.testing.assert_allclose(np.asarray(cano.jaw_pose), [0.3, 0, 0], atol=1e-7)
  assert np.abs(np.asarray(cano.expr)).max() == 0
  np.testing.assert_array_equal(np.asarray(cano.shape), np.asarray(params.shape))
  # the json has the VHAP keys
  meta, recs = read_transforms(tmp_path / "transforms_train.json")
  assert meta["camera_indices"] == [0, 9] and meta["timestep_indices"] == [0, 1, 2]
  raw = json.loads((tmp_path / "transforms_train.json").read_text())["frames"][0]
  for k in (
    "timestep_index",
    "timestep_index_original",
    "timestep_id",
    "camera_index",
    "camera_id",
    "cx",
    "cy",
    "fl_x",
    "fl_y",
    "h",
    "w",
    "camera_angle_x",
    "camera_angle_y",
    "transform_matrix",
    "file_path",
    "fg_mask_path",
    "flame_param_path",
  ):
    assert k in raw, k
  assert math.isclose(raw["camera_angle_x"], 2 * math.atan(W / (2 * raw["fl_x"])))


def test_batches_and_cache(tmp_path):
  write_tiny(tmp_path)
  ds = AvatarDataset(tmp_path, "train", cache_size=3, load_masks=True)
  b = ds.batch([0, 2, 5])
  assert isinstance(b, Batch)
  assert b.image.shape == (3, H, W, 3) and b.mask.shape == (3, H, W)
  assert b.camera.world_to_camera.shape == (3, 4, 4) and b.camera.width == W
  np.testing.assert_array_equal(np.asarray(b.timestep), ds.timesteps[[0, 2, 5]])
  assert len(ds._cache) <= 3  # LRU bound
  # an image and its mask are read from their files once, then from the cache
  cached = AvatarDataset(tmp_path, "train", cache_size=8, load_masks=True)
  first = cached.batch([1])
  img_file, mask_file = cached.records[1].image_path, cached.records[1].mask_path
  saved = img_file.read_bytes(), mask_file.read_bytes()
  img_file.unlink(), mask_file.unlink()
  again = cached.batch([1])
  img_file.write_bytes(saved[0]), mask_file.write_bytes(saved[1])
  np.testing.assert_array_equal(np.asarray(again.image), np.asarray(first.image))
  np.testing.assert_array_equal(np.asarray(again.mask), np.asarray(first.mask))
  got = [int(i) for bb in ds.batches(2, seed=1, epochs=2) for i in bb.frame_index]
  assert sorted(got[:6]) == list(range(6)) and sorted(got[6:]) == list(range(6)) and got[:6] != got[6:]
  assert ds.camera_extent() > 0
  half = AvatarDataset(tmp_path, "train", image_scale=0.5)
  assert half[0].image.shape == (H // 2, W // 2, 3)
  assert float(half[0].camera.fx) == pytest.approx(0.5 * float(ds[0].camera.fx))


def test_rgba_composited_over_background(tmp_path):
  write_tiny(tmp_path, T=2)
  ds = AvatarDataset(tmp_path, "train")
  p = ds.records[0].image_path
  rgba = np.zeros((H, W, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[:, : W // 2, 3] = 255
  Image.fromarray(rgba, "RGBA").save(p)
  img = AvatarDataset(tmp_path, "train")[0].image
  np.testing.assert_allclose(img[:, : W // 2], np.broadcast_to([200 / 255, 0, 0], (H, W // 2, 3)), atol=1e-6)
  np.testing.assert_allclose(img[:, W // 2 :], 1.0)  # white background
  img = AvatarDataset(tmp_path, "train", white_background=False)[0].image
  np.testing.assert_allclose(img[:, W // 2 :], 0.0)


def test_opengl_convention():
  """A camera at z=+1 looking down -z (OpenGL identity rotation) sees the origin straight ahead."""
  from gaedit_jax.camera import opengl_c2w_to_opencv_w2c

  c2w = np.eye(4)
  c2w[2, 3] = 1.0
  w2c = opengl_c2w_to_opencv_w2c(c2w)
  p = w2c @ np.array([0, 0, 0, 1.0])
  np.testing.assert_allclose(p[:3], [0, 0, 1])
  up = w2c @ np.array([0, 0.1, 0, 1.0])
  assert up[1] < 0  # world up is image up (OpenCV y points down)


def test_union_folder(tmp_path):
  pa, ia, _ = write_tiny(tmp_path / "seqA", T=2, seed=1)
  pb, ib, _ = write_tiny(tmp_path / "seqB", T=2, seed=2)
  union = tmp_path / "UNION2_subject"
  union.mkdir()
  frames = []
  for k, seq in enumerate(("seqA", "seqB")):
    for fr in json.loads((tmp_path / seq / "transforms.json").read_text())["frames"]:
      fr = dict(fr)
      for key in ("file_path", "fg_mask_path", "flame_param_path"):
        fr[key] = f"../{seq}/{fr[key]}"
      fr["timestep_index"] += 2 * k  # concatenated timesteps
      frames.append(fr)
  for split, sel in (
    ("train", lambda f: f["timestep_index"] < 2),
    ("val", lambda f: False),
    ("test", lambda f: f["timestep_index"] >= 2),
  ):
    (union / f"transforms_{split}.json").write_text(json.dumps({"frames": [f for f in frames if sel(f)]}))
  shutil.copy(tmp_path / "seqA" / "canonical_flame_param.npz", union)
  ds = AvatarDataset(union, "test")
  assert len(ds) == 6
  fr = ds[0]
  np.testing.assert_array_equal(np.rint(fr.image * 255).astype(np.uint8), ib[fr.timestep - 2, fr.camera_index])
  fp = ds.flame_params
  assert fp.expr.shape == (4, NE)
  np.testing.assert_array_equal(np.asarray(fp.expr[2:]), np.asarray(pb.expr))
  np.testing.assert_array_equal(np.asarray(fp.expr[:2]), np.asarray(pa.expr))
  np.testing.assert_array_equal(np.asarray(fp.shape), np.asarray(pa.shape))  # from timestep 0


def test_vhap_split_rule():
  s = vhap_splits(range(10), range(16))
  assert s["train"] == (list(range(7)), [c for c in range(16) if c != 8])
  assert s["val"] == (list(range(7)), [8]) and s["test"] == (list(range(7, 10)), list(range(16)))
  s = vhap_splits(range(3), [0, 1, 2])
  assert s["val"][1] == [2] and s["train"][1] == [0, 1] and s["test"][0] == []  # ceil(2.1) = 3
  s = vhap_splits(range(5), [4])
  assert s["val"][1] == [] and s["train"][1] == [4]


# ---- errors ---------------------------------------------------------------------------------------


def test_missing_image_names_the_file(tmp_path):
  write_tiny(tmp_path, T=2)
  ds = AvatarDataset(tmp_path, "train")
  missing = ds.records[1].image_path
  missing.unlink()
  with pytest.raises(
    DatasetFileNotFoundError, match=rf"transforms_train\.json: frames\[1\]: image not found: .*{missing.name}"
  ):
    ds[1]
  with pytest.raises(FileNotFoundError):
    ds.batch([1])


def test_malformed_json_and_missing_keys(tmp_path):
  write_tiny(tmp_path, T=2)
  p = tmp_path / "transforms_train.json"
  good = p.read_text()
  p.write_text(good[:-20])
  with pytest.raises(DatasetError, match=r"transforms_train\.json: malformed json .*line \d+"):
    AvatarDataset(tmp_path, "train")
  data = json.loads(good)
  del data["frames"][2]["transform_matrix"]
  p.write_text(json.dumps(data))
  with pytest.raises(DatasetError, match=r"transforms_train\.json: frames\[2\]: missing key 'transform_matrix'"):
    AvatarDataset(tmp_path, "train")
  data = json.loads(good)
  data["frames"][0]["transform_matrix"] = [[1, 0, 0], [0, 1, 0]]
  p.write_text(json.dumps(data))
  with pytest.raises(DatasetError, match=r"frames\[0\]: key 'transform_matrix' has shape \[2, 3\], expected \[4,4\]"):
    AvatarDataset(tmp_path, "train")
  data = json.loads(good)
  del data["frames"][0]["camera_index"]
  p.write_text(json.dumps(data))
  with pytest.raises(DatasetError, match=r"frames\[0\]: missing key 'camera_index'"):
    AvatarDataset(tmp_path, "train")
  with pytest.raises(DatasetFileNotFoundError, match="transforms_nope"):
    read_transforms(tmp_path / "transforms_nope.json")


def test_flame_npz_errors_name_file_key_and_shape(tmp_path):
  write_tiny(tmp_path, T=2)
  f1 = tmp_path / "flame_param" / "00001.npz"
  d = dict(np.load(f1))
  bad = dict(d)
  del bad["jaw_pose"]
  np.savez(f1, **bad)
  with pytest.raises(DatasetError, match=r"00001\.npz: missing key 'jaw_pose' \(expected shape \[1,3\]\)"):
    AvatarDataset(tmp_path, "train").flame_params
  bad = dict(d, eyes_pose=np.zeros((1, 3), np.float32))
  np.savez(f1, **bad)
  with pytest.raises(DatasetError, match=r"00001\.npz: key 'eyes_pose' has shape \[1, 3\], expected \[1,6\]"):
    AvatarDataset(tmp_path, "train").flame_params
  bad = dict(d, expr=np.zeros((1, NE + 2), np.float32))  # inconsistent with timestep 0
  np.savez(f1, **bad)
  with pytest.raises(DatasetError, match=rf"00001\.npz: key 'expr' has shape \[1, {NE + 2}\], expected \[1,{NE}\]"):
    AvatarDataset(tmp_path, "train").flame_params
  bad = dict(d, static_offset=np.zeros((1, NV + 1, 3), np.float32))
  np.savez(f1, **bad)
  with pytest.raises(DatasetError, match=rf"key 'static_offset' has shape \[1, {NV + 1}, 3\], expected \[1,{NV},3\]"):
    read_flame_npz(f1, num_vertices=NV)
  f1.unlink()
  with pytest.raises(DatasetFileNotFoundError, match=r"00001\.npz"):
    AvatarDataset(tmp_path, "train").flame_params
  f1.write_bytes(b"garbage")
  with pytest.raises(DatasetError, match=r"00001\.npz: not a readable npz"):
    AvatarDataset(tmp_path, "train").flame_params


def test_writer_refuses_to_overwrite(tmp_path):
  write_tiny(tmp_path, T=1)
  with pytest.raises(FileExistsError):
    DatasetWriter(tmp_path)
  (tmp_path / "keep.txt").write_text("mine")
  DatasetWriter(tmp_path, overwrite=True)
  assert not (tmp_path / "images").exists() and not (tmp_path / "transforms_train.json").exists()
  assert (tmp_path / "keep.txt").exists()
  with pytest.raises(ValueError, match="split must be"):
    AvatarDataset(tmp_path, "bogus")
  assert opencv_w2c_to_opengl_c2w(np.eye(4)).shape == (4, 4)


# ---- image modes, sizes and per-frame checks ------------------------------------------------------


def write_png16(path, arr):
  """A 16-bit PNG written byte by byte (Pillow writes 16-bit gray only): [H,W] gray, [H,W,2] gray +
  alpha, [H,W,3] RGB, [H,W,4] RGBA, uint16."""
  import struct
  import zlib

  arr = np.asarray(arr, np.uint16)
  ctype = 0 if arr.ndim == 2 else {2: 4, 3: 2, 4: 6}[arr.shape[-1]]  # PNG colour type
  h, w = arr.shape[:2]
  raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
  chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
  path.write_bytes(
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(raw))
    + chunk(b"IEND", b"")
  )


def test_16bit_images_and_masks_load_by_value(tmp_path):
  write_tiny(tmp_path, T=2)
  ds = AvatarDataset(tmp_path, "train", load_masks=True)
  rng = np.random.default_rng(5)
  gray = rng.integers(0, 65536, (H, W)).astype(np.uint16)
  Image.fromarray(gray).save(ds.records[0].image_path)  # 16-bit gray (Pillow mode I;16)
  rgb = rng.integers(0, 65536, (H, W, 3)).astype(np.uint16)
  write_png16(ds.records[1].image_path, rgb)  # 16-bit RGB
  rgba = rng.integers(0, 65536, (H, W, 4)).astype(np.uint16)
  rgba[:, : W // 2, 3] = 65535
  rgba[:, W // 2 :, 3] = 0
  write_png16(ds.records[2].image_path, rgba)  # 16-bit RGBA
  mask = rng.integers(0, 65536, (H, W)).astype(np.uint16)
  Image.fromarray(mask).save(ds.records[0].mask_path)  # 16-bit gray mask
  ds = AvatarDataset(tmp_path, "train", load_masks=True)
  f0 = ds[0]
  np.testing.assert_allclose(f0.image, np.repeat(gray[..., None] / 65535.0, 3, -1), atol=0.5 / 255 + 1e-6)
  assert f0.image.std() > 0.2  # not all white
  np.testing.assert_allclose(f0.mask, mask / 65535.0, atol=0.5 / 255 + 1e-6)
  np.testing.assert_allclose(ds[1].image, rgb / 65535.0, atol=1.0 / 255 + 1e-6)
  img2 = ds[2].image
  np.testing.assert_allclose(img2[:, : W // 2], rgba[:, : W // 2, :3] / 65535.0, atol=1.0 / 255 + 1e-6)
  np.testing.assert_allclose(img2[:, W // 2 :], 1.0)  # transparent -> white background


def test_palette_gray_and_bilevel_images(tmp_path):
  write_tiny(tmp_path, T=2)
  ds = AvatarDataset(tmp_path, "train")
  rng = np.random.default_rng(6)
  idx = rng.integers(0, 4, (H, W)).astype(np.uint8)
  pal = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
  p = Image.fromarray(idx, "P")
  p.putpalette(pal.reshape(-1).tolist())
  p.save(ds.records[0].image_path, transparency=3)  # palette entry 3 is transparent
  g = rng.integers(0, 256, (H, W)).astype(np.uint8)
  Image.fromarray(g, "L").save(ds.records[1].image_path)
  b = rng.integers(0, 2, (H, W)).astype(bool)
  Image.fromarray(b).convert("1").save(ds.records[2].image_path)
  ds = AvatarDataset(tmp_path, "train", white_background=False)
  want = pal[idx] / 255.0
  want[idx == 3] = 0.0  # composited over black
  np.testing.assert_allclose(ds[0].image, want, atol=1e-6)
  np.testing.assert_allclose(ds[1].image, np.repeat(g[..., None] / 255.0, 3, -1), atol=1e-6)
  np.testing.assert_allclose(ds[2].image, np.repeat(b[..., None].astype(np.float32), 3, -1), atol=1e-6)


def test_image_of_another_aspect_ratio_is_an_error(tmp_path):
  write_tiny(tmp_path, T=2)
  ds = AvatarDataset(tmp_path, "train", load_masks=True)
  p = ds.records[1].image_path
  big = np.random.default_rng(0).integers(0, 256, (2 * H, 2 * W, 3), dtype=np.uint8)
  Image.fromarray(big).save(p)  # a uniform scale: resampled
  ds = AvatarDataset(tmp_path, "train")
  assert ds[1].image.shape == (H, W, 3)
  Image.fromarray(big[: H + 3]).save(p)  # another aspect ratio
  with pytest.raises(
    DatasetError,
    match=rf"frames\[1\]: image .*{p.name} is {2 * W}x{H + 3} pixels but the "
    rf"json says w x h = {W}x{H}",
  ):
    AvatarDataset(tmp_path, "train")[1]
  Image.fromarray(np.zeros((W, H), np.uint8)).save(ds.records[2].mask_path)  # transposed mask
  with pytest.raises(DatasetError, match=rf"frames\[2\]: fg mask .* is {H}x{W} pixels"):
    AvatarDataset(tmp_path, "train", load_masks=True)[2]


def _edit_frame(tmp_path, i, **kv):
  p = tmp_path / "transforms_train.json"
  data = json.loads(p.read_text())
  data["frames"][i].update(kv)
  p.write_text(json.dumps(data))


@pytest.mark.parametrize(
  "key,value,msg",
  [
    ("fl_x", 0.0, r"key 'fl_x' = 0.0 must be > 0"),
    ("fl_x", -20.0, r"key 'fl_x' = -20.0 must be > 0"),
    ("fl_y", float("nan"), r"key 'fl_y' = nan is not finite"),
    ("fl_y", float("inf"), r"key 'fl_y' = inf is not finite"),
    ("cx", float("nan"), r"key 'cx' = nan is not finite"),
    ("timestep_index", -1, r"key 'timestep_index' = -1 must be >= 0"),
    ("timestep_index", 1.5, r"key 'timestep_index' = 1.5 is not an integer"),
    ("camera_index", -3, r"key 'camera_index' = -3 must be >= 0"),
    ("w", 0, r"key 'w' = 0 must be >= 1"),
  ],
)
def test_bad_frame_values_name_file_frame_and_key(tmp_path, key, value, msg):
  write_tiny(tmp_path, T=2)
  _edit_frame(tmp_path, 3, **{key: value})
  with pytest.raises(DatasetError, match=r"transforms_train\.json: frames\[3\]: " + msg):
    AvatarDataset(tmp_path, "train")


def test_bad_transform_matrix_names_file_frame_and_field(tmp_path):
  write_tiny(tmp_path, T=2)
  good = json.loads((tmp_path / "transforms_train.json").read_text())["frames"][1]["transform_matrix"]
  m = np.array(good)
  m[1, 2] = float("nan")
  _edit_frame(tmp_path, 1, transform_matrix=m.tolist())
  with pytest.raises(DatasetError, match=r"frames\[1\]: key 'transform_matrix' has non-finite entries \[1\]\[2\]"):
    AvatarDataset(tmp_path, "train")
  m = np.array(good)
  m[:3, :3] *= 2.0  # scaled: not rigid
  _edit_frame(tmp_path, 1, transform_matrix=m.tolist())
  with pytest.raises(DatasetError, match=r"frames\[1\]: key 'transform_matrix' is not rigid"):
    AvatarDataset(tmp_path, "train")
  m = np.array(good)
  m[:3, 2] = 0.0  # singular
  _edit_frame(tmp_path, 1, transform_matrix=m.tolist())
  with pytest.raises(DatasetError, match=r"frames\[1\]: key 'transform_matrix' is not rigid.*det R = 0"):
    AvatarDataset(tmp_path, "train")
  m = np.array(good)
  m[:3, 0] *= -1.0  # a reflection (det -1)
  _edit_frame(tmp_path, 1, transform_matrix=m.tolist())
  with pytest.raises(DatasetError, match=r"not rigid.*det R = -1"):
    AvatarDataset(tmp_path, "train")


def test_intrinsics_fov_x_reproduces_gaussianavatars_camera(tmp_path):
  """GaussianAvatars: FoVx = camera_angle_x, FoVy = focal2fov(fov2focal(FoVx, w), h), principal
  point at the centre; so fx = fy = fl_x (camera_angle_x was written from fl_x), cx = w/2, cy = h/2."""
  write_tiny(tmp_path, T=2)
  ref = AvatarDataset(tmp_path, "train")
  ga = AvatarDataset(tmp_path, "train", intrinsics="fov_x")
  for i in range(len(ref)):
    c = ref.records[i].camera_index
    a, b = ref.camera(i), ga.camera(i)
    np.testing.assert_allclose(
      [float(a.fx), float(a.fy), float(a.cx), float(a.cy)], [20.0 + c, 21.0 + c, 5.5, 6.25], rtol=1e-6
    )
    np.testing.assert_allclose(
      [float(b.fx), float(b.fy), float(b.cx), float(b.cy)], [20.0 + c, 20.0 + c, W / 2, H / 2], rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(a.world_to_camera), np.asarray(b.world_to_camera))
  np.testing.assert_allclose(np.asarray(ga.cameras.fy), np.asarray(ga.cameras.fx), rtol=1e-6)
  # only camera_angle_x: the field of view decides, also in "file" mode (fl_x absent)
  p = tmp_path / "transforms_train.json"
  data = json.loads(p.read_text())
  for fr in data["frames"]:
    for k in ("fl_x", "fl_y", "cx", "cy"):
      fr.pop(k)
    fr["camera_angle_x"] = 2 * math.atan(W / (2 * 30.0))
  for k in ("fl_x", "fl_y", "cx", "cy"):
    data.pop(k, None)
  p.write_text(json.dumps(data))
  cam = AvatarDataset(tmp_path, "train", intrinsics="fov_x").camera(0)
  np.testing.assert_allclose(
    [float(cam.fx), float(cam.fy), float(cam.cx), float(cam.cy)], [30.0, 30.0, W / 2, H / 2], rtol=1e-6
  )
  with pytest.raises(InputError, match="intrinsics must be one of"):
    AvatarDataset(tmp_path, "train", intrinsics="fov_y")


def test_edit_read_png_reads_16_bit_by_value(tmp_path):
  """The editor's / evaluation's PNG reader goes through the same by-value decoding (a 16-bit gray
  image used to read as white)."""
  from PIL import Image

  from gaedit_jax.io.media import read_png

  v = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000
  Image.fromarray(v).save(tmp_path / "g16.png")
  x = read_png(tmp_path / "g16.png")
  assert x.shape == (4, 4, 3)
  np.testing.assert_allclose(x[..., 0], np.round(v / 65535 * 255) / 255, atol=1e-6)
  np.testing.assert_array_equal(x[..., 0], x[..., 2])
