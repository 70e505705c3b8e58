"""What a long loop shows: a tqdm bar and a TensorBoard writer, on process 0 only (multi-host)."""

from __future__ import annotations

from pathlib import Path


def open_progress(out: Path, *, tensorboard: bool, progress: bool, total: int, initial: int, desc: str):
  """(writer or None, bar or None). The writer logs to OUT/tb (skipped without tensorboardX)."""
  from gaedit_jax import parallel

  if not parallel.is_primary():
    return None, None
  writer = bar = None
  if tensorboard:
    try:
      from tensorboardX import SummaryWriter

      writer = SummaryWriter(str(Path(out) / "tb"))
    except ImportError:
      pass
  if progress:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
  return writer, bar


__all__ = ["open_progress"]
