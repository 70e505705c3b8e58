"""Converting PyTorch weights to Flax once (`gaedit convert-weights`), no torch needed.

`convert(src, out, kind)` reads a folder of PyTorch weights with the loaders of `ip2p`, `clip` or
`lpips` (which map PyTorch names and layouts onto the Flax trees, see `hf_weights`) and writes what
those loaders read fastest: Flax msgpack per component plus the configs and tokenizer (ip2p, clip),
or one `lpips_vgg.safetensors` (lpips). `gaedit convert-weights` (commands/convert_weights.py) calls it.
"""

from __future__ import annotations

import os

from gaedit_jax.errors import InputError
from gaedit_jax.nets import clip, ip2p, lpips

KINDS = ("ip2p", "clip", "lpips")


def convert(src: str | os.PathLike, out: str | os.PathLike, kind: str = "ip2p") -> None:
  """Read the PyTorch weights of `src` and write Flax to `out`. `kind`: `ip2p` (an InstructPix2Pix
  folder in the Hugging Face layout), `clip` (a CLIP model folder) or `lpips` (torchvision's
  vgg16-397923af.pth and the LPIPS heads vgg.pth; writes <out>/lpips_vgg.safetensors)."""
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
