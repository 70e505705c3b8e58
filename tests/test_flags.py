"""Flat flags over nested setting groups: the command line and `flags.build` route the same names to
the same groups; every group checks its own values."""

from pathlib import Path

import pytest

from gaedit_jax.cli import parse_config
from gaedit_jax.edit.loop import EditConfig
from gaedit_jax.errors import InputError
from gaedit_jax.flags import as_flags, build, flag_args, flat_names, with_flags
from gaedit_jax.reconstruct import ReconstructConfig
from gaedit_jax.train.config import GA_RATES, RASTER, RunSettings

ARGS = [
  "--feature-lr",
  "0.25",
  "--tile-size",
  "8",
  "--lambda-xyz",
  "0.5",
  "--checkpoint-interval",
  "7",
  "--no-progress",
]


def _cli(cls, args):
  return parse_config(cls, args)


@pytest.mark.parametrize("cls, required", [(ReconstructConfig, ["--data", "d"]), (EditConfig, ["--avatar", "a"])])
def test_flat_flags_land_in_their_groups_as_build_puts_them(cls, required):
  parsed = _cli(cls, required + ["--out", "o"] + ARGS)
  first = Path(required[1])
  kw = dict(feature_lr=0.25, tile_size=8, lambda_xyz=0.5, checkpoint_interval=7, progress=False)
  built = build(cls, **{required[0][2:]: first}, out=Path("o"), **kw)
  assert parsed == built
  assert parsed.lr.feature_lr == 0.25 and parsed.lr.opacity_lr == GA_RATES.opacity_lr
  assert parsed.raster.tile_size == 8 and parsed.raster.isect_per_gaussian == RASTER.isect_per_gaussian
  assert parsed.reg.lambda_xyz == 0.5 and parsed.run.checkpoint_interval == 7 and parsed.run.progress is False


def test_stage_defaults_of_a_shared_group_are_kept_when_one_field_changes():
  e = build(EditConfig, avatar=Path("a"), out=Path("o"), resume=True)
  assert e.run == RunSettings(checkpoint_interval=500, keep_checkpoints=2, log_interval=10, resume=True)
  r = with_flags(build(ReconstructConfig, data=Path("d"), out=Path("o")), keep_checkpoints=5)
  assert r.run.checkpoint_interval == 60_000 and r.run.keep_checkpoints == 5


def test_names_are_unique_and_unknown_names_refused():
  for cls in (ReconstructConfig, EditConfig):
    names = flat_names(cls)
    assert {"feature_lr", "tile_size", "lambda_scale", "stop_after", "out"} <= names
  with pytest.raises(TypeError, match="no setting feature_rate"):
    build(ReconstructConfig, data=Path("d"), out=Path("o"), feature_rate=1.0)


@pytest.mark.parametrize(
  "args, msg",
  [
    (["--tile-size", "32"], r"--tile-size must be an integer in \[1, 16\], got 32"),
    (["--feature-lr", "-1"], r"--feature-lr must be a finite number >= 0, got -1.0"),
    (["--keep-checkpoints", "0"], r"--keep-checkpoints must be an integer >= 1, got 0"),
    (["--threshold-scale", "nan"], r"--threshold-scale must be a finite number >= 0, got nan"),
  ],
)
def test_group_values_are_checked_with_the_flag_named(args, msg):
  with pytest.raises(InputError, match=msg):
    _cli(ReconstructConfig, ["--data", "d", "--out", "o"] + args)


def test_as_flags_parses_back_and_leaves_out_the_stage_defaults():
  e = build(EditConfig, avatar=Path("a"), out=Path("o"), feature_lr=0.5, keep_checkpoints=4, gan=False)
  args = as_flags(e)
  # --checkpoint-interval 500 is the edit's own default of the shared group: not written
  assert args == ["--avatar", "a", "--out", "o", "--no-gan", "--feature-lr", "0.5", "--keep-checkpoints", "4"]
  assert parse_config(EditConfig, args) == e
  assert flag_args(tile_size=8, progress=False, views=(1, 2)) == [
    "--tile-size",
    "8",
    "--no-progress",
    "--views",
    "1",
    "2",
  ]
