"""One session of a training run in its output folder: what `gaedit reconstruct` and `gaedit edit`
share about a run's bookkeeping.

    with Session(out, what=..., inputs=..., resume=..., ...) as ses:   # folder guard + lock (run_dir)
      got = ses.restore(template_fn)          # --resume: newest readable, compatible checkpoint
      writer, bar = ses.begin(...)            # progress bar / plain lines, TensorBoard, session clock
      with ses.guard(lambda: state, meta_fn): # on an exception or Ctrl-C: checkpoint the last completed step
        for it in ...:
          state = step(state)
          ses.done(it)                        # `state` is the complete result of iteration `it`
          if ses.due(it, end): ses.save(state, meta)
      summary = ses.summary(step)             # the whole run: every session since iteration 1

Checkpoints are due every `every` iterations, every `minutes` of wall-clock time, and at the end.
Each checkpoint's metadata holds the run's identity (the settings that fix the state's shapes or
meaning, keyed by flag) and its sessions (iterations, seconds), so a --resume with another dataset is
refused naming the flag, and the summary after a resume covers the whole run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from gaedit_jax import parallel
from gaedit_jax.errors import InputError
from gaedit_jax.io.checkpoint import CheckpointManager
from gaedit_jax.io.progress import open_progress
from gaedit_jax.train import run_dir


def file_id(path: str | os.PathLike, member: str | None = None) -> dict:
  """Identity of an input file or folder: its resolved path and the SHA-256 of the file (or of the
  folder's `member` file), so a moved copy is recognised as the same input and a changed one is not."""
  p = Path(path).expanduser().resolve()
  f = p / member if member else p
  try:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
      for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    digest = h.hexdigest()
  except OSError:
    digest = None
  return dict(path=str(p), sha256=digest, file=member)


def _show(v) -> str:
  if isinstance(v, dict) and "path" in v:
    return str(v["path"])
  return repr(v) if isinstance(v, str) else str(v)


def identity_differences(now: dict, then: dict) -> tuple[list[str], list[str]]:
  """(differences that forbid a resume, notes) between two identities (flag -> value or file_id).
  Inputs with a content hash on both sides compare by content (a moved copy is the same input);
  others by value or path."""
  bad, notes = [], []
  for flag, a in now.items():
    if flag not in then:
      continue
    b = then[flag]
    if isinstance(a, dict) and isinstance(b, dict) and "path" in a:
      ha, hb = a.get("sha256"), b.get("sha256")
      if ha is not None and hb is not None:
        if ha == hb:
          if a["path"] != b.get("path"):
            notes.append(f"{flag} is now {a['path']} (the checkpoint's was {b.get('path')}, same content)")
        elif a["path"] == b.get("path"):
          bad.append(f"{flag} {a['path']}: {a.get('file') or 'the file'} changed since the checkpoint was written")
        else:
          bad.append(f"{flag} {a['path']} (the checkpoint's: {b.get('path')})")
      elif a["path"] != b.get("path"):
        bad.append(f"{flag} {a['path']} (the checkpoint's: {b.get('path')})")
    elif a != b:
      bad.append(f"{flag} {_show(a)} (the checkpoint's: {_show(b)})")
  return bad, notes


class Session:
  """The bookkeeping of one session of a run in OUT (see the module docstring)."""

  def __init__(
    self,
    out: str | os.PathLike,
    *,
    what: str,
    inputs: dict[str, Any],
    resume: bool,
    overwrite: bool,
    keep: int,
    every: int,
    minutes: float,
    log_interval: int,
    identity: dict,
  ):
    self.out = Path(out).absolute()
    self.what, self.inputs, self.resume, self.overwrite = what, inputs, resume, overwrite
    self.keep, self.every, self.minutes = keep, every, minutes
    self.log_interval = max(int(log_interval), 1)
    self.identity = identity
    self.primary = parallel.is_primary()
    self.multi = jax.process_count() > 1
    self.lock: run_dir.RunLock | None = None
    self.ckpt = None  # io.checkpoint.CheckpointManager
    self.writer = self.bar = None
    self.start = self.completed = 0
    self.sessions: list[dict] = []
    self.saved: set[int] = set()
    self._t0 = time.perf_counter()
    self._last_save = time.monotonic()
    self._holding = False  # between begin_step and done: a signal waits for done (see guard)
    self._pending: str | None = None

  # -- the folder ---------------------------------------------------------------------------------
  @classmethod
  def from_flags(cls, cfg, *, what: str, inputs: dict[str, Any], identity: dict) -> "Session":
    """The session of a stage run from its run flags, named alike in both stages (--out, --resume,
    --overwrite, --keep-checkpoints, --checkpoint-interval, --checkpoint-minutes, --log-interval)."""
    return cls(
      cfg.out,
      what=what,
      inputs=inputs,
      resume=cfg.run.resume,
      overwrite=cfg.run.overwrite,
      keep=cfg.run.keep_checkpoints,
      every=cfg.run.checkpoint_interval,
      minutes=cfg.run.checkpoint_minutes,
      log_interval=cfg.run.log_interval,
      identity=identity,
    )

  def __enter__(self) -> "Session":
    try:
      if self.primary:
        self.lock = run_dir.prepare(self.out, self.inputs, resume=self.resume, overwrite=self.overwrite, what=self.what)
      else:
        run_dir.check_separate(self.out, self.inputs, self.what)
    except BaseException:
      self._agree(False)
      raise
    # orbax is imported here, not at the top: it adds half a second to `gaedit render` / `gaedit eval`,
    # which import the stages but never write checkpoints

    try:
      self._agree(True)
      self.ckpt = CheckpointManager(self.out / "checkpoints", keep=self.keep)
    except BaseException:
      self._release()
      raise
    return self

  def __exit__(self, *exc) -> None:
    try:
      self.close_progress()
      if self.ckpt is not None:
        self.ckpt.close()
    finally:
      self._release()

  def _release(self) -> None:
    if self.lock is not None:
      self.lock.release()
      self.lock = None

  def _agree(self, ok: bool) -> None:
    """Multi-host: the other processes learn whether process 0 could prepare OUT (it alone checks
    the folder and holds the lock); they stop with it instead of waiting forever."""
    if not self.multi:
      return
    from jax.experimental import multihost_utils

    verdict = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
    if not verdict and not self.primary:
      raise InputError(f"{self.what}: process 0 refused --out {self.out} (see its message)")

  # -- resume -------------------------------------------------------------------------------------
  def restore(self, template_fn: Callable[[dict], Any]) -> tuple[Any, dict] | None:
    """With --resume: (state, meta) of the newest readable checkpoint, after checking that its run
    is this one (same identity); None to start from iteration 0."""
    if not self.resume:
      return None

    def check(step: int, meta: dict) -> None:
      then = meta.get("identity")
      if not isinstance(then, dict):
        return  # a checkpoint of an older version: nothing to compare
      bad, notes = identity_differences(self.identity, then)
      if bad:
        raise InputError(
          f"{self.what}: --resume from {self.ckpt.dir / str(step)} with other settings: "
          + "; ".join(bad)
          + "; keep the checkpoint's settings, or start a new run "
          "(--overwrite, or another --out)"
        )
      for n in notes:
        print(f"note: {n}", flush=True)

    got = self.ckpt.restore_newest(template_fn, check)
    if got is None:
      if (self.out / "point_cloud").exists():
        raise InputError(
          f"{self.what}: --resume: {self.ckpt.dir} holds no checkpoint, but {self.out} holds "
          f"a previous run's results (point_cloud/); use --overwrite to start a new run"
        )
      print(f"note: --resume: no checkpoint in {self.ckpt.dir}; starting from iteration 0", flush=True)
      return None
    for step, why in got.skipped:
      print(f"warning: skipped checkpoint {step}: {why}", flush=True)
    if got.skipped:
      if self.primary:
        for step, _ in got.skipped:
          dest = self.ckpt.set_aside(step, self.out / "checkpoints_unreadable")
          print(f"note: moved the unreadable checkpoint {step} to {dest}", flush=True)
      parallel.barrier("gaedit-set-aside-checkpoints")
      self.ckpt.reload()
    run = got.meta.get("run") or {}
    self.sessions = [dict(s) for s in run.get("sessions", [])]
    self.start = self.completed = got.step
    self.saved.add(got.step)
    print(f"resumed from iteration {got.step} ({self.ckpt.dir / str(got.step)})", flush=True)
    return got.state, got.meta

  # -- the session --------------------------------------------------------------------------------
  def begin(self, *, total: int, desc: str, tensorboard: bool, progress: bool):
    """Opens the progress display and TensorBoard, starts the session clock. Returns (writer, bar)."""
    self.writer, self.bar = open_progress(
      self.out, tensorboard=tensorboard, progress=progress, total=total, initial=self.start, desc=desc
    )
    self._t0 = time.perf_counter()
    self._last_save = time.monotonic()
    return self.writer, self.bar

  def close_progress(self) -> None:
    if self.bar is not None:
      self.bar.close()
    if self.writer is not None:
      self.writer.close()

  def session_seconds(self) -> float:
    return time.perf_counter() - self._t0

  def run_record(self, step: int) -> dict:
    """Every session of the run up to `step`: this one appended to those restored."""
    sessions = self.sessions + [dict(start=self.start, end=int(step), seconds=self.session_seconds())]
    return dict(sessions=sessions, seconds=float(sum(s["seconds"] for s in sessions)))

  def summary(self, step: int) -> dict:
    """iterations (from 1), seconds summed over the sessions, the sessions and the resume points."""
    r = self.run_record(step)
    return dict(
      iterations=int(step),
      seconds=r["seconds"],
      sessions=r["sessions"],
      resumed_at=[s["start"] for s in r["sessions"] if s["start"] > 0],
    )

  def begin_step(self) -> None:
    """The loop is about to call its step, which consumes (donates) the state: a Ctrl-C or SIGTERM
    from here on is held until `done`, so that the interrupt finds a complete state to checkpoint
    (raised at once, it could land between the step's return and the assignment of its result)."""
    self._holding = True

  def done(self, it: int) -> None:
    """The state now holds the complete result of iteration `it` (safe to checkpoint on a failure).
    A signal held since `begin_step` is raised here, as KeyboardInterrupt."""
    self.completed = it
    self._holding = False
    if self._pending is not None:
      name, self._pending = self._pending, None
      raise KeyboardInterrupt(name)

  def due(self, it: int, end: int) -> bool:
    """A checkpoint is due at the end, every `every` iterations, or `minutes` after the last one
    (multi-host: decided by process 0 at log intervals, since every process must save together)."""
    if it == end or (self.every and it % self.every == 0):
      return True
    if not self.minutes or self.minutes <= 0:
      return False
    if self.multi:
      if it % self.log_interval:
        return False
      from jax.experimental import multihost_utils

      late = time.monotonic() - self._last_save >= 60.0 * self.minutes
      return bool(multihost_utils.broadcast_one_to_all(np.int32(late)))
    return time.monotonic() - self._last_save >= 60.0 * self.minutes

  def save(self, state, meta: dict) -> int:
    """Checkpoints `state` (async) with `meta` plus the run's identity and sessions."""
    step = int(state.step)
    self.ckpt.save(step, state, dict(meta, identity=self.identity, run=self.run_record(step)))
    self.saved.add(step)
    self._last_save = time.monotonic()
    return step

  def wait(self) -> None:
    self.ckpt.wait()

  # -- failures -----------------------------------------------------------------------------------
  @contextlib.contextmanager
  def guard(self, state_fn: Callable[[], Any], meta_fn: Callable[[], dict]):
    """Around the loop: on any exception, Ctrl-C (or SIGTERM, turned into KeyboardInterrupt here),
    checkpoint the last completed iteration when the state is that (see `done`), then re-raise.
    A signal during a step (`begin_step` .. `done`) waits for the step's end; a second one does not
    wait."""
    old = {}
    if threading.current_thread() is threading.main_thread():

      def _signal(signum, frame):
        name = signal.Signals(signum).name
        if self._holding and self._pending is None:
          self._pending = name
          return
        raise KeyboardInterrupt(name)

      old = {sig: signal.signal(sig, _signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
      yield
    except BaseException as e:
      if self.bar is not None:
        self.bar.close()
      self._save_after_failure(e, state_fn, meta_fn)
      raise
    finally:
      self._holding, self._pending = False, None
      for sig, handler in old.items():
        signal.signal(sig, handler)

  def _save_after_failure(self, e: BaseException, state_fn, meta_fn) -> None:
    what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"stopped by {type(e).__name__}"
    newest = max(self.saved) if self.saved else None
    have = f"the newest checkpoint is iteration {newest}" if newest is not None else "there is no checkpoint"
    say = lambda msg: print(f"{self.what}: {what}; {msg}", flush=True)
    if self.multi:
      say(f"a multi-host run writes no checkpoint on a failure; {have}")
      return
    try:
      st = state_fn()
      if any(isinstance(x, jax.Array) and x.is_deleted() for x in jax.tree.leaves(st)):
        say(
          f"no checkpoint written: the failure came inside the step after iteration {self.completed}, which "
          f"had consumed its state; {have}"
        )
        return
      step = int(st.step)
    except Exception as e2:  # noqa: BLE001 - the device may be what failed
      say(f"no checkpoint written: the state cannot be read ({' '.join(str(e2).split())[:160]}); {have}")
      return
    if step != self.completed:
      say(
        f"no checkpoint written: the failure came during the between-step work of iteration {step} "
        f"(densification / opacity reset), which may have left the state half-updated; {have}"
      )
      return
    if step in self.saved:
      say(f"{have}, the last completed step; continue with --resume")
      return
    try:
      self.save(st, meta_fn())
      self.ckpt.wait()
    except BaseException as e2:  # noqa: BLE001 - keep the original error
      say(f"writing a checkpoint of iteration {step} failed ({type(e2).__name__}: {e2}); {have}")
      return
    say(
      f"saved a checkpoint of iteration {step} (the last completed step) in {self.ckpt.dir / str(step)}; "
      f"continue with --resume"
    )


__all__ = ["Session", "file_id", "identity_differences"]
