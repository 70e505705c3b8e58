"""What a long loop shows: a tqdm bar (or, with --no-progress, one plain line per log interval) and a
TensorBoard writer, on process 0 only (multi-host)."""

from __future__ import annotations

import time
from pathlib import Path

from gaedit_jax import parallel


class PlainProgress:
  """The bar's interface (set_postfix, update, n, close) printing one line per update, for logs and
  pipes: `reconstruct 50/600000 loss 0.0421 psnr 24.10 gaussians 10234 12.3 it/s`."""

  def __init__(self, total: int, initial: int = 0, desc: str = ""):
    self.total, self.n, self.desc = total, initial, desc
    self.postfix: dict = {}
    self._t = time.perf_counter()

  def set_postfix(self, refresh: bool = False, **fields) -> None:
    self.postfix = fields

  def update(self, k: int = 1) -> None:
    if k <= 0:
      return
    now = time.perf_counter()
    rate = k / max(now - self._t, 1e-9)
    self._t = now
    self.n += k
    fields = " ".join(f"{key} {v}" for key, v in self.postfix.items())
    print(f"{self.desc} {self.n}/{self.total} {fields} {rate:.2f} it/s".replace("  ", " "), flush=True)

  def close(self) -> None:
    pass


def open_progress(out: Path, *, tensorboard: bool, progress: bool, total: int, initial: int, desc: str):
  """(writer or None, bar or None). The writer logs to OUT/tb (skipped without tensorboardX); the
  bar is tqdm's, or a PlainProgress without `progress`."""

  if not parallel.is_primary():
    return None, None
  writer = None
  if tensorboard:
    try:
      from tensorboardX import SummaryWriter

      writer = SummaryWriter(str(Path(out) / "tb"))
    except ImportError:
      pass
  if progress:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
  else:
    bar = PlainProgress(total=total, initial=initial, desc=desc)
  return writer, bar


__all__ = ["open_progress", "PlainProgress"]
