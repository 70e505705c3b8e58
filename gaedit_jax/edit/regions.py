"""Where an edit applies (METHOD §11): FLAME-region edits (`gaedit edit --region`) and the keep term.

Two restrictions share one mechanism, a per-pixel edit weight w in [0, 1] of each view:

* region (`--region face,lips`): w is the region's rendered mask (the avatar rendered with colour 1
  for the Gaussians bound to the region's faces and 0 elsewhere, `mouth.render_mouth_mask`, occlusion
  honoured; a pixel is in where the region gives more than half of the avatar's coverage,
  `region_image_mask`), feathered by `--region-feather` px in image space;
* edited views (`--editor frames` / `command`): w = 0 on every pixel of a view without an edited
  image (`editor.edited(context)`).

The edit losses see only w: L1 = mean(w |x - edit|) (pixels outside count as zeros, as the mouth
term), LPIPS and the GAN compare the render with the composite target w edit + (1 - w) original
(patch losses cannot be masked per pixel) and are weighted per view by whether it is edited. The
rest keeps the original appearance through the keep term

    L_keep = lambda_keep * mean((1 - w) |I - I_0|),

I_0 the render of the unedited avatar (its starting FLAME state) in the same view, rendered in the
step without gradient. Without a region and with every view edited (InstructPix2Pix, the synthetic
editor) w = 1 and nothing changes: the loop skips all of this.

Region Gaussians: only Gaussians bound to the region's faces, or to faces of the `--region-ring`
one-ring bands around them (faces sharing a vertex with the set, grown N times), are optimised.
Their update is scaled by the face weight (1 inside, 1 - d / (N + 1) on ring d) and Gaussians of
weight 0 keep every field bit-identical: their gradient is zeroed before Adam (their moments stay
zero) and their new value is selected with `where` (Adam's update of a zero gradient is zero only
while the moments are; scaling the gradient alone would not do, Adam undoes scales).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.edit.mouth import render_mouth_mask
from gaedit_jax.errors import InputError
from gaedit_jax.flame import FlameModel, region_face_mask
from gaedit_jax.render import rasterize
from gaedit_jax.render.types import RenderConfig

# User-facing names -> alternatives of model region unions; the first alternative whose regions the
# model has is used (FLAME's masks and GaussianAvatars' derived regions; the synthetic head's).
REGION_ALIASES: dict[str, tuple[tuple[str, ...], ...]] = {
  "face": (("face",),),
  "hair": (("hair",), ("scalp",)),
  "scalp": (("scalp",),),
  "lips": (("lips",), ("lips_tight",)),
  "eyes": (("left_eye", "right_eye"), ("eye_region", "left_eyeball", "right_eyeball")),
  "nose": (("nose",),),
  "ears": (("ears",), ("left_ear", "right_ear")),
  "neck": (("neck",),),
  "teeth": (("teeth",),),
}


def _alias_regions(model: FlameModel, alias: str) -> tuple[str, ...] | None:
  for alt in REGION_ALIASES[alias]:
    if all(n in model.region_names for n in alt):
      return alt
  return None


def available_regions(model: FlameModel) -> list[tuple[str, tuple[str, ...], int]]:
  """(name, model regions, faces) of every name `--region` accepts on this model: the aliases
  first, then the model's own region names; only those with at least one face."""
  out = []
  for a in REGION_ALIASES:
    regs = _alias_regions(model, a)
    if regs is not None:
      n = int(region_face_mask(model, regs).sum())
      if n:
        out.append((a, regs, n))
  for r in model.region_names:
    if r not in REGION_ALIASES:
      n = int(region_face_mask(model, r).sum())
      if n:
        out.append((r, (r,), n))
  return out


def format_regions(model: FlameModel) -> str:
  rows = [f"{n:<24} {f:>6} faces  ({' | '.join(r)})" for n, r, f in available_regions(model)]
  return "\n".join(["region                    faces  (model regions)"] + rows)


def resolve_regions(model: FlameModel, spec: str | Iterable[str], flag: str = "--region") -> tuple[str, ...]:
  """Model region names of a `--region` value ("face,lips" or a list of names). Unknown names and
  regions without faces are an InputError naming the flag and the regions the model offers."""
  names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
  if not names:
    raise InputError(f"{flag}: expected region names separated by commas, got {spec!r}")
  offered = {n: r for n, r, _ in available_regions(model)}
  out: list[str] = []
  for n in names:
    if n not in offered:
      raise InputError(
        f"{flag}: region {n!r} is not available on this model (with faces: {', '.join(offered)}; "
        "see gaedit edit --list-regions)"
      )
    out += [r for r in offered[n] if r not in out]
  return tuple(out)


def face_rings(faces: np.ndarray, core: np.ndarray, rings: int) -> np.ndarray:
  """int [F]: 0 for the faces of `core` (bool [F]), d for the faces of the d-th one-ring band around
  it (sharing a vertex with the faces of distance < d), d <= rings; -1 for the others."""
  faces = np.asarray(faces)
  dist = np.where(np.asarray(core, bool), 0, -1).astype(np.int32)
  nv = int(faces.max()) + 1 if faces.size else 0
  for d in range(1, int(rings) + 1):
    verts = np.zeros(nv, bool)
    verts[faces[dist >= 0].reshape(-1)] = True
    grow = verts[faces].any(axis=1) & (dist < 0)
    if not grow.any():
      break
    dist[grow] = d
  return dist


def face_weights(dist: np.ndarray, rings: int) -> np.ndarray:
  """float32 [F] update weight of the faces: 1 in the region, 1 - d / (rings + 1) on ring d, 0 outside."""
  w = 1.0 - dist.astype(np.float32) / (rings + 1)
  return np.where(dist >= 0, w, 0.0).astype(np.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RegionSelection:
  """Per-Gaussian region data of the step: weight [C] float32 (update scale, 0 = frozen), core [C]
  bool (bound to a face of the region itself: drawn into the region's image mask)."""

  weight: jax.Array
  core: jax.Array

  @staticmethod
  def make(model: FlameModel, names: Iterable[str], binding, active, rings: int = 1) -> "RegionSelection":
    core_f = region_face_mask(model, tuple(names))
    w_f = face_weights(face_rings(np.asarray(model.faces), core_f, rings), rings)
    b = np.asarray(binding)
    act = np.asarray(active, bool)
    return RegionSelection(jnp.asarray(np.where(act, w_f[b], 0.0), jnp.float32), jnp.asarray(core_f[b] & act))


def feather(mask: jax.Array, px: float) -> jax.Array:
  """Soft border of a binary mask [...,H,W]: max(mask, Gaussian blur of sigma px / 2), so the mask
  stays 1 inside and fades from 1/2 at its border to ~0 px pixels outside. px = 0: unchanged."""
  if px <= 0:
    return mask
  sigma = px / 2.0
  r = max(1, int(math.ceil(2.0 * sigma)))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k = jnp.asarray(k / k.sum(), mask.dtype)

  def blur(x, axis):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad, mode="edge")
    n = x.shape[axis]
    return sum(k[i] * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i in range(2 * r + 1))

  return jnp.maximum(mask, blur(blur(mask, -1), -2))


def region_image_mask(gaussians, core: jax.Array, camera, render_cfg: RenderConfig) -> jax.Array:
  """Binary mask [...,H,W] of the pixels whose colour comes mostly from the region's Gaussians: the
  region's coverage (`mouth.render_mouth_mask`, soft) over the whole avatar's (the same render with
  every Gaussian coloured 1) above 1/2, where the avatar covers at least 1% of the pixel (so a
  half-transparent avatar still has a region)."""
  g = jax.lax.stop_gradient(gaussians)
  region = render_mouth_mask(g, core, camera, render_cfg, threshold=None)
  total = render_mouth_mask(g, jnp.ones_like(core), camera, render_cfg, threshold=None)
  return ((region > 0.5 * total) & (total > 0.01)).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------
# The step's side: inputs, settings, weights, losses, restricted update
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KeepSettings:
  """Static settings: lambda_keep (weight of L_keep), region (a RegionSelection is passed),
  feather (px), views (the editor says per view whether it has an edit)."""

  lambda_keep: float = 10.0
  region: bool = False
  feather: float = 2.0
  views: bool = False

  @property
  def active(self) -> bool:
    return self.region or self.views


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KeepInputs:
  """Step arguments of the keep term: the unedited avatar and its per-timestep FLAME state (the
  edit's start), and the region selection (or None)."""

  avatar: Any
  flame: Any
  region: RegionSelection | None = None


@dataclasses.dataclass(frozen=True)
class KeepParts:
  """Per-step arrays: original render [B,H,W,3], pixel edit weight w [B,H,W], view weight [B]."""

  original: jax.Array
  weight: jax.Array
  view: jax.Array

  def composite(self, target: jax.Array, frame) -> jax.Array:
    """w edit + (1 - w) original, in the editor's frame (target is already in it)."""
    w = frame(jnp.broadcast_to(self.weight[..., None], self.original.shape))
    return w * target + (1.0 - w) * frame(self.original)

  def edit_l1(self, x: jax.Array, target: jax.Array, frame) -> jax.Array:
    w = frame(jnp.broadcast_to(self.weight[..., None], self.original.shape))
    return jnp.mean(w * jnp.abs(x - target))

  def view_mean(self, per_view: jax.Array) -> jax.Array:
    """Mean over the views of a per-view loss, unedited views counting as zeros."""
    return jnp.mean(jnp.reshape(per_view, self.view.shape) * self.view)

  @property
  def gan_scale(self) -> jax.Array:
    return jnp.mean(self.view)

  def keep_loss(self, image: jax.Array, weight: float) -> tuple[jax.Array, dict]:
    l = jnp.mean((1.0 - self.weight)[..., None] * jnp.abs(image - self.original))
    return weight * l, {"keep_l1": l, "edit_area": jnp.mean(self.weight)}


def keep_parts(
  inputs: KeepInputs,
  s: KeepSettings,
  editor,
  context,
  posed_now,
  pose_fn,
  camera,
  background,
  render_cfg: RenderConfig,
) -> KeepParts:
  """The step's KeepParts. posed_now: the current world Gaussians (detached; the region mask is
  drawn with the current geometry, as the mouth mask); pose_fn(avatar, flame) -> world Gaussians."""
  cfg = dataclasses.replace(render_cfg, wabe_k=0, wabe_backward=False)
  orig = rasterize(jax.lax.stop_gradient(pose_fn(inputs.avatar, inputs.flame)), camera, background, cfg).image
  orig = jax.lax.stop_gradient(orig)
  b = orig.shape[:-3]
  view = editor.edited(context).astype(jnp.float32).reshape(b) if s.views else jnp.ones(b, jnp.float32)
  if s.region:
    m = feather(region_image_mask(posed_now, inputs.region.core, camera, render_cfg), s.feather)
  else:
    m = jnp.ones(orig.shape[:-1], jnp.float32)
  return KeepParts(orig, m * view.reshape(b + (1, 1)), view)


def keep_setup(cfg, settings, editor, model: FlameModel, avatar, flame):
  """(settings with their KeepSettings, KeepInputs or None) of an edit run: active with --region or
  an editor that edits only some views (`editor.edited`). cfg: the EditConfig (region,
  region_ring, region_feather, lambda_keep); avatar, flame: the edit's start (kept, not donated)."""
  ks = KeepSettings(
    lambda_keep=float(cfg.lambda_keep),
    region=cfg.region is not None,
    feather=float(cfg.region_feather),
    views=hasattr(editor, "edited"),
  )
  if not ks.active:
    return settings, None
  sel = None
  if ks.region:
    names = resolve_regions(model, cfg.region)
    sel = RegionSelection.make(model, names, avatar.binding, avatar.active, cfg.region_ring)
  copy = lambda t: jax.tree.map(lambda x: jnp.array(x, copy=True), t)
  return dataclasses.replace(settings, keep=ks), KeepInputs(copy(avatar), copy(flame), sel)


def mask_region_gradient(grads: dict, region: RegionSelection) -> dict:
  """Zeroes the gradient of every field of the Gaussians outside the region (weight 0)."""
  on = region.weight > 0
  return {k: jnp.where(on.reshape((-1,) + (1,) * (g.ndim - 1)), g, jnp.zeros_like(g)) for k, g in grads.items()}


def restrict_update(old: dict, new: dict, region: RegionSelection) -> dict:
  """old + weight (new - old) per Gaussian; weight 1 gives `new`, weight 0 gives `old` bit for bit."""

  def one(o, n):
    w = region.weight.reshape((-1,) + (1,) * (o.ndim - 1)).astype(o.dtype)
    partial = jnp.where(w >= 1, n, o + w * (n - o))
    return jnp.where(w > 0, partial, o)

  return {k: one(old[k], new[k]) for k in new}


__all__ = [
  "REGION_ALIASES",
  "available_regions",
  "format_regions",
  "resolve_regions",
  "face_rings",
  "face_weights",
  "RegionSelection",
  "feather",
  "region_image_mask",
  "KeepSettings",
  "KeepInputs",
  "KeepParts",
  "keep_parts",
  "keep_setup",
  "mask_region_gradient",
  "restrict_update",
]
