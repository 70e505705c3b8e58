"""No input loses work: the output folder guard (non-empty, --overwrite, out == input), the run lock,
a checkpoint of the last completed step on Ctrl-C / an error, resume past damaged checkpoints,
resume with other settings refused, summaries covering the whole run, plain progress lines."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from recon_data import tiny_config

from gaedit_jax.cli import main as cli
from gaedit_jax.errors import InputError
from gaedit_jax.flags import flag_args
from gaedit_jax.reconstruct import Trainer

# one jitted step for every in-process run here: same optimizer settings (iterations included),
# SH degree 0; shorter runs stop early with stop_after
KW = dict(
  iterations=8,
  sh_degree=0,
  densify_from=2,
  densify_interval=3,
  densify_until=8,
  opacity_reset_interval=100,
  checkpoint_interval=2,
  log_interval=1,
  eval_max_frames=1,
  position_lr_max_steps=20,
)
FLAGS = flag_args(**KW, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
  """A complete 8-iteration run: checkpoints 4, 6, 8 (keep 3), point_cloud/iteration_8, results."""
  out = tmp_path_factory.mktemp("safety") / "model"
  Trainer(tiny_config(tiny, out, **KW)).run()
  return out


def _copy(src, dst):
  shutil.copytree(src, dst, symlinks=True)
  (dst / ".gaedit.lock").unlink(missing_ok=True)
  return dst


def _steps(out):
  return sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def _lock(out, pid, **kw):
  out.mkdir(parents=True, exist_ok=True)
  info = dict(pid=pid, host=socket.gethostname(), command="gaedit reconstruct", started="2026-01-01T00:00:00")
  info.update(kw)
  (out / ".gaedit.lock").write_text(json.dumps(info))


# ------------------------------------------------------------------------------------------------
# The output folder
# ------------------------------------------------------------------------------------------------


def test_non_empty_out_refused(tiny, tmp_path):
  out = tmp_path / "o"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  with pytest.raises(InputError, match=r"--out .* is not empty \(notes.txt\).*--resume.*--overwrite"):
    cli(["reconstruct", "--data", str(tiny), "--out", str(out)] + FLAGS)
  with pytest.raises(InputError, match="is not empty"):  # the library path checks as well
    Trainer(tiny_config(tiny, out, **KW)).run()
  assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_moves_the_previous_run_aside(trained, tmp_path):
  from gaedit_jax.io.model_folder import latest_iteration

  out = _copy(trained, tmp_path / "model")
  (out / "notes.txt").write_text("mine")
  (out / "my_stuff").mkdir()
  (out / "my_stuff" / "a.txt").write_text("keep")
  old_results = (out / "results_val.json").read_text()
  data = json.loads((out / "cfg.json").read_text())["data"]
  with pytest.raises(InputError, match="is not empty"):
    Trainer(tiny_config(data, out, **KW)).run()
  Trainer(tiny_config(data, out, overwrite=True, stop_after=2, save_interval=2, **KW)).run()
  # nothing of the old run is left for render / edit / --resume to pick up
  assert _steps(out) == [2]
  assert latest_iteration(out).name == "iteration_2"
  assert not (out / "point_cloud" / "iteration_8").exists()
  assert not list(out.glob("results_*.json"))
  # ... and nothing was deleted: the old run is in OUT.old-<time>, the user's files stay in place
  (old,) = list(tmp_path.glob("model.old-*"))
  assert (old / "point_cloud" / "iteration_8" / "point_cloud.ply").exists()
  assert _steps(old) == [4, 6, 8]
  assert (old / "results_val.json").read_text() == old_results
  assert (out / "notes.txt").read_text() == "mine" and (out / "my_stuff" / "a.txt").read_text() == "keep"
  assert not (old / "notes.txt").exists()
  assert not (out / ".gaedit.lock").exists()  # released at the end


def test_out_equal_to_or_inside_the_input_refused(tiny, trained, tmp_path):
  before = sorted(p.name for p in tiny.iterdir())
  with pytest.raises(InputError, match="--out .* is the --data folder"):
    cli(["reconstruct", "--data", str(tiny), "--out", str(tiny), "--resume"] + FLAGS)
  with pytest.raises(InputError, match="lies inside the --data folder"):
    cli(["reconstruct", "--data", str(tiny), "--out", str(tiny / "model")] + FLAGS)
  with pytest.raises(InputError, match="contains the --data folder"):
    cli(["reconstruct", "--data", str(tiny), "--out", str(tiny.parent), "--overwrite"] + FLAGS)
  assert sorted(p.name for p in tiny.iterdir()) == before
  ckpts = _steps(trained)
  edit = ["--editor", "synthetic", "--target-data", str(tmp_path / "paint"), "--iterations", "2", "--no-progress"]
  for flags in ([], ["--resume"], ["--overwrite"]):
    with pytest.raises(InputError, match="--out .* is the --avatar folder"):
      cli(["edit", "--avatar", str(trained), "--out", str(trained)] + flags + edit)
  with pytest.raises(InputError, match="lies inside the --avatar folder"):
    cli(["edit", "--avatar", str(trained), "--out", str(trained / "edited")] + edit)
  assert _steps(trained) == ckpts and not (trained / "edited").exists()


# ------------------------------------------------------------------------------------------------
# The lock
# ------------------------------------------------------------------------------------------------


def test_live_lock_refused_stale_lock_taken_over(tiny, tmp_path, capfd):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    out = tmp_path / "o"
    _lock(out, sleeper.pid)
    with pytest.raises(InputError, match=rf"in use by gaedit reconstruct \(pid {sleeper.pid} "):
      cli(["reconstruct", "--data", str(tiny), "--out", str(out)] + FLAGS)
    with pytest.raises(InputError, match=rf"pid {sleeper.pid}"):
      Trainer(tiny_config(tiny, out, **KW)).run()
    assert json.loads((out / ".gaedit.lock").read_text())["pid"] == sleeper.pid  # left alone
  finally:
    sleeper.kill()
    sleeper.wait()
  # the same lock, now of a process that is gone: taken over, and released at the end
  dead = _dead_pid()
  out2 = tmp_path / "o2"
  _lock(out2, dead)
  capfd.readouterr()
  Trainer(tiny_config(tiny, out2, stop_after=2, **KW)).run()
  text = capfd.readouterr().out
  assert f"taking over the lock of pid {dead}" in text
  assert _steps(out2) == [2] and not (out2 / ".gaedit.lock").exists()
  # --no-progress prints one plain line per log interval: iteration, loss, PSNR, Gaussians, speed
  lines = [ln for ln in text.splitlines() if ln.startswith("reconstruct ")]
  assert [ln.split()[1] for ln in lines] == ["1/8", "2/8"]
  for key in ("loss", "psnr", "gaussians", "it/s"):
    assert key in lines[-1]


# ------------------------------------------------------------------------------------------------
# Failures: Ctrl-C, errors
# ------------------------------------------------------------------------------------------------


def _reader(proc, lines):
  for ln in proc.stdout:
    lines.append(ln.rstrip("\n"))


def test_ctrl_c_checkpoints_the_last_completed_step_and_resume_continues(tiny, tmp_path):
  out = tmp_path / "k"
  # `python -m gaedit_jax.cli reconstruct ...`, with Ctrl-C raising KeyboardInterrupt as in a terminal
  # (a test runner started in the background may pass SIGINT on as ignored)
  start = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('gaedit_jax.cli', run_name='__main__')"
  )
  cmd = [
    sys.executable,
    "-c",
    start,
    "reconstruct",
    "--data",
    str(tiny),
    "--out",
    str(out),
    "--iterations",
    "100000",
    "--sh-degree",
    "0",
    "--checkpoint-interval",
    "0",
    "--checkpoint-minutes",
    "0",
    "--log-interval",
    "1",
    "--no-progress",
    "--no-tensorboard",
  ]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
  lines: list[str] = []
  th = threading.Thread(target=_reader, args=(proc, lines), daemon=True)
  th.start()
  try:
    t0 = time.time()
    while not any(ln.startswith("reconstruct 3/") for ln in lines):
      if proc.poll() is not None or time.time() - t0 > 400:
        pytest.fail("the run did not reach iteration 3:\n" + "\n".join(lines[-20:]))
      time.sleep(0.1)
    # a second run on the same folder while this one lives: refused, naming the pid
    with pytest.raises(InputError, match=rf"pid {proc.pid}"):
      cli(["reconstruct", "--data", str(tiny), "--out", str(out), "--resume", "--sh-degree", "0"])
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  th.join(timeout=10)
  assert proc.returncode != 0
  logged = max(int(ln.split()[1].split("/")[0]) for ln in lines if ln.startswith("reconstruct "))
  saved = [ln for ln in lines if "interrupted; saved a checkpoint of iteration" in ln]
  assert saved, "\n".join(lines[-20:])
  n = int(saved[0].split("checkpoint of iteration ")[1].split()[0])
  assert n >= logged >= 3
  assert _steps(out) == [n]  # no periodic checkpoints: this one was written on the interrupt
  assert not (out / ".gaedit.lock").exists()
  tr = Trainer(tiny_config(tiny, out, iterations=n + 2, resume=True, sh_degree=0, eval_max_frames=1))
  r = tr.run()
  assert r["iterations"] == n + 2 and r["resumed_at"] == [n]


def test_interrupt_and_error_inside_the_loop(tiny, tmp_path, capfd):
  """KeyboardInterrupt while loading iteration 4's batch: iteration 3 is complete and checkpointed.
  An error inside densification (iteration 6): the state may be half-updated: no checkpoint."""
  out = tmp_path / "i"
  tr = Trainer(tiny_config(tiny, out, **KW))
  real = tr.train_ds.batch
  calls = []

  def batch(idx):
    calls.append(1)
    if len(calls) == 4:
      raise KeyboardInterrupt
    return real(idx)

  tr.train_ds.batch = batch
  with pytest.raises(KeyboardInterrupt):
    tr.run()
  assert "saved a checkpoint of iteration 3 (the last completed step)" in capfd.readouterr().out
  assert _steps(out) == [2, 3]

  tr2 = Trainer(tiny_config(tiny, out, resume=True, **KW))

  def broken(it, dens, reset):
    raise RuntimeError("densify failed")

  tr2._densify = broken
  with pytest.raises(RuntimeError, match="densify failed"):
    tr2.run()
  text = capfd.readouterr().out
  assert "resumed from iteration 3" in text
  assert "no checkpoint written" in text and "half-updated" in text
  assert _steps(out) == [2, 3, 4]  # iteration 6 (densification) failed; 4 was the periodic one


# ------------------------------------------------------------------------------------------------
# Resume
# ------------------------------------------------------------------------------------------------


def test_resume_falls_back_past_damaged_checkpoints(trained, tmp_path, capfd):
  out = _copy(trained, tmp_path / "model")
  data = json.loads((out / "cfg.json").read_text())["data"]
  assert _steps(out) == [4, 6, 8]
  (out / "checkpoints" / "8" / "meta" / "metadata").unlink()  # metadata gone
  for f in (out / "checkpoints" / "6" / "state").rglob("*"):  # state files truncated
    if f.is_file() and f.parent.name == "d":
      with open(f, "r+b") as fh:
        fh.truncate(7)
  capfd.readouterr()
  r = Trainer(tiny_config(data, out, resume=True, **KW)).run()
  text = capfd.readouterr().out
  assert f"skipped checkpoint 8: {out / 'checkpoints' / '8' / 'meta' / 'metadata'}" in text
  assert f"skipped checkpoint 6: {out / 'checkpoints' / '6' / 'state'}" in text
  assert "resumed from iteration 4" in text
  assert r["iterations"] == 8 and r["resumed_at"] == [4]
  assert 8 in _steps(out)  # a new, readable checkpoint 8
  assert sorted(p.name.split("-")[0] for p in (out / "checkpoints_unreadable").iterdir()) == ["6", "8"]


def test_resume_with_another_dataset_or_sh_degree_refused(tiny, trained, tmp_path):
  out = _copy(trained, tmp_path / "model")
  other = tmp_path / "other_data"
  shutil.copytree(tiny, other)
  tj = json.loads((other / "transforms_train.json").read_text())
  tj["frames"] = tj["frames"][:-1]
  (other / "transforms_train.json").write_text(json.dumps(tj))
  with pytest.raises(
    InputError,
    match=rf"--resume from .*checkpoints/8 with other settings: "
    rf"--data {re.escape(str(other.resolve()))} \(the checkpoint's: ",
  ):
    Trainer(tiny_config(other, out, resume=True, **KW)).run()
  with pytest.raises(InputError, match=r"--sh-degree 1 \(the checkpoint's: 0\)"):
    Trainer(tiny_config(tiny, out, resume=True, **dict(KW, sh_degree=1))).run()
  assert _steps(out) == [4, 6, 8]


def test_summary_after_resume_covers_the_whole_run(tiny, tmp_path):
  out = tmp_path / "s"
  r1 = Trainer(tiny_config(tiny, out, stop_after=3, **KW)).run()
  assert r1["iterations"] == 3 and [d["iteration"] for d in r1["densify"]] == [3]
  r2 = Trainer(tiny_config(tiny, out, resume=True, **KW)).run()
  s = json.loads((out / "train_summary.json").read_text())
  assert s["iterations"] == 8 and s["resumed_at"] == [3]
  assert [(x["start"], x["end"]) for x in s["sessions"]] == [(0, 3), (3, 8)]
  assert s["train_seconds"] == pytest.approx(sum(x["seconds"] for x in s["sessions"]))
  assert s["train_seconds"] > s["sessions"][1]["seconds"] > 0
  assert [d["iteration"] for d in s["densify"]] == [3, 6]  # from iteration 1, not this session only
  assert r2["train_seconds"] == s["train_seconds"]


# ------------------------------------------------------------------------------------------------
# Evaluation settings
# ------------------------------------------------------------------------------------------------


def test_eval_max_frames_zero_refused(tiny, trained, tmp_path):
  from gaedit_jax.eval_recon import evaluate_model

  with pytest.raises(InputError, match="--eval-max-frames.* 0"):
    cli(["reconstruct", "--data", str(tiny), "--out", str(tmp_path / "o"), *FLAGS, "--eval-max-frames", "0"])
  assert not (tmp_path / "o" / "checkpoints").exists()
  with pytest.raises(InputError, match="--eval-max-frames 0"):
    evaluate_model(trained, ("val",), max_frames=0, out=tmp_path / "e")


def test_a_signal_during_a_step_waits_for_the_complete_state(tmp_path, capsys):
  """Ctrl-C (SIGINT) or SIGTERM between Session.begin_step and done(it) is held until done, which
  raises it, so that the failure handler sees the step's complete result (the step donates the
  old state: an interrupt between its return and the assignment would leave nothing to save). A
  second signal, or one outside a step, interrupts at once."""
  import os
  from types import SimpleNamespace

  from gaedit_jax.train.run import Session

  ses = Session(
    tmp_path, what="t", inputs={}, resume=False, overwrite=False, keep=1, every=0, minutes=0.0,
    log_interval=1, identity={},
  )  # fmt: skip
  before = signal.getsignal(signal.SIGINT)
  state = SimpleNamespace(step=7)
  ses.saved = {7}  # the handler then reports the checkpoint instead of writing one
  reached = []

  def kill(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # Python runs the handler at the next bytecode boundary

  for sig in (signal.SIGINT, signal.SIGTERM):
    with pytest.raises(KeyboardInterrupt, match=signal.Signals(sig).name):
      with ses.guard(lambda: state, dict):
        ses.begin_step()
        kill(sig)
        reached.append("after the signal")
        ses.done(7)
        reached.append("after done")
    assert reached == ["after the signal"] and ses.completed == 7, reached
    assert "the newest checkpoint is iteration 7, the last completed step" in capsys.readouterr().out
    reached.clear()

  with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait
    with ses.guard(lambda: state, dict):
      ses.begin_step()
      kill(signal.SIGINT)
      kill(signal.SIGINT)
      reached.append("after two signals")
  with pytest.raises(KeyboardInterrupt):  # outside a step: at once
    with ses.guard(lambda: state, dict):
      kill(signal.SIGINT)
      reached.append("outside a step")
  assert reached == []
  assert signal.getsignal(signal.SIGINT) is before  # restored
