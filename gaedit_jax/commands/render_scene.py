"""`gaedit render-scene`: renders a built-in scene of Gaussians from a ring of views to a PNG."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from gaedit_jax.camera import look_at, make_camera
from gaedit_jax.render import Gaussians, rasterize
from gaedit_jax.render.types import rgb_to_sh_dc


def make_scene(n: int = 4000, seed: int = 0):
  """A torus knot of coloured, anisotropic Gaussians around the origin (about 0.3 m across)."""
  import jax.numpy as jnp

  rng = np.random.default_rng(seed)
  t = np.sort(rng.uniform(0, 2 * np.pi, n))
  p, q = 2, 3
  r = 0.1 + 0.04 * np.cos(q * t)
  curve = np.stack([r * np.cos(p * t), r * np.sin(p * t), 0.04 * np.sin(q * t)], 1)
  means = curve + rng.normal(0, 0.008, (n, 3))
  hue = t / (2 * np.pi)
  rgb = 0.5 + 0.5 * np.stack([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)], 1)
  sh = np.zeros((n, 16, 3))
  sh[:, 0] = rgb_to_sh_dc(rgb)
  sh[:, 1:4] = rng.normal(0, 0.05, (n, 3, 3))
  scales = np.stack([np.full(n, 0.012), np.full(n, 0.004), np.full(n, 0.004)], 1)
  scales = scales * np.exp(rng.normal(0, 0.2, (n, 3)))
  quats = rng.normal(size=(n, 4))
  f = lambda x: jnp.asarray(x, jnp.float32)
  return Gaussians(f(means), f(quats), f(scales), f(np.full(n, 0.8)), f(sh))


@dataclasses.dataclass
class SceneConfig:
  out: Path = Path("out/scene.png")
  """PNG to write (a grid of the views)."""
  views: int = 8
  """Number of cameras on a ring around the scene."""
  size: int = 192
  """Image width and height in pixels."""
  gaussians: int = 4000
  seed: int = 0


def render_ring(cfg: SceneConfig):
  import jax.numpy as jnp

  g = make_scene(cfg.gaussians, cfg.seed)
  mats = [
    look_at([0.6 * np.sin(a), 0.25, -0.6 * np.cos(a)], [0, 0, 0])
    for a in np.linspace(0, 2 * np.pi, cfg.views, endpoint=False)
  ]
  cams = make_camera(np.stack(mats), 1.6 * cfg.size, width=cfg.size, height=cfg.size)
  out = rasterize(g, cams, jnp.ones(3))
  return np.asarray(out.image)


def main(cfg: SceneConfig) -> None:
  from PIL import Image

  imgs = render_ring(cfg)
  cols = int(np.ceil(np.sqrt(len(imgs))))
  rows = int(np.ceil(len(imgs) / cols))
  h, w = imgs.shape[1:3]
  grid = np.ones((rows * h, cols * w, 3), np.float32)
  for i, im in enumerate(imgs):
    grid[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] = im
  cfg.out.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8)).save(cfg.out)
  print(f"wrote {cfg.out} ({len(imgs)} views, {cfg.gaussians} Gaussians)")
