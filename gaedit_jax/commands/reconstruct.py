"""`gaedit reconstruct --data DIR --out DIR`: train a GaussianAvatars avatar (`gaedit_jax.reconstruct`)."""

from __future__ import annotations

from gaedit_jax import parallel
from gaedit_jax.reconstruct import ReconstructConfig, Trainer
from gaedit_jax.train.run_dir import check_out


def main(cfg: ReconstructConfig) -> dict:
  """Train a GaussianAvatars avatar from a multi-view dataset folder."""
  # refuse a busy or non-empty --out before loading anything (the run checks again under its lock;
  # multi-host: process 0 checks, the others learn its verdict when the run starts)
  if parallel.is_primary():
    check_out(
      cfg.out, {"--data": cfg.data}, resume=cfg.run.resume, overwrite=cfg.run.overwrite, what="gaedit reconstruct"
    )
  trainer = Trainer(cfg)
  res = trainer.run()
  for s in ("val", "test"):
    if s in res:
      print(f"{s}: " + ", ".join(f"{k} {v:.4f}" for k, v in res[s].items()))
  print(
    f"{res['iterations']} iterations in {res['train_seconds']:.1f} s, {res['num_gaussians']} Gaussians; "
    f"model in {cfg.out}"
  )
  return res


__all__ = ["main"]
