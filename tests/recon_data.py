"""Tiny synthetic dataset shared by the reconstruction tests (48x64 px, 9 cameras, 4 timesteps,
the coarsest synthetic head: 1628 faces)."""

from __future__ import annotations

from pathlib import Path

from gaedit_jax.flags import build


def make_tiny_dataset(out: Path, *, num_timesteps: int = 4, texture: str = "skin") -> Path:
  from gaedit_jax.data.synthetic import SynthConfig, generate

  if not (out / "transforms_train.json").exists():
    generate(
      SynthConfig(
        out=out,
        width=48,
        height=64,
        num_cameras=9,
        num_timesteps=num_timesteps,
        rows=16,
        cols=24,
        supersample=1,
        contact_sheet=False,
        overwrite=True,
        texture=texture,
      ),
      progress=False,
    )
  return out


def tiny_config(data: Path, out: Path, **kw):
  from gaedit_jax.reconstruct import ReconstructConfig

  base = dict(
    data=data,
    out=out,
    iterations=20,
    densify_from=4,
    densify_interval=5,
    densify_until=16,
    opacity_reset_interval=12,
    sh_degree_interval=10,
    sh_degree=1,
    checkpoint_interval=10,
    eval_interval=0,
    log_interval=5,
    position_lr_max_steps=20,
    progress=False,
    tensorboard=False,
    eval_max_frames=3,
  )
  base.update(kw)
  return build(ReconstructConfig, **base)


def make_edit_setup(root: Path) -> dict:
  """What the edit tests start from: a tiny reconstructed synthetic avatar (6 iterations) with its
  skin dataset and the face-paint dataset of the synthetic editor."""
  from gaedit_jax.reconstruct import Trainer

  data = make_tiny_dataset(root / "data")
  paint = make_tiny_dataset(root / "facepaint", texture="facepaint")
  model = root / "model"
  Trainer(tiny_config(data, model, iterations=6, checkpoint_interval=6, position_lr_max_steps=6)).run()
  return dict(root=root, data=data, paint=paint, model=model)


def tiny_edit_config(setup: dict, out: Path, **kw):
  """An EditConfig of a few iterations with the synthetic editor on `make_edit_setup`'s avatar (no
  LPIPS weights: the CLI test checks the warning)."""
  from gaedit_jax.edit.loop import EditConfig

  base = dict(
    avatar=setup["model"],
    out=out,
    editor="synthetic",
    target_data=setup["paint"],
    iterations=3,
    checkpoint_interval=2,
    dump_interval=0,
    progress=False,
    tensorboard=False,
    lambda_lpips=0.0,
  )
  base.update(kw)
  return build(EditConfig, **base)


def edit_cli_args(setup: dict, out: Path, *extra: str) -> list[str]:
  """`gaedit edit` arguments of a 3-iteration synthetic edit of `make_edit_setup`'s avatar, no
  progress bar or TensorBoard, then `extra`."""
  return [
    "edit",
    "--avatar",
    str(setup["model"]),
    "--out",
    str(out),
    "--editor",
    "synthetic",
    "--target-data",
    str(setup["paint"]),
    "--iterations",
    "3",
    "--no-progress",
    "--no-tensorboard",
    *extra,
  ]
