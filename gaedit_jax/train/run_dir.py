"""The output folder of a training run (`gaedit reconstruct` / `gaedit edit` --out): no input loses work.

- `--out` may not be, lie inside, or contain an input folder (`--data`, `--avatar`, ...).
- A non-empty OUT is refused unless `--resume` (continue the run in it) or `--overwrite` (start a
  new run there). `--overwrite` deletes nothing: the previous run's own files (RUN_ENTRIES:
  checkpoints/, point_cloud/, cfg.json, results_*.json, summaries, tb/, eval/, edits/, renders/)
  are moved into a sibling folder OUT.old-<time>/; any other file in OUT stays where it is.
- OUT/.gaedit.lock (pid, host, start time) is held while the run lives. A lock left by a process
  that is gone (same host) is taken over with a message; a live one, or one from another host, is
  an error naming the pid. Multi-host runs: process 0 alone takes it.
- JSON files of a run are written atomically (a temporary file, then os.replace).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from pathlib import Path

from gaedit_jax.errors import InputError

LOCK_NAME = ".gaedit.lock"
RUN_ENTRIES = (
  "checkpoints",
  "checkpoints_unreadable",
  "point_cloud",
  "cfg.json",
  "train_summary.json",
  "edit_summary.json",
  "tb",
  "eval",
  "edits",
  "renders",
)
"""Names in OUT that a run (or `gaedit render` / `gaedit eval` with their default outputs) writes."""
RUN_PATTERNS = ("results_*.json",)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
  """Writes `text` to a temporary file next to `path`, then renames it over `path`: a reader (or a
  run killed meanwhile) sees the old file or the new one, never half of one."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


def write_json(path: str | os.PathLike, obj) -> Path:
  return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def _resolved(p: str | os.PathLike) -> Path:
  return Path(p).expanduser().resolve()


def check_separate(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], what: str) -> None:
  """InputError when OUT is, lies inside, or contains one of the input folders (flag -> path)."""
  o = _resolved(out)
  for flag, p in inputs.items():
    if p is None:
      continue
    i = _resolved(p)
    if o == i:
      raise InputError(f"{what}: --out {out} is the {flag} folder; write the result to another folder")
    if o.is_relative_to(i):
      raise InputError(f"{what}: --out {out} lies inside the {flag} folder {p}; write the result elsewhere")
    if i.is_relative_to(o):
      raise InputError(f"{what}: --out {out} contains the {flag} folder {p}; write the result elsewhere")


def run_entries(out: Path) -> list[Path]:
  """The files and folders of a previous run in OUT (RUN_ENTRIES, RUN_PATTERNS), sorted."""
  out = Path(out)
  if not out.is_dir():
    return []
  found = {out / n for n in RUN_ENTRIES if (out / n).exists() or (out / n).is_symlink()}
  for pat in RUN_PATTERNS:
    found.update(out.glob(pat))
  return sorted(found)


def _contents(out: Path) -> list[str]:
  """Names in OUT other than the lock (an empty folder, or one holding only a lock, is empty)."""
  if not out.is_dir():
    return []
  return sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)


def _check_flags(out: Path, resume: bool, overwrite: bool, what: str) -> None:
  if resume and overwrite:
    raise InputError(f"{what}: --resume continues the run in {out} and --overwrite starts a new one; give one of them")
  if out.exists() and not out.is_dir():
    raise InputError(f"{what}: --out {out} is a file, not a folder")


def _check_empty(out: Path, what: str) -> None:
  names = _contents(out)
  if names:
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise InputError(
      f"{what}: --out {out} is not empty ({shown}); add --resume to continue its run, "
      f"--overwrite to start a new one (the previous run's files are moved to "
      f"{out.name}.old-<time>/), or choose another folder"
    )


def check_out(
  out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], *, resume: bool, overwrite: bool, what: str
) -> None:
  """Read-only checks of --out before a run loads anything (the run repeats them under its lock):
  flags, separation from the inputs, a live lock, a non-empty folder without --resume/--overwrite."""
  out = Path(out)
  _check_flags(out, resume, overwrite, what)
  check_separate(out, inputs, what)
  lock = read_lock(out / LOCK_NAME)
  if lock is not None and lock.get("host") == socket.gethostname() and _alive(lock):
    raise InputError(_in_use(out, lock, what))
  if not resume and not overwrite:
    _check_empty(out, what)


# ------------------------------------------------------------------------------------------------
# The lock
# ------------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
  """Fields 3.. of /proc/<pid>/stat (state, ..., starttime at index 19), or None (no procfs)."""
  try:
    s = Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  return s[s.rindex(")") + 2 :].split()


def _alive(lock: dict) -> bool:
  """Whether the process named by a lock of this host still runs (not a zombie, not a new process
  that reused the pid: its start time must match the one recorded)."""
  try:
    pid = int(lock["pid"])
  except (KeyError, TypeError, ValueError):
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    pass
  st = _proc_stat(pid)
  if st is None:
    return True
  if st[0] in ("Z", "X"):
    return False
  start = lock.get("proc_start")
  return start is None or str(start) == st[19]


def read_lock(path: Path) -> dict | None:
  """The lock's content; None without a lock; {"unreadable": reason} for a damaged one."""
  for attempt in range(3):
    try:
      text = Path(path).read_text()
    except FileNotFoundError:
      return None
    except OSError as e:
      return {"unreadable": str(e)}
    try:
      d = json.loads(text)
      if isinstance(d, dict) and "pid" in d:
        return d
    except json.JSONDecodeError:
      pass
    time.sleep(0.2)  # a lock being written this instant
  return {"unreadable": "not a gaedit lock file"}


def _in_use(out: Path, lock: dict, what: str) -> str:
  return (
    f"{what}: --out {out} is in use by {lock.get('command', 'another run')} (pid {lock.get('pid')} on "
    f"host {lock.get('host')}, started {lock.get('started')}); wait for it to finish or choose another "
    f"folder (lock: {Path(out) / LOCK_NAME})"
  )


class RunLock:
  """OUT/.gaedit.lock, created exclusively (O_EXCL); `release()` removes it if it is still ours."""

  def __init__(self, path: Path, info: dict):
    self.path, self.info = path, info

  @classmethod
  def acquire(cls, out: Path, what: str) -> "RunLock":
    path = Path(out) / LOCK_NAME
    st = _proc_stat(os.getpid())
    info = dict(
      pid=os.getpid(),
      host=socket.gethostname(),
      command=what,
      started=datetime.datetime.now().isoformat(timespec="seconds"),
      proc_start=st[19] if st else None,
    )
    for attempt in range(5):
      try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        old = read_lock(path)
        if old is None:
          continue  # released meanwhile
        if "unreadable" in old:
          raise InputError(
            f"{what}: {path}: unreadable lock file ({old['unreadable']}); if no run uses {out}, delete it"
          ) from None
        if old.get("host") != info["host"] or _alive(old):
          raise InputError(_in_use(out, old, what)) from None
        cls._take_over(path, old)
        continue
      with os.fdopen(fd, "w") as f:
        f.write(json.dumps(info) + "\n")
      return cls(path, info)
    raise InputError(f"{what}: {path}: could not take the lock (another run keeps taking it)")

  @staticmethod
  def _take_over(path: Path, old: dict) -> None:
    """Moves a stale lock away; if another process replaced it meanwhile, puts that one back."""
    print(
      f"note: {path}: taking over the lock of pid {old.get('pid')} (started {old.get('started')}), "
      f"which is no longer running",
      flush=True,
    )
    stale = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
    try:
      os.rename(path, stale)
    except FileNotFoundError:
      return
    if read_lock(stale) != old:  # a fresh lock of a concurrent run: restore it (no clobbering)
      try:
        os.link(stale, path)
      except OSError:
        pass
    stale.unlink(missing_ok=True)

  def release(self) -> None:
    cur = read_lock(self.path)
    if cur is not None and cur.get("pid") == self.info["pid"] and cur.get("proc_start") == self.info["proc_start"]:
      self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# Preparing OUT
# ------------------------------------------------------------------------------------------------


def move_aside(out: Path, entries: list[Path]) -> Path:
  """Moves `entries` (inside OUT) into a new sibling folder OUT.old-<time>[-k]/; returns it."""
  out = Path(out)
  stamp = time.strftime("%Y%m%d-%H%M%S")
  dest = out.with_name(f"{out.name}.old-{stamp}")
  k = 1
  while dest.exists():
    dest = out.with_name(f"{out.name}.old-{stamp}-{k}")
    k += 1
  dest.mkdir()
  for p in entries:
    os.rename(p, dest / p.name)
  return dest


def prepare(
  out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], *, resume: bool, overwrite: bool, what: str
) -> RunLock:
  """Checks OUT, creates it, takes its lock and, with --overwrite, moves the previous run's files
  aside. Returns the held lock (release it when the run ends)."""
  out = Path(out).absolute()
  _check_flags(out, resume, overwrite, what)
  check_separate(out, inputs, what)
  out.mkdir(parents=True, exist_ok=True)
  lock = RunLock.acquire(out, what)
  try:  # under the lock: no other run changes OUT from here on
    if not resume and not overwrite:
      _check_empty(out, what)
    if overwrite:
      old = run_entries(out)
      if old:
        try:
          dest = move_aside(out, old)
        except OSError as e:
          raise InputError(f"{what}: --overwrite: cannot move the previous run's files out of {out} ({e})") from e
        print(
          f"note: --overwrite: moved the previous run's files ({', '.join(p.name for p in old)}) from {out} to {dest}",
          flush=True,
        )
  except BaseException:
    lock.release()
    raise
  return lock


__all__ = [
  "LOCK_NAME",
  "RUN_ENTRIES",
  "RUN_PATTERNS",
  "atomic_write_text",
  "write_json",
  "check_separate",
  "check_out",
  "run_entries",
  "read_lock",
  "RunLock",
  "move_aside",
  "prepare",
]
