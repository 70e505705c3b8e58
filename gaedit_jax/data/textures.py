"""Procedural textures of the synthetic head, evaluated per pixel at canonical (template) positions.

Solid textures: the colour of a surface point is a function of where the point sits on the
*canonical* head (interpolated template coordinates), so it sticks to the skin under any pose,
expression or shape. `albedo(...)` returns the base colour of each point for a texture name:

* "skin": skin with mottling and blush, hair with strands, brows, lips, green irises, mouth interior
  with a tongue, teeth with gums;
* "facepaint": the same head with face paint (a blue band across the eyes, white cheek stripes, a
  gold diamond on the forehead, dark lips), the ground truth an "Apply face paint" edit should reach.

`shade(...)` adds fixed-world Lambert lighting (view independent, so all cameras agree).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gaedit_jax.flame import synthetic as sh

TEXTURES = ("skin", "facepaint")

PART_SKIN, PART_MOUTH, PART_EYE_L, PART_EYE_R, PART_TEETH = 0, 1, 2, 3, 4


def _hash3(ix, iy, iz, seed):
  h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ (seed * 2654435761)
  h = (h ^ (h >> 13)) * 1274126177
  h = h ^ (h >> 16)
  return (h & 0xFFFFFF).astype(np.float64) / float(0xFFFFFF)


def value_noise(p: np.ndarray, freq, seed: int = 0) -> np.ndarray:
  """Smooth value noise in [0,1] of points [N,3] (freq: scalar or per-axis, cycles per metre)."""
  q = p * np.asarray(freq, np.float64)
  i = np.floor(q).astype(np.int64)
  f = q - i
  f = f * f * (3 - 2 * f)
  out = 0.0
  for dx in (0, 1):
    for dy in (0, 1):
      for dz in (0, 1):
        w = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) * (f[:, 2] if dz else 1 - f[:, 2])
        out = out + w * _hash3(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, seed)
  return out


def fbm(p, freq, octaves=3, seed=0):
  tot, amp, norm = 0.0, 1.0, 0.0
  for o in range(octaves):
    tot = tot + amp * value_noise(p, np.asarray(freq) * 2.0**o, seed + o)
    norm += amp
    amp *= 0.5
  return tot / norm


def _mix(a, b, t):
  t = np.clip(t, 0, 1)[:, None]
  return a * (1 - t) + np.asarray(b) * t


def _g(p, c, r):
  return np.exp(-np.sum((p - np.asarray(c)) ** 2, -1) / (2 * r * r))


def lip_mask(p: np.ndarray) -> np.ndarray:
  """Soft mask of the lip vermilion on the canonical head."""
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  dx = np.clip(np.abs(x) / (sh.MOUTH_HALF_WIDTH * 1.03), 0, 1)
  top = 0.0058 * (1 - dx**2) ** 0.5 * (1 - 0.2 * np.exp(-((x / 0.0045) ** 2)))
  bot = 0.0066 * (1 - dx**2) ** 0.6
  dy = y - sh.MOUTH_Y
  e = 0.0007
  m_up = sh._smoothstep(-e, 0, dy) * sh._smoothstep(top + e, top - e, dy)
  m_lo = sh._smoothstep(e, 0, dy) * sh._smoothstep(-bot - e, -bot + e, dy)
  return np.maximum(m_up, m_lo) * sh._smoothstep(0.055, 0.065, z) * sh._smoothstep(1.0, 0.96, dx)


def brow_mask(p: np.ndarray) -> np.ndarray:
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  out = np.zeros(len(p))
  for sx in (1.0, -1.0):
    xl = sx * x - sh.EYE_X + 0.002  # > 0 towards the temple
    yc = 0.0375 + 0.0035 * (1 - (xl / 0.02) ** 2)
    half = 0.0028 * np.clip(1.2 - np.abs(xl + 0.004) / 0.025, 0.2, 1.0)
    inside = sh._smoothstep(half + 0.0006, half - 0.0006, np.abs(y - yc))
    span = sh._smoothstep(-0.019, -0.015, xl) * sh._smoothstep(0.024, 0.019, xl)
    out = np.maximum(out, inside * span * sh._smoothstep(0.045, 0.06, z))
  return out


@dataclasses.dataclass(frozen=True)
class TextureInfo:
  """Canonical landmarks the texture needs: eye centres [2,3] (left = +x), the teeth middle height,
  the lip-line depth z and the lip distance d of `add_teeth`."""

  eye_centers: np.ndarray
  teeth_y: float
  mouth_z: float
  lip_d: float

  @staticmethod
  def from_model(model) -> "TextureInfo":
    v = np.asarray(model.v_template)
    eyes = np.stack([v[model.region("left_eyeball")].mean(0), v[model.region("right_eyeball")].mean(0)])
    up, lo = np.asarray(model.lip_ring_upper), np.asarray(model.lip_ring_lower)
    d = float(np.linalg.norm(v[up] - v[lo], axis=-1).mean())
    mid = (v[up] + v[lo]) / 2
    return TextureInfo(eye_centers=eyes, teeth_y=float(mid[:, 1].mean()), mouth_z=float(mid[:, 2].max()), lip_d=d)


def albedo(p: np.ndarray, part: np.ndarray, texture: str, info: TextureInfo) -> np.ndarray:
  """Base colour [N,3] in [0,1] of canonical points p [N,3] with part labels [N]."""
  if texture not in TEXTURES:
    raise ValueError(f"unknown texture {texture!r}; choose one of {TEXTURES}")
  n = len(p)
  col = np.zeros((n, 3))
  x, y, z = p[:, 0], p[:, 1], p[:, 2]

  skin = part == PART_SKIN
  if skin.any():
    q = p[skin]
    base = np.array([0.86, 0.64, 0.53])
    mott = fbm(q, 180.0, 3, seed=1)[:, None]
    c = base * (0.94 + 0.12 * mott)
    blush = sum(_g(q, (sx * 0.042, -0.014, 0.068), 0.016) for sx in (1, -1))
    c = _mix(c, [0.87, 0.55, 0.5], 0.3 * blush)
    c = _mix(c, [0.85, 0.52, 0.48], 0.35 * _g(q, (0, -0.017, 0.1), 0.009))
    c = c * (1 - 0.08 * sh._smoothstep(-0.08, -0.14, q[:, 1]))[:, None]  # neck a bit darker
    if texture == "facepaint":
      c = _facepaint(q, c)
    lips = lip_mask(q)
    lip_col = np.array([0.7, 0.3, 0.33]) if texture == "skin" else np.array([0.12, 0.08, 0.14])
    c = _mix(c, lip_col * (0.95 + 0.1 * fbm(q, 400.0, 2, seed=2))[:, None], lips)
    c = _mix(c, [0.2, 0.13, 0.09], 0.92 * brow_mask(q))
    hair = sh.hair_amount(q)
    strands = value_noise(q, (900.0, 60.0, 900.0), seed=3)
    hair_col = np.array([0.24, 0.15, 0.09]) * (0.7 + 0.6 * strands)[:, None]
    c = _mix(c, hair_col, hair)
    col[skin] = c

  for part_id, centre in ((PART_EYE_L, info.eye_centers[0]), (PART_EYE_R, info.eye_centers[1])):
    m = part == part_id
    if not m.any():
      continue
    q = p[m] - centre
    q /= np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    ang = np.arccos(np.clip(q[:, 2], -1, 1))  # angle from the gaze axis (+z at rest)
    sclera = np.array([0.93, 0.92, 0.9])
    polar = np.stack([np.arctan2(q[:, 1], q[:, 0]) * 3.0, ang * 25.0, np.zeros_like(ang)], -1)
    iris = np.array([0.28, 0.5, 0.36]) * (0.75 + 0.5 * value_noise(polar, 1.0, 4))[:, None]
    c = _mix(np.broadcast_to(sclera, (m.sum(), 3)), iris, sh._smoothstep(0.58, 0.52, ang))
    c = _mix(c, [0.12, 0.16, 0.12], sh._smoothstep(0.47, 0.53, ang) * sh._smoothstep(0.6, 0.53, ang))
    c = _mix(c, [0.03, 0.03, 0.035], sh._smoothstep(0.25, 0.2, ang))
    col[m] = c

  m = part == PART_MOUTH
  if m.any():
    z0, d = info.mouth_z, info.lip_d
    depth = np.clip((z0 - z[m]) / (4 * d), 0, 1)
    c = np.array([0.55, 0.16, 0.17]) * (1 - 0.55 * depth)[:, None]
    tongue = sh._smoothstep(-0.5 * d, -1.2 * d, y[m] - sh.MOUTH_Y) * sh._smoothstep(0.1, 0.3, depth)
    c = _mix(c, np.array([0.78, 0.38, 0.4]) * (1 - 0.35 * depth)[:, None], tongue)
    col[m] = c

  m = part == PART_TEETH
  if m.any():
    ym, d = info.teeth_y, info.lip_d
    q = p[m]
    c = np.broadcast_to(np.array([0.95, 0.93, 0.85]), (m.sum(), 3)).copy()
    gap = sh._smoothstep(0.09, 0.0, np.abs(((q[:, 0] / 0.0042) % 1.0) - 0.5) - 0.41)
    c *= (1 - 0.25 * gap)[:, None]
    c = _mix(c, [0.85, 0.45, 0.47], sh._smoothstep(1.45 * d, 1.65 * d, np.abs(q[:, 1] - ym)))
    col[m] = c
  return np.clip(col, 0, 1)


def _facepaint(q: np.ndarray, c: np.ndarray) -> np.ndarray:
  x, y, z = q[:, 0], q[:, 1], q[:, 2]
  front = sh._smoothstep(0.03, 0.05, z)
  wave = 0.004 * np.sin(x * 260.0)
  band = sh._smoothstep(0.001, -0.001, np.abs(y - 0.022 - wave) - 0.017) * front
  band *= sh._smoothstep(0.075, 0.06, np.abs(x))
  c = _mix(c, [0.1, 0.27, 0.78], 0.95 * band)
  # three white stripes on each cheek
  for sx in (1.0, -1.0):
    u = sx * x - 0.03
    v = y + 0.035 + 0.5 * u
    stripes = sh._smoothstep(0.0017, 0.0009, np.abs(((v / 0.009) % 1.0 - 0.5) * 0.009))
    zone = (
      sh._smoothstep(0.0, 0.006, u)
      * sh._smoothstep(0.034, 0.026, u)
      * sh._smoothstep(-0.004, 0.004, -(y + 0.005))
      * sh._smoothstep(-0.075, -0.06, y)
      * front
    )
    c = _mix(c, [0.97, 0.97, 0.95], stripes * zone)
  # gold diamond on the forehead
  dia = sh._smoothstep(0.0125, 0.011, np.abs(x) + np.abs(y - 0.058) * 0.8) * front
  c = _mix(c, [0.95, 0.75, 0.15], dia)
  # red dots on the chin
  dots = sum(_g(q, (dx, -0.078, 0.07), 0.0025) for dx in (-0.012, 0.0, 0.012))
  c = _mix(c, [0.85, 0.1, 0.12], np.clip(2.5 * dots, 0, 1) * front)
  return c


# Fixed world lights (the head's world frame: y up, z towards the frontal camera).
_LIGHTS = ((np.array([0.35, 0.55, 1.0]), 0.5), (np.array([-0.8, 0.1, 0.35]), 0.18), (np.array([0.0, -0.3, 1.0]), 0.08))
_AMBIENT = 0.42


def shade(albedo_rgb: np.ndarray, normals_world: np.ndarray) -> np.ndarray:
  """Lambert shading with fixed world lights; view independent."""
  n = normals_world / np.maximum(np.linalg.norm(normals_world, axis=-1, keepdims=True), 1e-12)
  light = np.full(len(n), _AMBIENT)
  for d, w in _LIGHTS:
    d = d / np.linalg.norm(d)
    light = light + w * np.clip(n @ d, 0, None)
  return np.clip(albedo_rgb * light[:, None], 0, 1)
