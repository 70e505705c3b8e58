"""Web splat formats: antimatter15's `.splat` and Niantic's `.spz` (version 3), written and read.

`.splat` (antimatter15/splat, its convert.py and main.js): no header; 32 bytes per Gaussian,
little-endian: position 3 x float32, scale 3 x float32 (the standard deviations, exp of the log
scale), RGBA 4 x uint8 (colour 0.5 + SH_C0 * sh_dc and alpha sigmoid(opacity_logit), times 255,
rounded, clamped to 0..255), rotation 4 x uint8 (the unit quaternion w,x,y,z as q*128+128, rounded,
clamped). Gaussians in descending size * alpha (exp(sum log_scale) * sigmoid(opacity_logit)), the
order that viewer's loader produces. No SH beyond the DC term, no axis convention in the file.

`.spz` (nianticlabs/spz, load-spz.cc; versions 1-3 are one gzip stream, version 4 is zstd streams,
which we neither write nor read): a 16-byte header (uint32 magic 0x5053474e "NGSP", uint32 version,
uint32 numPoints, uint8 shDegree, uint8 fractionalBits, uint8 flags (0x1 antialiased), uint8
reserved) then, for all points, each attribute in turn:
* positions: 3 x 24-bit two's-complement fixed point, `fractionalBits` = 12 (1/4096 m steps);
* alphas: uint8 round(sigmoid(opacity_logit) * 255);
* colours: 3 x uint8 round(sh_dc * 0.15 * 255 + 127.5) (the DC coefficient, not the colour);
* scales: 3 x uint8 round((log_scale + 10) * 16);
* rotations (version 3, "smallest three"): uint32 little-endian, 2 top bits the index (in x,y,z,w
  order) of the largest-magnitude component, made positive; then for the other three, in index
  order, a sign bit and a 9-bit magnitude round(|q_i| / sqrt(1/2) * 511);
  (version 2: 3 x uint8 of x,y,z of the w >= 0 quaternion, round(q * 127.5 + 127.5));
* SH rest: (d+1)^2-1 coefficients x 3 channels (channel innermost) as uint8 round(x*128)+128,
  rounded to buckets of 2^(8-bits) (5 bits for degree 1, 4 above, the library's defaults), clamped.
All values rounded half away from zero, as std::round. The coordinates are RUB (y up, z back, the
OpenGL / three.js convention); our world is RUB already (io/cloud.py), so nothing turns on write.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from gaedit_jax.errors import InputError
from gaedit_jax.io.cloud import AXES, SH_C0, GaussianCloud, atomic_write_bytes, convert_axes

SPLAT_ROW = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])
assert SPLAT_ROW.itemsize == 32

SPZ_MAGIC = 0x5053474E
SPZ_HEADER = struct.Struct("<IIIBBBB")
SPZ_COLOR_SCALE = 0.15
SPZ_FRACTIONAL_BITS = 12
SPZ_VERSIONS = (2, 3)
_SQRT1_2 = float(np.sqrt(0.5))


def _round(x: np.ndarray) -> np.ndarray:
  """Round half away from zero (std::round), not numpy's half to even."""
  x = np.asarray(x, np.float64)
  return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _u8(x: np.ndarray) -> np.ndarray:
  return np.clip(_round(x), 0, 255).astype(np.uint8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _logit_u8(a: np.ndarray) -> np.ndarray:
  """Opacity logit of an 8-bit alpha; 0 and 255 are read as 0.5/255 and 254.5/255 (the edges of
  their quantisation buckets) so the logit stays finite."""
  p = np.clip(np.asarray(a, np.float64) / 255.0, 0.5 / 255, 254.5 / 255)
  return np.log(p / (1 - p))


def _check_finite(cloud: GaussianCloud, path) -> None:
  for f in ("xyz", "log_scale", "quat", "opacity_logit", "sh_dc", "sh_rest"):
    v = getattr(cloud, f)
    if not np.isfinite(v).all():
      raise InputError(f"{path}: {f} holds non-finite values (NaN or inf); refusing to write")


# ------------------------------------------------------------------------------------------------
# .splat
# ------------------------------------------------------------------------------------------------


def splat_order(cloud: GaussianCloud) -> np.ndarray:
  """antimatter15's order: descending exp(sum log_scale) * sigmoid(opacity_logit) (stable)."""
  imp = np.exp(cloud.log_scale.astype(np.float64).sum(-1)) * _sigmoid(cloud.opacity_logit)
  return np.argsort(-imp, kind="stable")


def splat_bytes(cloud: GaussianCloud) -> bytes:
  """The .splat rows of a cloud (sorted by splat_order)."""
  c = cloud.take(splat_order(cloud))
  rows = np.zeros(c.num, SPLAT_ROW)
  rows["position"] = c.xyz
  rows["scale"] = np.exp(c.log_scale.astype(np.float64))
  rgb = 0.5 + SH_C0 * c.sh_dc.astype(np.float64)
  rows["rgba"] = _u8(np.concatenate([rgb, _sigmoid(c.opacity_logit)[:, None]], 1) * 255.0)
  q = c.quat.astype(np.float64)
  q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  rows["rot"] = _u8(q * 128.0 + 128.0)
  return rows.tobytes()


def save_splat(path: str | os.PathLike, cloud: GaussianCloud) -> Path:
  """Writes a .splat file (atomically)."""
  _check_finite(cloud, path)
  return atomic_write_bytes(path, [splat_bytes(cloud)])


def read_splat(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a .splat file: position [N,3], scale [N,3] (standard deviations), rgba [N,4] in [0,1],
  quat [N,4] (w,x,y,z as stored, (u - 128) / 128, not renormalised). InputError when the size is
  not a multiple of 32 bytes."""
  data = Path(path).read_bytes()
  if len(data) % SPLAT_ROW.itemsize:
    raise InputError(
      f"{path}: {len(data)} bytes is not a whole number of {SPLAT_ROW.itemsize}-byte .splat rows (truncated?)"
    )
  r = np.frombuffer(data, SPLAT_ROW)
  return dict(
    position=np.array(r["position"]),
    scale=np.array(r["scale"]),
    rgba=r["rgba"].astype(np.float32) / 255.0,
    quat=(r["rot"].astype(np.float32) - 128.0) / 128.0,
  )


# ------------------------------------------------------------------------------------------------
# .spz
# ------------------------------------------------------------------------------------------------


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
  b = 1 << (8 - bits)
  q = _round(np.asarray(x, np.float64) * 128.0) + 128.0
  q = np.fix((q + b // 2) / b) * b  # C integer division truncates
  return np.clip(q, 0, 255).astype(np.uint8)


def _pack_smallest_three(q: np.ndarray) -> np.ndarray:
  """[N,4] unit quaternions in x,y,z,w order -> [N,4] bytes (spz version 3)."""
  n = q.shape[0]
  big = np.argmax(np.abs(q), -1)  # first index of the largest magnitude, as the library's scan
  neg = q[np.arange(n), big] < 0
  comp = big.astype(np.uint32)
  for i in range(4):
    keep = big != i
    negbit = ((q[:, i] < 0) ^ neg).astype(np.uint32)
    mag = np.minimum(np.floor(511.0 * (np.abs(q[:, i]) / _SQRT1_2) + 0.5), 511).astype(np.uint32)
    comp = np.where(keep, (comp << 10) | (negbit << 9) | mag, comp)
  return comp.astype("<u4").view(np.uint8).reshape(n, 4)


def _unpack_smallest_three(r: np.ndarray) -> np.ndarray:
  comp = r.reshape(-1, 4).copy().view("<u4").reshape(-1).astype(np.uint32)
  n = comp.shape[0]
  big = (comp >> 30).astype(np.int64)
  q = np.zeros((n, 4), np.float64)
  for i in (3, 2, 1, 0):
    take = big != i
    mag = (comp & 511).astype(np.float64)
    sign = np.where((comp >> 9) & 1, -1.0, 1.0)
    q[:, i] = np.where(take, sign * _SQRT1_2 * mag / 511.0, 0.0)
    comp = np.where(take, comp >> 10, comp)
  q[np.arange(n), big] = np.sqrt(np.maximum(0.0, 1.0 - (q**2).sum(-1)))
  return q


def _pack_first_three(q: np.ndarray) -> np.ndarray:
  """[N,4] unit quaternions x,y,z,w -> [N,3] bytes of x,y,z of the w >= 0 one (spz version 2)."""
  s = np.where(q[:, 3:] < 0, -127.5, 127.5)
  return _u8(q[:, :3] * s + 127.5)


def _unpack_first_three(r: np.ndarray) -> np.ndarray:
  xyz = r.reshape(-1, 3).astype(np.float64) / 127.5 - 1.0
  w = np.sqrt(np.maximum(0.0, 1.0 - (xyz**2).sum(-1, keepdims=True)))
  return np.concatenate([xyz, w], -1)


def spz_payload(
  cloud: GaussianCloud,
  *,
  version: int = 3,
  sh1_bits: int = 5,
  sh_rest_bits: int = 4,
  antialiased: bool = False,
  path: str | os.PathLike = "",
) -> bytes:
  """The uncompressed spz stream (header + attributes) of a cloud already in RUB axes."""
  if version not in SPZ_VERSIONS:
    raise InputError(f"{path}: spz version {version}: expected one of {SPZ_VERSIONS} (gzip streams)")
  for name, b in (("sh1_bits", sh1_bits), ("sh_rest_bits", sh_rest_bits)):
    if not 1 <= b <= 8:
      raise InputError(f"{path}: spz {name} {b}: expected 1..8")
  deg = cloud.sh_degree
  if deg > 4:
    raise InputError(f"{path}: spz holds SH degrees 0..4, the cloud has degree {deg}")
  n = cloud.num
  fixed = _round(cloud.xyz.astype(np.float64) * (1 << SPZ_FRACTIONAL_BITS))
  lim = 1 << 23
  if np.any(np.abs(fixed) >= lim):
    far = float(np.abs(cloud.xyz).max())
    raise InputError(
      f"{path}: a position {far:g} m from the origin does not fit spz's 24-bit fixed point "
      f"(|x| < {lim / (1 << SPZ_FRACTIONAL_BITS):g} m)"
    )
  pos = fixed.astype(np.int32).astype("<i4").view(np.uint8).reshape(n, 3, 4)[:, :, :3]  # low 3 bytes (LE)
  alphas = _u8(_sigmoid(cloud.opacity_logit) * 255.0)
  colors = _u8(cloud.sh_dc.astype(np.float64) * (SPZ_COLOR_SCALE * 255.0) + 0.5 * 255.0)
  scales = _u8((cloud.log_scale.astype(np.float64) + 10.0) * 16.0)
  q = cloud.quat.astype(np.float64)
  q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  qxyzw = np.concatenate([q[:, 1:], q[:, :1]], -1)
  rots = _pack_smallest_three(qxyzw) if version >= 3 else _pack_first_three(qxyzw)
  sh = cloud.sh_rest.astype(np.float64)  # [N,M,3], channel innermost as spz stores it
  shq = np.zeros(sh.shape, np.uint8)
  if sh.shape[1]:
    shq[:, :3] = _quantize_sh(sh[:, :3], sh1_bits)
    shq[:, 3:] = _quantize_sh(sh[:, 3:], sh_rest_bits)
  head = SPZ_HEADER.pack(SPZ_MAGIC, version, n, deg, SPZ_FRACTIONAL_BITS, 0x1 if antialiased else 0, 0)
  return b"".join(a.tobytes() for a in (np.frombuffer(head, np.uint8), pos, alphas, colors, scales, rots, shq))


def save_spz(
  path: str | os.PathLike,
  cloud: GaussianCloud,
  *,
  axes: str = "rub",
  version: int = 3,
  sh1_bits: int = 5,
  sh_rest_bits: int = 4,
  antialiased: bool = False,
) -> Path:
  """Writes a gzip'd .spz (atomically). `axes`: the convention the cloud is in (AXES); it is turned
  to spz's RUB."""
  _check_finite(cloud, path)
  rub = convert_axes(cloud, axes, "rub")
  raw = spz_payload(
    rub, version=version, sh1_bits=sh1_bits, sh_rest_bits=sh_rest_bits, antialiased=antialiased, path=path
  )
  return atomic_write_bytes(path, [gzip.compress(raw, compresslevel=6, mtime=0)])


def _spz_sizes(n: int, deg: int, version: int) -> list[int]:
  m = (deg + 1) ** 2 - 1
  return [9 * n, n, 3 * n, 3 * n, (4 if version >= 3 else 3) * n, 3 * m * n]


def read_spz_header(path: str | os.PathLike) -> dict:
  """The header fields of a gzip'd spz: version, num_points, sh_degree, fractional_bits, antialiased."""
  return _read_spz(path, header_only=True)[0]


def _read_spz(path, header_only: bool = False):
  raw = Path(path).read_bytes()
  if raw[:4] == struct.pack("<I", SPZ_MAGIC):
    raise InputError(f"{path}: spz version 4 (zstd streams) is not supported; re-save it as version 3")
  if raw[:2] != b"\x1f\x8b":
    raise InputError(f"{path}: not an spz file (neither a gzip stream nor the NGSP magic)")
  d = zlib.decompressobj(16 + zlib.MAX_WBITS)
  try:
    head = d.decompress(raw, SPZ_HEADER.size)
  except zlib.error as e:
    raise InputError(f"{path}: damaged gzip stream ({e})") from None
  if len(head) < SPZ_HEADER.size:
    raise InputError(f"{path}: truncated: no complete 16-byte spz header")
  magic, version, n, deg, frac, flags, _ = SPZ_HEADER.unpack(head)
  if magic != SPZ_MAGIC:
    raise InputError(f"{path}: header magic {magic:#010x}, expected {SPZ_MAGIC:#010x} ('NGSP')")
  if version not in (1, 2, 3):
    raise InputError(f"{path}: spz version {version}: expected 2 or 3 (gzip)")
  if version == 1:
    raise InputError(f"{path}: spz version 1 (float16 positions, never released) is not supported")
  if deg > 4:
    raise InputError(f"{path}: shDegree {deg}: expected 0..4")
  if frac > 23:
    raise InputError(f"{path}: fractionalBits {frac}: expected 0..23")
  hdr = dict(version=version, num_points=n, sh_degree=deg, fractional_bits=frac, antialiased=bool(flags & 1))
  if header_only:
    return hdr, None
  sizes = _spz_sizes(n, deg, version)
  need = sum(sizes)
  try:
    body = d.decompress(d.unconsumed_tail, need + 1)  # never inflates more than the header promises
  except zlib.error as e:
    raise InputError(f"{path}: damaged gzip stream ({e})") from None
  if len(body) < need:
    raise InputError(
      f"{path}: truncated: the header says {n} points ({need} bytes of data), the stream holds {len(body)}"
    )
  return hdr, body


def read_spz(path: str | os.PathLike, *, axes: str = "rub") -> GaussianCloud:
  """Reads a gzip'd .spz (versions 2, 3) into a GaussianCloud in the convention `axes` (the file is
  RUB). Opacity logits of alpha 0 / 255 are those of 0.5/255 and 254.5/255 (finite). Trailing bytes
  (extension records) are ignored."""
  hdr, body = _read_spz(path)
  n, deg, version, frac = hdr["num_points"], hdr["sh_degree"], hdr["version"], hdr["fractional_bits"]
  parts, o = [], 0
  for s in _spz_sizes(n, deg, version):
    parts.append(np.frombuffer(body, np.uint8, s, o))
    o += s
  pos_b, alpha_b, color_b, scale_b, rot_b, sh_b = parts
  p = pos_b.reshape(n, 3, 3).astype(np.int32)
  fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
  fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
  q = _unpack_smallest_three(rot_b) if version >= 3 else _unpack_first_three(rot_b)
  m = (deg + 1) ** 2 - 1
  cloud = GaussianCloud(
    xyz=fixed.astype(np.float64) / (1 << frac),
    log_scale=scale_b.reshape(n, 3).astype(np.float64) / 16.0 - 10.0,
    quat=np.concatenate([q[:, 3:], q[:, :3]], -1),
    opacity_logit=_logit_u8(alpha_b),
    sh_dc=(color_b.reshape(n, 3).astype(np.float64) / 255.0 - 0.5) / SPZ_COLOR_SCALE,
    sh_rest=(sh_b.reshape(n, m, 3).astype(np.float64) - 128.0) / 128.0,
  )
  if axes not in AXES:
    raise InputError(f"axes {axes!r}: expected one of {', '.join(AXES)}")
  return convert_axes(cloud, "rub", axes)


__all__ = [
  "SPLAT_ROW",
  "SPZ_COLOR_SCALE",
  "SPZ_FRACTIONAL_BITS",
  "read_splat",
  "read_spz",
  "read_spz_header",
  "save_splat",
  "save_spz",
  "splat_bytes",
  "splat_order",
  "spz_payload",
]
