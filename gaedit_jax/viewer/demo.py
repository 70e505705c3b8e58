"""The built-in synthetic avatar the viewer shows without a trained model (`gaedit view --synthetic`),
the viewer's test and its benchmark: Gaussians bound to the synthetic FLAME head, coloured by
region (skin, lips, eyes, teeth, hair), and a short motion (jaw, head turn, eyes)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gaedit_jax.avatar import baked_model
from gaedit_jax.flame import FlameModel, FlameMotion, FlameParams, add_teeth, make_synthetic_flame, region_face_mask
from gaedit_jax.rig import Avatar

_COLOURS = (  # (regions, linear RGB); later rows win
  (("face", "forehead", "nose", "neck", "left_ear", "right_ear", "boundary", "scalp"), (0.86, 0.64, 0.52)),
  (("hair",), (0.25, 0.16, 0.10)),
  (("lips", "lips_tight"), (0.75, 0.30, 0.32)),
  (("mouth_interior", "lip_inside"), (0.35, 0.08, 0.10)),
  (("teeth",), (0.95, 0.95, 0.90)),
  (("left_eyeball", "right_eyeball"), (0.12, 0.12, 0.14)),
)
_SH_C0 = 0.28209479177387814  # colour = SH_C0 * dc + 0.5


def synthetic_flame(n_expr: int = 20) -> FlameModel:
  """The synthetic FLAME head with GaussianAvatars' teeth (the template's identity)."""
  return add_teeth(make_synthetic_flame(0, n_expr=n_expr))


def synthetic_avatar(model: FlameModel, n: int | None = None, *, sh_degree: int = 3, seed: int = 0) -> Avatar:
  """n Gaussians (default: one per face) bound to the faces of `model` round-robin, opaque and about
  a triangle wide, coloured by the face's region (view-dependent SH terms small and random)."""
  f = int(model.num_faces)
  n = f if n is None else int(n)
  rng = np.random.default_rng(seed)
  rgb = np.tile(np.array([0.86, 0.64, 0.52]), (f, 1))
  for names, colour in _COLOURS:
    present = [r for r in names if r in model.region_names]
    if present:
      rgb[region_face_mask(model, present)] = colour
  binding = np.arange(n) % f
  extra = n > f  # several per face: spread them over the triangle
  xyz = rng.normal(0, 0.3, (n, 3)) * np.array([1, 1, 0.1]) if extra else np.zeros((n, 3))
  k = (sh_degree + 1) ** 2
  size = np.log(np.sqrt(f / n)) if extra else np.log(0.6)
  return Avatar(
    xyz=jnp.asarray(xyz, jnp.float32),
    log_scale=jnp.asarray(np.full((n, 3), size) + np.array([0, 0, -1.5]), jnp.float32),
    rotation=jnp.asarray(np.tile([1.0, 0, 0, 0], (n, 1)), jnp.float32),
    opacity_logit=jnp.full((n,), 3.0, jnp.float32),
    sh_dc=jnp.asarray(((rgb[binding] - 0.5) / _SH_C0)[:, None, :], jnp.float32),
    sh_rest=jnp.asarray(rng.normal(0, 0.02, (n, k - 1, 3)), jnp.float32),
    binding=jnp.asarray(binding, jnp.int32),
    active=jnp.ones(n, bool),
  )


def synthetic_motion(n_expr: int, num_timesteps: int = 60) -> FlameMotion:
  """A short loop: the jaw opens and closes, the head turns left and right, the eyes follow."""
  s = np.linspace(0.0, 2.0 * np.pi, num_timesteps, endpoint=False)
  z = FlameMotion.zeros(num_timesteps, n_expr)
  jaw = np.zeros((num_timesteps, 3), np.float32)
  jaw[:, 0] = 0.2 * (0.5 - 0.5 * np.cos(2 * s))
  rot = np.zeros((num_timesteps, 3), np.float32)
  rot[:, 1] = 0.35 * np.sin(s)
  eyes = np.zeros((num_timesteps, 6), np.float32)
  eyes[:, [1, 4]] = 0.25 * np.sin(s)[:, None]
  expr = np.zeros((num_timesteps, n_expr), np.float32)
  expr[:, 0] = np.sin(s)
  return FlameMotion(
    expr=jnp.asarray(expr),
    rotation=jnp.asarray(rot),
    neck_pose=z.neck_pose,
    jaw_pose=jnp.asarray(jaw),
    eyes_pose=jnp.asarray(eyes),
    translation=z.translation,
  )


def synthetic_subject(n: int | None = None, *, sh_degree: int = 3, num_timesteps: int = 60):
  """(avatar, baked FLAME model, motion) of the built-in synthetic avatar."""
  full = synthetic_flame()
  model = baked_model(full, FlameParams.zeros(full))
  return synthetic_avatar(model, n, sh_degree=sh_degree), model, synthetic_motion(model.n_expr, num_timesteps)


__all__ = ["synthetic_avatar", "synthetic_flame", "synthetic_motion", "synthetic_subject"]
