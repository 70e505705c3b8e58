"""`gaedit edit2d`: try an InstructPix2Pix edit on one view before committing to a 4D edit.

The same call as the edit loop (METHOD §5.4): the render is noised at t and denoised in 20 DDIM
steps, conditioned on the original photo, with text / image guidance. Several samples (different
t and noise) run as one batch.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.errors import InputError
from gaedit_jax.io.media import read_png, save_png


@dataclasses.dataclass
class Edit2DConfig:
  """Edit one image with InstructPix2Pix (defaults: the original editor's settings)."""

  image: str
  """The view to edit (PNG; e.g. a render of the avatar)."""
  prompt: str
  """The instruction, e.g. "Turn him into the Tolkien Elf"."""
  ip2p: str
  """InstructPix2Pix weights folder (Hugging Face layout, or the output of `gaedit convert-weights`)."""
  original: str | None = None
  """The photo that conditions the edit (the original editor uses the dataset image); default: --image."""
  out: str = "edited.png"
  """Output PNG; with --samples > 1, files are named <out>_<k>.png."""
  guidance_scale: float = 7.5
  """Text guidance s_T."""
  image_guidance_scale: float = 1.5
  """Image guidance s_I."""
  t: int | None = None
  """Noise level (timestep in [20, 980]); default: drawn uniformly as the original does."""
  steps: int = 20
  """DDIM steps."""
  samples: int = 1
  """Number of edits (independent t and noise), computed as one batch."""
  seed: int = 0
  size: int = 512
  """Square working resolution."""
  dtype: str = "float32"
  """float32 or bfloat16."""
  attention: str = "cudnn"
  """UNet self-attention: cudnn (flash attention where it runs: NVIDIA GPU, bfloat16) or xla (einsum)."""
  square: bool = False
  """Write the padded square edit instead of resizing back to the input size."""


def main(cfg: Edit2DConfig) -> list[str]:
  from gaedit_jax.nets.ip2p import InstructPix2Pix, IP2PConfig  # imports diffusers

  image = read_png(cfg.image)
  original = read_png(cfg.original) if cfg.original else image
  if original.shape != image.shape:
    raise InputError(
      f"--original {cfg.original} is {original.shape[1]}x{original.shape[0]}, "
      f"--image {cfg.image} is {image.shape[1]}x{image.shape[0]}: they must match"
    )
  for flag, value, choices in (
    ("--dtype", cfg.dtype, ("float32", "bfloat16")),
    ("--attention", cfg.attention, ("cudnn", "xla")),
  ):
    if value not in choices:
      raise InputError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
  if cfg.t is not None and not 1 <= cfg.t <= 999:
    raise InputError(f"--t must be in [1, 999], got {cfg.t}")
  t0 = time.time()
  ip2p = InstructPix2Pix.from_pretrained(
    cfg.ip2p,
    IP2PConfig(
      guidance_scale=cfg.guidance_scale,
      image_guidance_scale=cfg.image_guidance_scale,
      num_steps=cfg.steps,
      size=cfg.size,
      dtype=cfg.dtype,
      attention=cfg.attention,
    ),
  )
  emb = ip2p.encode_prompt(cfg.prompt)
  n = max(1, cfg.samples)
  renders = jnp.broadcast_to(jnp.asarray(image), (n,) + image.shape)
  origs = jnp.broadcast_to(jnp.asarray(original), (n,) + original.shape)
  key = jax.random.PRNGKey(cfg.seed)
  t = None if cfg.t is None else jnp.full((n,), cfg.t, jnp.int32)
  if t is None:
    t = ip2p.sample_timesteps(jax.random.fold_in(key, 1), n)
  out = ip2p.edit(renders, origs, emb, key, t=t, output="square" if cfg.square else "input")
  out = np.asarray(out)
  ts = np.asarray(t).tolist()
  paths = []
  stem, ext = os.path.splitext(cfg.out)
  for k in range(n):
    p = cfg.out if n == 1 else f"{stem}_{k}{ext or '.png'}"
    save_png(p, out[k])
    paths.append(p)
  print(
    f"edited {cfg.image} with {cfg.prompt!r} (t={ts}, s_T={cfg.guidance_scale}, s_I={cfg.image_guidance_scale}) "
    f"in {time.time() - t0:.1f} s -> {', '.join(paths)}"
  )
  return paths
