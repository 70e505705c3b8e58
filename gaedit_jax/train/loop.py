"""Pieces of the training loop both stages share: the data order, the input pipeline that prepares
the next batches while the device runs the current step, the cache of jitted steps, the count of
compilations, the one host read of the recent steps' metrics, the intersection capacity that
follows what the views need, and JSON-ready configs."""

from __future__ import annotations

import dataclasses
import functools
import math
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import jax
import jax.monitoring
import numpy as np

from gaedit_jax.train.config import grow_isect

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
  return _epoch_order(n, seed, e)[k * batch : (k + 1) * batch].copy()


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  """One epoch's shuffled frame order, drawn once (permuting tens of thousands of frames for every
  iteration cost about a millisecond of the loop's host time)."""
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  perm.flags.writeable = False
  return perm


def mixed_frame_order(n: int, batch: int, seed: int, it: int, favoured: np.ndarray | None, share: float) -> np.ndarray:
  """Frame indices of iteration `it`: with probability `share` (a pure function of (seed, it)) drawn
  from the `favoured` frames (e.g. the views that have an edited image), else `frame_order` over
  all n; plain `frame_order` when fewer than `batch` frames are favoured."""
  if favoured is None or share <= 0 or len(favoured) < batch:
    return frame_order(n, batch, seed, it)
  if np.random.default_rng([seed, it, 1]).random() < share:
    return np.asarray(favoured)[frame_order(len(favoured), batch, seed, it)]
  return frame_order(n, batch, seed, it)


class Prefetcher:
  """The batches of iterations `start..end` (`make(it)`: indices, decoded images, device arrays,
  sharded over the mesh) prepared in a background thread, at most `depth` ahead of the step that
  uses them, so reading, resizing and the host-to-device copy overlap the device's work on the
  current step. `depth` 0 makes each batch in the calling thread when asked (no thread).

  `make` must be a pure function of `it` (the data order is `frame_order`), so a batch is the same
  whether it was prefetched or not: prefetching never changes results. `get(it)` must be called with
  consecutive iterations from `start`; an exception in `make` is re-raised by the `get` of that
  iteration. Use as a context manager (or call `close`) so the thread stops with the loop.

  With several processes (multi-host) the batches are made in the loop: every process must issue
  its transfers of globally sharded arrays in the same order as the others' steps, and a thread of
  its own would interleave them differently on each host (a two-process run hung)."""

  def __init__(self, make: Callable[[int], Any], start: int, end: int, depth: int = 2):
    depth = max(int(depth), 0) if jax.process_count() == 1 else 0
    self.make, self.next, self.end, self.depth = make, start, end, depth
    self._q: queue.Queue = queue.Queue(maxsize=max(self.depth, 1))
    self._stop = threading.Event()
    self._thread = None
    if self.depth and start <= end:
      self._thread = threading.Thread(target=self._work, args=(start,), name="gaedit-prefetch", daemon=True)
      self._thread.start()

  def _work(self, it: int) -> None:
    while it <= self.end and not self._stop.is_set():
      try:
        item = (it, self.make(it), None)
      except BaseException as e:  # noqa: BLE001 - handed to the loop's thread
        item = (it, None, e)
      while not self._stop.is_set():
        try:
          self._q.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None:
        return
      it += 1

  def get(self, it: int):
    """The batch of iteration `it` (the next one in order)."""
    if it != self.next:
      raise ValueError(f"Prefetcher.get({it}): the next iteration is {self.next}")
    self.next = it + 1
    if self._thread is None:
      return self.make(it)
    got, batch, err = self._q.get()
    if err is not None:
      raise err
    assert got == it, (got, it)
    return batch

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class CompileCounter:
  """Counts XLA compilations in this process (jax.monitoring's backend-compile events; a load from
  the persistent compilation cache counts as a compilation and as a cache hit). `snapshot()` and
  `since(snap)` give what happened in between: count, seconds, cache hits and the compiled
  functions' (name, seconds). One process-wide listener, registered on first use."""

  _lock = threading.Lock()
  _events: list[tuple[str, float]] = []
  _hits = 0
  _registered = False

  @classmethod
  def _register(cls) -> None:
    with cls._lock:
      if cls._registered:
        return
      cls._registered = True

    def on_duration(event: str, secs: float, **kw) -> None:
      if event == "/jax/core/compile/backend_compile_duration":
        cls._events.append((str(kw.get("fun_name", "?")), float(secs)))

    def on_event(event: str, **kw) -> None:
      if event == "/jax/compilation_cache/cache_hits":
        cls._hits += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

  @classmethod
  def snapshot(cls) -> tuple[int, int]:
    cls._register()
    return len(cls._events), cls._hits

  @classmethod
  def since(cls, snap: tuple[int, int]) -> dict:
    ev = cls._events[snap[0] :]
    return dict(count=len(ev), seconds=float(sum(s for _, s in ev)), cache_hits=cls._hits - snap[1], events=list(ev))


@dataclasses.dataclass
class Flushed:
  """What a metrics flush found: the iterations whose step overflowed the rasterizer's
  intersection buffer (they skipped their update) and the largest intersection count per Gaussian
  slot of any view of the flushed steps (metric `isect_need`; 0 when the step reports none)."""

  overflowed: list[int]
  isect_need: float


def flush_metrics(
  pending: Sequence[tuple[int, dict]],
  writer,
  bar,
  history: list,
  *,
  tag: str,
  scalars: Sequence[str] | None,
  postfix: Callable[[dict], dict],
) -> Flushed:
  """One host read of the metrics of the steps since the last flush (`pending`: (iteration,
  metrics) pairs, device arrays; or (range of iterations, metrics stacked over them) for a call
  that ran several steps): TensorBoard scalars `tag/<name>` of every step (`scalars`, or
  all but the overflow flag when None), the last step's metrics appended to `history` (as floats),
  the progress bar's postfix (`postfix(last)`) and position. Returns `Flushed`."""
  if not pending:
    return Flushed([], 0.0)
  rows = []  # (iteration, metrics as numpy), one per step
  for (it, _), m in zip(pending, jax.device_get([m for _, m in pending])):
    if isinstance(it, range):  # a call of several steps: its metrics are stacked over them
      rows += [(j, {k: v[i] for k, v in m.items()}) for i, j in enumerate(it)]
    else:
      rows.append((it, m))
  ms = [m for _, m in rows]
  overflowed = []
  for it, m in rows:
    if bool(m["overflow"]):
      overflowed.append(it)
    if writer is not None:
      for k in scalars if scalars is not None else [k for k in m if k != "overflow"]:
        writer.add_scalar(f"{tag}/{k}", float(m[k]), it)
  last = {k: float(v) for k, v in ms[-1].items()}
  history.append(dict(iteration=rows[-1][0], **last))
  if bar is not None:
    bar.set_postfix(**postfix(last), refresh=False)
    bar.update(rows[-1][0] - bar.n)
  return Flushed(overflowed, max(float(m.get("isect_need", 0.0)) for m in ms))


@dataclasses.dataclass
class IsectCapacity:
  """The rasterizer's intersection capacity per Gaussian slot over a run (`RenderConfig.
  isect_per_gaussian`; a new value recompiles the step).

  After an overflow (that step skipped its update) it doubles (`config.grow_isect`). With `adapt`,
  it also shrinks to the smallest power of two >= 2x the largest need seen so far, when that at
  least halves it: the sort and the buffer scale with the capacity, not with the intersections
  drawn (README, "Compilation cache and input pipeline"). A shrink waits for a flush where the
  loop says a recompilation is due anyway (`settle`), so it costs no compilation of its own. An
  overflow after a shrink stops further shrinking for the run."""

  value: float
  adapt: bool = True
  shrunk: bool = False
  frozen: bool = False
  need: float = 0.0  # the largest need per slot seen so far

  def update(self, flushed: Flushed, what: str = "iteration", settle: bool = True) -> list[str]:
    """Take a flush's findings; `settle`: the step recompiles next anyway (a new SH degree or
    capacity), so a shrink may be taken now. Returns the warnings to print (one per overflow)."""
    msgs = []
    for it in flushed.overflowed:
      self.value = grow_isect(self.value)
      self.frozen = self.frozen or self.shrunk
      msgs.append(
        f"warning: rasterizer intersection buffer overflow at {what} {it}; the step was skipped; "
        f"isect_per_gaussian -> {self.value:g}"
      )
    self.need = max(self.need, flushed.isect_need)
    if settle and self.adapt and not self.frozen and not flushed.overflowed and self.need > 0:
      fit = max(2.0, 2.0 ** math.ceil(math.log2(2.0 * self.need)))
      if fit <= self.value / 2:
        self.value, self.shrunk = fit, True
    return msgs


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


__all__ = [
  "CompileCounter",
  "Prefetcher",
  "cached_step",
  "frame_order",
  "mixed_frame_order",
  "flush_metrics",
  "Flushed",
  "IsectCapacity",
  "jsonable",
]
