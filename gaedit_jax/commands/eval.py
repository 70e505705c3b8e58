"""`gaedit eval`: metrics of renders, written as JSON.

Sections, each a function `(cfg) -> dict | None` in `SECTIONS` (None: not requested):
- "clip_edit": CLIP-S / CLIP-C of an edit (FIELD.md 3.1-3.2), given a folder of source renders,
  a folder of edited renders of the same views / frames (matched by file name, sorted: consecutive
  frames for CLIP-C), and the source and target captions. The CLIP variant is recorded.
- "recon": PSNR / SSIM (/ LPIPS with --lpips) of a reconstructed avatar (`gaedit reconstruct` output
  folder) against its dataset's validation (novel view) and test (self-reenactment) splits;
  also written as results_<split>.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Literal

import numpy as np

from gaedit_jax.errors import InputError
from gaedit_jax.eval_recon import evaluate_model
from gaedit_jax.flags import check_choice, check_path, config_checks
from gaedit_jax.io.media import read_png
from gaedit_jax.metrics import clip_edit_metrics
from gaedit_jax.nets.clip import load_clip

_IMAGE_EXT = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass
class EvalConfig:
  """Evaluate renders. Give --model for reconstruction metrics; --source, --edited and both
  captions for the CLIP editing metrics."""

  model: str | None = None
  """A `gaedit reconstruct` output folder: PSNR / SSIM (/ LPIPS) on its val and test splits."""
  splits: tuple[str, ...] = ("val", "test")
  """Dataset splits to evaluate the model on."""
  lpips: str | None = None
  """Folder of LPIPS-VGG weights (torchvision vgg16 + lpips v0.1 heads); LPIPS is skipped without."""
  lpips_input: Literal["unit", "signed"] = "unit"
  """Images go into LPIPS in [0, 1] as GaussianAvatars' metrics.py does ("unit"), or rescaled to
  [-1, 1], the range LPIPS was trained for ("signed")."""
  source: str | None = None
  """Folder of renders of the unedited avatar (PNG)."""
  edited: str | None = None
  """Folder of renders of the edited avatar: same file names as --source."""
  source_caption: str | None = None
  """Caption of the source, e.g. "a photograph of a man"."""
  target_caption: str | None = None
  """Caption of the intended result, e.g. "a photograph of a Tolkien elf"."""
  clip: str = "weights/clip-vit-large-patch14"
  """Local CLIP model folder (HF layout). The metric code's default is OpenAI ViT-L/14."""
  consistency_wrap: bool = True
  """CLIP-C pairs the last frame with the first, as the public IN2N script does."""
  out: str | None = None
  """Write the results as JSON here (default: print only)."""

  def __post_init__(self):

    config_checks(self.validate_flags)

  def validate_flags(self) -> None:
    """Value checks of the flags (one-line InputError naming the flag)."""

    check_choice(self, "splits", ("train", "val", "test"))

  def check_inputs(self) -> None:
    """Up-front checks of the given paths: the model folder, the LPIPS weights, the render folders
    and (for the CLIP metrics) the CLIP folder exist and open."""

    if self.model:
      check_path(self.model, "--model", kind="dir")
    if self.lpips:
      check_path(self.lpips, "--lpips")
    for name in ("source", "edited"):
      if getattr(self, name):
        check_path(getattr(self, name), f"--{name}", kind="dir")
    if self.source and self.edited:
      check_path(self.clip, "--clip")


def list_images(folder: str) -> list[str]:
  if not os.path.isdir(folder):
    raise InputError(f"{folder} is not a folder")
  files = sorted(f for f in os.listdir(folder) if f.lower().endswith(_IMAGE_EXT))
  if not files:
    raise InputError(f"no images ({', '.join(_IMAGE_EXT)}) in {folder}")
  return files


def paired_images(a: str, b: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Load images with the same names from two folders; a clear error if the sets differ."""
  fa, fb = list_images(a), list_images(b)
  if fa != fb:
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    raise InputError(
      f"{a} and {b} must hold the same file names; only in the first: {only_a[:5]}, only in the second: {only_b[:5]}"
    )
  xa = [read_png(os.path.join(a, f)) for f in fa]
  xb = [read_png(os.path.join(b, f)) for f in fb]
  shapes = {x.shape for x in xa + xb}
  if len(shapes) != 1:
    raise InputError(f"images of different sizes in {a} / {b}: {sorted(shapes)}")
  return np.stack(xa), np.stack(xb), fa


def clip_edit_section(cfg: EvalConfig) -> dict | None:
  wanted = (cfg.source, cfg.edited, cfg.source_caption, cfg.target_caption)
  if not any(wanted):
    return None
  if not all(wanted):
    raise InputError("the CLIP editing metrics need --source, --edited, --source-caption and --target-caption")

  src, edt, names = paired_images(cfg.source, cfg.edited)
  clip = load_clip(cfg.clip)
  m = clip_edit_metrics(clip, src, edt, cfg.source_caption, cfg.target_caption, wrap=cfg.consistency_wrap)
  out = m.as_dict()
  out.update(
    source=os.path.abspath(cfg.source), edited=os.path.abspath(cfg.edited), clip_path=os.path.abspath(cfg.clip)
  )
  return out


def recon_section(cfg: EvalConfig) -> dict | None:
  if not cfg.model:
    return None

  res = evaluate_model(cfg.model, tuple(cfg.splits), lpips_weights=cfg.lpips, lpips_input=cfg.lpips_input)
  return {split: r["mean"] for split, r in res.items()}


SECTIONS: dict[str, Callable[[EvalConfig], dict | None]] = {
  "recon": recon_section,
  "clip_edit": clip_edit_section,
}


def main(cfg: EvalConfig) -> dict:
  cfg.check_inputs()
  results = {}
  for name, fn in SECTIONS.items():
    r = fn(cfg)
    if r is not None:
      results[name] = r
  if not results:
    raise InputError("nothing to evaluate; see --help")
  text = json.dumps(results, indent=2)
  print(text)
  if cfg.out:
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    with open(cfg.out, "w") as f:
      f.write(text + "\n")
  return results
