"""Random scenes for the rasterizer tests (importable helper, not a test module)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gaedit_jax.camera import look_at, make_camera
from gaedit_jax.render import Gaussians, _inputs, reference


def random_gaussians(
  seed: int, n: int, *, sh_degree: int = 3, radius: float = 0.25, scale: float = 0.03, views: int | None = None
) -> Gaussians:
  """N Gaussians in a ball around the origin; per-view sets if `views` is given."""
  rng = np.random.default_rng(seed)
  lead = () if views is None else (views,)
  k = (sh_degree + 1) ** 2
  means = rng.uniform(-1, 1, lead + (n, 3)) * radius
  quats = rng.normal(size=lead + (n, 4))
  scales = scale * np.exp(rng.normal(0, 0.5, lead + (n, 3)))
  opac = rng.uniform(0.05, 0.95, lead + (n,))
  sh = rng.normal(0, 0.3, lead + (n, k, 3))
  sh[..., 0, :] = rng.uniform(-1.2, 1.2, lead + (n, 3))
  f = lambda x: jnp.asarray(x, jnp.float32)
  return Gaussians(f(means), f(quats), f(scales), f(opac), f(sh))


def ring_cameras(
  num: int,
  *,
  width: int,
  height: int,
  dist: float = 1.0,
  focal: float | None = None,
  seed: int = 0,
  jitter_pp: bool = False,
):
  """Cameras on a ring around the origin looking at it (batch [num])."""
  rng = np.random.default_rng(seed)
  focal = focal if focal is not None else 1.2 * max(width, height)
  mats, cxs, cys = [], [], []
  for i in range(num):
    ang = 2 * np.pi * i / max(num, 1) + 0.3
    eye = np.array([dist * np.sin(ang), 0.15 * np.cos(3 * ang), -dist * np.cos(ang)])
    mats.append(look_at(eye, np.zeros(3)))
    cxs.append(width / 2 + (rng.uniform(-3, 3) if jitter_pp else 0.0))
    cys.append(height / 2 + (rng.uniform(-3, 3) if jitter_pp else 0.0))
  return make_camera(np.stack(mats), focal, focal * 1.05, np.array(cxs), np.array(cys), width=width, height=height)


def faint_scene(seed: int = 13, n: int = 600):
  """Small, faint Gaussians (opacity <= 0.1) and one 64x48 view: their 3-sigma squares touch many
  tiles where alpha never reaches 1/255, the case exact tile lists cut."""
  g = random_gaussians(seed, n, scale=0.01)
  opac = np.random.default_rng(seed).uniform(0.01, 0.1, n)
  g = Gaussians(g.means, g.quats, g.scales, jnp.asarray(opac, jnp.float32), g.sh)
  return g, ring_cameras(1, width=64, height=48, focal=60)[0]


def square_tile_pairs(g: Gaussians, cam, config) -> int:
  """(Gaussian, tile) pairs of the 3-sigma squares (the lists before exact culling), one view."""
  named, _ = _inputs.prepare_inputs(g, cam, jnp.zeros(3), config)
  a = [x for x, _ in named.values()]
  p = reference.project(
    *a[:8],
    width=cam.width,
    height=cam.height,
    tile_size=config.tile_size,
    near_plane=config.near_plane,
    sh_degree=config.sh_degree,
  )
  r = np.asarray(p["rect"]).reshape(-1, 4)
  valid = np.asarray(p["valid"]).reshape(-1)
  return int(np.sum(valid * (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])))
