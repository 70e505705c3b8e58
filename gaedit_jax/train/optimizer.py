"""The optimizer of both training stages (METHOD §2.6, 5.5): one Adam (eps 1e-15) per parameter group of
the params pytree {"gauss": Avatar.params(), "flame": FlameMotion}, each group with its own learning
rate (train.config.LearningRates)."""

from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp
import optax

from gaedit_jax.flame import FlameMotion
from gaedit_jax.train.config import LearningRates, PositionSchedule


def param_labels(params: dict) -> dict:
  """The group of every leaf: lr_<field> for the Gaussians, flame_{expr,trans,pose} for FLAME."""
  g = {k: "lr_" + k for k in params["gauss"]}
  group = lambda k: "flame_expr" if k == "expr" else "flame_trans" if k == "translation" else "flame_pose"
  f = FlameMotion(**{k: group(k) for k in FlameMotion.FIELDS})
  return {"gauss": g, "flame": f}


def position_lr(schedule: PositionSchedule, extent: float) -> Callable:
  """METHOD §2.6: exp((1 - t) log(init S) + t log(final S)), t = step / steps clamped to 1, S the
  camera extent."""
  n = schedule.steps
  a, b = math.log(schedule.init * extent), math.log(schedule.final * extent)

  def sched(count):
    t = jnp.clip(count / max(n, 1), 0.0, 1.0)
    return jnp.exp((1.0 - t) * a + t * b)

  return sched


def make_optimizer(rates: LearningRates, position: PositionSchedule, extent: float) -> optax.GradientTransformation:
  """One Adam (eps 1e-15) per parameter group, each with its own learning rate (METHOD §2.6); the
  FLAME groups are frozen (zero updates) unless rates.finetune_flame."""
  adam = lambda lr: optax.adam(lr, eps=1e-15)
  fl = (lambda lr: adam(lr)) if rates.finetune_flame else (lambda lr: optax.set_to_zero())
  return optax.multi_transform(
    {
      "lr_xyz": adam(position_lr(position, extent)),
      "lr_sh_dc": adam(rates.feature_lr),
      "lr_sh_rest": adam(rates.feature_lr / 20.0),
      "lr_opacity_logit": adam(rates.opacity_lr),
      "lr_log_scale": adam(rates.scaling_lr),
      "lr_rotation": adam(rates.rotation_lr),
      "flame_pose": fl(rates.flame_pose_lr),
      "flame_trans": fl(rates.flame_trans_lr),
      "flame_expr": fl(rates.flame_expr_lr),
    },
    param_labels,
  )


__all__ = ["param_labels", "position_lr", "make_optimizer"]
