"""LPIPS with a VGG16 trunk in JAX (METHOD §9): the editor's perceptual loss and an eval metric.

    d(x, y) = sum_l mean_hw( w_l . (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2 )

- inputs go through the scaling layer (x - shift) / scale, shift = (-.030, -.088, -.188),
  scale = (.458, .448, .450), which expects images in [-1, 1];
- f_l: ImageNet VGG16 features after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision's
  `features[0:30]`: 3x3 convs with padding 1, ReLU, 2x2 max pools);
- channel normalisation x / (sqrt(sum_c x^2) + 1e-10); squared difference; the learned linear
  heads w_l (1x1 convs without bias, >= 0); mean over space; sum over the 5 layers.
Dropout before the heads is inactive (eval mode). This is `lpips.LPIPS(net='vgg')` (v0.1) and
taming-transformers' LPIPS, which GaussianEditor / GaussianAvatar-Editor use.

Input range: `lpips(normalize=False)` (default) feeds images as given; the network was trained on
images in [-1, 1]. For images in [0, 1] (renders, photos, edits) `lpips_images` takes the range
convention by name (`LPIPS_INPUTS`): "unit" feeds them unchanged, as the original does both in the
editor's loss (GaussianAvatar-Editor train.py: the [0, 1] render into its PerceptualLoss, whose
scaling layer expects [-1, 1]; inherited from GaussianEditor) and in GaussianAvatars' metrics.py
(lpipsPyTorch on torchvision `to_tensor` images); "signed" maps them to [-1, 1] first (lpips'
`normalize=True`, the range the network was trained for).

Weights come from local files only: torchvision's `vgg16-397923af.pth` (the trunk) and the LPIPS
heads `vgg.pth` (v0.1, shipped inside the `lpips` pip package and in richzhang/PerceptualSimilarity;
md5 d507d7349b931f0638a25a48a722f98a), read without torch; or one `lpips_vgg.safetensors` written
by `gaedit convert-weights --kind lpips`.
"""

from __future__ import annotations

import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.errors import InputError
from gaedit_jax.nets.hf_weights import WeightsError, read_tensors

# torchvision vgg16 `features` indices of the 13 convolutions, and the pools after conv 2, 4, 7, 10
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
_TAPS = (1, 3, 6, 9, 12)  # conv index (0-based among the 13) whose ReLU output is tapped
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def _conv(x, w, b):
  w, b = w.astype(x.dtype), b.astype(x.dtype)  # the compute dtype is the input's
  y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y + b)


def _pool(x):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def vgg16_features(params: dict, x: jax.Array) -> list[jax.Array]:
  """relu1_2 .. relu5_3 of VGG16 for NHWC input (already scaled)."""
  feats = []
  for i, layer in enumerate(params["features"]):
    if i in (2, 4, 7, 10):
      x = _pool(x)
    x = _conv(x, layer["kernel"], layer["bias"])
    if i in _TAPS:
      feats.append(x)
  return feats


def _normalize(f, eps=1e-10):
  return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + eps)


def lpips(params: dict, x: jax.Array, y: jax.Array, *, normalize: bool = False, dtype=jnp.float32) -> jax.Array:
  """LPIPS-VGG distance per image: x, y [B,H,W,3] (or [H,W,3]) -> [B] (or scalar).

  Differentiable in x and y; jit it (or call it inside your jitted loss). x and y go through VGG
  as two batches, so a y that needs no gradient (a fixed target) costs no backward pass. `dtype`:
  the convolutions' compute dtype (bfloat16 halves their time on a GPU); the feature
  normalisation and the distances are float32, or float64 with float64 convolutions."""
  single = x.ndim == 3
  if single:
    x, y = x[None], y[None]
  if x.shape != y.shape or x.shape[-1] != 3:
    raise ValueError(f"lpips: x and y must be [B,H,W,3] of the same shape, got {x.shape} and {y.shape}")
  if normalize:
    x, y = 2.0 * x - 1.0, 2.0 * y - 1.0
  b = x.shape[0]
  acc = jnp.promote_types(dtype, jnp.float32)
  feats = lambda z: vgg16_features(params, ((z.astype(acc) - _SHIFT) / _SCALE).astype(dtype))
  total = jnp.zeros((b,), acc)
  for fx, fy, w in zip(feats(x), feats(y), params["lin"]):
    f0, f1 = _normalize(fx.astype(acc)), _normalize(fy.astype(acc))
    total = total + jnp.mean(jnp.sum((f0 - f1) ** 2 * w, axis=-1), axis=(1, 2))
  return total[0] if single else total


LPIPS_INPUTS = ("unit", "signed")


def lpips_images(params: dict, x: jax.Array, y: jax.Array, lpips_input: str = "unit", dtype=jnp.float32) -> jax.Array:
  """LPIPS-VGG of images in [0, 1] (x, y [B,H,W,3] or [H,W,3]) under a named input convention:
  "unit" (the original's: fed unchanged) or "signed" (rescaled to [-1, 1] first); `dtype` as `lpips`."""
  if lpips_input not in LPIPS_INPUTS:
    raise InputError(f"--lpips-input must be one of {LPIPS_INPUTS}, got {lpips_input!r}")
  return lpips(params, x, y, normalize=lpips_input == "signed", dtype=dtype)


# -------------------------------------------------------------------------------------------
# weights
# -------------------------------------------------------------------------------------------


def params_from_torch(vgg_state: dict[str, np.ndarray], lin_state: dict[str, np.ndarray], *, source: str = "") -> dict:
  """Build the parameter tree from torchvision-VGG16 and LPIPS-head state dicts (numpy)."""
  feats, missing = [], []
  for i, idx in enumerate(VGG16_CONV_INDICES):
    wk, bk = f"features.{idx}.weight", f"features.{idx}.bias"
    if wk not in vgg_state or bk not in vgg_state:
      missing.append(wk)
      continue
    w = np.asarray(vgg_state[wk], np.float32)
    cin = 3 if i == 0 else VGG16_CHANNELS[i - 1]
    if w.shape != (VGG16_CHANNELS[i], cin, 3, 3):
      raise WeightsError(f"{source}: {wk} has shape {w.shape}, VGG16 needs {(VGG16_CHANNELS[i], cin, 3, 3)}")
    feats.append({"kernel": w.transpose(2, 3, 1, 0), "bias": np.asarray(vgg_state[bk], np.float32)})
  lins = []
  for k, c in enumerate(LPIPS_CHANNELS):
    cands = [
      v
      for name, v in lin_state.items()
      if re.fullmatch(rf"(lin|lins\.|lin\.){k}\.model\.1\.weight|lin{k}\.weight", name)
    ]
    if not cands:
      missing.append(f"lin{k}.model.1.weight")
      continue
    w = np.asarray(cands[0], np.float32).reshape(-1)
    if w.shape != (c,):
      raise WeightsError(f"{source}: LPIPS head {k} has {w.shape[0]} channels, needs {c}")
    lins.append(w)
  if missing:
    raise WeightsError(f"{source}: missing LPIPS-VGG tensors: {missing}")
  return {"features": feats, "lin": lins}


def params_to_torch(params: dict) -> dict[str, np.ndarray]:
  """Inverse of `params_from_torch` (one flat dict, torchvision + lpips names)."""
  out = {}
  for idx, layer in zip(VGG16_CONV_INDICES, params["features"]):
    out[f"features.{idx}.weight"] = np.ascontiguousarray(np.asarray(layer["kernel"]).transpose(3, 2, 0, 1))
    out[f"features.{idx}.bias"] = np.asarray(layer["bias"])
  for k, w in enumerate(params["lin"]):
    out[f"lin{k}.model.1.weight"] = np.asarray(w).reshape(1, -1, 1, 1)
  return out


def _pick(folder: str, patterns: tuple[str, ...]) -> str | None:
  for pat in patterns:
    hits = sorted(glob.glob(os.path.join(folder, pat)))
    if hits:
      return hits[0]
  return None


def load_lpips(path: str | os.PathLike, lin_path: str | os.PathLike | None = None) -> dict:
  """LPIPS-VGG parameters from local files.

  `path`: a folder holding `lpips_vgg.safetensors` (ours), or torchvision's `vgg16*.pth` /
  `vgg16*.safetensors` plus the heads `vgg.pth`; or the VGG16 file itself with `lin_path`."""
  path = os.fspath(path)
  if os.path.isdir(path):
    combined = os.path.join(path, "lpips_vgg.safetensors")
    if os.path.isfile(combined):
      st = read_tensors([combined])
      return params_from_torch(st, st, source=combined)
    vgg = _pick(path, ("vgg16*.pth", "vgg16*.safetensors", "vgg16*.bin"))
    lin = os.fspath(lin_path) if lin_path else _pick(path, ("vgg.pth", "lpips_vgg*.pth", "lpips*.pth"))
    missing = []
    if vgg is None:
      missing.append("the VGG16 trunk (torchvision's vgg16-397923af.pth)")
    if lin is None:
      missing.append("the LPIPS heads (vgg.pth from the lpips package, v0.1)")
    if missing:
      raise WeightsError(f"{path}: missing {' and '.join(missing)} (or one lpips_vgg.safetensors)")
  else:
    if lin_path is None:
      raise WeightsError(f"{path}: pass the LPIPS head file (vgg.pth) as lin_path, or a folder")
    vgg, lin = path, os.fspath(lin_path)
  return params_from_torch(read_tensors([vgg]), read_tensors([lin]), source=f"{vgg} + {lin}")


def save_lpips(params: dict, path: str | os.PathLike) -> None:
  from safetensors.numpy import save_file

  save_file(params_to_torch(params), os.fspath(path))
