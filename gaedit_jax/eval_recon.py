"""Reconstruction metrics (GaussianAvatars `metrics.py`, METHOD §9): PSNR, SSIM, and LPIPS-VGG when
its weights are given, per frame and averaged, on the val split (novel view, camera 8) and the test
split (self-reenactment). Renders use the avatar's own (fine-tuned) FLAME parameters of each frame's
timestep.

`gaedit eval` can call `evaluate_model(model_dir, splits, lpips_weights, out)` (reads the model
folder with avatar.load_trained: ours or GaussianAvatars'), which writes results_<split>.json.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.avatar import load_trained, render_views
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.errors import InputError
from gaedit_jax.io.media import save_png, side_by_side
from gaedit_jax.metrics import psnr, ssim
from gaedit_jax.nets.lpips import load_lpips, lpips_images
from gaedit_jax.render.types import RenderConfig


def _pick(n: int, max_frames: int | None) -> np.ndarray:
  if max_frames is None or max_frames >= n:
    return np.arange(n)
  return np.unique(np.linspace(0, n - 1, max_frames).round().astype(int))


@jax.jit
def _metrics(x, y):
  return psnr(x, y), ssim(x, y)


@functools.partial(jax.jit, static_argnames="lpips_input")
def _lpips_jit(params, x, y, lpips_input: str = "unit"):
  # "unit": [0, 1] images straight into LPIPS, as GA's metrics.py; "signed": rescaled to [-1, 1]
  return lpips_images(params, x, y, lpips_input)


def evaluate_split(
  avatar,
  model,
  flame: dict,
  ds,
  render_cfg,
  *,
  max_frames: int | None = None,
  save_dir: str | os.PathLike | None = None,
  save_images: int = 0,
  lpips_params: dict | None = None,
  lpips_input: str = "unit",
  chunk: int = 8,
) -> dict:
  """Renders the frames of dataset `ds` and compares them with its images. model: the baked
  FLAME model (avatar.baked_model); flame: per-timestep fields [T,...]; lpips_input: "unit"
  ([0, 1] images into LPIPS, the original) or "signed" (rescaled to [-1, 1]). Returns
  {"split", "num_frames", "mean": {psnr, ssim[, lpips]}, "frames": [{file, camera, timestep, ...}]}."""
  if max_frames is not None and max_frames < 1:
    raise InputError(
      f"--eval-max-frames {max_frames}: evaluate at least one frame of {ds.json_path} (leave it unset for all frames)"
    )
  idx = _pick(len(ds), max_frames)
  bg = jnp.asarray(ds.background)
  rows = []
  saved = 0
  keep = set(_pick(len(idx), save_images).tolist()) if save_images else set()
  for s in range(0, len(idx), chunk):
    ii = idx[s : s + chunk]
    b = ds.batch(ii)
    img = render_views(avatar, model, flame, np.asarray(b.timestep), b.camera, bg, render_cfg, chunk=chunk)
    p, q = _metrics(jnp.asarray(img), b.image)
    lp = None
    if lpips_params is not None:
      lp = np.asarray(_lpips_jit(lpips_params, jnp.asarray(img), b.image, lpips_input)).reshape(-1)
    for j, i in enumerate(ii):
      r = ds.records[int(i)]
      row = dict(
        index=int(i),
        file=str(r.image_path.name),
        camera=int(r.camera_index),
        timestep=int(r.timestep),
        psnr=float(p[j]),
        ssim=float(q[j]),
      )
      if lp is not None:
        row["lpips"] = float(lp[j])
      rows.append(row)
      if save_dir is not None and (s + j) in keep:
        save_png(Path(save_dir) / f"{int(i):05d}.png", side_by_side([img[j], np.asarray(b.image[j])]))
        saved += 1
  keys = ["psnr", "ssim"] + (["lpips"] if lpips_params is not None else [])
  mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
  return dict(split=ds.split, num_frames=len(rows), mean=mean, frames=rows)


def evaluate_model(
  model_dir: str | os.PathLike,
  splits=("val", "test"),
  *,
  lpips_weights: str | None = None,
  lpips_input: str = "unit",
  max_frames: int | None = None,
  out: str | os.PathLike | None = None,
  sh_degree: int = 3,
) -> dict:
  """Evaluates a trained model folder on its dataset's splits; writes results_<split>.json into
  `out` (default: the model folder). Returns {split: result}."""
  avatar, model, flame, _, cfg, _ = load_trained(model_dir)
  c = cfg["config"]
  lp = None
  if lpips_weights:
    lp = load_lpips(lpips_weights)
  out = Path(out or model_dir)
  out.mkdir(parents=True, exist_ok=True)
  res = {}
  for s in splits:
    try:
      ds = AvatarDataset(
        cfg["data"],
        s,
        image_scale=c.get("image_scale", 1.0),
        white_background=c.get("white_background", True),
        cache_size=0,
        intrinsics=c.get("intrinsics", "file"),
      )
    except FileNotFoundError:
      continue
    r = evaluate_split(
      avatar,
      model,
      flame,
      ds,
      RenderConfig(sh_degree=min(sh_degree, avatar.sh_degree)),
      max_frames=max_frames,
      lpips_params=lp,
      lpips_input=lpips_input,
    )
    (out / f"results_{s}.json").write_text(json.dumps(r, indent=2))
    res[s] = r
  return res


__all__ = ["evaluate_split", "evaluate_model"]
