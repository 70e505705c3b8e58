"""Mouth Gaussians, the rendered mouth mask and the mouth-preservation loss (SPEC 5.3, 6.1).

The original editor reads offline LangSAM "mouth" masks (`<ID>_<SEQ>_mouth_mask.pth`, SPEC 5.3;
production code not released). We make the mask ourselves: the avatar is rendered with our own
rasterizer with colour 1 for the Gaussians bound to mouth faces (FLAME regions teeth | lips_tight |
lip_inside, the same set as the WABE exclusion, SPEC 6.1) and colour 0 for all others, opacities
and geometry unchanged, on a black background. The red channel is then the fraction of each
pixel's colour that mouth Gaussians contribute (occlusion honoured: a mouth Gaussian hidden behind
the lips contributes nothing), a soft mask in [0, 1]; thresholded at 0.5 by default (binary, as a
segmentation mask).

All functions are pure and jit-able (face masks are computed once, on the host, from the model).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.flame import FlameModel, region_face_mask, require_regions
from gaedit_jax.metrics import ssim
from gaedit_jax.render import rasterize
from gaedit_jax.render.types import Gaussians, RenderConfig

MOUTH_REGIONS = ("teeth", "lips_tight", "lip_inside")  # GAE:train.py:81-100 (SPEC 6.1)
MOUTH_LOSS_WEIGHT = 1000.0                               # SPEC 5.3: 1000 L1 + 1000 D-SSIM
_SH_C0 = 0.28209479177387814                             # colour = C0 * sh_dc + 0.5 (3DGS)


def mouth_face_mask(model: FlameModel, regions: Iterable[str] = MOUTH_REGIONS, *,
                    source: str | os.PathLike | None = None) -> np.ndarray:
  """bool [F] (numpy): faces of the union of the mouth regions (a face is in a region iff all its
  vertices are; `flame.region_face_mask`). Needs a model with teeth (`flame.add_teeth`); on the
  FLAME topology lips_tight / lip_inside are built in (`flame.complete_flame_regions`), other
  models bring them in their masks file. A missing region raises FlameFileError naming `source`
  (the model file) and the regions."""
  regions = tuple(regions)
  require_regions(model, regions, "the mouth mask of the edit (regions " + " | ".join(regions) + ")", source)
  return region_face_mask(model, regions)


def mouth_gaussians(binding: jax.Array, face_mask, active: jax.Array | None = None) -> jax.Array:
  """bool [C]: slots bound to a mouth face (and active, when `active` is given).

  binding [C] int32 face ids (`Avatar.binding`); face_mask bool [F] (`mouth_face_mask`)."""
  m = jnp.take(jnp.asarray(face_mask, bool), binding, axis=0)
  return m if active is None else m & active


def render_mouth_mask(gaussians: Gaussians, mouth: jax.Array, camera, config: RenderConfig = RenderConfig(),
                      *, threshold: float | None = 0.5) -> jax.Array:
  """Mouth mask [...,H,W] of posed Gaussians in the camera's views (no gradient flows).

  gaussians: world-space Gaussians (`rig.to_world`), shared or per view; mouth: bool [N]
  (`mouth_gaussians`); config: the render config of the loop (its capacities are reused; SH degree
  and WABE outputs are switched off here). threshold: None returns the soft coverage in [0, 1],
  else `coverage > threshold` as float32."""
  g = jax.tree_util.tree_map(jax.lax.stop_gradient, gaussians)
  n = g.means.shape[-2]
  colour = jnp.asarray(mouth, jnp.float32)                                  # [N]
  dc = jnp.broadcast_to(((colour - 0.5) / _SH_C0)[:, None, None], (n, 1, 3))  # SH DC giving colour
  g = dataclasses.replace(g, sh=dc, screen_offset=None)
  cfg = dataclasses.replace(config, sh_degree=0, wabe_k=0, wabe_backward=False)
  out = rasterize(g, camera, jnp.zeros(3, jnp.float32), cfg)
  cover = jnp.clip(out.image[..., 0], 0.0, 1.0)
  return cover if threshold is None else (cover > threshold).astype(jnp.float32)


def mouth_loss(render: jax.Array, photo: jax.Array, mask: jax.Array,
               weight: float = MOUTH_LOSS_WEIGHT) -> tuple[jax.Array, dict]:
  """SPEC 5.3: weight * (mean|I M - G M| + (1 - SSIM(I M, G M))) against the original photo G.

  render, photo [...,H,W,3] in [0,1]; mask [...,H,W]. As the original, the L1 mean and the SSIM map
  mean run over the whole image (pixels outside the mask count as zeros), not over the mask area.
  SSIM is `gaedit_jax.metrics.ssim` (GaussianAvatars' 11x11 Gaussian window). Returns
  (loss, {"mouth_l1", "mouth_dssim"})."""
  m = jnp.asarray(mask, render.dtype)[..., None]
  a, b = render * m, photo * m
  l1 = jnp.mean(jnp.abs(a - b))
  flat = lambda x: x.reshape((-1,) + x.shape[-3:])
  dssim = 1.0 - jnp.mean(ssim(flat(a), flat(b)))
  return weight * (l1 + dssim), {"mouth_l1": l1, "mouth_dssim": dssim}


__all__ = ["MOUTH_REGIONS", "MOUTH_LOSS_WEIGHT", "mouth_face_mask", "mouth_gaussians",
           "render_mouth_mask", "mouth_loss"]
