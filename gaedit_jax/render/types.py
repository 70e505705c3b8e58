"""Data types of the rasterizer: Gaussians in, RenderOutput out, static RenderConfig."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Literal

import jax
import numpy as np

from gaedit_jax.errors import InputError

# Degree-0 spherical harmonic: colour = SH_C0 * sh[0] + 0.5 (the 3DGS convention, METHOD §2.4).
SH_C0 = 0.28209479177387814


def rgb_to_sh_dc(rgb):
  """The degree-0 SH coefficient whose colour is `rgb` (numpy or jax arrays alike)."""
  return (rgb - 0.5) / SH_C0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Gaussians:
  """World-space Gaussians, activated: the rasterizer's input.

  means [...,N,3]; quats [...,N,4] (wxyz, need not be normalised); scales [...,N,3] (> 0);
  opacities [...,N] in [0,1]; sh [...,N,K,3] with K = (d+1)^2 (the DC term is SH coefficient 0, so
  colour = SH(d) + 0.5 as in 3DGS). Leading dims: none (shared by all views) or views.

  screen_offset [...,N,2] (optional, pixels) is added to the projected 2D means. Pass zeros and
  differentiate w.r.t. it to read the screen-space gradient dL/dmu_2D that densification uses.
  """

  means: jax.Array
  quats: jax.Array
  scales: jax.Array
  opacities: jax.Array
  sh: jax.Array
  screen_offset: jax.Array | None = None

  @property
  def num(self) -> int:
    return self.means.shape[-2]


# Limits of the static settings, the same as the native kernels' (gaedit/gs_math.h).
MAX_TILE_SIZE = 16  # a CUDA compositing block holds at most 16 x 16 pixels
MAX_WABE_K = 32  # WABE slots per pixel (or per tile) the kernels keep
MAX_IMAGE_SIDE = 16384  # image width and height, pixels


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class RenderConfig:
  """Static rasterizer settings (hashable: a change recompiles). Validated when built: a bad
  value raises `InputError` naming the setting, the value and what is expected.

  Defaults reproduce the rasterizer of 3DGS / GaussianAvatars (graphdeco 59f5f77) with the WABE
  outputs of GaussianAvatar-Editor computed per pixel (the original's per-tile buffer was a race).

  alpha_clamp_grad: the backward through alpha = min(0.99, o G) where the clamp is active.
    "pass" (default, as the 3DGS CUDA backward): the gradient flows as if alpha = o G.
    "zero": the clamp's true derivative, no gradient to o and G there.
  wabe_visibility: which Gaussians fill the K WABE slots (the mask and the weights).
    "pixel" (default, the paper's definition): the first K accepted contributors of each pixel
    (alpha >= 1/255, before the pixel's termination), weight w = exp(-beta (1 - T)) alpha there.
    "tile" (the density of the released code's mask, deterministically): per tile of
    tile_size^2 pixels, the first K Gaussians in the tile's front-to-back order that are accepted
    contributors of at least one pixel of the tile, each with its largest w over those pixels;
    every pixel of the tile carries these K slots. The released kernel kept one 10-slot buffer per
    16x16 tile that all its pixels wrote without synchronisation, so its mask held at most 10
    Gaussians per tile, chosen by a race.
    Either way the slot weights are min-max normalised per pixel (empty slots count as 0) and
    averaged per Gaussian over its (pixel, slot) occurrences (`RenderOutput.wabe_weight`).
  """

  sh_degree: int = 3  # active SH degree (<= the degree stored in `sh`)
  tile_size: int = 16  # 1..16 (16: the original's 16x16 tiles)
  near_plane: float = 0.2  # cull Gaussians with view-space z <= near_plane (3DGS: 0.2)
  wabe_k: int = 10  # WABE: K slots, 1..32 (0: no WABE outputs, faster:
  # reconstruction does not need them)
  wabe_beta: float = 6.0  # WABE: w_k = exp(-beta (1 - T_k)) alpha_k, beta >= 0
  wabe_backward: bool = False  # scale every pixel-Gaussian gradient term by exp(-beta (1 - T_k))
  wabe_visibility: Literal["pixel", "tile"] = "pixel"
  alpha_clamp_grad: Literal["pass", "zero"] = "pass"
  # capacity of the tile-intersection list, per view. None: isect_per_gaussian * N + 4096.
  max_intersections: int | None = None
  isect_per_gaussian: float = 8.0
  # "auto": the native kernel of the arrays' device (C++ on CPU, CUDA on GPU); "reference": the
  # dense jnp oracle (render/reference.py), for tests and small scenes
  backend: Literal["auto", "reference"] = "auto"
  # data parallelism (gaedit_jax.parallel): split the views of a call over this 1-D "views" mesh
  # (the kernel runs per device under shard_map). None: one device.
  mesh: Any = None

  def __post_init__(self):
    def bad(name, expected):
      raise InputError(f"RenderConfig.{name} = {getattr(self, name)!r}: expected {expected}")

    if not _is_int(self.sh_degree) or not 0 <= self.sh_degree <= 3:
      bad("sh_degree", "an integer in [0, 3]")
    if not _is_int(self.tile_size) or not 1 <= self.tile_size <= MAX_TILE_SIZE:
      bad(
        "tile_size",
        f"an integer in [1, {MAX_TILE_SIZE}] (the CUDA kernel's tiles hold at most "
        f"{MAX_TILE_SIZE}x{MAX_TILE_SIZE} pixels)",
      )
    if not _is_real(self.near_plane) or not (math.isfinite(self.near_plane) and self.near_plane > 0):
      bad("near_plane", "a finite number > 0 (view-space depth, scene units)")
    if not _is_int(self.wabe_k) or not 0 <= self.wabe_k <= MAX_WABE_K:
      bad("wabe_k", f"an integer in [1, {MAX_WABE_K}], or 0 for no WABE outputs")
    if not _is_real(self.wabe_beta) or not (math.isfinite(self.wabe_beta) and self.wabe_beta >= 0):
      bad("wabe_beta", "a finite number >= 0")
    if not isinstance(self.wabe_backward, (bool, np.bool_)):
      bad("wabe_backward", "True or False")
    if self.wabe_visibility not in ("pixel", "tile"):
      bad("wabe_visibility", '"pixel" or "tile"')
    if self.alpha_clamp_grad not in ("pass", "zero"):
      bad("alpha_clamp_grad", '"pass" or "zero"')
    if self.max_intersections is not None and (
      not _is_int(self.max_intersections) or not 1 <= self.max_intersections < 2**31
    ):
      bad("max_intersections", "None or an integer in [1, 2^31)")
    if not _is_real(self.isect_per_gaussian) or not (
      math.isfinite(self.isect_per_gaussian) and self.isect_per_gaussian >= 0
    ):
      bad("isect_per_gaussian", "a finite number >= 0 (intersections per Gaussian and view, on top of a fixed 4096)")
    if self.backend not in ("auto", "reference"):
      bad("backend", '"auto" or "reference"')

  def capacity(self, num_gaussians: int) -> int:
    if self.max_intersections is not None:
      return int(self.max_intersections)
    return int(self.isect_per_gaussian * num_gaussians) + 4096


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RenderOutput:
  """image [...,H,W,3]; alpha [...,H,W]; depth [...,H,W] (expected view-space z, 0 where alpha=0);
  radii [...,N] int32 (0 = not drawn); wabe_mask [...,N] bool (in a WABE slot of some pixel: among
  its first K accepted contributors, or its tile's, see `RenderConfig.wabe_visibility`);
  wabe_weight [...,N] (mean min-max-normalised WABE weight over the Gaussian's (pixel, slot)
  occurrences, 0 if none); overflow [...] bool (the intersection buffer was
  too small: the image is incomplete and must not be used; raise max_intersections);
  intersections [...] int32 (the view's tile intersections, what its share of the buffer must
  hold, saturated at 2^30 - 1; 0 from the reference backend, which has no buffer)."""

  image: jax.Array
  alpha: jax.Array
  depth: jax.Array
  radii: jax.Array
  wabe_mask: jax.Array
  wabe_weight: jax.Array
  overflow: jax.Array
  intersections: jax.Array
