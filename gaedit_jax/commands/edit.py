"""`gaedit edit --avatar DIR --out DIR ...`: text-driven 4D edit of an avatar (`gaedit_jax.edit.loop`)."""

from __future__ import annotations

from gaedit_jax import parallel
from gaedit_jax.avatar import load_trained
from gaedit_jax.edit.loop import EditConfig, EditRun
from gaedit_jax.edit.regions import format_regions
from gaedit_jax.train.run_dir import check_out


def main(cfg: EditConfig) -> dict:
  """Text-driven 4D edit of a reconstructed avatar (GaussianAvatar-Editor, METHOD §5-7)."""
  if cfg.list_regions:  # the regions --region accepts on this avatar's FLAME model; --out is not touched
    model = load_trained(cfg.avatar, data=cfg.data, flame_model=cfg.flame_model).model
    print(format_regions(model))
    return {}
  # refuse a busy or non-empty --out (or one that is an input) before loading the editor (multi-host:
  # process 0 checks, the others learn its verdict when the run starts)
  if parallel.is_primary():
    check_out(
      cfg.out,
      {"--avatar": cfg.avatar, "--data": cfg.data, "--target-data": cfg.target_data, "--edited": cfg.edited},
      resume=cfg.run.resume,
      overwrite=cfg.run.overwrite,
      what="gaedit edit",
    )
  res = EditRun(cfg).run()
  print(
    f"{res['iterations']} edit iterations in {res['edit_seconds']:.1f} s; edited avatar in {cfg.out}"
    + (f" ({res['export']})" if "export" in res else "")
  )
  return res


__all__ = ["main"]
