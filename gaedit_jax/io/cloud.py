"""World-space Gaussians as exchange files store them, and the axis conventions of those files.

`GaussianCloud` is what every world-space export writes (3DGS PLY, antimatter15's .splat, Niantic's
.spz): numpy float32 arrays, one row per active Gaussian, parameters before activation.

Our world frame is the dataset's (GaussianAvatars / VHAP exports, the synthetic data): FLAME's frame,
metres, y up, the face looking along +z (towards the frontal camera), x to the viewer's right when
facing the avatar. Named as the spz library names conventions (viewer's Right/Left, Up/Down,
Back/Front for +x, +y, +z) that is RUB (OpenGL, three.js). 3DGS scenes reconstructed from COLMAP are
y down (RDF, the OpenCV camera frame), and PLY viewers built for them (SuperSplat, antimatter15's
viewer) assume it: `convert_axes(cloud, "rub", "rdf")` turns the cloud 180 degrees about x so
the head is upright there. Positions, orientations and the SH coefficients all turn with it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gaedit_jax.errors import InputError
from gaedit_jax.quaternion import quat_multiply
from gaedit_jax.rig import Avatar, FaceFrames

AXES = ("rub", "rdf")
"""Axis conventions we write: rub = our world unchanged (y up, +z out of the face); rdf = the same
turned 180 degrees about x (y down, +z into the face), as COLMAP-born 3DGS scenes are."""

SH_C0 = 0.28209479177387814
"""Degree-0 SH basis constant: colour = 0.5 + SH_C0 * sh_dc (3DGS)."""


@dataclasses.dataclass(frozen=True)
class GaussianCloud:
  """World-space Gaussians: xyz [N,3] (metres), log_scale [N,3] (natural log of the standard
  deviations, metres), quat [N,4] (w,x,y,z, unit norm), opacity_logit [N] (opacity =
  sigmoid(opacity_logit)), sh_dc [N,3], sh_rest [N,M,3] (M = (d+1)^2 - 1 coefficients in 3DGS
  order, the colour channel innermost). All float32."""

  xyz: np.ndarray
  log_scale: np.ndarray
  quat: np.ndarray
  opacity_logit: np.ndarray
  sh_dc: np.ndarray
  sh_rest: np.ndarray

  def __post_init__(self):
    for f in dataclasses.fields(self):
      object.__setattr__(self, f.name, np.ascontiguousarray(np.asarray(getattr(self, f.name), np.float32)))

  @property
  def num(self) -> int:
    return int(self.xyz.shape[0])

  @property
  def sh_degree(self) -> int:
    m = self.sh_rest.shape[1] + 1
    d = int(round(np.sqrt(m))) - 1
    if (d + 1) ** 2 != m:
      raise ValueError(f"sh_rest holds {m - 1} coefficients, not (d+1)^2-1 for any degree d")
    return d

  @property
  def opacity(self) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-self.opacity_logit.astype(np.float64)))).astype(np.float32)

  def take(self, idx) -> "GaussianCloud":
    """The Gaussians idx (an index array or a mask), in that order."""
    return GaussianCloud(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


def pad_sh(sh_rest: np.ndarray, sh_degree: int | None) -> np.ndarray:
  """sh_rest [N,M,3] zero-padded or cut to degree sh_degree (None: unchanged)."""
  if sh_degree is None:
    return sh_rest
  k = (sh_degree + 1) ** 2 - 1
  n = sh_rest.shape[0]
  return np.concatenate([sh_rest, np.zeros((n, max(k - sh_rest.shape[1], 0), 3), sh_rest.dtype)], 1)[:, :k]


def world_cloud(avatar: Avatar, frames: FaceFrames, *, sh_degree: int | None = None) -> GaussianCloud:
  """The active Gaussians of `avatar` placed by one posed mesh's triangle frames (unbatched:
  center [F,3], rotation [F,3,3], quat [F,4], scale k [F]): mu = k R mu_local + T, s = k s_local,
  q = q_frame * q_local (METHOD §2.2). The SH coefficients stay in the triangle's local frame, as
  GaussianAvatars' viewer leaves them."""
  m = np.asarray(avatar.active).astype(bool)
  g = lambda f: np.asarray(getattr(avatar, f))[m]
  b = g("binding")
  rot = np.asarray(frames.rotation)[b]
  k = np.asarray(frames.scale)[b][:, None]
  xyz = k * np.einsum("nab,nb->na", rot, g("xyz")) + np.asarray(frames.center)[b]
  ql = g("rotation")
  ql = ql / np.maximum(np.linalg.norm(ql, axis=-1, keepdims=True), 1e-12)
  q = np.asarray(quat_multiply(jnp.asarray(np.asarray(frames.quat)[b]), jnp.asarray(ql)))
  q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  return GaussianCloud(
    xyz=xyz,
    log_scale=g("log_scale") + np.log(k),
    quat=q,
    opacity_logit=g("opacity_logit"),
    sh_dc=g("sh_dc").reshape(-1, 3),
    sh_rest=pad_sh(g("sh_rest"), sh_degree),
  )


# Parity of each 3DGS SH basis function (degrees 1..4, coefficient order of sh_rest) in x, y, z:
# flipping the sign of axis a multiplies a coefficient by -1 when its basis is odd in a (the
# renderer stops at degree 3; degree 4 is here for spz files, which may hold it).
_SH_PARITY = (
  # degree 1: y, z, x
  (0, 1, 0),
  (0, 0, 1),
  (1, 0, 0),
  # degree 2: xy, yz, 3z^2-r^2, xz, x^2-y^2
  (1, 1, 0),
  (0, 1, 1),
  (0, 0, 0),
  (1, 0, 1),
  (0, 0, 0),
  # degree 3: y(3x^2-y^2), xyz, y(4z^2-x^2-y^2), z(2z^2-3x^2-3y^2), x(4z^2-x^2-y^2), z(x^2-y^2), x(x^2-3y^2)
  (0, 1, 0),
  (1, 1, 1),
  (0, 1, 0),
  (0, 0, 1),
  (1, 0, 0),
  (0, 0, 1),
  (1, 0, 0),
  # degree 4: xy(x^2-y^2), yz(3x^2-y^2), xy(7z^2-r^2), yz(7z^2-3r^2), even, xz(7z^2-3r^2), even, xz(x^2-3y^2), even
  (1, 1, 0),
  (0, 1, 1),
  (1, 1, 0),
  (0, 1, 1),
  (0, 0, 0),
  (1, 0, 1),
  (0, 0, 0),
  (1, 0, 1),
  (0, 0, 0),
)


def sh_flip_signs(num_coeffs: int, flip: tuple[float, float, float]) -> np.ndarray:
  """Sign [M] of each sh_rest coefficient when the axes are multiplied by flip = (+-1, +-1, +-1)."""
  if num_coeffs > len(_SH_PARITY):
    raise ValueError(f"{num_coeffs} SH rest coefficients: axis flips are tabulated up to degree 4")
  f = np.asarray(flip, np.float32)
  return np.array([np.prod(np.where(np.asarray(p, bool), f, 1.0)) for p in _SH_PARITY[:num_coeffs]], np.float32)


_FLIP = {("rub", "rdf"): (1.0, -1.0, -1.0), ("rdf", "rub"): (1.0, -1.0, -1.0)}


def convert_axes(cloud: GaussianCloud, src: str, dst: str) -> GaussianCloud:
  """The cloud in the axis convention dst (AXES) given it is in src. rub <-> rdf is the rotation
  R = diag(1,-1,-1) (180 degrees about x): positions R p, orientations R Rq R (quaternion (w, x, -y,
  -z): the same covariance R Sigma R^T, axes kept in scale order), SH coefficients times the parity
  signs of their basis under y -> -y, z -> -z (colour seen along R d = colour seen along d before)."""
  for a in (src, dst):
    if a not in AXES:
      raise InputError(f"axes {a!r}: expected one of {', '.join(AXES)}")
  if src == dst:
    return cloud
  f = np.asarray(_FLIP[(src, dst)], np.float32)
  fq = np.array([1.0, f[1] * f[2], f[0] * f[2], f[0] * f[1]], np.float32)  # w kept; xyz as axial vectors
  return dataclasses.replace(
    cloud,
    xyz=cloud.xyz * f,
    quat=cloud.quat * fq,
    sh_rest=cloud.sh_rest * sh_flip_signs(cloud.sh_rest.shape[1], tuple(f))[None, :, None],
  )


def atomic_write_bytes(path: str | os.PathLike, chunks) -> Path:
  """Writes the byte strings `chunks` to path through path.tmp + os.replace (no half-written file
  under the final name); the folder is created. OSError (unwritable folder, full disk) becomes
  InputError naming the path."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
      for c in chunks:
        f.write(c)
    os.replace(tmp, path)
  except OSError as e:
    if tmp.exists():
      tmp.unlink()
    raise InputError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None
  return path


__all__ = [
  "AXES",
  "SH_C0",
  "GaussianCloud",
  "atomic_write_bytes",
  "convert_axes",
  "pad_sh",
  "sh_flip_signs",
  "world_cloud",
]
