"""A procedural FLAME-compatible head: `make_synthetic_flame(...)`.

The real FLAME model cannot be shipped (licence), so tests, the demo and the benchmarks use this
head. It has FLAME's keys and 5-joint tree (root, neck, jaw, left eye, right eye; parents -1,0,1,1,1),
metric size (head radius ~0.1 m, y up, z forward, x = subject's left, as FLAME), and:

* a closed, consistently oriented surface: a ray-cast implicit head (cranium, face, jaw, nose, lips,
  brows, cheeks, ears, neck with a flat bottom, eye sockets) sampled on a latitude/longitude grid
  that is denser at the mouth and the front; a slit between the lips opens into a mouth bag (lip
  inner surface, cavity walls, back wall), so opening the jaw shows the mouth interior; eyeballs are
  separate closed spheres skinned to the eye joints;
* ordered 15-vertex outer lip rings (`lip_ring_upper/lower`) so `flame.add_teeth` builds the
  GaussianAvatars teeth exactly as on FLAME, inside the mouth bag;
* vertex regions with FLAME's names (face, neck, scalp, boundary, left/right_eyeball,
  left/right_ear, forehead, eye_region, left/right_eye_region, nose, lips) and GaussianAvatars'
  custom ones the editor uses (lips_tight, lip_inside; teeth comes from add_teeth), plus
  mouth_interior, hair, left_half, right_half;
* smooth shape and expression bases (a few named ones: width, height, nose, jaw, ...; smile, lips
  apart, brow raise, pucker, ...; then random smooth fields) and pose correctives for neck and jaw.

Everything is deterministic given `seed`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from gaedit_jax.flame.model import FLAME_PARENTS, FlameModel, with_regions

# ------------------------------------------------------------------------------------------------
# Geometry constants (metres, canonical template frame)
# ------------------------------------------------------------------------------------------------

RAY_CENTER = np.array([0.0, -0.01, 0.0])
MOUTH_Y = -0.044  # height of the lip line
MOUTH_HALF_WIDTH = 0.024  # mouth corners at x = +-0.024
EYE_X, EYE_Y = 0.031, 0.022  # eye centres (x, y); z is placed relative to the surface
EYE_RADIUS = 0.0125
EYE_SOCKET = 0.0138
EYE_DEPTH = 0.0058  # eyeball centre behind the (socket-free) surface
NECK_CENTER_Z = -0.015
NECK_RADIUS = 0.052
Y_BOTTOM = -0.2  # lowest point of the neck
JAW_HINGE = np.array([0.0, -0.012, -0.004])

# (centre, radii) of the ellipsoids of the implicit head, joined by smooth unions (blend radius).
_ELLIPSOIDS = [  # name, centre, radii, blend
  ("cranium", (0.0, 0.03, -0.015), (0.074, 0.088, 0.097), None),
  ("face", (0.0, -0.018, 0.022), (0.063, 0.074, 0.07), 0.02),
  ("jaw", (0.0, -0.062, 0.032), (0.05, 0.04, 0.05), 0.02),
  ("chin", (0.0, -0.083, 0.058), (0.022, 0.017, 0.018), 0.012),
  ("brow", (0.0, 0.037, 0.072), (0.052, 0.012, 0.018), 0.012),
  ("cheek_l", (0.043, -0.004, 0.062), (0.022, 0.02, 0.02), 0.012),
  ("cheek_r", (-0.043, -0.004, 0.062), (0.022, 0.02, 0.02), 0.012),
  ("nose_bridge", (0.0, 0.004, 0.084), (0.009, 0.028, 0.014), 0.008),
  ("nose_tip", (0.0, -0.017, 0.097), (0.012, 0.011, 0.011), 0.006),
  ("nostril_l", (0.011, -0.021, 0.088), (0.008, 0.006, 0.008), 0.004),
  ("nostril_r", (-0.011, -0.021, 0.088), (0.008, 0.006, 0.008), 0.004),
  ("lip_upper", (0.0, -0.039, 0.084), (0.026, 0.0075, 0.011), 0.006),
  ("lip_lower", (0.0, -0.0495, 0.082), (0.023, 0.0075, 0.011), 0.006),
  ("ear_l", (0.077, 0.0, -0.008), (0.011, 0.029, 0.019), 0.006),
  ("ear_r", (-0.077, 0.0, -0.008), (0.011, 0.029, 0.019), 0.006),
]


def _ellipsoid_sdf(p, c, r):
  c, r = np.asarray(c), np.asarray(r)
  q = (p - c) / r
  k0 = np.linalg.norm(q, axis=-1)
  k1 = np.linalg.norm(q / r, axis=-1)
  return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _smin(a, b, k):
  h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
  return b * (1 - h) + a * h - k * h * (1 - h)


def _smax(a, b, k):
  return -_smin(-a, -b, k)


def _capsule_y(p, y0, y1, cz, r):
  y = np.clip(p[..., 1], y1, y0)
  q = p - np.stack([np.zeros_like(y), y, np.full_like(y, cz)], -1)
  return np.linalg.norm(q, axis=-1) - r


def _head_sdf(p, eye_centers=None):
  d = None
  for _, c, r, k in _ELLIPSOIDS:
    e = _ellipsoid_sdf(p, c, r)
    d = e if d is None else _smin(d, e, k)
  # The neck ends in a rounded cap (a flat cut would leave a jagged grid edge).
  d = _smin(d, _capsule_y(p, -0.04, Y_BOTTOM + NECK_RADIUS, NECK_CENTER_Z, NECK_RADIUS), 0.03)
  if eye_centers is not None:
    for c in eye_centers:
      d = _smax(d, EYE_SOCKET - np.linalg.norm(p - c, axis=-1), 0.003)
  return d


def _raycast(dirs, sdf, center=RAY_CENTER, t_max=0.4, steps=200, iters=30):
  """Outermost surface crossing along rays center + t dir (last inside->outside sign change)."""
  t = np.linspace(0.0, t_max, steps)
  pts = center + dirs[:, None, :] * t[None, :, None]
  inside = sdf(pts) < 0
  last = steps - 1 - np.argmax(inside[:, ::-1], axis=1)  # last inside sample
  if not inside.any(axis=1).all():
    raise RuntimeError("synthetic head: a ray missed the surface")
  lo, hi = t[last], t[np.minimum(last + 1, steps - 1)]
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    inn = sdf(center + dirs * mid[:, None]) < 0
    lo, hi = np.where(inn, mid, lo), np.where(inn, hi, mid)
  return center + dirs * (0.5 * (lo + hi))[:, None]


def _grow(first: float, n: int, total: float) -> np.ndarray:
  """n spacings growing geometrically from `first` (ratio g >= 1) that sum to `total`."""
  if n <= 0:
    return np.zeros(0)
  if first * n >= total:
    return np.full(n, total / n)
  lo, hi = 1.0, 4.0
  for _ in range(100):
    g = 0.5 * (lo + hi)
    s = first * np.sum(g ** np.arange(1, n + 1))
    lo, hi = (g, hi) if s < total else (lo, g)
  return first * g ** np.arange(1, n + 1) * total / (first * np.sum(g ** np.arange(1, n + 1)))


def _direction(theta, phi):
  return np.stack([np.sin(phi) * np.sin(theta), np.cos(phi), np.sin(phi) * np.cos(theta)], -1)


def _smoothstep(e0, e1, x):
  t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
  return t * t * (3 - 2 * t)


@dataclasses.dataclass
class _Build:
  """Intermediate results shared by the geometry, the bases and the texture."""

  verts: np.ndarray
  faces: np.ndarray
  part: np.ndarray  # per vertex: 0 skin, 1 mouth interior, 2 left eyeball, 3 right eyeball
  side: np.ndarray  # -1 above the lip line / upper mouth, +1 below / lower mouth, 0 else
  grid: np.ndarray  # [R,C] vertex ids of the grid rings (upper copies at the slit)
  slit_lower: dict  # column -> lower copy vertex id
  mouth_row: int
  mouth_cols: np.ndarray  # the 15 columns of the lip rings (corner to corner)
  bag_rings: list  # list of [L] vertex id loops (ring 0 = slit loop)
  bag_cap: int
  eye_centers: np.ndarray  # [2,3] (left = +x, right = -x)
  eye_ids: list  # two arrays of eyeball vertex ids
  lip_d: float  # mean distance between the outer lip rings


def _build_geometry(rows: int, cols: int, eye_res: tuple[int, int]) -> _Build:
  if cols % 2 or cols < 24:
    raise ValueError(f"make_synthetic_flame: cols must be even and >= 24, got {cols}")
  if rows < 16:
    raise ValueError(f"make_synthetic_flame: rows must be >= 16, got {rows}")
  # Eye centres: a fixed depth behind the socket-free surface.
  eye_centers = []
  for sx in (1.0, -1.0):
    p = _raycast(np.array([[0.0, 0.0, 1.0]]), _head_sdf, center=np.array([sx * EYE_X, EYE_Y, 0.0]))[0]
    eye_centers.append(p - np.array([0.0, 0.0, EYE_DEPTH]))
  eye_centers = np.array(eye_centers)
  sdf = lambda q: _head_sdf(q, eye_centers)

  # Columns (azimuth from +z towards +x): 15 uniform mouth columns, then geometric growth to the back.
  mouth_front = np.array([0.0, MOUTH_Y, 0.09]) - RAY_CENTER
  th_corner = np.arctan2(MOUTH_HALF_WIDTH, mouth_front[2])
  dth = th_corner / 7
  half = cols // 2
  sp = _grow(dth, half - 7, np.pi - th_corner)
  th_pos = np.concatenate([np.arange(8) * dth, th_corner + np.cumsum(sp)])  # j = 0..half
  theta = np.concatenate([th_pos[:half], -th_pos[half:0:-1]])  # j = 0..cols-1 (wrap)
  # Rows (polar angle from +y): 7 uniform rows centred on the lip line, growing to the poles.
  phi_m = np.arccos(mouth_front[1] / np.linalg.norm(mouth_front))
  dph = np.deg2rad(1.75)
  n_mid = 7
  n_rest = rows - n_mid
  n_up = int(round(n_rest * (phi_m - 3 * dph) / (np.pi - 6 * dph)))
  n_dn = n_rest - n_up
  sp_up = _grow(dph, n_up + 1, phi_m - 3 * dph)  # spacings from the mouth up to the top pole
  sp_dn = _grow(dph, n_dn + 1, np.pi - phi_m - 3 * dph)
  phi = np.concatenate(
    [
      ((phi_m - 3 * dph) - np.cumsum(sp_up)[:n_up])[::-1],
      phi_m + dph * np.arange(-3, 4),
      phi_m + 3 * dph + np.cumsum(sp_dn)[:n_dn],
    ]
  )
  assert phi.shape == (rows,), (phi.shape, rows)
  mouth_row = n_up + 3

  th_g, ph_g = np.meshgrid(theta, phi)  # [R,C]
  dirs = _direction(th_g.reshape(-1), ph_g.reshape(-1))
  dirs = np.concatenate([dirs, [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]])
  pos = _raycast(dirs, sdf)
  R, C = rows, cols
  grid = np.arange(R * C).reshape(R, C)
  top, bottom = R * C, R * C + 1
  verts = [pos]
  nv = R * C + 2
  side = np.zeros(nv, np.int8)
  side[grid[:mouth_row].reshape(-1)] = -1
  side[grid[mouth_row + 1 :].reshape(-1)] = 1
  side[top], side[bottom] = -1, 1
  mouth_cols = np.arange(-7, 8) % C
  slit_cols = np.arange(-6, 7) % C
  slit_lower = {}
  for j in slit_cols:
    slit_lower[int(j)] = nv
    verts.append(pos[grid[mouth_row, j]][None])
    nv += 1
  side[grid[mouth_row, slit_cols]] = -1
  side = np.concatenate([side, np.ones(len(slit_cols), np.int8)])

  faces = []
  for i in range(R - 1):
    for j in range(C):
      j1 = (j + 1) % C
      a, b = grid[i, j], grid[i, j1]
      if i == mouth_row:  # quads below the lip line hang on the lower copies
        a = slit_lower.get(int(j), a)
        b = slit_lower.get(int(j1), b)
      c, d = grid[i + 1, j], grid[i + 1, j1]
      faces += [(a, c, b), (b, c, d)]
  for j in range(C):
    j1 = (j + 1) % C
    faces += [(top, grid[0, j], grid[0, j1]), (bottom, grid[R - 1, j1], grid[R - 1, j])]
  grid_faces = np.asarray(faces, np.int64)

  # Mouth bag: rings behind the slit loop, then a cap.
  up_ring = pos[grid[mouth_row - 2, mouth_cols]]
  lo_ring = pos[grid[mouth_row + 2, mouth_cols]]
  lip_d = float(np.linalg.norm(up_ring - lo_ring, axis=-1).mean())
  loop = (
    [grid[mouth_row, mouth_cols[0]]]
    + [grid[mouth_row, j] for j in slit_cols]
    + [grid[mouth_row, mouth_cols[-1]]]
    + [slit_lower[int(j)] for j in slit_cols[::-1]]
  )
  loop = np.asarray(loop)
  loop_side = np.concatenate([[0], -np.ones(len(slit_cols)), [0], np.ones(len(slit_cols))])
  vall = np.concatenate(verts)
  p0 = vall[loop]
  u = np.clip(p0[:, 0] / MOUTH_HALF_WIDTH, -1, 1)
  lens = np.sqrt(np.clip(1 - u**2, 0, 1))
  y_line = p0[:, 1].mean()
  # (depth behind the lips, half height, width factor), in units of lip_d
  ring_spec = [(0.35, 0.25, 1.0), (0.9, 1.0, 1.05), (1.8, 2.3, 1.12), (3.0, 2.3, 1.1), (3.8, 1.2, 0.8)]
  bag_rings = [loop]
  new_pts = []
  for depth, hh, wf in ring_spec:
    ring = np.stack([p0[:, 0] * wf, y_line - loop_side * hh * lip_d * lens, p0[:, 2] - depth * lip_d], -1)
    ids = nv + np.arange(len(loop))
    nv += len(loop)
    new_pts.append(ring)
    bag_rings.append(ids)
    side = np.concatenate([side, loop_side.astype(np.int8)])
  cap = nv
  nv += 1
  new_pts.append(np.array([[0.0, y_line, p0[:, 2].max() - 4.1 * lip_d]]))
  side = np.concatenate([side, [0]]).astype(np.int8)
  bag_faces = []
  L = len(loop)
  for k in range(1, len(bag_rings)):
    ra, rb = bag_rings[k - 1], bag_rings[k]
    for i in range(L):
      i1 = (i + 1) % L
      bag_faces += [(ra[i], rb[i], ra[i1]), (ra[i1], rb[i], rb[i1])]
  last = bag_rings[-1]
  bag_faces += [(last[i], cap, last[(i + 1) % L]) for i in range(L)]
  bag_faces = np.asarray(bag_faces, np.int64)
  # Orient the bag consistently with the head: no directed edge may appear twice.
  edges = {(int(a), int(b)) for f in grid_faces for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
  if any((int(a), int(b)) in edges for f in bag_faces for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))):
    bag_faces = bag_faces[:, ::-1]
  verts = np.concatenate([vall] + new_pts)
  part = np.zeros(nv, np.int8)
  # ring 1 is the inner surface of the lips (skin, lip coloured); deeper rings are mouth interior
  part[np.concatenate(bag_rings[2:] + [np.array([cap])])] = 1

  # Eyeballs: UV spheres around +z (the gaze direction), pole at the pupil.
  n_lat, n_lon = eye_res
  eye_ids, eye_faces = [], []
  for e, c in enumerate(eye_centers):
    alpha = np.linspace(0, np.pi, n_lat + 2)[1:-1]
    beta = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    al, be = np.meshgrid(alpha, beta, indexing="ij")
    pts = np.stack([np.sin(al) * np.cos(be), np.sin(al) * np.sin(be), np.cos(al)], -1).reshape(-1, 3)
    pts = np.concatenate([pts, [[0, 0, 1.0], [0, 0, -1.0]]]) * EYE_RADIUS + c
    base = nv
    g = base + np.arange(n_lat * n_lon).reshape(n_lat, n_lon)
    front, back = base + n_lat * n_lon, base + n_lat * n_lon + 1
    fl = []
    for i in range(n_lat - 1):
      for j in range(n_lon):
        j1 = (j + 1) % n_lon
        fl += [(g[i, j], g[i + 1, j], g[i, j1]), (g[i, j1], g[i + 1, j], g[i + 1, j1])]
    for j in range(n_lon):
      j1 = (j + 1) % n_lon
      fl += [(front, g[0, j], g[0, j1]), (back, g[-1, j1], g[-1, j])]
    fl = np.asarray(fl, np.int64)
    tri = pts[fl - base]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = np.einsum("fc,fc->f", n, tri.mean(1) - c) > 0
    fl[~outward] = fl[~outward][:, ::-1]  # convex sphere: flip any inward face
    verts = np.concatenate([verts, pts])
    ids = base + np.arange(len(pts))
    nv += len(pts)
    eye_ids.append(ids)
    eye_faces.append(fl)
    part = np.concatenate([part, np.full(len(pts), 2 + e, np.int8)])
    side = np.concatenate([side, np.zeros(len(pts), np.int8)])
  faces = np.concatenate([grid_faces, bag_faces] + eye_faces).astype(np.int64)
  return _Build(
    verts=verts,
    faces=faces,
    part=part,
    side=side,
    grid=grid,
    slit_lower=slit_lower,
    mouth_row=mouth_row,
    mouth_cols=mouth_cols,
    bag_rings=bag_rings,
    bag_cap=cap,
    eye_centers=eye_centers,
    eye_ids=eye_ids,
    lip_d=lip_d,
  )


# ------------------------------------------------------------------------------------------------
# Fields: regions, skinning, bases
# ------------------------------------------------------------------------------------------------


def _mouth_taper(x):
  """1 in the middle of the mouth, 0 at and beyond the corners (smooth)."""
  u = np.clip(np.abs(x) / MOUTH_HALF_WIDTH, 0, 1)
  return (1 - u**2) ** 2


def _mouth_zone(p):
  """Smooth weight of the lip area at the front (where the upper/lower split matters)."""
  return (
    _smoothstep(0.035, 0.06, p[:, 2])
    * np.exp(-(((p[:, 1] - MOUTH_Y) / 0.02) ** 2))
    * _smoothstep(1.6, 1.0, np.abs(p[:, 0]) / MOUTH_HALF_WIDTH)
  )


def hair_amount(p: np.ndarray) -> np.ndarray:
  """Smooth hair coverage (0..1) of canonical points [N,3]: a hairline at the forehead that drops
  behind the ears to the nape."""
  x, y, z = p[..., 0], p[..., 1], p[..., 2]
  ang = np.abs(np.arctan2(x, z + 0.01))  # 0 front, pi back
  front_line = 0.064 + 0.006 * np.cos(3 * ang)
  line = np.where(
    ang < 1.25, front_line - 0.025 * _smoothstep(0.6, 1.25, ang), 0.036 - 0.115 * _smoothstep(1.25, 2.3, ang)
  )
  # keep the ears free
  ear = np.exp(-(((np.abs(x) - 0.075) / 0.02) ** 2 + ((y - 0.0) / 0.032) ** 2 + ((z + 0.008) / 0.03) ** 2))
  return _smoothstep(-0.004, 0.004, y - line) * (1 - _smoothstep(0.3, 0.6, ear))


def _regions(b: _Build) -> dict[str, np.ndarray]:
  p = b.verts
  nv = len(p)
  skin = b.part == 0
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  r = {}
  r["left_eyeball"] = b.part == 2
  r["right_eyeball"] = b.part == 3
  bag = np.zeros(nv, bool)
  for ring in b.bag_rings:
    bag[ring] = True
  bag[b.bag_cap] = True
  r["mouth_interior"] = b.part == 1
  # lips_tight: the vermilion (rows mouth-2..mouth+2 between the corners) and the inner lips.
  lt = np.zeros(nv, bool)
  rows = np.arange(b.mouth_row - 2, b.mouth_row + 3)
  lt[b.grid[np.ix_(rows, b.mouth_cols)].reshape(-1)] = True
  lt[list(b.slit_lower.values())] = True
  lt[b.bag_rings[1]] = True
  r["lips_tight"] = lt
  lips = lt.copy()
  rows = np.arange(b.mouth_row - 3, b.mouth_row + 4)
  cols = np.arange(-8, 9) % b.grid.shape[1]
  lips[b.grid[np.ix_(rows, cols)].reshape(-1)] = True
  r["lips"] = lips
  # lip_inside: what lies inside the lip line; the whole bag (this head's mouth interior) included.
  r["lip_inside"] = bag
  hair = hair_amount(p) > 0.5
  r["hair"] = hair & skin
  r["scalp"] = (hair | (y > 0.075)) & skin
  r["neck"] = skin & (y < -0.085) & (z < 0.045)
  r["boundary"] = skin & (y < Y_BOTTOM + 0.015)  # the bottom cap of the neck
  eye_reg = []
  for c in b.eye_centers:
    eye_reg.append(skin & (np.linalg.norm(p - c, axis=-1) < 0.024))
  r["left_eye_region"], r["right_eye_region"] = eye_reg
  r["eye_region"] = eye_reg[0] | eye_reg[1]
  r["nose"] = skin & (np.abs(x) < 0.022) & (y > -0.028) & (y < 0.03) & (z > 0.075)
  for name, sx in (("left_ear", 1), ("right_ear", -1)):
    r[name] = skin & (sx * x > 0.062) & (np.abs(y) < 0.035) & (np.abs(z + 0.008) < 0.028)
  face = skin & (z > 0.02) & (y > -0.105) & (y < 0.07) & (np.abs(x) < 0.065) & ~r["hair"]
  r["face"] = face | r["lips"] | bag
  r["forehead"] = skin & face & (y > 0.04)
  r["left_half"] = x >= -1e-9
  r["right_half"] = x <= 1e-9
  return r


def _skinning(b: _Build) -> np.ndarray:
  """LBS weights [V,5]: root at the base of the neck, neck for the skull, jaw below the lip line in
  front of the hinge (hard split across the slit only), eyes one-hot."""
  p = b.verts
  nv = len(p)
  y, z = p[:, 1], p[:, 2]
  w = np.zeros((nv, 5))
  w_root = _smoothstep(-0.125, -0.175, y)
  rest = 1 - w_root
  # Side-view line from the mouth to the jaw hinge; below it -> jaw.
  z_front = 0.085
  slope = (JAW_HINGE[1] - MOUTH_Y) / (JAW_HINGE[2] - z_front)
  y_line = MOUTH_Y + (z - z_front) * slope
  s = y_line - y
  base = _smoothstep(-0.008, 0.008, s)
  mix = _mouth_zone(p)
  over = 0.5 + 0.5 * b.side * _mouth_taper(p[:, 0])
  jaw = (1 - mix) * base + mix * over
  jaw *= _smoothstep(-0.02, 0.015, z)  # not behind the hinge
  neckness = _smoothstep(0.035, 0.0, z) * _smoothstep(-0.07, -0.1, y)
  jaw *= 1 - neckness
  w[:, 0] = w_root
  w[:, 2] = rest * jaw
  w[:, 1] = rest - w[:, 2]
  bag = np.zeros(nv, bool)
  for ring in b.bag_rings[1:]:
    bag[ring] = True
  bag[b.bag_cap] = True
  w[bag] = 0
  w[bag, 2] = 0.5 + 0.5 * b.side[bag] * np.maximum(_mouth_taper(p[bag, 0]), 0.0)
  w[bag, 1] = 1 - w[bag, 2]
  for e, ids in enumerate(b.eye_ids):
    w[ids] = 0
    w[ids, 3 + e] = 1
  return w


def _j_regressor(b: _Build) -> np.ndarray:
  """Joint rows as convex combinations of vertices (so shape changes move the joints)."""
  p = b.verts
  nv = len(p)
  skin = b.part == 0
  jr = np.zeros((5, nv))

  def mean_of(row, idx):
    jr[row, idx] = 1.0 / len(idx)

  # Root and neck: the vertices of the neck nearest to two heights (a band around the neck).
  on_neck = skin & (np.hypot(p[:, 0], p[:, 2] - NECK_CENTER_Z) < NECK_RADIUS * 1.4) & (p[:, 2] < 0.02)
  cand = np.flatnonzero(on_neck)
  for row, y0 in ((0, -0.125), (1, -0.075)):
    dist = np.abs(p[cand, 1] - y0)
    mean_of(row, cand[dist <= np.sort(dist)[15] + 1e-7])  # ties kept: mirror pairs stay together
  # Jaw: the vertices nearest to two symmetric points on the sides at the hinge.
  ids = []
  for sx in (1.0, -1.0):
    q = np.array([sx * 0.07, JAW_HINGE[1], JAW_HINGE[2]])
    d = np.linalg.norm(p - q, axis=-1) + np.where(skin, 0.0, np.inf)
    ids.append(np.argsort(d, kind="stable")[:4])
  mean_of(2, np.concatenate(ids))
  for e, ids in enumerate(b.eye_ids):
    jr[3 + e, ids] = 1.0 / len(ids)
  return jr


def _normalize_field(f, target):
  m = np.linalg.norm(f, axis=-1).max()
  return f * (target / m) if m > 0 else f


def _random_smooth_fields(rng, p, n, mask, radius, target, centers_from):
  out = []
  for _ in range(n):
    f = np.zeros_like(p)
    for _ in range(3):
      c = centers_from[rng.integers(len(centers_from))]
      d = rng.normal(size=3)
      d /= np.linalg.norm(d)
      rr = radius * rng.uniform(0.7, 1.3)
      f += np.exp(-np.sum((p - c) ** 2, -1) / (2 * rr * rr))[:, None] * d
    out.append(_normalize_field(f * mask[:, None], target))
  return out


def _rigid_eyes(b: _Build, f: np.ndarray) -> np.ndarray:
  """Eyeballs follow a field rigidly (the field's value at their centre)."""
  f = f.copy()
  for ids in b.eye_ids:
    f[ids] = f[ids].mean(0)
  return f


def _shape_basis(b: _Build, n: int, rng) -> np.ndarray:
  p = b.verts
  c = np.array([0.0, -0.01, 0.0])
  q = p - c
  g = lambda c0, r: np.exp(-np.sum((p - np.asarray(c0)) ** 2, -1) / (2 * r * r))[:, None]
  named = [
    np.stack([q[:, 0], 0 * q[:, 0], 0 * q[:, 0]], -1),  # width
    np.stack([0 * q[:, 1], q[:, 1], 0 * q[:, 1]], -1),  # height
    np.stack([0 * q[:, 2], 0 * q[:, 2], q[:, 2]], -1),  # depth
    g((0, -0.01, 0.09), 0.02) * (p - np.array([0, -0.01, 0.06])),  # nose size
    g((0, -0.07, 0.04), 0.035) * np.stack([q[:, 0], 0 * q[:, 0], 0 * q[:, 0]], -1),  # jaw width
    g((0, -0.085, 0.06), 0.025) * np.array([0, -0.3, 1.0]),  # chin forward
    g((0, 0.02, 0.07), 0.03)
    * np.stack([np.sign(q[:, 0]) * np.minimum(np.abs(q[:, 0]), 0.04), 0 * q[:, 0], 0 * q[:, 0]], -1),  # eye spacing
    g((0, 0.06, 0.06), 0.035) * np.array([0, 0.2, 1.0]),  # forehead
  ]
  named = [_normalize_field(f, 0.008) for f in named]
  basis = named[:n]
  if n > len(named):
    surf = p[b.part == 0]
    basis += _random_smooth_fields(rng, p, n - len(named), np.ones(len(p)), 0.05, 0.006, surf)
  basis = [_rigid_eyes(b, f) for f in basis]
  return np.stack(basis, -1)  # [V,3,n]


def _expression_basis(b: _Build, n: int, rng) -> np.ndarray:
  p = b.verts
  x = p[:, 0]
  front = _smoothstep(0.0, 0.05, p[:, 2])[:, None]
  g = lambda c0, r: np.exp(-np.sum((p - np.asarray(c0)) ** 2, -1) / (2 * r * r))[:, None]
  corner = lambda sx: (sx * MOUTH_HALF_WIDTH, MOUTH_Y, 0.08)
  lipzone = (_mouth_zone(p) * _mouth_taper(x * 0.8))[:, None]
  side = b.side[:, None].astype(np.float64)
  smile = sum(g(corner(sx), 0.016) * np.array([0.35 * sx, 1.0, -0.35]) for sx in (1, -1))
  smile = smile + sum(g((sx * 0.04, -0.01, 0.065), 0.018) * np.array([0, 0.5, 0.3]) for sx in (1, -1))
  lips_apart = lipzone * side * np.array([0.0, -1.0, 0.0])  # upper lip up, lower lip down
  brow = sum(g((sx * 0.03, 0.038, 0.07), 0.016) * np.array([0, 1.0, 0.1]) for sx in (1, -1))
  frown = sum(g((sx * 0.02, 0.034, 0.075), 0.014) * np.array([-0.6 * sx, -0.6, 0.2]) for sx in (1, -1))
  pucker = lipzone * np.stack([-0.5 * x / MOUTH_HALF_WIDTH, 0 * x, np.ones_like(x)], -1)
  puff = sum(g((sx * 0.045, -0.035, 0.05), 0.018) * np.array([sx, 0, 0.3]) for sx in (1, -1))
  shift = g((0, MOUTH_Y, 0.08), 0.02) * np.array([1.0, 0, 0])
  nose = g((0, 0.0, 0.085), 0.015) * np.array([0, 0.8, -0.2])
  named = [smile, lips_apart, brow, frown, pucker, puff, shift, nose]
  named = [_normalize_field(f * front, 0.007) for f in named]
  basis = named[:n]
  if n > len(named):
    surf = p[(b.part == 0) & (p[:, 2] > 0.04)]
    basis += _random_smooth_fields(rng, p, n - len(named), front[:, 0], 0.018, 0.005, surf)
  out = np.stack(basis, -1)
  for ids in b.eye_ids:  # eyeballs do not deform with expressions
    out[ids] = 0
  return out


def _pose_correctives(b: _Build, rng) -> np.ndarray:
  """posedirs [36, V*3]: smooth correctives driven by (R_neck - I) and (R_jaw - I); eyes none."""
  p = b.verts
  nv = len(p)
  pd = np.zeros((4, 9, nv, 3))
  # compact bumps: vertices far from the neck / chin get exactly no corrective
  g = lambda c0, r: np.clip(1 - np.sum((p - np.asarray(c0)) ** 2, -1) / (r * r), 0, None) ** 3
  neck = g((0, -0.1, NECK_CENTER_Z), 0.08)[:, None]
  jaw = g((0, -0.075, 0.05), 0.06)[:, None]
  for e in range(9):
    dn = rng.normal(size=3)
    dj = rng.normal(size=3)
    pd[0, e] = neck * dn / np.linalg.norm(dn) * 0.006
    pd[1, e] = jaw * dj / np.linalg.norm(dj) * 0.004
  for ids in b.eye_ids:
    pd[:, :, ids] = 0
  return pd.reshape(36, nv * 3)


def make_synthetic_flame(
  seed: int = 0,
  *,
  n_shape: int = 20,
  n_expr: int = 20,
  rows: int = 40,
  cols: int = 56,
  eye_res: tuple[int, int] = (8, 12),
  dtype=jnp.float32,
) -> FlameModel:
  """The built-in procedural head as a FlameModel without teeth (call `flame.add_teeth`).

  rows x cols: the latitude/longitude grid of the head (defaults: ~2.6k vertices and ~5.2k faces,
  ~5.4k faces with teeth); eye_res: (latitudes, longitudes) of each eyeball. n_shape/n_expr: sizes
  of the shape and expression bases (the first 8 of each are named fields, see module docstring).
  """
  b = _build_geometry(rows, cols, eye_res)
  rng = np.random.default_rng(seed)
  regions = _regions(b)
  # GA keeps the ordered lip rings among its vertex masks too
  for name, row in (("lip_outside_ring_upper", b.mouth_row - 2), ("lip_outside_ring_lower", b.mouth_row + 2)):
    regions[name] = np.isin(np.arange(len(b.verts)), b.grid[row, b.mouth_cols])
  model = FlameModel(
    v_template=jnp.asarray(b.verts, dtype),
    shapedirs=jnp.asarray(_shape_basis(b, n_shape, rng), dtype),
    exprdirs=jnp.asarray(_expression_basis(b, n_expr, rng), dtype),
    posedirs=jnp.asarray(_pose_correctives(b, rng), dtype),
    j_regressor=jnp.asarray(_j_regressor(b), dtype),
    lbs_weights=jnp.asarray(_skinning(b), dtype),
    faces=jnp.asarray(b.faces, jnp.int32),
    region_masks=jnp.zeros((0, len(b.verts)), bool),
    lip_ring_upper=jnp.asarray(b.grid[b.mouth_row - 2, b.mouth_cols], jnp.int32),
    lip_ring_lower=jnp.asarray(b.grid[b.mouth_row + 2, b.mouth_cols], jnp.int32),
    parents=FLAME_PARENTS,
  )
  return with_regions(model, regions)


def part_labels(model: FlameModel) -> np.ndarray:
  """Per-vertex part of a synthetic model (with or without teeth): 0 skin, 1 mouth interior,
  2 left eyeball, 3 right eyeball, 4 teeth."""
  part = np.zeros(model.num_vertices, np.int8)
  part[model.region("mouth_interior")] = 1
  part[model.region("left_eyeball")] = 2
  part[model.region("right_eyeball")] = 3
  if "teeth" in model.region_names:
    part[model.region("teeth")] = 4
  return part
