"""Checkpoints with orbax (DEPENDENCIES.md 5): a pytree item `state` (StandardSave) and a JSON item
`meta` (strings and config live there, not in the pytree), absolute paths, async saves awaited
before reading or exiting. Orbax writes each step into a temporary folder and renames it when
complete (atomic), so a run killed mid-save keeps its previous checkpoint. Keeps the last `keep`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointManager:
  """Thin wrapper: save(step, state, meta), latest_step(), read_meta(step), restore(step, template)."""

  def __init__(self, directory: str | os.PathLike, keep: int = 3):
    self.dir = Path(directory).absolute()
    self.dir.mkdir(parents=True, exist_ok=True)
    self._mgr = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True),
        item_names=("state", "meta"))

  def save(self, step: int, state: Any, meta: dict) -> None:
    state = jax.tree.map(lambda x: None if np.size(x) == 0 else x, state)  # orbax refuses empty arrays
    self._mgr.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)), force=True)

  def wait(self) -> None:
    self._mgr.wait_until_finished()

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
    got = self._mgr.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    leaves, treedef = jax.tree_util.tree_flatten(template)
    back = jax.tree_util.tree_flatten(got, is_leaf=lambda x: x is None)[0]
    if len(back) != len(leaves):
      raise ValueError(f"{self.dir}/{step}: checkpoint structure does not match the template")
    return jax.tree_util.tree_unflatten(treedef, [t if np.size(t) == 0 else r for t, r in zip(leaves, back)])

  def close(self) -> None:
    self.wait()
    self._mgr.close()


def open_checkpoints(directory: str | os.PathLike, keep: int, resume: bool) -> CheckpointManager:
  """The run's checkpoints. A fresh run (not `resume`) first removes old ones, which a later
  --resume would otherwise pick; in a multi-host run process 0 removes them while the others wait."""
  from gaedit_jax import parallel

  ckpt = CheckpointManager(directory, keep=keep)
  if resume or not ckpt.all_steps():
    return ckpt
  import shutil

  print(f"note: starting a new run; removing old checkpoints {ckpt.all_steps()} in {ckpt.dir}")
  ckpt.close()
  if parallel.is_primary():
    shutil.rmtree(ckpt.dir)
  parallel.barrier("gaedit-fresh-checkpoints")
  return CheckpointManager(directory, keep=keep)


__all__ = ["CheckpointManager", "open_checkpoints"]
