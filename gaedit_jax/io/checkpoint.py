"""Checkpoints with orbax (DEPENDENCIES.md 5): a pytree item `state` (StandardSave) and a JSON item
`meta` (strings, the run's config and bookkeeping live there, not in the pytree), absolute paths,
async saves awaited before reading or exiting. Orbax writes each step into a temporary folder and
renames it when complete (atomic), so a run killed mid-save keeps its previous checkpoint. Keeps the
last `keep`. `restore_newest` falls back past unreadable checkpoints (damaged files, missing
metadata), saying which it skipped and why. Nothing here deletes a checkpoint except orbax's
keep-last-N; unreadable ones are moved aside (`set_aside`), not deleted.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from gaedit_jax.errors import InputError


def _why(e: BaseException) -> str:
  """One short line for an exception (orbax / tensorstore messages run long)."""
  msg = " ".join(str(e).split())
  return f"{type(e).__name__}: {msg[:200]}" + ("..." if len(msg) > 200 else "")


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  meta: dict
  skipped: list[tuple[int, str]]
  """Newer checkpoints that could not be read: (step, reason naming the file)."""


class CheckpointManager:
  """Thin wrapper: save(step, state, meta), latest_step(), read_meta(step), restore(step, template)."""

  def __init__(self, directory: str | os.PathLike, keep: int = 3):
    self.dir = Path(directory).absolute()
    self.dir.mkdir(parents=True, exist_ok=True)
    self._mgr = ocp.CheckpointManager(
      self.dir,
      options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True),
      item_names=("state", "meta"),
    )

  def save(self, step: int, state: Any, meta: dict) -> None:
    state = jax.tree.map(lambda x: None if np.size(x) == 0 else x, state)  # orbax refuses empty arrays
    self._mgr.save(
      int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True
    )

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def reload(self) -> None:
    """Re-reads the folder's steps (after another process changed it)."""
    self._mgr.reload()

  def latest_step(self) -> int | None:
    self.wait()
    self._mgr.reload()
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    self.wait()
    self._mgr.reload()
    return list(self._mgr.all_steps())

  def read_meta(self, step: int) -> dict:
    return self._mgr.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, template: Any) -> Any:
    """Restores the state pytree; `template` gives its structure, shapes and dtypes."""
    abstract = jax.tree.map(lambda x: None if np.size(x) == 0 else ocp.utils.to_shape_dtype_struct(x), template)
    got = self._mgr.restore(int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    leaves, treedef = jax.tree_util.tree_flatten(template)
    back = jax.tree_util.tree_flatten(got, is_leaf=lambda x: x is None)[0]
    if len(back) != len(leaves):
      raise ValueError(f"{self.dir}/{step}: checkpoint structure does not match the template")
    return jax.tree_util.tree_unflatten(treedef, [t if np.size(t) == 0 else r for t, r in zip(leaves, back)])

  def restore_newest(
    self, template_fn: Callable[[dict], Any], check: Callable[[int, dict], None] | None = None
  ) -> Restored | None:
    """The newest checkpoint that reads back, trying older ones past damaged files.

    template_fn(meta) gives the state's structure; check(step, meta) may raise (an InputError when
    the run's settings do not fit the checkpoint: that is no reason to fall back, it propagates).
    Returns None without checkpoints; raises InputError when none of them is readable."""
    skipped: list[tuple[int, str]] = []
    for step in reversed(self.all_steps()):
      where = self.dir / str(step)
      try:
        meta = self.read_meta(step)
        if not isinstance(meta, dict):
          raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
      except Exception as e:  # noqa: BLE001 - any failure to read is a reason to fall back
        skipped.append((step, f"{where / 'meta' / 'metadata'}: unreadable checkpoint metadata ({_why(e)})"))
        continue
      if check is not None:
        check(step, meta)
      try:
        state = self.restore(step, template_fn(meta))
        got = getattr(state, "step", None)
        if got is not None and int(np.asarray(got)) != step:
          raise ValueError(f"its state is of step {int(np.asarray(got))}")
      except InputError:
        raise
      except Exception as e:  # noqa: BLE001
        skipped.append((step, f"{where / 'state'}: unreadable checkpoint state ({_why(e)})"))
        continue
      return Restored(step, state, meta, skipped)
    if skipped:
      raise InputError(
        f"{self.dir}: no readable checkpoint to resume from: " + "; ".join(f"{s}: {why}" for s, why in skipped)
      )
    return None

  def set_aside(self, step: int, dest: str | os.PathLike) -> Path:
    """Moves checkpoint `step` out of the managed folder into dest/<step>-<time> (kept for a look,
    never picked again, and out of the way of new saves of that step)."""
    self.wait()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    k = 1
    while target.exists():
      target = dest / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{k}"
      k += 1
    os.rename(self.dir / str(step), target)
    self.reload()
    return target

  def close(self) -> None:
    self.wait()
    self._mgr.close()


__all__ = ["CheckpointManager", "Restored"]
