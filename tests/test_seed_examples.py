"""experiments/seed_examples.py: the plan (--dry-run) names the original's examples and only valid
`gaedit` commands; missing data fails clearly; and the whole path (reconstruct, source export,
edit, renders, CLIP metrics, summary) runs on a fake NeRSemble layout of tiny synthetic datasets
with tiny random InstructPix2Pix and CLIP models (~80 s CPU)."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import seed_examples as SE  # experiments/ is on the path (pyproject: pytest pythonpath)

from gaedit_jax.cli import parse_config

GA_SUFFIX = "_v16_DS2-0.5x_lmkSTAR_teethV3_SMOOTH_offsetS_whiteBg_maskBelowLine"


def _args(root, out, *extra):
  return [
    "--nersemble-root",
    str(root),
    "--ip2p",
    str(root / "ip2p"),
    "--clip",
    str(root / "clip"),
    "--out",
    str(out),
    *extra,
  ]


def test_dry_run_lists_all_examples_without_data(tmp_path, capsys):
  SE.main(_args(tmp_path / "absent", tmp_path / "o", "--avatars", str(tmp_path / "av"), "--dry-run"))
  text = capsys.readouterr().out
  assert "# MISSING dataset folder" in text and "306_EMO-1_*whiteBg*" in text and "460_FREE_*whiteBg*" in text
  for ex in SE.EXAMPLES:
    assert shlex.quote(ex.prompt) in text and shlex.quote(ex.target_caption) in text
  # 5 edits, 4 source exports (304 EXP-2 twice), 2 render steps per model, 3 evals per example
  assert text.count("gaedit edit ") == 9 and text.count("gaedit render ") == 18 and text.count("gaedit eval ") == 15
  assert not (tmp_path / "o").exists()


def test_missing_data_is_a_clear_error(tmp_path):
  (tmp_path / "root").mkdir()
  with pytest.raises(SystemExit, match=r"missing inputs:(.|\n)*root/306_EMO-1_\*whiteBg\*"):
    SE.main(_args(tmp_path / "root", tmp_path / "o", "--avatars", str(tmp_path / "av"), "--examples", "306"))
  with pytest.raises(SystemExit, match="unknown examples"):
    SE.main(_args(tmp_path / "root", tmp_path / "o", "--avatars", ".", "--examples", "999"))


def test_printed_commands_parse_back_to_the_configs(tmp_path):
  """What --dry-run prints is what runs: each command parses (tyro, as `gaedit`) to the step's config."""
  a = SE.parse_args(_args(tmp_path, tmp_path / "o", "--reconstruct", "--lpips-weights", "lp", "--examples", "304"))
  steps, _, _ = SE.build_plan(a, SE.select(a.examples))
  assert [s.sub for s in steps][:2] == ["reconstruct", "edit"]
  for s in steps:
    argv = shlex.split(s.command)
    assert argv[:2] == ["gaedit", s.sub]
    assert parse_config(type(s.config), argv[2:]) == s.config, s.command


def _fake_nersemble(root: Path) -> None:
  """Tiny synthetic datasets under GA-release folder names (+ a UNION10 copy), a 460 FREE driver
  with another identity and motion, and tiny random models."""
  from recon_data import make_tiny_dataset

  from gaedit_jax.data.synthetic import SynthConfig, generate
  from gaedit_jax.nets.tiny import make_tiny_clip, make_tiny_ip2p

  seq = make_tiny_dataset(root / f"306_EMO-1{GA_SUFFIX}", num_timesteps=8)
  shutil.copytree(seq, root / f"UNION10_306_EMO1234EXP234589{GA_SUFFIX}")
  generate(
    SynthConfig(
      out=root / f"460_FREE{GA_SUFFIX}",
      width=48,
      height=64,
      num_cameras=9,
      num_timesteps=8,
      rows=16,
      cols=24,
      supersample=1,
      contact_sheet=False,
      seed=1,
    ),
    progress=False,
  )
  make_tiny_ip2p(root / "ip2p")
  make_tiny_clip(root / "clip")


@pytest.mark.slow
def test_end_to_end_on_a_fake_layout(tmp_path, capsys):
  root, out = tmp_path / "nersemble", tmp_path / "out"
  _fake_nersemble(root)
  # (no LPIPS weights: the LPIPS loss is tested in test_edit_loop, and its compile would add ~15 s)
  argv = _args(
    root,
    out,
    "--reconstruct",
    "--recon-iterations",
    "4",
    "--examples",
    "306",
    "--iterations",
    "2",
    "--ip2p-size",
    "32",
    "--diffusion-steps",
    "2",
    "--cross-max-frames",
    "4",
    "--quiet",
  )
  # the script as a user runs it, in its own process: this heavy run (a reconstruction, an edit
  # with a tiny InstructPix2Pix, CLIP) does not share native state with the rest of the suite
  done = subprocess.run(
    [sys.executable, SE.__file__, *argv], capture_output=True, text=True, timeout=1200, env=dict(os.environ)
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "LPIPS" in done.stderr  # the warning that the LPIPS loss is skipped without weights
  summary = json.loads((out / "summary.json").read_text())
  row = summary["examples"][0]
  assert row["example"] == "306_elf" and row["clip_variant"] == "clip"
  for s in SE.SETS:
    assert math.isfinite(row[s]["clip_s"]) and math.isfinite(row[s]["clip_c"]) and row[s]["frames"] >= 2, s
  assert (out / "summary.md").read_text().count("| 306_elf") == 1
  assert json.loads((out / "summary.json").read_text())["examples"][0]["nv"] == row["nv"]
  assert (out / "306_elf" / "edited" / "point_cloud" / "iteration_2" / "point_cloud.ply").exists()
  # a re-run skips every finished step and gives the same summary
  capsys.readouterr()
  assert json.loads(json.dumps(SE.main(argv))) == summary  # summary: as read back from summary.json
  assert capsys.readouterr().out.count("done, skipped") == 10
