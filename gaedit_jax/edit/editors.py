"""2D editors for the editing loop: the `Editor` protocol and its implementations.

An editor is a pure, jit-able callable and a pytree (its arrays are leaves, so a jitted step takes
it as an argument instead of baking its data in as constants):

    editor(key, renders [B,H,W,3], originals [B,H,W,3], context: EditContext) -> edited

with images in [0, 1]; `renders` are the avatar's current renders (the start of the edit),
`originals` the dataset photos of the same views (the condition), `context` the views' camera
index and timestep. The output size is declared by `editor.square_size`:

* None: edited [B,H,W,3], the inputs' size (the synthetic editor);
* S: edited [B,S,S,3] in the square working frame of `nets.images.to_square(x, S)` (white padding,
  bilinear align_corners=True), as InstructPix2Pix returns it; the loop then compares it with
  `to_square(render, S)` (METHOD §5.3: the original's L1 / LPIPS / GAN all run at 512x512).

Implementations:
* `SyntheticEditor`: for the built-in synthetic head. It returns the ground-truth edited image of
  the requested (camera, timestep) (the same dataset rendered with the second, face-paint texture:
  `gaedit synth --texture facepaint`), perturbed per call with view-inconsistent noise that imitates
  InstructPix2Pix's inconsistency across views: a random strength, per-channel colour gain and
  offset, a few local colour blobs, and a small smooth warp; deterministic given the key, different
  for every view.
* `IP2PEditor`: wraps `gaedit_jax.nets.ip2p.InstructPix2Pix` (one prompt embedding per run).
* `FramesEditor`: a table of edited images of some training views, made outside the loop (by any 2D
  editor from `gaedit export-frames`, `--editor frames`, or by an external command during the run,
  `--editor command`, edit.external); views without an edit are reported by `edited(context)`
  and the loop keeps them close to the unedited avatar (edit.regions).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.data.dataset import AvatarDataset

# ------------------------------------------------------------------------------------------------
# Protocol
# ------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EditContext:
  """What an editor may know about the views it edits: camera_index [B] int32, timestep [B] int32
  (index into the sequence's FLAME parameters, as `data.Batch.timestep`), iteration [] int32."""

  camera_index: jax.Array
  timestep: jax.Array
  iteration: jax.Array = dataclasses.field(default_factory=lambda: jnp.zeros((), jnp.int32))

  @staticmethod
  def make(camera_index, timestep, iteration=0) -> "EditContext":
    ci = jnp.atleast_1d(jnp.asarray(camera_index, jnp.int32))
    ts = jnp.atleast_1d(jnp.asarray(timestep, jnp.int32))
    return EditContext(ci, ts, jnp.asarray(iteration, jnp.int32))

  @staticmethod
  def from_batch(batch, iteration=0) -> "EditContext":
    """From a `gaedit_jax.data.dataset.Batch`."""
    return EditContext.make(batch.camera_index, batch.timestep, iteration)


@runtime_checkable
class Editor(Protocol):
  """A 2D editor (see the module docstring). Implementations are pytrees."""

  square_size: int | None

  def __call__(self, key: jax.Array, renders: jax.Array, originals: jax.Array, context: EditContext) -> jax.Array: ...


def _check_images(renders, originals):
  if renders.ndim != 4 or renders.shape[-1] != 3 or originals.shape != renders.shape:
    raise ValueError(f"editor: renders and originals must both be [B,H,W,3]; got {renders.shape} and {originals.shape}")


# ------------------------------------------------------------------------------------------------
# Synthetic-target editor
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
  """View-inconsistent perturbation of the synthetic editor (per image; sizes relative to the
  image's short side). A random strength s ~ U[min_strength, 1] * strength scales every term."""

  strength: float = 1.0  # 0: exact targets
  min_strength: float = 0.25
  colour_gain: float = 0.06  # std of the per-channel multiplicative shift
  colour_offset: float = 0.03  # std of the per-channel additive shift
  num_blobs: int = 3
  blob_amplitude: float = 0.18  # std of a blob's per-channel colour change at its centre
  blob_radius: tuple[float, float] = (0.04, 0.12)
  warp: float = 0.012  # std of the displacement at the warp grid's nodes
  warp_grid: int = 4  # nodes per side of the smooth displacement grid


def _perturb(key, target, fg, cfg: NoiseConfig):
  """One image: target [H,W,3], fg [H,W] (foreground weight) -> perturbed [H,W,3] in [0,1]."""
  h, w = target.shape[:2]
  short = float(min(h, w))
  ks = jax.random.split(key, 8)
  s = cfg.strength * jax.random.uniform(ks[0], (), minval=cfg.min_strength, maxval=1.0)
  # small smooth warp: coarse random displacements, bilinearly upsampled, bilinear sampling
  g = cfg.warp_grid
  disp = jax.random.normal(ks[1], (2, g, g)) * (cfg.warp * short) * s
  disp = jax.image.resize(disp, (2, h, w), "linear")
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  coords = [yy + disp[0], xx + disp[1]]
  sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, coords, order=1, mode="nearest")
  warped = jnp.stack([sample(target[..., c]) for c in range(3)], axis=-1)
  fgw = sample(fg)[..., None]
  # global colour shift (foreground only: the background stays the avatar's background colour)
  gain = 1.0 + jax.random.normal(ks[2], (3,)) * cfg.colour_gain * s
  offset = jax.random.normal(ks[3], (3,)) * cfg.colour_offset * s
  delta = warped * (gain - 1.0) + offset
  # local blobs, placed on the foreground (centres drawn with probability ~ fg)
  n = cfg.num_blobs
  if n > 0:
    flat = jnp.log(fg.reshape(-1) + 1e-6)
    idx = jax.random.categorical(ks[4], flat, shape=(n,))
    cy, cx = (idx // w).astype(jnp.float32), (idx % w).astype(jnp.float32)
    r = jax.random.uniform(ks[5], (n,), minval=cfg.blob_radius[0], maxval=cfg.blob_radius[1]) * short
    col = jax.random.normal(ks[6], (n, 3)) * cfg.blob_amplitude * s
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    bump = jnp.exp(-0.5 * d2 / (r[:, None, None] ** 2))  # [n,H,W]
    delta = delta + jnp.einsum("nhw,nc->hwc", bump, col)
  return jnp.clip(warped + fgw * delta, 0.0, 1.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SyntheticEditor:
  """Ground-truth edit targets plus view-inconsistent noise (see the module docstring).

  targets [N,H,W,3] uint8 (edited images), fg [N,H,W] uint8 (foreground masks), index [C,T] int32
  (row of (camera_index, timestep) in targets; -1: not available). Build with `from_dataset`.
  """

  targets: jax.Array
  fg: jax.Array
  index: jax.Array
  noise: NoiseConfig = dataclasses.field(metadata=dict(static=True), default=NoiseConfig())
  square_size: int | None = dataclasses.field(metadata=dict(static=True), default=None)

  @staticmethod
  def from_dataset(
    root: str | os.PathLike,
    noise: NoiseConfig = NoiseConfig(),
    *,
    image_scale: float = 1.0,
    white_background: bool = True,
  ) -> "SyntheticEditor":
    """Loads every frame (`transforms.json`, all splits) of an edited dataset folder, e.g. one made
    by `gaedit synth OUT --texture facepaint` with the same seed and sizes as the source data."""

    ds = AvatarDataset(
      root, "all", white_background=white_background, image_scale=image_scale, cache_size=0, load_masks=True
    )
    to_u8 = lambda a: np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    imgs, fgs = [], []
    for i in range(len(ds)):
      f = ds[i]
      imgs.append(to_u8(f.image))
      if f.mask is not None:
        fgs.append(to_u8(f.mask))
      else:  # no fg mask: estimate the foreground as "not background-coloured"
        fgs.append(to_u8(np.clip(np.abs(f.image - ds.background).max(-1) / 0.05, 0, 1)))
    cams, ts = ds.camera_indices, ds.timesteps
    index = np.full((cams.max() + 1, ts.max() + 1), -1, np.int32)
    index[cams, ts] = np.arange(len(ds), dtype=np.int32)
    return SyntheticEditor(jnp.asarray(np.stack(imgs)), jnp.asarray(np.stack(fgs)), jnp.asarray(index), noise)

  @property
  def image_size(self) -> tuple[int, int]:
    return tuple(self.targets.shape[1:3])

  def covers(self, context: EditContext) -> jax.Array:
    """bool [B]: whether a target exists for each (camera_index, timestep) of the context."""
    c, t = context.camera_index, context.timestep
    ok = (c >= 0) & (c < self.index.shape[0]) & (t >= 0) & (t < self.index.shape[1])
    return ok & (self.index[jnp.clip(c, 0, self.index.shape[0] - 1), jnp.clip(t, 0, self.index.shape[1] - 1)] >= 0)

  def target(self, context: EditContext) -> tuple[jax.Array, jax.Array]:
    """Noise-free (targets [B,H,W,3] float32, fg [B,H,W] float32) of the context's views. Views
    without a target (see `covers`) read row 0: check `covers` on the host."""
    c = jnp.clip(context.camera_index, 0, self.index.shape[0] - 1)
    t = jnp.clip(context.timestep, 0, self.index.shape[1] - 1)
    row = jnp.maximum(self.index[c, t], 0)
    return (self.targets[row].astype(jnp.float32) / 255.0, self.fg[row].astype(jnp.float32) / 255.0)

  def __call__(self, key: jax.Array, renders: jax.Array, originals: jax.Array, context: EditContext) -> jax.Array:
    _check_images(renders, originals)
    if tuple(renders.shape[1:3]) != self.image_size:
      raise ValueError(
        f"SyntheticEditor: renders are {renders.shape[1:3]} but the targets are "
        f"{self.image_size}; load the edited dataset with the same image_scale"
      )
    tgt, fg = self.target(context)
    if self.noise.strength == 0:
      return tgt
    # one key per view: the call's key folded with (camera, timestep) -> inconsistent across views
    keys = jax.vmap(lambda c, t: jax.random.fold_in(jax.random.fold_in(key, c), t))(
      context.camera_index, context.timestep
    )
    return jax.vmap(lambda k, x, m: _perturb(k, x, m, self.noise))(keys, tgt, fg)


# ------------------------------------------------------------------------------------------------
# InstructPix2Pix adapter
# ------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class IP2PEditor:
  """`InstructPix2Pix` as an `Editor`: params and the prompt embedding [3,77,D] are leaves, the
  model object is static. output "square" (default, METHOD §5.3) returns [B,S,S,3] in the
  `to_square` frame; "input" resizes back to [B,H,W,3]. The context is not used (IP2P edits each
  image on its own: that is the inconsistency the method fights)."""

  params: Any
  prompt_embeds: jax.Array
  model: Any = dataclasses.field(metadata=dict(static=True), default=None)
  output: str = dataclasses.field(metadata=dict(static=True), default="square")

  @staticmethod
  def create(ip2p, prompt: str, *, negative_prompt: str = "", output: str = "square") -> "IP2PEditor":
    if output not in ("square", "input"):
      raise ValueError(f"output must be 'square' or 'input', got {output!r}")
    return IP2PEditor(ip2p.params, ip2p.encode_prompt(prompt, negative_prompt), ip2p, output)

  @property
  def square_size(self) -> int | None:
    return self.model.config.size if self.output == "square" else None

  def __call__(self, key, renders, originals, context: EditContext) -> jax.Array:
    _check_images(renders, originals)
    return self.model.edit_fn(self.params, renders, originals, self.prompt_embeds, key, output=self.output)


# ------------------------------------------------------------------------------------------------
# Edited frames (from files or an external command)
# ------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FramesEditor:
  """Edited images of some views: images [K,H,W,3] uint8, valid [K] bool (row holds an edit),
  index [C,T] int32 (row of (camera_index, timestep), -1: none). Calls return the row's edit, or the
  render itself for a view without one (`edited` says which; the loop gives those views no edit
  loss). Deterministic: the key is not used."""

  images: jax.Array
  valid: jax.Array
  index: jax.Array
  square_size: int | None = dataclasses.field(metadata=dict(static=True), default=None)

  @staticmethod
  def from_arrays(images, valid, camera_index, timestep, shape: tuple[int, int] | None = None) -> "FramesEditor":
    """Rows `images` [K,H,W,3] uint8 of the views (camera_index [K], timestep [K]); the index table
    covers at least `shape` = (cameras, timesteps)."""
    ci, ts = np.asarray(camera_index, np.int64), np.asarray(timestep, np.int64)
    c = max(int(ci.max(initial=-1)) + 1, shape[0] if shape else 0)
    t = max(int(ts.max(initial=-1)) + 1, shape[1] if shape else 0)
    index = np.full((max(c, 1), max(t, 1)), -1, np.int32)
    index[ci, ts] = np.arange(len(ci), dtype=np.int32)
    return FramesEditor(jnp.asarray(images, jnp.uint8), jnp.asarray(valid, bool), jnp.asarray(index))

  def rows(self, context: EditContext) -> jax.Array:
    c, t = context.camera_index, context.timestep
    ok = (c >= 0) & (c < self.index.shape[0]) & (t >= 0) & (t < self.index.shape[1])
    r = self.index[jnp.clip(c, 0, self.index.shape[0] - 1), jnp.clip(t, 0, self.index.shape[1] - 1)]
    return jnp.where(ok, r, -1)

  def edited(self, context: EditContext) -> jax.Array:
    """bool [B]: whether each view of the context has an edited image."""
    r = self.rows(context)
    return (r >= 0) & self.valid[jnp.maximum(r, 0)]

  def __call__(self, key: jax.Array, renders: jax.Array, originals: jax.Array, context: EditContext) -> jax.Array:
    _check_images(renders, originals)
    if tuple(renders.shape[1:3]) != tuple(self.images.shape[1:3]):
      raise ValueError(f"FramesEditor: renders are {renders.shape[1:3]} but the edits are {self.images.shape[1:3]}")
    img = self.images[jnp.maximum(self.rows(context), 0)].astype(jnp.float32) / 255.0
    return jnp.where(self.edited(context)[:, None, None, None], img, renders)


__all__ = ["EditContext", "Editor", "NoiseConfig", "SyntheticEditor", "IP2PEditor", "FramesEditor"]
