"""Image plumbing shared by the editors and metrics: PyTorch-exact resizing, pad-to-square, PNG I/O.

Resizing is written as two small interpolation matrices (rows, columns) built in numpy from the
static sizes, applied with one einsum: exact PyTorch `F.interpolate` semantics (which
`jax.image.resize` does not have: it antialiases when downsampling and uses Keys a=-0.5 for cubic),
differentiable, jit-friendly.

- `bilinear`, `align_corners=True`: src = dst * (in - 1) / (out - 1).
- `bilinear`, `align_corners=False`: src = (dst + 0.5) * in / out - 0.5, clamped at 0.
- `bicubic` (`align_corners=False`): same src, cubic convolution with A = -0.75, indices clamped
  to the border (PyTorch's `upsample_bicubic2d`, antialias off: CLIP metrics, FIELD.md 3.1).

Images are channels-last `[..., H, W, C]` floats.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def interp_matrix(in_size: int, out_size: int, mode: str = "bilinear", align_corners: bool = False) -> np.ndarray:
  """[out_size, in_size] float64 weights of PyTorch's 1-D interpolation."""
  # Source coordinates in float32 arithmetic, as PyTorch computes them for float32 images.
  f32 = np.float32
  w = np.zeros((out_size, in_size), np.float64)
  dst = np.arange(out_size, dtype=f32)
  if align_corners:
    scale = f32((in_size - 1) / (out_size - 1)) if out_size > 1 else f32(0)
    src = scale * dst
  else:
    src = f32(in_size / out_size) * (dst + f32(0.5)) - f32(0.5)
  if mode == "bilinear":
    if not align_corners:
      src = np.maximum(src, f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0.astype(f32)).astype(np.float64)
    np.add.at(w, (np.arange(out_size), i0), 1.0 - lam)
    np.add.at(w, (np.arange(out_size), i1), lam)
  elif mode == "bicubic":
    i = np.floor(src).astype(np.int64)
    t = (src - i.astype(f32)).astype(np.float64)
    a = -0.75

    def near(x):  # |x| <= 1
      return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
      return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    coeffs = (far(t + 1), near(t), near(1 - t), far(2 - t))
    for k, c in enumerate(coeffs):
      idx = np.clip(i - 1 + k, 0, in_size - 1)
      np.add.at(w, (np.arange(out_size), idx), c)
  else:
    raise ValueError(f"unknown interpolation mode {mode!r} (bilinear or bicubic)")
  return w


def resize(
  images: jax.Array, height: int, width: int, mode: str = "bilinear", align_corners: bool = False
) -> jax.Array:
  """Resize `[..., H, W, C]` to `[..., height, width, C]` exactly as torch's F.interpolate."""
  h, w = images.shape[-3], images.shape[-2]
  if (h, w) == (height, width) and (mode == "bilinear" or not align_corners):
    return images  # every mode above is the identity at equal size
  wy = jnp.asarray(interp_matrix(h, height, mode, align_corners), jnp.float32)
  wx = jnp.asarray(interp_matrix(w, width, mode, align_corners), jnp.float32)
  out = jnp.einsum("oh,...hwc,pw->...opc", wy, images.astype(jnp.float32), wx, precision=jax.lax.Precision.HIGHEST)
  return out.astype(images.dtype)


def square_padding(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """((top, bottom), (left, right)) that pad the short side to a square, half on each side.

  The original pads 802x550 renders by (802 - 550) // 2 = 126 columns on each side (METHOD §5.3);
  an odd difference puts the extra row/column at the end.
  """
  d = abs(height - width)
  a, b = d // 2, d - d // 2
  return ((a, b), (0, 0)) if height < width else ((0, 0), (a, b))


def to_square(images: jax.Array, size: int = 512, pad_value: float = 1.0) -> jax.Array:
  """METHOD §5.3: pad `[..., H, W, 3]` to a square with `pad_value` (white), then bilinear-resize
  (align_corners=True) to `size` x `size`. Differentiable; used for both the render and the photo."""
  h, w = images.shape[-3], images.shape[-2]
  (t, b), (l, r) = square_padding(h, w)
  pad = [(0, 0)] * (images.ndim - 3) + [(t, b), (l, r), (0, 0)]
  sq = jnp.pad(images, pad, constant_values=pad_value)
  return resize(sq, size, size, "bilinear", align_corners=True)


def from_square(images: jax.Array, height: int, width: int) -> jax.Array:
  """Inverse of `to_square`: resize `[..., S, S, C]` to the padded square (bilinear,
  align_corners=True) and crop the padding away, giving `[..., height, width, C]`."""
  m = max(height, width)
  sq = resize(images, m, m, "bilinear", align_corners=True)
  (t, _), (l, _) = square_padding(height, width)
  return sq[..., t : t + height, l : l + width, :]
