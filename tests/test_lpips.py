"""LPIPS-VGG in JAX against the `lpips` package (PyTorch), same random VGG16 trunk, real heads."""

from __future__ import annotations

import copy
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaedit_jax.flags import build
from gaedit_jax.nets import lpips as L
from gaedit_jax.nets import torch_pickle
from gaedit_jax.nets.hf_weights import WeightsError
from gaedit_jax.nets.tiny import random_lpips_params


def _import_lpips_with_stub_torchvision():
  """Import the `lpips` package with a stand-in `torchvision.models.vgg16` (torchvision's VGG16
  `features` layout, random init): lpips only takes `.features` from it, and we load our own
  random trunk into it anyway. This keeps the test free of torchvision (whose PyPI wheels need a
  matching CUDA/CPU torch build)."""
  torch = pytest.importorskip("torch")
  if "lpips" in sys.modules:
    return sys.modules["lpips"]

  def vgg16(*args, **kwargs):
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
      if v == "M":
        layers.append(torch.nn.MaxPool2d(2, 2))
      else:
        layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU(inplace=True)]
        cin = v
    return types.SimpleNamespace(features=torch.nn.Sequential(*layers))

  saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models")}
  tv = types.ModuleType("torchvision")
  tv.models = types.ModuleType("torchvision.models")
  tv.models.vgg16 = vgg16
  sys.modules["torchvision"], sys.modules["torchvision.models"] = tv, tv.models
  try:
    return pytest.importorskip("lpips")
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


@pytest.fixture(scope="module")
def reference():
  """(torch LPIPS module, our params) sharing one random trunk and the package's real heads."""
  torch = pytest.importorskip("torch")
  lpips = _import_lpips_with_stub_torchvision()
  ref = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # loads weights/v0.1/vgg.pth heads
  heads = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
  trunk = L.params_to_torch(random_lpips_params(0))
  params = L.params_from_torch(trunk, torch_pickle.load_state_dict(heads), source=heads)  # torch-free read
  convs = [
    m
    for s in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5)
    for m in s
    if isinstance(m, torch.nn.Conv2d)
  ]
  with torch.no_grad():
    for conv, idx in zip(convs, L.VGG16_CONV_INDICES):
      conv.weight.copy_(torch.from_numpy(trunk[f"features.{idx}.weight"]))
      conv.bias.copy_(torch.from_numpy(trunk[f"features.{idx}.bias"]))
    for k, lin in enumerate(ref.lins):  # the heads we read equal the ones lpips loaded
      np.testing.assert_array_equal(lin.model[1].weight.numpy().reshape(-1), params["lin"][k])
  return ref, params


def _images(seed=0, shape=(2, 64, 48, 3)):
  rng = np.random.default_rng(seed)
  x = rng.random(shape, dtype=np.float32)
  y = np.clip(x + 0.15 * rng.standard_normal(shape), 0, 1).astype(np.float32)
  return x, y


def test_parity_with_lpips_package(reference):
  import torch

  ref, params = reference
  x, y = _images()
  tx, ty = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (x, y))
  with torch.no_grad():
    d_ref = ref(tx, ty).reshape(-1)  # the editor's call: [0,1] images, normalize=False
  f = jax.jit(L.lpips, static_argnames="normalize")
  d = f(params, x, y)
  print(
    f"LPIPS JAX vs lpips package: {np.abs(np.asarray(d) - d_ref.detach().numpy()).max():.2e} "
    f"(values {d_ref.detach().numpy()})"
  )
  np.testing.assert_allclose(np.asarray(d), d_ref.detach().numpy(), rtol=1e-5, atol=1e-7)
  with torch.no_grad():
    d_ref_n = ref(tx, ty, normalize=True).reshape(-1).numpy()
  np.testing.assert_allclose(np.asarray(f(params, x, y, normalize=True)), d_ref_n, rtol=1e-5, atol=1e-7)
  # The gradient's formula, in float64 on both sides (torch: a float64 copy of the module).
  ref64 = copy.deepcopy(ref).double()
  tx64 = torch.from_numpy(x).double().permute(0, 3, 1, 2).requires_grad_(True)
  ref64(tx64, torch.from_numpy(y).double().permute(0, 3, 1, 2)).sum().backward()
  g_ref = tx64.grad.permute(0, 2, 3, 1).numpy()
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    g64 = np.asarray(jax.grad(lambda a: L.lpips(p64, a, y64, dtype=jnp.float64).sum())(x64))
  assert g64.dtype == np.float64
  np.testing.assert_allclose(g64, g_ref, rtol=0, atol=1e-9 * np.abs(g_ref).max())
  # The float32 gradient is ill-conditioned where a feature's norm over channels is near zero
  # (x / |x| amplifies rounding by 1 / |x|): how far a float32 result lands depends on the
  # convolutions' summation order. On this project's CPUs, ours and torch's float32 gradients were
  # 1e-5 to 1.2% of the max from the float64 one (0.65% in norm), both sides alike.
  g = np.asarray(jax.jit(jax.grad(lambda a: L.lpips(params, a, y).sum()))(x), np.float64)
  np.testing.assert_allclose(g, g_ref, rtol=0, atol=5e-2 * np.abs(g_ref).max())
  assert np.linalg.norm(g - g_ref) <= 2e-2 * np.linalg.norm(g_ref)


def test_properties():
  params = random_lpips_params(1)
  x, y = _images(1, (1, 32, 32, 3))
  assert float(L.lpips(params, x[0], x[0])) == 0.0
  d_xy, d_yx = L.lpips(params, x, y), L.lpips(params, y, x)
  np.testing.assert_allclose(np.asarray(d_xy), np.asarray(d_yx), rtol=1e-5)
  assert d_xy.shape == (1,) and float(d_xy[0]) > 0
  with pytest.raises(ValueError, match="same shape"):
    L.lpips(params, x, y[:, :16])


def test_load_from_files(tmp_path):
  """torchvision's vgg16 .pth (legacy torch.save layout) + the heads, read without torch."""
  torch = pytest.importorskip("torch")
  params = random_lpips_params(2)
  sd = L.params_to_torch(params)
  trunk = {k: torch.from_numpy(v) for k, v in sd.items() if k.startswith("features")}
  trunk["classifier.0.weight"] = torch.zeros(4, 3)  # ignored extra tensors
  heads = {k: torch.from_numpy(v) for k, v in sd.items() if k.startswith("lin")}
  torch.save(trunk, tmp_path / "vgg16-397923af.pth", _use_new_zipfile_serialization=False)
  with pytest.raises(WeightsError, match="LPIPS heads"):
    L.load_lpips(tmp_path)
  torch.save(heads, tmp_path / "vgg.pth")
  loaded = L.load_lpips(tmp_path)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)
  from gaedit_jax import cli

  cli.main(["convert-weights", "--kind", "lpips", "--src", str(tmp_path), "--out", str(tmp_path / "conv")])
  again = L.load_lpips(tmp_path / "conv")
  for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)
  (tmp_path / "empty").mkdir()
  with pytest.raises(WeightsError, match="VGG16 trunk"):
    L.load_lpips(tmp_path / "empty")


def test_input_range_conventions_match_the_original_calls(reference):
  """The original feeds [0, 1] images straight into LPIPS-VGG, both the editor's loss
  (GaussianAvatar-Editor train.py: PerceptualLoss(render, edit)) and GaussianAvatars' metric
  (metrics.py: lpips on to_tensor images): the `lpips` package called with normalize=False on [0, 1]
  images. That is our default ("unit", edit loss and metric); "signed" is normalize=True."""
  import torch

  from gaedit_jax.errors import InputError
  from gaedit_jax.eval_recon import _lpips_jit

  ref, params = reference
  x, y = _images(3, (2, 48, 40, 3))
  tx, ty = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (x, y))
  with torch.no_grad():
    unit = ref(tx, ty).reshape(-1).numpy()
    signed = ref(tx, ty, normalize=True).reshape(-1).numpy()
  assert np.abs(unit - signed).min() > 1e-2 * np.abs(signed).max()  # the two conventions differ
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-7)
  close(L.lpips_images(params, x, y), unit)  # default: the original's call
  close(L.lpips_images(params, x, y, "unit"), unit)
  close(L.lpips_images(params, x, y, "signed"), signed)
  close(_lpips_jit(params, x, y), unit)  # the evaluation metric
  close(_lpips_jit(params, x, y, "signed"), signed)
  with pytest.raises(InputError, match="lpips-input"):
    L.lpips_images(params, x, y, "zero-one")


def test_lpips_input_option_defaults_to_the_original():
  from pathlib import Path

  from gaedit_jax.commands.eval import EvalConfig
  from gaedit_jax.edit.loop import EditConfig, StepSettings
  from gaedit_jax.reconstruct import ReconstructConfig

  assert build(EditConfig, avatar=Path("a"), out=Path("o")).lpips_input == "unit"
  assert StepSettings(render=None).lpips_input == "unit"
  assert EvalConfig().lpips_input == "unit"
  assert build(ReconstructConfig, data=Path("."), out=Path(".")).lpips_input == "unit"


def test_bfloat16_convolutions_stay_close():
  # --lpips-dtype bfloat16: the VGG convolutions in bfloat16, normalisation and distances in float32
  params = random_lpips_params(2)
  x, y = _images(2, (2, 64, 48, 3))
  d32, d16 = L.lpips(params, x, y), L.lpips(params, x, y, dtype=jnp.bfloat16)
  assert d16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(d16), np.asarray(d32), rtol=3e-2)
  assert not np.array_equal(np.asarray(d16), np.asarray(d32))  # it did compute in bfloat16
  g32 = jax.grad(lambda a: L.lpips(params, a, y).sum())(x)
  g16 = jax.grad(lambda a: L.lpips(params, a, y, dtype=jnp.bfloat16).sum())(x)
  cos = float(jnp.sum(g32 * g16) / (jnp.linalg.norm(g32) * jnp.linalg.norm(g16)))
  assert cos > 0.95, cos
