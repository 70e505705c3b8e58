"""Mouth Gaussians, the mouth mask (rendered, or read from files) and the mouth-preservation loss
(METHOD §5.3, 6.1).

The original editor reads offline LangSAM "mouth" masks (METHOD §5.3; the code that makes them is not
released); `MouthMasks` reads them in the original's layouts (`--mouth-masks`). Without them we make
the mask ourselves: the avatar is rendered with our own
rasterizer with colour 1 for the Gaussians bound to mouth faces (FLAME regions teeth | lips_tight |
lip_inside, the same set as the WABE exclusion, METHOD §6) and colour 0 for all others, opacities
and geometry unchanged, on a black background. The red channel is then the fraction of each
pixel's colour that mouth Gaussians contribute (occlusion honoured: a mouth Gaussian hidden behind
the lips contributes nothing), a soft mask in [0, 1]; thresholded at 0.5 by default (binary, as a
segmentation mask).

All functions are pure and jit-able (face masks are computed once, on the host, from the model).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.errors import InputError
from gaedit_jax.flame import FlameModel, region_face_mask, require_regions
from gaedit_jax.metrics import ssim
from gaedit_jax.nets import torch_pickle
from gaedit_jax.render import rasterize
from gaedit_jax.render.types import Gaussians, RenderConfig, rgb_to_sh_dc

MOUTH_REGIONS = ("teeth", "lips_tight", "lip_inside")  # GAE:train.py:81-100 (METHOD §6)
MOUTH_LOSS_WEIGHT = 1000.0  # METHOD §5.3: 1000 L1 + 1000 D-SSIM


def mouth_face_mask(
  model: FlameModel, regions: Iterable[str] = MOUTH_REGIONS, *, source: str | os.PathLike | None = None
) -> np.ndarray:
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


def render_mouth_mask(
  gaussians: Gaussians,
  mouth: jax.Array,
  camera,
  config: RenderConfig = RenderConfig(),
  *,
  threshold: float | None = 0.5,
) -> jax.Array:
  """Mouth mask [...,H,W] of posed Gaussians in the camera's views (no gradient flows).

  gaussians: world-space Gaussians (`rig.to_world`), shared or per view; mouth: bool [N]
  (`mouth_gaussians`); config: the render config of the loop (its capacities are reused; SH degree
  and WABE outputs are switched off here). threshold: None returns the soft coverage in [0, 1],
  else `coverage > threshold` as float32."""
  g = jax.tree_util.tree_map(jax.lax.stop_gradient, gaussians)
  n = g.means.shape[-2]
  colour = jnp.asarray(mouth, jnp.float32)  # [N]
  dc = jnp.broadcast_to(rgb_to_sh_dc(colour)[:, None, None], (n, 1, 3))  # SH DC giving colour
  g = dataclasses.replace(g, sh=dc, screen_offset=None)
  cfg = dataclasses.replace(config, sh_degree=0, wabe_k=0, wabe_backward=False)
  out = rasterize(g, camera, jnp.zeros(3, jnp.float32), cfg)
  cover = jnp.clip(out.image[..., 0], 0.0, 1.0)
  return cover if threshold is None else (cover > threshold).astype(jnp.float32)


def mouth_loss(
  render: jax.Array, photo: jax.Array, mask: jax.Array, weight: float = MOUTH_LOSS_WEIGHT
) -> tuple[jax.Array, dict]:
  """METHOD §5.3: weight * (mean|I M - G M| + (1 - SSIM(I M, G M))) against the original photo G.

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


# ------------------------------------------------------------------------------------------------
# Mouth masks from files (GAE:scene/flame_gaussian_model.py:107-146, GAE:train.py:282-287)
# ------------------------------------------------------------------------------------------------

MASK_SUFFIXES = (".png", ".pth", ".pt")
_FRAME_STEM = re.compile(r"^(\d+)_(?:.*_)?(\d+)$")


def _frame_key(stem: str):
  """(timestep, camera) of a `<timestep>_..._<camera>` file stem, as the original parses image and
  mask names (first and last `_` fields); the stem itself when it has another form."""
  m = _FRAME_STEM.match(stem)
  return (int(m.group(1)), int(m.group(2))) if m else stem


def _sequence_name(image_path: Path) -> str:
  """The sequence folder of an image (`<sequence>/images/<file>`, GAE:train.py:282)."""
  return Path(image_path).parent.parent.name


def _mask_values(arr: np.ndarray, where: str) -> np.ndarray:
  """A mask array as float32 in [0, 1] (1 = mouth): bool as is, integers 0/1 or 0..255, floats
  in [0, 1]; leading / trailing singleton axes are dropped, two axes (H, W) must remain."""
  a = np.squeeze(np.asarray(arr))
  if a.ndim != 2:
    raise InputError(
      f"{where}: expected one mask of shape [H, W] (optionally with singleton axes), got shape {tuple(np.shape(arr))}"
    )
  if a.dtype == np.bool_:
    return a.astype(np.float32)
  if np.issubdtype(a.dtype, np.integer):
    return a.astype(np.float32) / (255.0 if a.max(initial=0) > 1 else 1.0)
  a = a.astype(np.float32)
  if not np.all(np.isfinite(a)) or a.min(initial=0) < 0 or a.max(initial=0) > 1:
    raise InputError(f"{where}: mask values must be in [0, 1] (1 = mouth), got [{a.min()}, {a.max()}]")
  return a


def _resample(mask: np.ndarray, h: int, w: int) -> np.ndarray:
  """Area average down, bilinear up (the dataset's photo resampling, `data.dataset._resize`)."""
  from PIL import Image

  im = Image.fromarray(np.ascontiguousarray(mask, np.float32))  # mode "F"
  down = w < mask.shape[1]
  return np.asarray(im.resize((w, h), Image.Resampling.BOX if down else Image.Resampling.BILINEAR), np.float32)


class MouthMasks:
  """Per-frame mouth masks from files, for the frames of a dataset (`data.dataset.AvatarDataset`
  or anything with `records` and `image_size`), resampled to its image size.

  The original reads LangSAM's per-image output folder (`.../mouth/mask/*.*`, one `torch.save`d
  [H, W] tensor per image, named `<timestep>_<camera>` as the image) and caches it as one file
  `<ID>_<SEQ>_mouth_mask.pth` = {sequence id: tensor [T, cameras, H, W]} (the file shipped with its
  base avatars); the mask multiplies both images, so 1 (True) = mouth, at the photos' resolution
  (802x550). `source` may be:
  * a folder with one mask per image, named as the image with suffix .png (grey, 255 = mouth),
    .pth or .pt (a tensor, read without torch and without running code); frames of several
    sequence folders (UNION data) read `source/<sequence folder>/`; names are matched by their
    (timestep, camera) numbers, so `00012_03` and `12_3` are the same frame;
  * the original's dict file: the sequence id is the second `_` field of the sequence folder's name
    (`306_EMO-1_v16_...` -> `EMO-1`, as GAE:train.py:282), or the only key; indexed with the image
    name's (timestep, camera).
  Masks must be at the photos' size in the dataset files or at the dataset's (scaled) image size.
  Every frame is checked when the object is made (a missing or malformed mask is an InputError that
  names the frame and the file), so a run does not stop midway."""

  def __init__(self, source: str | os.PathLike, dataset, *, cache_size: int = 512):
    self.source = Path(source)
    self.records = list(dataset.records)
    self.size = tuple(dataset.image_size)  # (H, W) of the run
    self.cache_size = int(cache_size)
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._arrays: dict = {}
    if self.source.is_dir():
      self._files = self._index_folder()
    elif self.source.is_file():
      self._files = None
      self._read_dict()
    else:
      raise InputError(f"--mouth-masks {self.source}: no such folder or file")
    for i in range(len(self.records)):  # every frame, before the first step
      self._read(i, check_only=True)

  # -- folder layout ----------------------------------------------------------------------------
  def _index_folder(self) -> list[Path]:
    seqs = sorted({_sequence_name(r.image_path) for r in self.records})
    per_seq = all((self.source / s).is_dir() for s in seqs)
    if len(seqs) > 1 and not per_seq:
      raise InputError(
        f"--mouth-masks {self.source}: the frames come from {len(seqs)} sequence folders "
        f"({', '.join(seqs[:3])}...); put each one's masks in {self.source}/<sequence folder>/"
      )
    listing: dict[Path, dict] = {}
    files = []
    for r in self.records:
      d = self.source / _sequence_name(r.image_path) if per_seq else self.source
      if d not in listing:
        listing[d] = {}
        for p in sorted(d.iterdir()):
          if p.suffix.lower() in MASK_SUFFIXES and p.is_file():
            listing[d].setdefault(_frame_key(p.stem), p)
      stem = Path(r.image_path).stem
      p = listing[d].get(_frame_key(stem))
      if p is None:
        raise InputError(
          f"--mouth-masks {self.source}: no mouth mask for frame {r.image_path.name} "
          f"(timestep {r.timestep}, camera {r.camera_index}) of {r.json_path}: expected "
          f"{d / (stem + MASK_SUFFIXES[0])} (or {' / '.join(MASK_SUFFIXES[1:])})"
        )
      files.append(p)
    return files

  # -- the original's dict file -----------------------------------------------------------------
  def _read_dict(self) -> None:
    obj = torch_pickle.load(self.source)  # safe: the allow-listed reader
    if isinstance(obj, np.ndarray):
      obj = {"": obj}
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, np.ndarray) for v in obj.values()):
      raise InputError(
        f"--mouth-masks {self.source}: expected {{sequence id: mask tensor [T, cameras, H, W]}} "
        "(the original's <ID>_<SEQ>_mouth_mask.pth)"
      )
    for k, v in obj.items():
      if v.ndim != 4:
        raise InputError(
          f"--mouth-masks {self.source}: entry {k!r} has shape {v.shape}, expected [timesteps, cameras, H, W]"
        )
    self._arrays = {str(k): v for k, v in obj.items()}

  def _dict_entry(self, r):
    name = _sequence_name(r.image_path)
    parts = name.split("_")
    seq_id = parts[1] if len(parts) > 1 else name
    if seq_id in self._arrays:
      arr = self._arrays[seq_id]
    elif len(self._arrays) == 1:
      arr = next(iter(self._arrays.values()))
    else:
      raise InputError(
        f"--mouth-masks {self.source}: no entry {seq_id!r} for the sequence folder {name} "
        f"(entries: {sorted(self._arrays)})"
      )
    key = _frame_key(Path(r.image_path).stem)
    if not isinstance(key, tuple) or key[0] >= arr.shape[0] or key[1] >= arr.shape[1]:
      raise InputError(
        f"--mouth-masks {self.source}: no mouth mask for frame {r.image_path.name} of "
        f"{r.json_path}: expected index [timestep, camera] = {key} within {arr.shape[:2]}"
      )
    return arr[key[0], key[1]], f"{self.source}[{seq_id!r}][{key[0]}, {key[1]}]"

  # -- reading ----------------------------------------------------------------------------------
  def _read(self, i: int, check_only: bool = False) -> np.ndarray | None:
    r = self.records[i]
    if self._files is None:
      raw, where = self._dict_entry(r)
      shape = raw.shape
    else:
      p = self._files[i]
      where = str(p)
      if p.suffix.lower() == ".png":
        from PIL import Image

        try:
          with Image.open(p) as im:
            if check_only:  # the header is enough to check the size
              shape = (im.size[1], im.size[0])
              raw = None
            else:
              raw = np.asarray(im.convert("L"))
              shape = raw.shape
        except OSError as e:
          raise InputError(f"--mouth-masks {p}: cannot read the image ({e})") from None
      else:
        raw = torch_pickle.load(p)  # safe: the allow-listed reader
        if not isinstance(raw, np.ndarray):
          raise InputError(f"--mouth-masks {p}: expected one mask tensor [H, W], found {type(raw).__name__}")
        shape = np.squeeze(raw).shape
    h, w = self.size
    full = (r.height, r.width)
    hw = tuple(shape[-2:]) if len(shape) >= 2 else tuple(shape)
    if hw not in ((h, w), full):
      raise InputError(
        f"--mouth-masks {where}: mask of frame {r.image_path.name} is {hw[::-1]} (W x H); "
        f"expected the photo's {full[1]}x{full[0]} or the run's {w}x{h}"
      )
    if raw is None:
      return None
    m = _mask_values(raw, where)
    if check_only:
      return None
    return m if m.shape == (h, w) else _resample(m, h, w)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> np.ndarray:
    """float32 [H, W] in [0, 1] of frame i (1 = mouth)."""
    i = int(i)
    if i in self._cache:
      self._cache.move_to_end(i)
      return self._cache[i]
    m = self._read(i)
    if self.cache_size > 0:
      self._cache[i] = m
      while len(self._cache) > self.cache_size:
        self._cache.popitem(last=False)
    return m

  def batch(self, indices: Sequence[int]) -> np.ndarray:
    """float32 [B, H, W] of the frames `indices` (dataset positions)."""
    return np.stack([self[int(i)] for i in np.asarray(indices).reshape(-1)])


__all__ = [
  "MOUTH_REGIONS",
  "MOUTH_LOSS_WEIGHT",
  "MASK_SUFFIXES",
  "MouthMasks",
  "mouth_face_mask",
  "mouth_gaussians",
  "render_mouth_mask",
  "mouth_loss",
]
