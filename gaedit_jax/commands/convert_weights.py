"""`gaedit convert-weights --src DIR --out DIR [--kind ip2p|clip|lpips]`: convert PyTorch weights to
Flax once (`gaedit_jax.nets.convert`)."""

from __future__ import annotations

import dataclasses

from gaedit_jax.nets.convert import convert


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


def main(cfg: ConvertConfig) -> None:
  """Entry point of `gaedit convert-weights --src DIR --out DIR [--kind ip2p|clip|lpips]`."""
  convert(cfg.src, cfg.out, cfg.kind)
  print(f"wrote Flax weights to {cfg.out}")


__all__ = ["ConvertConfig", "main"]
