"""Quaternions (w, x, y, z; Hamilton convention): products and conversions to and from rotation
matrices, shared by the rig (triangle frames, posing) and the rasterizer's reference renderer."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS2 = 1e-20  # squared norms are clamped at 1e-20, as GaussianAvatars does (METHOD §2.2)


def _normalize(v: jax.Array) -> jax.Array:
  return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), _EPS2))


def quat_multiply(a: jax.Array, b: jax.Array) -> jax.Array:
  """Hamilton product a (x) b of quaternions [...,4] (wxyz): the rotation of b, then of a."""
  aw, ax, ay, az = jnp.moveaxis(a, -1, 0)
  bw, bx, by, bz = jnp.moveaxis(b, -1, 0)
  return jnp.stack(
    [
      aw * bw - ax * bx - ay * by - az * bz,
      aw * bx + ax * bw + ay * bz - az * by,
      aw * by - ax * bz + ay * bw + az * bx,
      aw * bz + ax * by - ay * bx + az * bw,
    ],
    axis=-1,
  )


def quat_to_matrix(q: jax.Array) -> jax.Array:
  """Quaternion [...,4] (wxyz, normalised here) -> rotation matrix [...,3,3]."""
  w, x, y, z = jnp.moveaxis(_normalize(q), -1, 0)
  return jnp.stack(
    [
      1 - 2 * (y * y + z * z),
      2 * (x * y - w * z),
      2 * (x * z + w * y),
      2 * (x * y + w * z),
      1 - 2 * (x * x + z * z),
      2 * (y * z - w * x),
      2 * (x * z - w * y),
      2 * (y * z + w * x),
      1 - 2 * (x * x + y * y),
    ],
    axis=-1,
  ).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(m: jax.Array) -> jax.Array:
  """Rotation matrix [...,3,3] -> unit quaternion [...,4] (wxyz, w >= 0).

  Of the four algebraically equivalent formulas it uses the best conditioned one per matrix (the
  largest of |w|,|x|,|y|,|z|), so values and gradients are stable for every rotation.
  """
  m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
  # 4 * (w^2, x^2, y^2, z^2)
  sq = jnp.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1)
  root = jnp.sqrt(jnp.maximum(sq, 1e-12))  # 2|component|
  cands = jnp.stack(
    [
      jnp.stack([root[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1) / (2 * root[..., 0:1]),
      jnp.stack([m21 - m12, root[..., 1] ** 2, m10 + m01, m02 + m20], -1) / (2 * root[..., 1:2]),
      jnp.stack([m02 - m20, m10 + m01, root[..., 2] ** 2, m21 + m12], -1) / (2 * root[..., 2:3]),
      jnp.stack([m10 - m01, m20 + m02, m21 + m12, root[..., 3] ** 2], -1) / (2 * root[..., 3:4]),
    ],
    axis=-2,
  )  # [...,4,4]
  best = jnp.argmax(sq, axis=-1)
  q = jnp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
  q = jnp.where(q[..., :1] < 0, -q, q)
  return _normalize(q)


__all__ = ["quat_multiply", "quat_to_matrix", "matrix_to_quat"]
