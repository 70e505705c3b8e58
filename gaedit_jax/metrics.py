"""Image metrics: PSNR, SSIM (as GaussianAvatars), and the CLIP editing metrics CLIP-S / CLIP-C.

Images are float arrays in [0, 1], channels-last: [H,W,3] or batches [B,H,W,3]. PSNR and SSIM
are jnp functions (jit / vmap / grad friendly); LPIPS lives in `gaedit_jax.nets.lpips`.

CLIP metrics follow FIELD.md 3.1-3.2 (the `ClipSimilarity` code shared by InstructPix2Pix,
Instruct-NeRF2NeRF, GaussianEditor and GaussianAvatar-Editor), on unit-norm embeddings E_I, E_T
from `gaedit_jax.nets.clip`:
- CLIP-S (direction similarity), per pair: cos(E_I(edit) - E_I(source), E_T(target) - E_T(source)),
  averaged over the pairs;
- CLIP-C (direction consistency), over consecutive frames i, i+1 of a sequence:
  cos(E_I(e_i) - E_I(o_i), E_I(e_{i+1}) - E_I(o_{i+1})), averaged; by default the last frame pairs
  with the first (the public script's `paths0[1:] + paths0[:1]`).
The CLIP variant is part of every result (papers differ: ViT-L/14 in the metric code's default,
ViT-B/32 in IN2N's example).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------
# PSNR / SSIM (GaussianAvatars / 3DGS `utils/image_utils.py`, `utils/loss_utils.py`)
# ---------------------------------------------------------------------------------------------


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per image: 20 log10(1 / sqrt(mean((x - y)^2))). [H,W,C] -> scalar, [B,H,W,C] -> [B]."""
  d = (jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)) ** 2
  mse = jnp.mean(d, axis=(-3, -2, -1))
  return 20.0 * jnp.log10(1.0 / jnp.sqrt(mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2.0 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def _shifted_blur(x: jax.Array, window: tuple[float, ...]) -> jax.Array:
  k = len(window)
  pad = k // 2
  for axis in (1, 2):
    n = x.shape[axis]
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    xp = jnp.pad(x, widths)
    x = functools.reduce(jnp.add, [w * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i, w in enumerate(window)])
  return x


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _blur(x: jax.Array, window: tuple[float, ...]) -> jax.Array:
  """Separable depthwise Gaussian filter with zero padding (= F.conv2d(padding=5, groups=C)) over
  the H and W axes of [B,H,W,C], as weighted sums of shifted slices, which XLA fuses into one
  elementwise kernel per axis (a grouped convolution ran cuDNN's slow direct kernel: most of a
  16-view train step on a GPU, experiments/profile_step.py). The filter is linear and, with a
  symmetric window and zero padding, its own transpose: the backward pass is the same blur."""
  return _shifted_blur(x, window)


_blur.defvjp(lambda x, window: (_shifted_blur(x, window), None), lambda window, _, g: (_shifted_blur(g, window),))


def ssim(x: jax.Array, y: jax.Array, window_size: int = 11, sigma: float = 1.5) -> jax.Array:
  """SSIM as GaussianAvatars computes it: 11x11 Gaussian window (sigma 1.5), zero padding,
  C1 = 0.01^2, C2 = 0.03^2, mean of the SSIM map. [H,W,C] -> scalar, [B,H,W,C] -> [B]."""
  single = x.ndim == 3
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if single:
    x, y = x[None], y[None]
  win = tuple(float(w) for w in _gaussian_window(window_size, sigma))
  mu1, mu2 = _blur(x, win), _blur(y, win)
  mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
  s1 = _blur(x * x, win) - mu1_sq
  s2 = _blur(y * y, win) - mu2_sq
  s12 = _blur(x * y, win) - mu12
  c1, c2 = 0.01**2, 0.03**2
  m = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
  out = jnp.mean(m, axis=(1, 2, 3))
  return out[0] if single else out


# ---------------------------------------------------------------------------------------------
# CLIP metrics
# ---------------------------------------------------------------------------------------------


def _cos(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """torch.nn.functional.cosine_similarity along the last axis."""
  num = jnp.sum(a * b, axis=-1)
  den = jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), eps)
  return num / den


def clip_direction_similarity(e_src: jax.Array, e_edit: jax.Array, t_src: jax.Array, t_tgt: jax.Array) -> jax.Array:
  """Per-pair CLIP-S from unit-norm embeddings: e_src, e_edit [N,D]; t_src, t_tgt [D] or [N,D]."""
  return _cos(e_edit - e_src, jnp.broadcast_to(t_tgt - t_src, e_src.shape))


def clip_direction_consistency(e_src: jax.Array, e_edit: jax.Array, wrap: bool = True) -> jax.Array:
  """Per-step CLIP-C from unit-norm embeddings of a sequence [N,D] (N >= 2): [N] with wrap, else [N-1]."""
  d = e_edit - e_src
  nxt = jnp.roll(d, -1, axis=0) if wrap else d[1:]
  return _cos(d if wrap else d[:-1], nxt)


@dataclasses.dataclass
class ClipEditMetrics:
  """CLIP metrics of one edit; `clip_variant` says which CLIP produced them."""

  clip_variant: str
  clip_direction_similarity: float  # CLIP-S
  clip_direction_consistency: float  # CLIP-C
  clip_image_similarity: float  # cos(E_I(source), E_I(edit)), IP2P's x-axis
  clip_score_target: float  # cos(E_I(edit), E_T(target caption))
  num_images: int
  source_caption: str
  target_caption: str
  consistency_wrap: bool

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def clip_edit_metrics(
  clip, source_images, edited_images, source_caption: str, target_caption: str, *, wrap: bool = True
) -> ClipEditMetrics:
  """CLIP-S and CLIP-C of an edit.

  `clip`: a `gaedit_jax.nets.clip.ClipModel`; `source_images`, `edited_images`: [N,H,W,3] in
  [0,1], the same views / frames in the same order (consecutive frames for CLIP-C)."""
  src = np.asarray(source_images, np.float32)
  edt = np.asarray(edited_images, np.float32)
  if src.shape[0] != edt.shape[0] or src.ndim != 4:
    raise ValueError(f"source and edited images must be [N,H,W,3] with the same N; got {src.shape}, {edt.shape}")
  e_src, e_edt = clip.encode_images(src), clip.encode_images(edt)
  t = clip.encode_texts([source_caption, target_caption])
  cs = clip_direction_similarity(e_src, e_edt, t[0], t[1])
  cc = clip_direction_consistency(e_src, e_edt, wrap) if len(src) > 1 else jnp.full((1,), jnp.nan)
  return ClipEditMetrics(
    clip_variant=clip.variant,
    clip_direction_similarity=float(jnp.mean(cs)),
    clip_direction_consistency=float(jnp.mean(cc)),
    clip_image_similarity=float(jnp.mean(_cos(e_src, e_edt))),
    clip_score_target=float(jnp.mean(_cos(e_edt, jnp.broadcast_to(t[1], e_edt.shape)))),
    num_images=int(src.shape[0]),
    source_caption=source_caption,
    target_caption=target_caption,
    consistency_wrap=wrap,
  )
