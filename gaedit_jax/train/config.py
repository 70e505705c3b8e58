"""Settings both training stages share, as small frozen groups nested in `ReconstructConfig` and
`EditConfig`: GaussianAvatars' learning rates (METHOD §2.6), the position / scale regularisers
(METHOD §2.5), the rasterizer settings and the run bookkeeping.

Field names are unique across a config and its groups, so every setting stays one flat flag
(`--feature-lr`, `--lambda-xyz`, `--tile-size`, `--checkpoint-interval`); `gaedit_jax.flags.build`
does the same routing for Python callers. Each group checks its own values.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from gaedit_jax.flags import check_choice, check_flags, config_checks


@dataclasses.dataclass(frozen=True)
class LearningRates:
  """Per-group Adam learning rates of the avatar and the per-timestep FLAME parameters (METHOD
  §2.6). The local xyz rate has its own schedule (PositionSchedule), set by each stage."""

  feature_lr: float = 2.5e-3
  """SH DC learning rate (SH rest: feature_lr / 20)."""
  opacity_lr: float = 0.05
  """Opacity (logit) learning rate."""
  scaling_lr: float = 0.017
  """Local log-scale learning rate."""
  rotation_lr: float = 1e-3
  """Local rotation (quaternion) learning rate."""
  flame_pose_lr: float = 1e-5
  """FLAME rotation / neck / jaw / eyes learning rate (per-timestep tensors)."""
  flame_trans_lr: float = 1e-6
  """FLAME translation learning rate."""
  flame_expr_lr: float = 1e-3
  """FLAME expression learning rate."""
  finetune_flame: bool = True
  """Fine-tune the per-timestep FLAME pose, translation and expression (False: they stay as tracked)."""

  def __post_init__(self):
    config_checks(self.validate_flags)

  def validate_flags(self) -> None:
    names = " ".join(f.name for f in dataclasses.fields(self) if f.name.endswith("_lr"))
    check_flags(self, {names: ">= 0"})


@dataclasses.dataclass(frozen=True)
class PositionSchedule:
  """The local xyz learning rate (METHOD §2.6): log-linear from `init` to `final` over `steps` steps,
  times the camera extent; the editor keeps it constant (init = final)."""

  init: float = 5e-3
  final: float = 5e-5
  steps: int = 600_000


@dataclasses.dataclass(frozen=True)
class Regularisers:
  """GaussianAvatars' regularisers of the visible Gaussians (METHOD §2.5), local units:
  lambda_xyz relu(||mu|| - threshold_xyz) + lambda_scale ||relu(exp(s) - threshold_scale)||."""

  lambda_xyz: float = 1e-2
  """Weight of the position regulariser relu(||mu_local|| - threshold_xyz)."""
  threshold_xyz: float = 1.0
  """Threshold of the position regulariser (local units)."""
  lambda_scale: float = 1.0
  """Weight of the scale regulariser ||relu(exp(s_local) - threshold_scale)||."""
  threshold_scale: float = 0.6
  """Threshold of the scale regulariser (local units)."""

  def __post_init__(self):
    config_checks(lambda: check_flags(self, {"lambda_xyz threshold_xyz lambda_scale threshold_scale": ">= 0"}))


@dataclasses.dataclass(frozen=True)
class RasterSettings:
  """Rasterizer settings a run starts from (render.types.RenderConfig holds the rest)."""

  isect_per_gaussian: float = 16.0
  """Rasterizer intersection-buffer size per Gaussian at the start (grows on overflow)."""
  adapt_isect: bool = True
  """Shrink the intersection buffer to about twice what the views need once that halves it
  (train.loop.IsectCapacity; the images are the same, the sort is shorter)."""
  tile_size: int = 16
  """Rasterizer tile size: 16 as the original 3DGS kernel; 8 is faster on GPUs (README benchmarks)."""
  alpha_clamp_grad: Literal["pass", "zero"] = "pass"
  """Backward through alpha = min(0.99, o G): pass the gradient through the clamp (the original
  kernel) or zero it where the clamp is active."""

  def __post_init__(self):
    config_checks(self.validate_flags)

  def validate_flags(self) -> None:
    check_flags(self, {"tile_size": "int [1, 16]", "isect_per_gaussian": ">= 0"})
    check_choice(self, "alpha_clamp_grad", ("pass", "zero"))


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """Bookkeeping of a training run: checkpoints, resuming, logging (each stage sets its defaults)."""

  checkpoint_interval: int = 60_000
  """Also save a checkpoint every this many iterations (0: off); see --checkpoint-minutes."""
  checkpoint_minutes: float = 10.0
  """Checkpoint every this many minutes of wall-clock time (0: off), besides the end, the iteration
  interval, and an interruption (Ctrl-C, an error) after a completed step."""
  keep_checkpoints: int = 3
  """Keep the last N checkpoints."""
  resume: bool = False
  """Continue the run in OUT from its newest readable checkpoint (the inputs and shape-relevant
  settings must match the checkpoint's; --iterations may change)."""
  overwrite: bool = False
  """Start a new run in a non-empty OUT: the previous run's files are moved to OUT.old-<time>/
  (nothing is deleted; other files stay). Without it (or --resume) a non-empty OUT is refused."""
  log_interval: int = 50
  """Progress-bar / TensorBoard update interval (one host read of recent step metrics)."""
  progress: bool = True
  """Show a progress bar (loss, PSNR, Gaussian count)."""
  tensorboard: bool = True
  """Write TensorBoard scalars to OUT/tb."""
  stop_after: int | None = None
  """Stop (after checkpointing) at this iteration, as an interruption would: for tests of --resume."""
  prefetch: int = 2
  """Batches prepared ahead of the step in a background thread (read, resized, copied to the
  device) while the device runs the current step; 0: prepared in the loop. Never changes results."""

  def __post_init__(self):
    config_checks(self.validate_flags)

  def validate_flags(self) -> None:
    check_flags(
      self,
      {
        "checkpoint_interval": "int >= 0",
        "keep_checkpoints log_interval stop_after": "int >= 1",
        "prefetch": "int >= 0",
        "checkpoint_minutes": ">= 0",
      },
    )


GA_RATES = LearningRates()
GA_POSITION = PositionSchedule()
GA_REGULARISERS = Regularisers()
RASTER = RasterSettings()


def grow_isect(isect_per_gaussian: float) -> float:
  """The intersection-buffer size per Gaussian after an overflow: doubled, at least 4."""
  return max(isect_per_gaussian * 2, 4.0)


__all__ = [
  "LearningRates",
  "PositionSchedule",
  "Regularisers",
  "RasterSettings",
  "RunSettings",
  "GA_RATES",
  "GA_POSITION",
  "GA_REGULARISERS",
  "RASTER",
  "grow_isect",
]
