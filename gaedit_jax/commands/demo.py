"""`gaedit demo`: the whole pipeline on the built-in synthetic head, sized for a CPU.

1. writes the synthetic multi-view video dataset (gaedit_jax.data.synthetic) to OUT/data;
2. reconstructs a GaussianAvatars avatar with a short schedule (the paper's schedule scaled down);
3. renders the held-out motion (test split) to a GIF and a side-by-side GIF with the ground truth,
   plus an orbit;
4. edits the avatar toward face paint with the synthetic editor (the same head rendered with the
   face-paint texture, perturbed per call like InstructPix2Pix; OUT/data_facepaint) and writes
   original | edited driven by the held-out motion (OUT/original_vs_edited.gif);
5. prints PSNR / SSIM on the held-out camera (val) and the held-out timesteps (test).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from gaedit_jax.commands.edit import main as edit
from gaedit_jax.commands.reconstruct import main as reconstruct
from gaedit_jax.commands.render import RenderConfigCLI, render_order
from gaedit_jax.commands.render import main as render
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.data.synthetic import SynthConfig, generate
from gaedit_jax.edit.loop import EditConfig
from gaedit_jax.flags import build
from gaedit_jax.io.media import read_png, side_by_side, write_video
from gaedit_jax.metrics import psnr
from gaedit_jax.reconstruct import ReconstructConfig

GIF_FPS = 10  # the demo's short synthetic sequences play at 10 fps
GIF_MIN_HEIGHT = 256  # GIFs upscaled (Lanczos) to at least this height; renders and metrics keep the render size


@dataclasses.dataclass
class DemoConfig:
  """Run the synthetic-head demo: data -> avatar -> renders -> metrics (about 4.5 min on 2 CPU cores)."""

  out: Path = Path("demo_out")
  """Output folder (data/, model/, renders/)."""
  iterations: int = 1500
  """Training iterations (the paper: 600k on a GPU)."""
  densify_from: int = 300
  """Densify after this iteration (paper: 10k)."""
  densify_interval: int = 200
  """Densify every this many iterations (paper: 2k)."""
  densify_until: int = 1200
  """Stop densifying here (paper: at the end)."""
  sh_degree_interval: int = 500
  """Raise the SH degree every this many iterations (paper: 1k)."""
  batch_size: int = 1
  """Views per step."""
  seed: int = 0
  """Seed of the data and the training."""
  num_timesteps: int = 16
  """Timesteps of the synthetic sequence (first 70% train/val, rest test)."""
  num_cameras: int = 16
  """Cameras of the synthetic rig (camera 8 = held-out view)."""
  width: int = 128
  """Image width."""
  height: int = 176
  """Image height."""
  regenerate: bool = False
  """Rewrite the dataset even if OUT/data exists."""
  progress: bool = True
  """Show progress bars."""
  edit: bool = True
  """Also edit the avatar toward face paint with the synthetic editor (gaedit edit)."""
  edit_iterations: int = 200
  """Edit iterations (the paper: 1000 with InstructPix2Pix on a GPU)."""


def _synth(cfg: DemoConfig, folders: dict[str, Path]) -> None:
  """The demo's synthetic datasets, {texture: folder}, in one pass (same motion, cameras and seed)."""
  (texture, folder), *more = folders.items()
  generate(
    SynthConfig(
      out=folder,
      width=cfg.width,
      height=cfg.height,
      num_cameras=cfg.num_cameras,
      num_timesteps=cfg.num_timesteps,
      seed=cfg.seed,
      texture=texture,
      overwrite=True,
    ),
    progress=cfg.progress,
    also=dict(more),
  )


def reconstruct_config(
  cfg: DemoConfig, data: Path, out: Path, iterations: int | None = None, **flags
) -> ReconstructConfig:
  """The demo's reconstruction of `data` into `out`. Its densification and SH-degree intervals are
  tuned for cfg.iterations; another `iterations` scales them in proportion. `flags`: more
  `gaedit reconstruct` settings by flag name."""
  n = iterations or cfg.iterations
  f = n / cfg.iterations
  scaled = lambda x: max(1, round(x * f))
  return build(
    ReconstructConfig,
    data=data,
    out=out,
    iterations=n,
    batch_size=cfg.batch_size,
    seed=cfg.seed,
    densify_from=scaled(cfg.densify_from),
    densify_interval=scaled(cfg.densify_interval),
    densify_until=round(cfg.densify_until * f),
    opacity_reset_interval=10 * n,
    reset_opacity_at_densify_from=False,
    sh_degree_interval=scaled(cfg.sh_degree_interval),
    checkpoint_interval=n,
    eval_interval=0,
    log_interval=50,
    progress=cfg.progress,
    overwrite=True,
    **flags,
  )


def main(cfg: DemoConfig) -> dict:
  """The whole pipeline on the built-in synthetic head (data, avatar, renders, metrics)."""

  t0 = time.perf_counter()
  out = Path(cfg.out).absolute()
  data, model, paint = out / "data", out / "model", out / "data_facepaint"
  todo = {
    tex: folder
    for tex, folder in (("skin", data), ("facepaint", paint))
    if (tex == "skin" or cfg.edit) and (cfg.regenerate or not (folder / "transforms_train.json").exists())
  }
  if todo:  # the edit's face-paint ground truth is rendered in the same pass as the photos
    print(f"[1/5] writing the synthetic dataset{'s' if len(todo) > 1 else ''} to {', '.join(map(str, todo.values()))}")
    _synth(cfg, todo)
  else:
    print(f"[1/5] using the dataset in {data}")
  t_data = time.perf_counter() - t0
  print(f"[2/5] reconstructing ({cfg.iterations} iterations)")
  res = reconstruct(reconstruct_config(cfg, data, model))  # a re-run moves the old model aside
  t_train = time.perf_counter() - t0 - t_data
  print("[3/5] rendering held-out motion (test split) and an orbit")
  # held-out timesteps from every camera (sorted by camera, then time) and an animated orbit
  rend = render(
    RenderConfigCLI(
      model=model,
      out=out / "renders",
      splits=("test",),
      orbit=36,
      orbit_animate=True,
      orbit_degrees=120.0,
      gif_fps=GIF_FPS,
      gif_min_height=GIF_MIN_HEIGHT,
    )
  )
  edit = _edit(cfg, out, model, Path(rend["test"]["folder"])) if cfg.edit else None
  total = time.perf_counter() - t0
  summary = dict(
    iterations=res["iterations"],
    num_gaussians=res["num_gaussians"],
    val_novel_view=res.get("val"),
    test_self_reenactment=res.get("test"),
    seconds=dict(data=round(t_data, 1), train=round(t_train, 1), total=round(total, 1)),
    gif=str(out / "renders" / "test"),
    renders={k: v["folder"] for k, v in rend.items()},
    edit=edit,
  )
  (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
  print("[5/5] metrics")
  for name, key in (("held-out camera (val, novel view)", "val"), ("held-out timesteps (test)", "test")):
    m = res.get(key)
    if m:
      print(f"  {name}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}")
  for k, v in rend.items():
    if "side_by_side" in v:
      print(f"  side-by-side GIF (ground truth | render): {v['side_by_side']}")
    print(f"  {k} GIF: {v['folder']}/renders.gif")
  if edit:
    print(
      f"  edit toward face paint, PSNR to the face-paint ground truth on held-out timesteps: "
      f"{edit['psnr_before']:.2f} dB before, {edit['psnr_after']:.2f} dB after "
      f"{cfg.edit_iterations} iterations; original | edited GIF: {edit['gif']}"
    )
  print(
    f"done in {total:.0f} s (data {t_data:.0f} s, training + eval {t_train:.0f} s); summary: "
    f"{out / 'demo_summary.json'}"
  )
  return summary


def _test_frames(folder: Path) -> np.ndarray:
  return np.stack([read_png(f) for f in sorted((folder / "renders").glob("*.png"))])


def _edit(cfg: DemoConfig, out: Path, model: Path, original: Path) -> dict:
  """Step 4: face-paint edit with the synthetic editor, original | edited GIF, PSNR to the target.
  `original`: step 3's renders of the unedited avatar on the test split (the same frames, not
  rendered twice)."""

  paint = out / "data_facepaint"  # written in step 1
  print(f"[4/5] editing toward face paint ({cfg.edit_iterations} iterations, synthetic editor)")
  edited = out / "edited"
  edit(
    build(
      EditConfig,
      avatar=model,
      out=edited,
      editor="synthetic",
      target_data=paint,
      iterations=cfg.edit_iterations,
      seed=cfg.seed,
      checkpoint_interval=cfg.edit_iterations,
      eval_every=0,  # the demo measures the edit itself, below, on the rendered test frames
      progress=cfg.progress,
      tensorboard=False,
      overwrite=True,
    )
  )
  gif = dict(gif_fps=GIF_FPS, gif_min_height=GIF_MIN_HEIGHT)
  after = render(RenderConfigCLI(model=edited, out=out / "renders_edit" / "edited", splits=("test",), **gif))
  a, b = _test_frames(original), _test_frames(Path(after["test"]["folder"]))
  ds = AvatarDataset(paint, "test", cache_size=0)
  target = np.stack([ds[int(i)].image for i in render_order(ds)])
  frames = [side_by_side([x, y], labels=("original", "edited")) for x, y in zip(a, b)]
  gif = write_video(out / "original_vs_edited.gif", frames, GIF_FPS, min_height=GIF_MIN_HEIGHT)
  return dict(
    psnr_before=float(np.mean([psnr(x, t) for x, t in zip(a, target)])),
    psnr_after=float(np.mean([psnr(y, t) for y, t in zip(b, target)])),
    gif=str(gif),
    folder=str(edited),
  )


__all__ = ["DemoConfig", "main"]
