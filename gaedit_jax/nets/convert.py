"""Converting PyTorch weights to Flax once (`gaedit convert-weights`), no torch needed.

`convert(src, out, kind)` reads a folder of PyTorch weights with the loaders of `ip2p`, `clip` or
`lpips` (which map PyTorch names and layouts onto the Flax trees, see `hf_weights`) and writes what
those loaders read fastest: Flax msgpack per component plus the configs and tokenizer (ip2p, clip),
or one `lpips_vgg.safetensors` (lpips). `convert_main` is the command's entry point.
"""

from __future__ import annotations

import dataclasses
import os

from gaedit_jax.errors import InputError
from gaedit_jax.nets import clip, ip2p, lpips

KINDS = ("ip2p", "clip", "lpips")


@dataclasses.dataclass
class ConvertConfig:
  """Convert PyTorch weights to Flax once (no torch needed)."""
  src: str
  """InstructPix2Pix folder in the Hugging Face layout (e.g. a local copy of timbrooks/instruct-pix2pix)."""
  out: str
  """Output folder for the Flax weights (msgpack + configs + tokenizer + scheduler)."""
  kind: str = "ip2p"
  """What `src` holds: `ip2p` (InstructPix2Pix folder), `clip` (a CLIP model folder, e.g.
  openai/clip-vit-large-patch14, used by `gaedit eval`) or `lpips` (a folder with torchvision's
  vgg16-397923af.pth and the LPIPS heads vgg.pth; writes <out>/lpips_vgg.safetensors)."""


def convert(src: str | os.PathLike, out: str | os.PathLike, kind: str = "ip2p") -> None:
  """Read the PyTorch weights of `src` (a `kind` folder, see `ConvertConfig`) and write Flax to `out`."""
  if kind == "ip2p":
    model, params = ip2p.load_ip2p(src)
    ip2p.save_flax(model, params, out)
  elif kind == "clip":
    clip.save_flax(clip.load_clip(src), out)
  elif kind == "lpips":
    os.makedirs(out, exist_ok=True)
    lpips.save_lpips(lpips.load_lpips(src), os.path.join(out, "lpips_vgg.safetensors"))
  else:
    raise InputError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")


def convert_main(cfg: ConvertConfig) -> None:
  """Entry point of `gaedit convert-weights --src DIR --out DIR [--kind ip2p|clip|lpips]`."""
  convert(cfg.src, cfg.out, cfg.kind)
  print(f"wrote Flax weights to {cfg.out}")
