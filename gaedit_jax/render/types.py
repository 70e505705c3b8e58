"""Data types of the rasterizer: Gaussians in, RenderOutput out, static RenderConfig."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax


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


@dataclasses.dataclass(frozen=True)
class RenderConfig:
  """Static rasterizer settings (hashable: a change recompiles).

  Defaults reproduce the rasterizer of 3DGS / GaussianAvatars (graphdeco 59f5f77) with the WABE
  outputs of GaussianAvatar-Editor computed per pixel (the original's per-tile buffer was a race).
  """

  sh_degree: int = 3             # active SH degree (<= the degree stored in `sh`)
  tile_size: int = 16
  near_plane: float = 0.2        # cull Gaussians with view-space z <= near_plane (3DGS: 0.2)
  wabe_k: int = 10               # WABE: first K accepted contributors of each pixel (0: no WABE
                                 # outputs, faster: reconstruction does not need them)
  wabe_beta: float = 6.0         # WABE: w_k = exp(-beta (1 - T_k)) alpha_k
  wabe_backward: bool = False    # scale every pixel-Gaussian gradient term by exp(-beta (1 - T_k))
  # capacity of the tile-intersection list, per view. None: isect_per_gaussian * N + 4096.
  max_intersections: int | None = None
  isect_per_gaussian: float = 8.0
  backend: Literal["auto", "native", "reference"] = "auto"
  # data parallelism (gaedit_jax.parallel): split the views of a call over this 1-D "views" mesh
  # (the kernel runs per device under shard_map). None: one device.
  mesh: Any = None

  def capacity(self, num_gaussians: int) -> int:
    if self.max_intersections is not None:
      return int(self.max_intersections)
    return int(self.isect_per_gaussian * num_gaussians) + 4096


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RenderOutput:
  """image [...,H,W,3]; alpha [...,H,W]; depth [...,H,W] (expected view-space z, 0 where alpha=0);
  radii [...,N] int32 (0 = not drawn); wabe_mask [...,N] bool (among the first K accepted
  contributors of some pixel); wabe_weight [...,N] (mean min-max-normalised WABE weight over the
  Gaussian's (pixel, slot) occurrences, 0 if none); overflow [...] bool (the intersection buffer was
  too small: the image is incomplete and must not be used; raise max_intersections)."""

  image: jax.Array
  alpha: jax.Array
  depth: jax.Array
  radii: jax.Array
  wabe_mask: jax.Array
  wabe_weight: jax.Array
  overflow: jax.Array
