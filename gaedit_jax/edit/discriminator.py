"""Conditional adversarial learning of the editor (METHOD §7; `GAE:utils/thmodel.py`, `train.py:289-303`).

Discriminator: the original's pix2pix-style PatchGAN, exactly as METHOD §7 reads it: 6 input channels,
five 4x4 convolutions with padding 1, no normalisation layers,
    6 -> 64 s2, LReLU(0.2); 64 -> 128 s2, LReLU; 128 -> 128 s2, LReLU; 128 -> 128 s1, LReLU; 128 -> 1 s1
(the channel rule 64 * min(2^(i+1), 2) caps at 128; receptive field 70x70; 512x512 -> 62x62 map;
~0.66 M parameters). Weights ~ N(0, 0.02), biases PyTorch's default U(+-1/sqrt(fan_in)). The
textbook pix2pix stack (64-128-256-512 with normalisation) is available through `features` and
`norm="instance"` but is not the original.

We return logits; the original applies a sigmoid and takes log(p + 1e-12). `eps=0` (default) uses
the numerically stable BCE-with-logits (log-sigmoid), identical to the original unless a logit
goes below about -27; `eps=1e-12` reproduces the original formula exactly.

Conditioning (METHOD §7): with E the 2D edit and I the current render (both [B,H,W,3] in [0,1], the
original uses the 512x512 square versions), real = concat(E, E - E) = concat(E, 0),
fake = concat(E, I - E). Losses, means over the patch map:
    L_D = mean(-log D(real) - log(1 - D(fake))),   L_G = -mean(log D(fake)),
weighted 0.01 each.

Two optimisation modes (METHOD §10):
* `faithful`: the original's single backward of the summed loss 0.01 (L_D + L_G) through both the
  render (so the avatar gets gradient from both fake terms: D(fake) pushed towards 0.5) and the
  discriminator; the discriminator is one more parameter group of the same Adam (lr 1e-4).
* `standard`: textbook, detached. The discriminator minimises L_D on a stop-gradient render; the
  avatar minimises L_G through a stop-gradient discriminator. `adversarial_loss(mode="standard")`
  gives both in one scalar, so that one joint gradient carries exactly these two (a simultaneous
  update); for an alternating update call `discriminator_step` first and then use
  `generator_loss` with the updated parameters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gaedit_jax import parallel

GanMode = Literal["faithful", "standard"]
GAN_WEIGHT = 0.01  # METHOD §7: 0.01 L_D + 0.01 L_G
DISC_LR = 1e-4  # METHOD §5.5: discriminator group of the edit Adam
ADAM_EPS = 1e-15  # METHOD §5.5 / 2.6: the GaussianAvatars Adam (betas 0.9 / 0.999)


def torch_bias_init(fan_in: int) -> Callable:
  """PyTorch's default Conv2d bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class PatchDiscriminator(nn.Module):
  """PatchGAN: [B,H,W,C_in] -> logits [B,H',W',1] (channels-last).

  features/strides: the hidden 4x4 convolutions (default: the original's 64-128-128-128, strides
  2-2-2-1), followed by a 4x4 stride-1 convolution to one channel. norm: "none" (original) or
  "instance" (affine-free instance norm after every hidden conv but the first, as pix2pix places it).
  """

  features: Sequence[int] = (64, 128, 128, 128)
  strides: Sequence[int] = (2, 2, 2, 1)
  negative_slope: float = 0.2
  norm: Literal["none", "instance"] = "none"
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if len(self.features) != len(self.strides):
      raise ValueError("PatchDiscriminator: features and strides must have the same length")
    w_init = nn.initializers.normal(self.init_std)
    pad = ((1, 1), (1, 1))
    for i, (f, s) in enumerate(zip(self.features, self.strides)):
      cin = x.shape[-1]
      x = nn.Conv(
        f, (4, 4), strides=(s, s), padding=pad, kernel_init=w_init, bias_init=torch_bias_init(cin * 16), name=f"conv{i}"
      )(x)
      if self.norm == "instance" and i > 0:
        mu = jnp.mean(x, axis=(-3, -2), keepdims=True)
        var = jnp.var(x, axis=(-3, -2), keepdims=True)
        x = (x - mu) * jax.lax.rsqrt(var + 1e-5)
      x = nn.leaky_relu(x, self.negative_slope)
    cin = x.shape[-1]
    return nn.Conv(
      1,
      (4, 4),
      strides=(1, 1),
      padding=pad,
      kernel_init=w_init,
      bias_init=torch_bias_init(cin * 16),
      name=f"conv{len(self.features)}",
    )(x)


def init_discriminator(
  key: jax.Array, image_size: tuple[int, int] = (512, 512), module: PatchDiscriminator | None = None
) -> tuple[PatchDiscriminator, Any]:
  """(module, params) for 6-channel inputs (the parameter shapes do not depend on image_size)."""
  module = PatchDiscriminator() if module is None else module
  h, w = image_size
  params = module.init(key, jnp.zeros((1, h, w, 6), jnp.float32))["params"]
  return module, params


def make_discriminator_optimizer(learning_rate: float = DISC_LR) -> optax.GradientTransformation:
  """METHOD §5.5: Adam(lr 1e-4, betas 0.9/0.999, eps 1e-15), fresh moments, constant rate."""
  return optax.adam(learning_rate, b1=0.9, b2=0.999, eps=ADAM_EPS)


def conditional_pair(edit: jax.Array, render: jax.Array) -> tuple[jax.Array, jax.Array]:
  """METHOD §7: real = concat(E, E - E), fake = concat(E, I - E), both [B,H,W,6]. The edit is a
  constant target (no gradient); the render keeps its gradient."""
  e = jax.lax.stop_gradient(edit)
  return (jnp.concatenate([e, e - e], axis=-1), jnp.concatenate([e, render - e], axis=-1))


def _nll_real(logits, eps):  # -log D(x)
  if eps > 0:
    return -jnp.log(jax.nn.sigmoid(logits) + eps)
  return -jax.nn.log_sigmoid(logits)


def _nll_fake(logits, eps):  # -log(1 - D(x))
  if eps > 0:
    return -jnp.log(1.0 - jax.nn.sigmoid(logits) + eps)
  return -jax.nn.log_sigmoid(-logits)


def discriminator_loss_from_logits(real_logits: jax.Array, fake_logits: jax.Array, eps: float = 0.0) -> jax.Array:
  """L_D = mean(-log D(real) - log(1 - D(fake))) (`thmodel.py:44-50`), unweighted."""
  return jnp.mean(_nll_real(real_logits, eps) + _nll_fake(fake_logits, eps))


def generator_loss_from_logits(fake_logits: jax.Array, eps: float = 0.0) -> jax.Array:
  """L_G = -mean(log D(fake)) (non-saturating, `thmodel.py:52-55`), unweighted."""
  return jnp.mean(_nll_real(fake_logits, eps))


def _logits(disc: nn.Module, params, x):
  return disc.apply({"params": params}, x)


def _pair_logits(disc: nn.Module, params, real: jax.Array, fake: jax.Array) -> tuple[jax.Array, jax.Array]:
  """D on real and fake [B,...] in one batch, laid out view-major ([B, 2] -> [2B]): with the views
  split over devices (gaedit_jax.parallel) each device keeps its own views' pairs, and XLA moves no
  activations between devices. (D has no batch statistics: the order changes nothing else.)"""
  logits = parallel.from_view_major(_logits(disc, params, parallel.view_major(real, fake)), 2)
  return logits[:, 0], logits[:, 1]


def generator_loss(
  disc: nn.Module, params, edit: jax.Array, render: jax.Array, *, weight: float = GAN_WEIGHT, eps: float = 0.0
) -> jax.Array:
  """weight * L_G with the discriminator frozen (stop-gradient params): gradient only to `render`."""
  _, fake = conditional_pair(edit, render)
  return weight * generator_loss_from_logits(_logits(disc, jax.lax.stop_gradient(params), fake), eps)


def discriminator_loss(
  disc: nn.Module, params, edit: jax.Array, render: jax.Array, *, weight: float = GAN_WEIGHT, eps: float = 0.0
) -> jax.Array:
  """weight * L_D on a detached render: gradient only to `params`."""
  real, fake = conditional_pair(edit, jax.lax.stop_gradient(render))
  r, f = _pair_logits(disc, params, real, fake)
  return weight * discriminator_loss_from_logits(r, f, eps)


def adversarial_loss(
  disc: nn.Module,
  params,
  edit: jax.Array,
  render: jax.Array,
  *,
  mode: GanMode = "faithful",
  weight: float = GAN_WEIGHT,
  eps: float = 0.0,
) -> tuple[jax.Array, dict]:
  """The adversarial term to add to the edit loss; differentiate it jointly w.r.t. (avatar,
  discriminator params). Returns (loss, {"gan_d": L_D, "gan_g": L_G}) (unweighted parts).

  faithful: weight (L_D + L_G), no detaching (the original's single backward).
  standard: weight L_G(frozen D) + weight L_D(detached render): one joint gradient gives the
    avatar only dL_G and the discriminator only dL_D.
  """
  if mode not in ("faithful", "standard"):
    raise ValueError(f"GAN mode must be 'faithful' or 'standard', got {mode!r}")
  real, fake = conditional_pair(edit, render)
  if mode == "faithful":
    r, f = _pair_logits(disc, params, real, fake)
    l_d = discriminator_loss_from_logits(r, f, eps)
    l_g = generator_loss_from_logits(f, eps)
    return weight * (l_d + l_g), {"gan_d": l_d, "gan_g": l_g}
  l_g = generator_loss(disc, params, edit, render, weight=1.0, eps=eps)
  l_d = discriminator_loss(disc, params, edit, render, weight=1.0, eps=eps)
  return weight * (l_d + l_g), {"gan_d": l_d, "gan_g": l_g}


def discriminator_step(
  disc: nn.Module,
  optimizer: optax.GradientTransformation,
  params,
  opt_state,
  edit: jax.Array,
  render: jax.Array,
  *,
  weight: float = GAN_WEIGHT,
  eps: float = 0.0,
):
  """One update of the discriminator on a detached render (the D half of an alternating step).
  Returns (params, opt_state, weighted L_D before the update)."""
  loss, g = jax.value_and_grad(lambda p: discriminator_loss(disc, p, edit, render, weight=weight, eps=eps))(params)
  updates, opt_state = optimizer.update(g, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@dataclasses.dataclass(frozen=True)
class GanConfig:
  """Settings of the conditional adversarial loss (defaults: the original's)."""

  enabled: bool = True
  mode: GanMode = "faithful"
  weight: float = GAN_WEIGHT
  learning_rate: float = DISC_LR
  start_iteration: int = 0  # edit iteration (0-based) from which it is on; original: 0 (METHOD §5.3
  # timing quirk), intended: 5/6 of the run
  eps: float = 0.0  # 0: stable log-sigmoid; 1e-12: the original's log(sigmoid + 1e-12)


__all__ = [
  "GanMode",
  "GAN_WEIGHT",
  "DISC_LR",
  "PatchDiscriminator",
  "init_discriminator",
  "make_discriminator_optimizer",
  "conditional_pair",
  "discriminator_loss_from_logits",
  "generator_loss_from_logits",
  "generator_loss",
  "discriminator_loss",
  "adversarial_loss",
  "discriminator_step",
  "GanConfig",
  "torch_bias_init",
]
