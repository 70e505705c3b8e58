"""Pieces of the training loop both stages share: the data order, the cache of jitted steps, the
one host read of the recent steps' metrics, and JSON-ready configs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Hashable, Sequence

import jax
import numpy as np

# Jitted steps are shared by runs with the same settings (no recompiles in a process that trains
# several times, e.g. tests or a resume); the key holds everything the step closes over.
_STEP_CACHE: dict = {}


def cached_step(key: Hashable, build: Callable[[], Callable]) -> Callable:
  """The jitted step for `key` (hashable: the stage, its optimizer and static step settings),
  built by `build()` the first time."""
  if key not in _STEP_CACHE:
    _STEP_CACHE[key] = build()
  return _STEP_CACHE[key]


def frame_order(n: int, batch: int, seed: int, it: int) -> np.ndarray:
  """Frame indices of iteration `it` (1-based): shuffled epochs, a pure function of (seed, it) so a
  resumed run sees the same data as an uninterrupted one."""
  per_epoch = max(n // batch, 1)
  e, k = divmod(it - 1, per_epoch)
  perm = np.random.default_rng([seed, e]).permutation(n)
  return perm[k * batch : (k + 1) * batch]


def mixed_frame_order(n: int, batch: int, seed: int, it: int, favoured: np.ndarray | None, share: float) -> np.ndarray:
  """Frame indices of iteration `it`: with probability `share` (a pure function of (seed, it)) drawn
  from the `favoured` frames (e.g. the views that have an edited image), else `frame_order` over
  all n; plain `frame_order` when fewer than `batch` frames are favoured."""
  if favoured is None or share <= 0 or len(favoured) < batch:
    return frame_order(n, batch, seed, it)
  if np.random.default_rng([seed, it, 1]).random() < share:
    return np.asarray(favoured)[frame_order(len(favoured), batch, seed, it)]
  return frame_order(n, batch, seed, it)


def flush_metrics(
  pending: Sequence[tuple[int, dict]],
  writer,
  bar,
  history: list,
  *,
  tag: str,
  scalars: Sequence[str] | None,
  postfix: Callable[[dict], dict],
) -> list[int]:
  """One host read of the metrics of the steps since the last flush (`pending`: (iteration,
  metrics) pairs, device arrays): TensorBoard scalars `tag/<name>` of every step (`scalars`, or
  all but the overflow flag when None), the last step's metrics appended to `history` (as floats),
  the progress bar's postfix (`postfix(last)`) and position. Returns the iterations whose step
  overflowed the rasterizer's intersection buffer (the step skipped its update)."""
  if not pending:
    return []
  ms = jax.device_get([m for _, m in pending])
  overflowed = []
  for (it, _), m in zip(pending, ms):
    if bool(m["overflow"]):
      overflowed.append(it)
    if writer is not None:
      for k in scalars if scalars is not None else [k for k in m if k != "overflow"]:
        writer.add_scalar(f"{tag}/{k}", float(m[k]), it)
  last = {k: float(v) for k, v in ms[-1].items()}
  history.append(dict(iteration=pending[-1][0], **last))
  if bar is not None:
    bar.set_postfix(**postfix(last), refresh=False)
    bar.update(pending[-1][0] - bar.n)
  return overflowed


def jsonable(x):
  """`x` with paths as strings and numpy scalars as Python numbers (json.dumps-ready)."""
  if isinstance(x, dict):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, Path):
    return str(x)
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return x


__all__ = ["cached_step", "frame_order", "flush_metrics", "jsonable"]
