"""Following a running `gaedit reconstruct` / `gaedit edit`: its exports
RUN_DIR/point_cloud/iteration_<N>/{point_cloud.ply, flame_param.npz} are polled from the viewer's
own process (the training never waits for the viewer: we only read files it has finished writing).

An export counts as finished when both files exist and neither changed for `settle` seconds; one
that still fails to load (caught mid-write) is retried at the next poll."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
_ITERATION = re.compile(r"iteration_(\d+)")
EXPORT_FILES = ("point_cloud.ply", "flame_param.npz")


def finished_exports(run_dir: str | Path, settle: float = 1.0, now: float | None = None) -> dict[int, Path]:
  """iteration -> folder of the run's finished exports."""
  root = Path(run_dir) / "point_cloud"
  now = time.time() if now is None else now
  out = {}
  if not root.is_dir():
    return out
  for d in root.iterdir():
    m = _ITERATION.fullmatch(d.name)
    if not m or not d.is_dir():
      continue
    try:
      mtimes = [(d / f).stat().st_mtime for f in EXPORT_FILES]
    except FileNotFoundError:
      continue
    if now - max(mtimes) >= settle:
      out[int(m.group(1))] = d
  return out


class RunWatcher(Generic[T]):
  """Polls `run_dir` every `interval` seconds; loads each export newer than the last one shown with
  `load(iteration)` and hands it to `on_load(iteration, loaded)`; `on_error(iteration, message)`
  when a finished export does not load (it is retried)."""

  def __init__(
    self,
    run_dir: str | Path,
    load: Callable[[int], T],
    on_load: Callable[[int, T], None],
    *,
    on_error: Callable[[int, str], None] | None = None,
    interval: float = 2.0,
    settle: float = 1.0,
  ):
    self.run_dir = Path(run_dir)
    self.load, self.on_load, self.on_error = load, on_load, on_error
    self.interval, self.settle = float(interval), float(settle)
    self.iteration: int | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def poll(self) -> bool:
    """Loads the newest finished export if it is newer than the one shown; True when it did."""
    its = finished_exports(self.run_dir, self.settle)
    if not its:
      return False
    it = max(its)
    if self.iteration is not None and it <= self.iteration:
      return False
    try:
      loaded = self.load(it)
    except Exception as e:  # a half-written file: try again at the next poll
      if self.on_error is not None:
        self.on_error(it, " ".join(f"{type(e).__name__}: {e}".split()))
      return False
    self.iteration = it
    self.on_load(it, loaded)
    return True

  def wait_first(self, timeout: float | None = None) -> bool:
    """Blocks until an export has loaded (the run may not have exported yet)."""
    end = None if timeout is None else time.time() + timeout
    while not self.poll():
      if end is not None and time.time() >= end or self._stop.is_set():
        return False
      self._stop.wait(self.interval)
    return True

  def start(self) -> None:
    self._thread = threading.Thread(target=self._loop, name="viewer-watch", daemon=True)
    self._thread.start()

  def _loop(self) -> None:
    while not self._stop.wait(self.interval):
      self.poll()

  def stop(self) -> None:
    self._stop.set()


__all__ = ["EXPORT_FILES", "RunWatcher", "finished_exports"]
