"""Adaptive density control with binding inheritance (GaussianAvatars, METHOD §2.7), on the
fixed-capacity / active-mask storage of `gaedit_jax.rig.Avatar`.

It runs between jitted train steps (array sizes may change), on host numpy arrays: Gaussian
counts are small and it runs every few hundred steps.

* statistics (accumulated inside the train step, `DensityStats`): accum += ||dL/dmu_2D|| (NDC
  units), denom += 1, max_radii = max(max_radii, radii), for visible active Gaussians;
* clone: g >= tau and max world scale <= percent_dense * E -> exact copy, same binding;
* split (decided on the pre-clone set; clones have g = 0): g >= tau and max world scale > that
  -> two children, local xyz = R(q_local) eps (+ parent xyz, GA >= f649a11), eps ~ N(0, s_world^2),
  local log-scale = s_local - log(1.6); the parent is removed;
* prune: sigmoid(o) < min_opacity, and (when `prune_large`) max world scale > 0.1 E, and (only with
  `prune_screen_size`) max_radii > max_screen_size. Binding-aware: a face never loses its last
  Gaussian. The screen-size test is off by default because it never fires in GaussianAvatars: its
  clone and split steps (run just before the test) end in densification_postfix, which zeroes the
  screen-radius statistic max_radii2D, so `max_radii2D > 20` is always false there;
* new Gaussians fill free slots (lowest first); when there are too few, capacity doubles.
  The optimizer moments of new and freed slots are zero (GA: new entries zero, removed dropped).
Invariant: binding_counter(avatar).sum() == num_active.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.quaternion import quat_to_matrix
from gaedit_jax.rig import Avatar, with_capacity


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DensityStats:
  """accum [C] (sum of screen-space gradient norms, NDC units), denom [C], max_radii [C]."""

  accum: jax.Array
  denom: jax.Array
  max_radii: jax.Array

  @staticmethod
  def zeros(capacity: int) -> "DensityStats":
    z = lambda: jnp.zeros((capacity,), jnp.float32)  # distinct buffers (the step donates them)
    return DensityStats(accum=z(), denom=z(), max_radii=z())


@dataclasses.dataclass(frozen=True)
class DensifyConfig:
  grad_threshold: float = 2e-4  # tau, NDC units (METHOD §2.7)
  percent_dense: float = 0.01
  min_opacity: float = 0.005
  max_screen_size: float = 20.0  # px; only when prune_large and prune_screen_size
  max_world_scale: float = 0.1  # x extent; only when prune_large
  prune_screen_size: bool = False  # GA's test never fires (max_radii2D is zeroed before it)
  split_add_parent_xyz: bool = True  # GA HEAD; False = the editor's older code


@dataclasses.dataclass
class DensifyResult:
  avatar: Avatar
  reindex: Callable[[np.ndarray], np.ndarray]  # maps a per-slot optimizer array to the new slots
  counts: dict[str, int]


def _np(x) -> np.ndarray:
  return np.asarray(jax.device_get(x))


def _bucket(n: int) -> int:
  """Array size for n split parents: a power of two >= 256, so the draws below compile once per
  bucket, not once per densification (each event splits a different number)."""
  return max(256, 1 << (n - 1).bit_length())


@functools.partial(jax.jit, static_argnums=1)
def _split_draws(key: jax.Array, size: int, quats: jax.Array) -> tuple[jax.Array, jax.Array]:
  """N(0,1) draws for `size` split parents, flat [6 size], and the rotations of quats [size,4].
  The first 6 n draws are exactly jax.random.normal(key, (2, n, 3)) (threefry counters are per
  flat index), so padding to a bucket changes no value."""
  return jax.random.normal(key, (6 * size,), jnp.float32), quat_to_matrix(quats)


def _binding_aware(prune: np.ndarray, binding: np.ndarray, active: np.ndarray, num_faces: int) -> np.ndarray:
  """GA prune_points: drop the candidates of a face that would lose all its Gaussians."""
  counter = np.bincount(binding[active], minlength=num_faces)
  pruned = np.bincount(binding[prune & active], minlength=num_faces)
  keep_face = (counter - pruned) > 0
  return prune & active & keep_face[binding]


def densify_and_prune(
  avatar: Avatar,
  stats: DensityStats,
  face_scale: np.ndarray,
  extent: float,
  key: jax.Array,
  cfg: DensifyConfig = DensifyConfig(),
  *,
  prune_large: bool = False,
  densify: bool = True,
) -> DensifyResult:
  """One densification pass (METHOD §2.7). face_scale [F]: the triangle scale k of the mesh the
  world scales refer to (GA: the last rendered timestep). Returns the new avatar (capacity may
  have doubled) and a `reindex` function for optimizer moments (zeros for new/freed slots)."""
  a = {
    k: _np(getattr(avatar, k))
    for k in ("xyz", "log_scale", "rotation", "opacity_logit", "sh_dc", "sh_rest", "binding", "active")
  }
  active = a["active"].astype(bool)
  binding = a["binding"].astype(np.int64)
  num_faces = int(face_scale.shape[0])
  cap = active.shape[0]
  k = np.asarray(face_scale, np.float32)[binding]
  s_world = k[:, None] * np.exp(a["log_scale"])
  smax = s_world.max(-1)
  accum, denom = _np(stats.accum), _np(stats.denom)
  g = np.where(denom > 0, accum / np.maximum(denom, 1e-12), 0.0)
  g = np.nan_to_num(g)
  big = smax > cfg.percent_dense * extent
  if densify:
    clone = active & (g >= cfg.grad_threshold) & ~big
    split = active & (g >= cfg.grad_threshold) & big
  else:
    clone = split = np.zeros_like(active)
  ci, si = np.flatnonzero(clone), np.flatnonzero(split)

  # New entries: clones (exact copies), then 2 children per split parent.
  new = {n: [v[ci]] for n, v in a.items() if n not in ("active",)}
  if si.size:
    size = _bucket(si.size)
    quats = np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (size, 1))
    quats[: si.size] = a["rotation"][si]
    draws, rot = _split_draws(key, size, jnp.asarray(quats))
    rng_eps = np.asarray(draws)[: 6 * si.size].reshape(2, si.size, 3)  # eps ~ N(0, 1) [2, n, 3]
    std = s_world[si]
    rot = np.asarray(rot)[: si.size]  # local rotation only (GA)
    for c in range(2):
      delta = np.einsum("nab,nb->na", rot, rng_eps[c] * std)
      new["xyz"].append(delta + (a["xyz"][si] if cfg.split_add_parent_xyz else 0.0))
      new["log_scale"].append(a["log_scale"][si] - np.log(1.6))  # log((s_world / k) / 1.6)
      for n in ("rotation", "opacity_logit", "sh_dc", "sh_rest", "binding"):
        new[n].append(a[n][si])
  new = {n: np.concatenate(v, 0) for n, v in new.items()}
  n_new = new["xyz"].shape[0]

  # Prune on the extended set: split parents (always: their children share the face), then the
  # opacity / size rule on survivors and new entries, binding-aware (METHOD §2.7).
  op = 1.0 / (1.0 + np.exp(-a["opacity_logit"]))
  cand = op < cfg.min_opacity
  if prune_large:
    cand |= smax > cfg.max_world_scale * extent
    if cfg.prune_screen_size:
      cand |= _np(stats.max_radii) > cfg.max_screen_size
  new_op = 1.0 / (1.0 + np.exp(-new["opacity_logit"]))
  new_smax = (np.asarray(face_scale, np.float32)[new["binding"]][:, None] * np.exp(new["log_scale"])).max(-1)
  new_cand = new_op < cfg.min_opacity
  if prune_large:
    new_cand |= new_smax > cfg.max_world_scale * extent  # new entries have max_radii 0
  # Binding-aware over old survivors + new entries together.
  keep_old = active & ~split
  all_bind = np.concatenate([binding[keep_old], new["binding"].astype(np.int64)])
  all_cand = np.concatenate([cand[keep_old], new_cand])
  pr = _binding_aware(all_cand, all_bind, np.ones_like(all_bind, bool), num_faces)
  pr_old = np.zeros(cap, bool)
  pr_old[np.flatnonzero(keep_old)] = pr[: keep_old.sum()]
  pr_new = pr[keep_old.sum() :]
  keep_old &= ~pr_old
  new_keep = ~pr_new
  new = {n: v[new_keep] for n, v in new.items()}
  n_add = int(new_keep.sum())

  # Place new entries into free slots, doubling capacity when needed.
  n_keep = int(keep_old.sum())
  new_cap = cap
  while n_keep + n_add > new_cap:
    new_cap *= 2
  av = Avatar(**{n: jnp.asarray(v) for n, v in a.items() if n != "active"}, active=jnp.asarray(keep_old))
  if new_cap != cap:
    av = with_capacity(av, new_cap)
  out = {n: np.array(_np(getattr(av, n))) for n in a}
  free = np.flatnonzero(~out["active"].astype(bool))[:n_add]
  for n, v in new.items():
    out[n][free] = v.astype(out[n].dtype)
  out["active"][free] = True
  # Free slots: reset to the neutral values of an empty slot.
  empty = ~out["active"].astype(bool)
  for n in ("xyz", "log_scale", "opacity_logit", "sh_dc", "sh_rest"):
    out[n][empty] = 0
  out["rotation"][empty] = np.array([1, 0, 0, 0], out["rotation"].dtype)
  out["binding"][empty] = 0
  fresh = np.zeros(new_cap, bool)  # slots whose optimizer moments must be zero
  fresh[free] = True
  fresh |= empty
  fresh[:cap] |= ~keep_old

  def reindex(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    y = np.zeros((new_cap,) + x.shape[1:], x.dtype)
    y[:cap] = x
    y[fresh] = 0
    return y

  new_av = Avatar(**{n: jnp.asarray(v) for n, v in out.items()})
  counts = dict(
    clone=int(ci.size),
    split=int(si.size),
    pruned=int(pr_old.sum() + pr_new.sum()),
    active=int(out["active"].sum()),
    capacity=new_cap,
  )
  return DensifyResult(avatar=new_av, reindex=reindex, counts=counts)


def reset_opacity(avatar: Avatar, max_opacity: float = 0.01) -> Avatar:
  """METHOD §2.7: o <- logit(min(sigmoid(o), 0.01)) (the caller zeroes the opacity moments)."""
  lim = float(np.log(max_opacity / (1.0 - max_opacity)))
  return dataclasses.replace(
    avatar, opacity_logit=jnp.where(avatar.active, jnp.minimum(avatar.opacity_logit, lim), avatar.opacity_logit)
  )


def map_slot_leaves(
  tree: Any, fn: Callable[[np.ndarray], np.ndarray], *, group: str = "gauss", only: tuple[str, ...] | None = None
) -> Any:
  """Applies fn to every leaf of an optimizer state that sits under dict key `group` (the per-slot
  Gaussian parameters' moments), optionally only under the parameter names `only`."""

  def f(path, x):
    keys = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
    if group in keys and (only is None or any(k in only for k in keys)) and hasattr(x, "shape") and x.ndim >= 1:
      return jnp.asarray(fn(np.asarray(x)))
    return x

  return jax.tree_util.tree_map_with_path(f, tree)


__all__ = ["DensityStats", "DensifyConfig", "DensifyResult", "densify_and_prune", "reset_opacity", "map_slot_leaves"]
