"""`gaedit synth OUT`: write the synthetic multi-view video dataset (`gaedit_jax.data.synthetic`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tyro

from gaedit_jax.data.synthetic import FLAME_FILE, SynthConfig, generate


@dataclasses.dataclass
class SynthArgs(SynthConfig):
  """`SynthConfig` with OUT as a positional argument."""

  out: tyro.conf.Positional[Path]
  """Output dataset folder (GaussianAvatars/VHAP layout)."""


def main(cfg: SynthArgs) -> None:
  """Write the synthetic multi-view video dataset (GaussianAvatars/VHAP layout) to OUT.

  Smallest grid: 2 cameras and 4 timesteps (at --train-ratio 0.7, so that the test split is not
  empty); head grid --rows >= 16, --cols >= 24 (even)."""
  cfg.check_grid()
  info = generate(cfg)
  print(
    f"wrote {info['num_images']} images ({info['splits']}) of a {info['num_vertices']}-vertex "
    f"{info['num_faces']}-face head to {cfg.out} in {info['seconds_total']:.1f} s "
    f"({info['bytes'] / 1e6:.1f} MB); FLAME model: {cfg.out / FLAME_FILE}"
  )
  if info["contact_sheet"]:
    print(f"contact sheet: {Path(cfg.out) / info['contact_sheet']}")


__all__ = ["SynthArgs", "main"]
