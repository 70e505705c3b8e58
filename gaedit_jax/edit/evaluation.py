"""The frames of an edit run and its evaluation during the run (the original's `--eval` and
`--interval`).

Frames (GAE:scene/dataset_readers.py:347-351, as GaussianAvatars'): with `--eval` the training
cameras are the editing sequence's train split and val / test are held out; without it the three
splits are merged into the training set and nothing is held out (`SplitUnion`).

Evaluation (GAE:train.py:393-478, at the `--interval` iterations and at the last one, GAE:train.py:
820-825): every val / test frame is rendered with the current avatar and compared with its photo
(L1, PSNR, SSIM, LPIPS; the edit is meant to change the face, so these measure how far the avatar
moved from the unedited subject, not the edit's quality); then the avatar is saved
(point_cloud/iteration_<N>) and checkpointed. We compute PSNR / SSIM (and LPIPS-VGG when the run has
LPIPS weights) with `eval_recon.evaluate_split`, and, with the synthetic editor, the same metrics
against its edited ground truth of the same views (what the edit should reach). Results go to
OUT/eval/iteration_<N>.json and TensorBoard.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax import parallel
from gaedit_jax.data.dataset import AvatarDataset, Batch
from gaedit_jax.data.layout import SPLITS, split_json_path
from gaedit_jax.errors import DatasetError
from gaedit_jax.eval_recon import evaluate_split
from gaedit_jax.train.run_dir import write_json

HELD_OUT = ("val", "test")


class SplitUnion:
  """Several splits of one dataset folder as one set of frames (GaussianAvatars without --eval:
  train + val + test). Frame i of the union is frame i - offset of its split, in split order.
  Offers what the edit loop reads of a dataset: len, records, timesteps, camera_indices,
  image_size, background, flame_params, camera_extent, batch."""

  def __init__(self, root: str | os.PathLike, splits: Sequence[str] = SPLITS, **kw):
    self.root = Path(root)
    self.parts = [AvatarDataset(root, s, **kw) for s in splits if split_json_path(root, s).exists()]
    if not self.parts:
      raise DatasetError(f"{root}: no transforms_{{{','.join(splits)}}}.json")
    sizes = {p.image_size for p in self.parts if len(p)}
    if len(sizes) > 1:
      raise DatasetError(f"{root}: the splits {[p.split for p in self.parts]} have different image sizes {sizes}")
    self.split = "+".join(p.split for p in self.parts)
    self.json_path = self.parts[0].json_path
    self.records = [r for p in self.parts for r in p.records]
    self.background = self.parts[0].background
    self._offsets = np.cumsum([0] + [len(p) for p in self.parts])

  def __len__(self) -> int:
    return len(self.records)

  @property
  def timesteps(self) -> np.ndarray:
    return np.concatenate([p.timesteps for p in self.parts])

  @property
  def camera_indices(self) -> np.ndarray:
    return np.concatenate([p.camera_indices for p in self.parts])

  @property
  def image_size(self) -> tuple[int, int]:
    return self.parts[0].image_size

  @property
  def flame_params(self):
    return self.parts[0].flame_params  # the folder's whole sequence, whichever split reads it

  def camera_extent(self) -> float:
    """The first split's (train's) extent: the edit keeps the learning-rate scale it has with
    --eval (the original restores spatial_lr_scale from the base checkpoint, whatever the split)."""
    return self.parts[0].camera_extent()

  def batch(self, indices: Sequence[int]) -> Batch:
    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
      raise IndexError(f"frames {idx.tolist()} out of range for {len(self)} frames")
    part = np.searchsorted(self._offsets, idx, side="right") - 1
    rows = [self.parts[k].batch([i - self._offsets[k]]) for i, k in zip(idx, part)]
    b = jax.tree.map(lambda *a: jnp.concatenate(a), *rows)
    return dataclasses.replace(b, frame_index=jnp.asarray(idx.astype(np.int32)))


def training_frames(root: str | os.PathLike, eval: bool, **kw):
  """The frames an edit trains on: the train split (--eval) or train + val + test (--no-eval)."""
  return AvatarDataset(root, "train", **kw) if eval else SplitUnion(root, SPLITS, **kw)


def held_out_frames(root: str | os.PathLike, eval: bool, **kw) -> dict[str, AvatarDataset]:
  """{split: dataset} of the existing, non-empty val / test splits ({} without --eval)."""
  out = {}
  if eval:
    for s in HELD_OUT:
      if split_json_path(root, s).exists():
        ds = AvatarDataset(root, s, **kw)
        if len(ds):
          out[s] = ds
  return out


def edit_targets(editor, target_data: str | os.PathLike | None, held_out: dict, **kw) -> dict[str, AvatarDataset]:
  """The synthetic editor's edited ground truth of the held-out views ({split: dataset}), where
  the edited dataset has the same frames (camera, timestep) as the split; {} for other editors."""
  out = {}
  if target_data is None or not hasattr(editor, "covers"):
    return out
  for s, ds in held_out.items():
    if not split_json_path(target_data, s).exists():
      continue
    t = AvatarDataset(target_data, s, **kw)
    same = (
      len(t) == len(ds)
      and np.array_equal(t.camera_indices, ds.camera_indices)
      and np.array_equal(t.timesteps, ds.timesteps)
      and t.image_size == ds.image_size
    )
    if same:
      out[s] = t
    else:
      warnings.warn(
        f"gaedit edit: {target_data} {s} split has other frames than {ds.root}'s; the "
        "evaluation against the edited ground truth skips it",
        stacklevel=2,
      )
  return out


def eval_due(it: int, every: int, iterations: int) -> bool:
  """The original's test / save / checkpoint iterations: every `every` and the last (0: never)."""
  return every > 0 and (it % every == 0 or it == iterations)


def evaluate_edit(run, it: int) -> dict:
  """Metrics of the current avatar (`run`: an `EditRun`) on its held-out frames:
  {"iteration", "lpips", "splits": {split: {"photos": result[, "edit_targets": result]}}},
  each result as `eval_recon.evaluate_split` returns it."""

  c = run.cfg
  st = parallel.local(run.state)
  lp = parallel.local(run.lpips_params) if run.lpips_params is not None else None
  rc = dataclasses.replace(run.settings.render, wabe_k=0, wabe_backward=False, mesh=None)
  res: dict = dict(iteration=it, lpips="vgg" if lp is not None else None, splits={})
  for s, ds in run.eval_ds.items():
    kw = dict(max_frames=c.eval_max_frames, lpips_params=lp)
    r = {"photos": evaluate_split(st.avatar, run.model_local, st.flame, ds, rc, **kw)}
    if s in run.eval_targets:
      r["edit_targets"] = evaluate_split(st.avatar, run.model_local, st.flame, run.eval_targets[s], rc, **kw)
    res["splits"][s] = r
  return res


def eval_and_save(run, it: int, session, writer=None) -> dict | None:
  """At an evaluation iteration: metrics -> OUT/eval/iteration_<it>.json (and TensorBoard), the
  avatar -> OUT/point_cloud/iteration_<it> (the last one is exported by the run itself), and a
  checkpoint unless the run just wrote one for this step. Returns the metrics (None when nothing is
  held out: --no-eval)."""

  if int(run.state.step) not in session.saved:
    session.save(run.state, run.meta())
  if not parallel.is_primary():
    return None
  if it != run.cfg.iterations:
    run.export(it)
  if not run.eval_ds:
    return None
  res = evaluate_edit(run, it)
  d = run.out / "eval"
  d.mkdir(parents=True, exist_ok=True)
  write_json(d / f"iteration_{it}.json", res)
  if writer is not None:
    for s, r in res["splits"].items():
      for what, v in r.items():
        for k, x in v["mean"].items():
          writer.add_scalar(f"eval_{s}/{what}/{k}", x, it)
  means = {s: {w: v["mean"] for w, v in r.items()} for s, r in res["splits"].items()}
  print(f"[edit iteration {it}] evaluation: " + json.dumps(means))
  return res


__all__ = [
  "SplitUnion",
  "training_frames",
  "held_out_frames",
  "edit_targets",
  "eval_due",
  "evaluate_edit",
  "eval_and_save",
]
