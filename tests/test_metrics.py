"""PSNR / SSIM as GaussianAvatars, CLIP embeddings against transformers' PyTorch CLIP, CLIP-S / CLIP-C,
and `gaedit eval`."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from gaedit_jax import metrics
from gaedit_jax.errors import InputError
from gaedit_jax.io.media import save_png
from gaedit_jax.nets.clip import load_clip
from gaedit_jax.nets.tiny import make_tiny_clip


def _pair(seed=0, shape=(2, 40, 36, 3)):
  rng = np.random.default_rng(seed)
  x = rng.random(shape, dtype=np.float32)
  y = np.clip(x + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)
  return x, y


def test_psnr():
  x, y = _pair()
  mse = ((x - y) ** 2).reshape(2, -1).mean(1)
  np.testing.assert_allclose(np.asarray(metrics.psnr(x, y)), 20 * np.log10(1 / np.sqrt(mse)), rtol=1e-5)
  assert metrics.psnr(x[0], y[0]).shape == ()


def _ssim_3dgs_torch(img1, img2):
  """GaussianAvatars / 3DGS `utils/loss_utils.ssim`, written out in torch (the reference)."""
  import torch
  import torch.nn.functional as F

  g = torch.tensor([math.exp(-((x - 5) ** 2) / float(2 * 1.5**2)) for x in range(11)])
  g = (g / g.sum()).unsqueeze(1)
  c = img1.shape[-3]
  window = (g @ g.t()).float().unsqueeze(0).unsqueeze(0).expand(c, 1, 11, 11).contiguous()
  conv = lambda a: F.conv2d(a, window, padding=5, groups=c)
  mu1, mu2 = conv(img1), conv(img2)
  s1 = conv(img1 * img1) - mu1**2
  s2 = conv(img2 * img2) - mu2**2
  s12 = conv(img1 * img2) - mu1 * mu2
  c1, c2 = 0.01**2, 0.03**2
  m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
  return m.mean(dim=(1, 2, 3))


def test_ssim_matches_gaussian_avatars():
  torch = pytest.importorskip("torch")
  x, y = _pair()
  ref = _ssim_3dgs_torch(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(np.asarray(metrics.ssim(x, y)), ref, atol=2e-6)
  np.testing.assert_allclose(float(metrics.ssim(x[0], x[0])), 1.0, atol=1e-6)


def test_ssim_gradient_matches_gaussian_avatars():
  # the blur's hand-written backward (the same blur: linear, symmetric window, zero padding)
  # against torch autograd through the 3DGS conv2d formulation, in both arguments
  torch = pytest.importorskip("torch")
  import jax

  x, y = _pair(1, (2, 33, 29, 3))
  tx, ty = (torch.from_numpy(a).permute(0, 3, 1, 2).requires_grad_(True) for a in (x, y))
  w = torch.tensor([0.3, 1.7])
  (_ssim_3dgs_torch(tx, ty) * w).sum().backward()
  gx, gy = jax.grad(lambda a, b: (metrics.ssim(a, b) * np.array([0.3, 1.7], np.float32)).sum(), argnums=(0, 1))(x, y)
  for ours, ref in ((gx, tx.grad), (gy, ty.grad)):
    ref = ref.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_clip_direction_formulas():
  rng = np.random.default_rng(0)
  n = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  e0, e1 = n(rng.standard_normal((5, 8))), n(rng.standard_normal((5, 8)))
  t0, t1 = n(rng.standard_normal(8)), n(rng.standard_normal(8))
  cos = lambda a, b: (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  np.testing.assert_allclose(
    np.asarray(metrics.clip_direction_similarity(e0, e1, t0, t1)),
    cos(e1 - e0, np.broadcast_to(t1 - t0, e0.shape)),
    rtol=1e-5,
  )
  d = e1 - e0
  np.testing.assert_allclose(
    np.asarray(metrics.clip_direction_consistency(e0, e1, wrap=True)), cos(d, np.roll(d, -1, 0)), rtol=1e-5
  )  # paths0[1:] + paths0[:1]
  np.testing.assert_allclose(
    np.asarray(metrics.clip_direction_consistency(e0, e1, wrap=False)), cos(d[:-1], d[1:]), rtol=1e-5
  )


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):

  path = make_tiny_clip(str(tmp_path_factory.mktemp("clip") / "clip-tiny"), seed=0)
  return path, load_clip(path)


def test_clip_embeddings_match_transformers_pytorch(tiny_clip):
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F
  from transformers import CLIPModel, CLIPTokenizer

  path, clip = tiny_clip
  ref, info = CLIPModel.from_pretrained(path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  tok = CLIPTokenizer.from_pretrained(path)
  x = np.random.default_rng(0).random((3, 50, 40, 3), dtype=np.float32)
  texts = ["a photo of a man", "a photo of a clown statue", "turn him into an elf"]
  with torch.no_grad():  # ClipSimilarity.encode_image: bicubic resize, CLIP mean/std, no crop
    pix = F.interpolate(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=(clip.image_size,) * 2, mode="bicubic", align_corners=False
    )
    pix = (pix - torch.tensor(clip.mean).view(1, 3, 1, 1)) / torch.tensor(clip.std).view(1, 3, 1, 1)
    ei = ref.get_image_features(pixel_values=pix)
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    et = ref.get_text_features(input_ids=ids)
  ei, et = F.normalize(ei, dim=-1).numpy(), F.normalize(et, dim=-1).numpy()
  gi, gt = np.asarray(clip.encode_images(x)), np.asarray(clip.encode_texts(texts))
  print(f"CLIP Flax vs PyTorch: image {np.abs(gi - ei).max():.1e}, text {np.abs(gt - et).max():.1e}")
  np.testing.assert_allclose(gi, ei, atol=2e-6)
  np.testing.assert_allclose(gt, et, atol=2e-6)


def test_clip_edit_metrics_and_eval_command(tiny_clip, tmp_path):
  path, clip = tiny_clip
  rng = np.random.default_rng(1)
  src = rng.random((4, 24, 20, 3), dtype=np.float32)
  edt = np.clip(src + 0.3 * rng.standard_normal(src.shape), 0, 1).astype(np.float32)
  m = metrics.clip_edit_metrics(clip, src, edt, "a photo of a man", "a photo of a clown")
  assert m.clip_variant == "clip-tiny" and m.num_images == 4
  for v in (m.clip_direction_similarity, m.clip_direction_consistency, m.clip_image_similarity):
    assert -1.0 <= v <= 1.0
  for folder, imgs in (("src", src), ("edt", edt)):
    for i, im in enumerate(imgs):
      save_png(tmp_path / folder / f"{i:05d}.png", im)
  from gaedit_jax import cli

  out = tmp_path / "metrics.json"
  cli.main(
    [
      "eval",
      "--source",
      str(tmp_path / "src"),
      "--edited",
      str(tmp_path / "edt"),
      "--source-caption",
      "a photo of a man",
      "--target-caption",
      "a photo of a clown",
      "--clip",
      path,
      "--out",
      str(out),
    ]
  )
  res = json.loads(out.read_text())["clip_edit"]
  assert res["clip_variant"] == "clip-tiny" and res["num_images"] == 4
  q = lambda a: np.floor(np.clip(a * 255 + 0.5, 0, 255)) / 255  # what the 8-bit PNGs hold
  m_png = metrics.clip_edit_metrics(clip, q(src), q(edt), "a photo of a man", "a photo of a clown")
  assert abs(res["clip_direction_similarity"] - m_png.clip_direction_similarity) < 1e-4
  os.remove(tmp_path / "edt" / "00003.png")
  with pytest.raises(InputError, match="same file names"):
    cli.main(
      [
        "eval",
        "--source",
        str(tmp_path / "src"),
        "--edited",
        str(tmp_path / "edt"),
        "--source-caption",
        "a",
        "--target-caption",
        "b",
        "--clip",
        path,
      ]
    )
  with pytest.raises(InputError, match="need --source, --edited"):
    cli.main(["eval", "--source", str(tmp_path / "src"), "--clip", path])
