"""Bad input is caught up front with one-line errors: flag values, the whole dataset before the
first training step, and the `gaedit` command's error format (one line, exit status 2, --debug)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from recon_data import tiny_config

from gaedit_jax.cli import main as cli
from gaedit_jax.data.validate import validate_dataset
from gaedit_jax.errors import DatasetError, DatasetFileNotFoundError, InputError
from gaedit_jax.flags import InputNotFoundError, build

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tiny, tmp_path):
  """A private copy of the tiny synthetic dataset (48x64, 9 cameras, 4 timesteps) to break."""
  return Path(shutil.copytree(tiny, tmp_path / "data"))


def first_frame(data, split):
  fr = json.loads((data / f"transforms_{split}.json").read_text())["frames"][0]
  return fr, data / fr["file_path"]


# ---- flags ----------------------------------------------------------------------------------------


def _configs():
  from gaedit_jax.commands.eval import EvalConfig
  from gaedit_jax.commands.render import RenderConfigCLI
  from gaedit_jax.data.synthetic import SynthConfig
  from gaedit_jax.edit.loop import EditConfig
  from gaedit_jax.reconstruct import ReconstructConfig

  return dict(
    recon=lambda **kw: build(ReconstructConfig, data=Path("d"), out=Path("o"), **kw),
    edit=lambda **kw: build(EditConfig, avatar=Path("a"), out=Path("o"), **kw),
    render=lambda **kw: RenderConfigCLI(model=Path("m"), **kw),
    eval=lambda **kw: EvalConfig(**kw),
    synth=lambda **kw: SynthConfig(out=Path("s"), **kw),
  )


@pytest.mark.parametrize(
  "which,kw,msg",
  [
    ("recon", dict(image_scale=0.0), r"^--image-scale must be a finite number > 0, got 0.0$"),
    ("recon", dict(image_scale=-0.5), r"^--image-scale must be a finite number > 0"),
    ("recon", dict(image_scale=float("nan")), r"^--image-scale must be a finite number > 0, got nan"),
    ("recon", dict(batch_size=0), r"^--batch-size must be an integer >= 1, got 0$"),
    ("recon", dict(batch_size=-2), r"^--batch-size must be an integer >= 1, got -2$"),
    ("recon", dict(iterations=0), r"^--iterations must be an integer >= 1"),
    ("recon", dict(feature_lr=-1e-3), r"^--feature-lr must be a finite number >= 0"),
    ("recon", dict(position_lr_init=0.0), r"^--position-lr-init must be a finite number > 0"),  # was: math domain error
    ("recon", dict(log_interval=0), r"^--log-interval must be an integer >= 1"),  # was: ZeroDivisionError
    ("recon", dict(opacity_reset_interval=0), r"^--opacity-reset-interval must be an integer >= 1"),
    ("recon", dict(tile_size=0), r"^--tile-size must be an integer in \[1, 16\]"),  # was: ZeroDivisionError
    ("recon", dict(seed=-1), r"^--seed must be an integer >= 0"),
    ("recon", dict(sh_degree=4), r"^--sh-degree must be an integer in \[0, 3\]"),
    ("recon", dict(lambda_dssim=1.5), r"^--lambda-dssim must be a finite number in \[0, 1\]"),
    ("recon", dict(world_ply_timestep=-1), r"^--world-ply-timestep must be an integer >= 0"),
    ("recon", dict(intrinsics="fov_y"), r"^--intrinsics: 'fov_y' is not one of file, fov_x$"),
    ("edit", dict(edit_every=0), r"^--edit-every must be an integer >= 1"),
    ("edit", dict(ip2p_size=100), r"^--ip2p-size must be a multiple of 8"),
    ("edit", dict(guidance_scale=float("inf")), r"^--guidance-scale must be a finite number >= 0"),
    ("edit", dict(batch_size=0), r"^--batch-size must be an integer >= 1"),
    ("render", dict(orbit_timestep=-1), r"^--orbit-timestep must be an integer >= 0"),
    ("render", dict(fps=0), r"^--fps must be a finite number > 0"),
    ("render", dict(splits=("val", "novel")), r"^--splits: 'novel' is not one of train, val, test$"),
    ("eval", dict(splits=("tset",)), r"^--splits: 'tset' is not one of train, val, test$"),
    ("synth", dict(supersample=0), r"^--supersample must be an integer >= 1"),  # was: ZeroDivisionError
    ("synth", dict(view_height=0.0), r"^--view-height must be a finite number > 0"),
    ("synth", dict(cols=25), r"^--cols must be even"),
    ("synth", dict(train_ratio=0.0), r"^--train-ratio must be a finite number in \(0, 1\]"),
  ],
)
def test_bad_flag_values_are_refused_naming_the_flag(which, kw, msg):
  with pytest.raises(InputError, match=msg):
    _configs()[which](**kw)


def test_flags_that_depend_on_the_data(data, tmp_path):
  from gaedit_jax.commands.render import RenderConfigCLI
  from gaedit_jax.edit.loop import EditConfig

  n_train = len(json.loads((data / "transforms_train.json").read_text())["frames"])
  with pytest.raises(DatasetError, match=rf"--batch-size {n_train + 1} is larger than the {n_train} training frames"):
    tiny_config(data, tmp_path / "o", batch_size=n_train + 1).check_inputs()
  with pytest.raises(DatasetError, match=r"--world-ply-timestep 4 is out of range: .* has timesteps 0\.\.3"):
    tiny_config(data, tmp_path / "o", world_ply_timestep=4).check_inputs()
  with pytest.raises(DatasetError, match=r"--orbit-timestep 7 is out of range: the model has FLAME timesteps 0\.\.3"):
    RenderConfigCLI(model=tmp_path, orbit=3, orbit_timestep=7).check_inputs(data, 4)
  # LPIPS weights are needed only at the first evaluation: checked before training anyway
  with pytest.raises(InputNotFoundError, match=r"--lpips-weights .*nope: no such file or folder"):
    tiny_config(data, tmp_path / "o", lpips_weights=tmp_path / "nope").check_inputs()
  ecfg = build(EditConfig, avatar=tmp_path, out=tmp_path / "e", lpips_weights=tmp_path / "nope")
  with pytest.raises(InputNotFoundError, match=r"--lpips-weights"):
    ecfg.check_inputs(data)
  # an avatar with fewer FLAME timesteps than the editing sequence (--flame-init avatar)
  with pytest.raises(
    DatasetError,
    match=r"frames\[\d+\]: timestep_index 3, but the FLAME parameters cover "
    r"timesteps 0\.\.2",
  ):
    build(EditConfig, avatar=tmp_path, out=tmp_path / "e", lambda_lpips=0.0).check_inputs(data, flame_timesteps=3)


# ---- the whole dataset before the first step ------------------------------------------------------


def test_validate_dataset_reads_headers_of_every_split(data):
  s = validate_dataset(data)
  assert s.frames == {"train": 24, "val": 3, "test": 9} and s.num_timesteps == 4
  assert s.image_size == {"train": (48, 64), "val": (48, 64), "test": (48, 64)}
  assert s.files_checked == 2 * 36 + 4 + 1  # images + masks, FLAME npz, canonical


@pytest.mark.parametrize(
  "breakage,msg",
  [
    ("missing", r"transforms_test\.json: frames\[0\]: image not found: .*{name}"),
    ("truncated", r"transforms_test\.json: frames\[0\]: cannot read image .*{name} \(truncated or corrupt PNG"),
    ("garbage", r"transforms_test\.json: frames\[0\]: cannot read image .*{name} \(not a readable image"),
    ("aspect", r"transforms_test\.json: frames\[0\]: image .*{name} is 64x48 pixels but the json says w x h = 48x64"),
  ],
)
def test_validation_catches_a_bad_test_image(data, breakage, msg):
  _, img = first_frame(data, "test")
  if breakage == "missing":
    img.unlink()
  elif breakage == "truncated":
    img.write_bytes(img.read_bytes()[:-40])
  elif breakage == "garbage":
    img.write_bytes(b"GIF89a not really")
  else:
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(img)
  with pytest.raises(DatasetError, match=msg.format(name=img.name)):
    validate_dataset(data)


def test_validation_catches_bad_flame_files(data):
  fr, _ = first_frame(data, "test")
  npz = data / fr["flame_param_path"]
  d = dict(np.load(npz))
  d["expr"] = d["expr"].copy()
  d["expr"][0, 2] = np.nan
  np.savez(npz, **d)
  with pytest.raises(DatasetError, match=rf"{npz.name}: key 'expr' has non-finite values"):
    validate_dataset(data)
  d["expr"] = d["expr"][:, :5]
  np.savez(npz, **d)
  with pytest.raises(DatasetError, match=rf"{npz.name}: key 'expr' has shape \[1, 5\], expected \[1,20\]"):
    validate_dataset(data)


def test_trainer_fails_before_training_on_a_bad_test_image(data, tmp_path):
  """The test split is read only by the final evaluation; a broken image there must stop the run
  at start-up, before the output folder exists."""
  from gaedit_jax.reconstruct import Trainer

  _, img = first_frame(data, "test")
  img.unlink()
  out = tmp_path / "model"
  with pytest.raises(
    DatasetFileNotFoundError, match=rf"transforms_test\.json: frames\[0\]: image not found: .*{img.name}"
  ):
    Trainer(tiny_config(data, out))
  assert not out.exists()


def test_capacity_below_the_face_count(data, tmp_path):
  from gaedit_jax.reconstruct import Trainer

  with pytest.raises(InputError, match=r"^capacity 10 \(--capacity\) is smaller than the \d+ faces"):
    Trainer(tiny_config(data, tmp_path / "m", capacity=10))


# ---- the command ----------------------------------------------------------------------------------


def gaedit(*args, env=None, timeout=600):
  e = {k: v for k, v in os.environ.items() if k != "GAEDIT_DEBUG"}
  e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  e.update(env or {})
  return subprocess.run(
    [sys.executable, "-m", "gaedit_jax.cli", *map(str, args)],
    capture_output=True,
    text=True,
    env=e,
    timeout=timeout,
    cwd=ROOT,
  )


def one_line_error(r, stage: str) -> str:
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr[-2000:]
  assert lines[0].startswith(f"gaedit {stage}: error: "), lines[0]
  return lines[0]


def test_command_bad_flag_value(tmp_path, data):
  r = gaedit("reconstruct", "--data", data, "--out", tmp_path / "o", "--batch-size", "0")  # was: ZeroDivisionError
  assert "--batch-size must be an integer >= 1, got 0" in one_line_error(r, "reconstruct")
  r = gaedit("reconstruct", "--data", data, "--out", tmp_path / "o", "--batch-size")  # tyro's own error
  assert r.returncode == 2 and "Traceback" not in r.stderr


def test_command_bad_dataset_files(tmp_path, data):
  p = data / "transforms_val.json"
  d = json.loads(p.read_text())
  d["frames"][1]["fl_x"] = 0
  p.write_text(json.dumps(d))
  quick = ["--iterations", "2", "--sh-degree", "0", "--no-progress", "--no-tensorboard"]  # should it train
  line = one_line_error(gaedit("reconstruct", "--data", data, "--out", tmp_path / "o", *quick), "reconstruct")
  assert "transforms_val.json: frames[1]: key 'fl_x' = 0.0 must be > 0" in line
  assert not (tmp_path / "o").exists()
  line = one_line_error(gaedit("reconstruct", "--data", tmp_path / "nope", "--out", tmp_path / "o"), "reconstruct")
  assert line.endswith(f"dataset folder not found: {tmp_path / 'nope'} (--data)")
  line = one_line_error(gaedit("render", "--model", tmp_path / "nope"), "render")
  assert str(tmp_path / "nope") in line


def test_command_debug_shows_the_traceback(tmp_path):
  r = gaedit("--debug", "reconstruct", "--data", tmp_path / "nope", "--out", tmp_path / "o")
  assert r.returncode == 1 and "Traceback" in r.stderr and "dataset folder not found" in r.stderr
  r = gaedit("eval", "--model", tmp_path / "nope", env={"GAEDIT_DEBUG": "1"})
  assert r.returncode == 1 and "Traceback" in r.stderr and "--model" in r.stderr
  line = one_line_error(gaedit("eval", "--model", tmp_path / "nope"), "eval")
  assert line == f"gaedit eval: error: --model {tmp_path / 'nope'}: no such file or folder"


def test_synth_errors_speak_in_flags(tmp_path, tiny):
  line = one_line_error(gaedit("synth", tmp_path / "s", "--num-timesteps", "3"), "synth")
  assert "--num-timesteps 3 leaves no test timesteps at --train-ratio 0.7" in line
  line = one_line_error(gaedit("synth", tmp_path / "s", "--num-cameras", "1"), "synth")
  assert "--num-cameras must be >= 2" in line
  line = one_line_error(gaedit("synth", tiny), "synth")
  assert line == f"gaedit synth: error: {tiny} already holds a dataset; pass --overwrite to replace it"
  r = gaedit("synth", "--help")
  assert r.returncode == 0 and "Smallest grid: 2 cameras and 4 timesteps" in " ".join(r.stdout.split())


def test_in_process_handling_and_unknown_subcommand(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli(["render", "--model", str(tmp_path), "--fps", "0"], handle_errors=True)
  assert e.value.code == 2
  assert capsys.readouterr().err == "gaedit render: error: --fps must be a finite number > 0, got 0.0\n"
  with pytest.raises(SystemExit) as e:
    cli(["reconstrct"], handle_errors=True)
  assert e.value.code == 2 and capsys.readouterr().err.startswith("gaedit: error: unknown subcommand 'reconstrct'")
  with pytest.raises(InputError):  # an explicit argv (scripts, tests) lets the error through
    cli(["render", "--model", str(tmp_path), "--fps", "0"])


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
  out = tmp_path / "big"
  e = {k: v for k, v in os.environ.items() if k != "GAEDIT_DEBUG"}
  e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  p = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "gaedit_jax.cli",
      "synth",
      str(out),
      "--num-cameras",
      "16",
      "--num-timesteps",
      "400",
      "--rows",
      "16",
      "--cols",
      "24",
      "--width",
      "32",
      "--height",
      "32",
      "--supersample",
      "1",
      "--no-contact-sheet",
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=e,
    cwd=ROOT,
  )
  try:
    t0 = time.monotonic()
    while not any((out / "images").glob("*.png")):
      assert p.poll() is None and time.monotonic() - t0 < 300, "synth did not start"
      time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
  finally:
    if p.poll() is None:
      p.kill()
  assert p.returncode == 130, err[-2000:]
  assert "Traceback" not in err and err.strip().splitlines()[-1] == "gaedit synth: interrupted"
