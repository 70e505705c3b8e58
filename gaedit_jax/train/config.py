"""Settings both training stages share, as small frozen dataclasses: GaussianAvatars' learning rates
(METHOD §2.6), the position / scale regularisers (METHOD §2.5) and the rasterizer settings of a run.

`ReconstructConfig` and `EditConfig` keep their flat flags (`--feature-lr`, `--lambda-xyz`,
`--tile-size`, ...); their defaults are read from the instances below so each default lives once, and
each config turns its flags into these values (`learning_rates()`, `regularisers()`) for the step
and the optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class LearningRates:
  """Per-group Adam learning rates of the avatar and the per-timestep FLAME parameters (METHOD §2.6).
  The local xyz rate follows a log-linear schedule from `position_init` to `position_final` over
  `position_steps` steps, times the camera extent; the editor keeps it constant (init = final)."""

  position_init: float = 5e-3
  position_final: float = 5e-5
  position_steps: int = 600_000
  feature: float = 2.5e-3  # SH DC; SH rest: feature / 20
  opacity: float = 0.05
  scaling: float = 0.017
  rotation: float = 1e-3
  flame_pose: float = 1e-5  # rotation / neck / jaw / eyes
  flame_trans: float = 1e-6
  flame_expr: float = 1e-3
  finetune_flame: bool = True  # False: the FLAME parameters stay as tracked


@dataclasses.dataclass(frozen=True)
class Regularisers:
  """GaussianAvatars' regularisers of the visible Gaussians (METHOD §2.5), local units:
  lambda_xyz relu(||mu|| - threshold_xyz) + lambda_scale ||relu(exp(s) - threshold_scale)||."""

  lambda_xyz: float = 1e-2
  threshold_xyz: float = 1.0
  lambda_scale: float = 1.0
  threshold_scale: float = 0.6


def rates_from_flags(cfg, *, position_init: float, position_final: float, position_steps: int) -> LearningRates:
  """LearningRates from a stage's flat flags (`--feature-lr`, ..., `--finetune-flame`); the position
  schedule is the stage's own."""
  names = ("feature", "opacity", "scaling", "rotation", "flame_pose", "flame_trans", "flame_expr")
  return LearningRates(
    position_init=position_init,
    position_final=position_final,
    position_steps=position_steps,
    finetune_flame=cfg.finetune_flame,
    **{n: getattr(cfg, n + "_lr") for n in names},
  )


def regularisers_from_flags(cfg) -> Regularisers:
  """Regularisers from a stage's flat flags of the same names (`--lambda-xyz`, ...)."""
  return Regularisers(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(Regularisers)})


@dataclasses.dataclass(frozen=True)
class RasterSettings:
  """Rasterizer settings a run starts from (render.types.RenderConfig holds the rest)."""

  isect_per_gaussian: float = 16.0  # intersection buffer per Gaussian; grows on overflow
  tile_size: int = 16  # the original 3DGS kernel's
  alpha_clamp_grad: Literal["pass", "zero"] = "pass"  # backward through min(0.99, o G): as the original


GA_RATES = LearningRates()
GA_REGULARISERS = Regularisers()
RASTER = RasterSettings()


def grow_isect(isect_per_gaussian: float) -> float:
  """The intersection-buffer size per Gaussian after an overflow: doubled, at least 4."""
  return max(isect_per_gaussian * 2, 4.0)


__all__ = ["LearningRates", "Regularisers", "RasterSettings", "GA_RATES", "GA_REGULARISERS", "RASTER", "grow_isect"]
