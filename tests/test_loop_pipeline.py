"""The training loops' input pipeline (batches prepared ahead of the step in a thread) gives the same
parameters, bit for bit, as making each batch in the loop; the persistent compilation cache of the
`gaedit` command is reused by a second process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from recon_data import tiny_config, tiny_edit_config

from gaedit_jax.cli import compile_cache_dir
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.edit.loop import EditRun
from gaedit_jax.errors import InputError
from gaedit_jax.reconstruct import Trainer
from gaedit_jax.train.frames import DeviceFrames, frames_bytes, keep_on_device
from gaedit_jax.train.loop import Flushed, IsectCapacity, Prefetcher, frame_order

ROOT = Path(__file__).resolve().parents[1]


def _leaves(state) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _assert_same(a, b) -> None:
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for i, (x, y) in enumerate(zip(la, lb)):
    assert x.shape == y.shape and x.dtype == y.dtype, i
    np.testing.assert_array_equal(x, y, err_msg=f"leaf {i}")


def _reference_loop(tr: Trainer, iterations: int):
  """The loop as it was before the input pipeline: each batch read, stacked and copied field by field
  in the loop right before its step (images as `dataset[i]`, cameras gathered on the device);
  densification / opacity resets between steps as `Trainer.densify_now`."""
  c = tr.cfg
  ds = tr.train_ds
  for it in range(1, iterations + 1):
    idx = frame_order(len(ds), c.batch_size, c.seed, it)
    img = jnp.asarray(np.stack([ds[int(i)].image for i in idx]))
    cam, ts = ds.cameras[idx], jnp.asarray(ds.timesteps[idx])
    tr.state, m = tr.step_fn(tr.sh_degree_at(it))(tr.state, img, cam, ts, tr.model, tr.background)
    assert not bool(m["overflow"])
    dens, reset = tr.densify_now(it)
    if dens or reset:
      tr._densify(it, dens, reset)
  return tr.state


def test_reconstruct_prefetch_is_bit_identical(tiny, tmp_path):
  # 20 iterations: two SH degrees, densifications at 5, 10, 15 (capacity changes) and an opacity reset
  kw = dict(iterations=20, densify_grad_threshold=1e-5, checkpoint_interval=0, eval_max_frames=1)
  ref = _reference_loop(Trainer(tiny_config(tiny, tmp_path / "ref", **kw)), 20)
  # the default (prefetched, frames kept on the device) and the loop's own host batches
  for p, frames in ((2, "on"), (0, "off")):
    tr = Trainer(tiny_config(tiny, tmp_path / f"p{p}", prefetch=p, frames_on_device=frames, **kw))
    assert (tr.frames is not None) == (frames == "on")
    res = tr.run()
    assert res["iterations"] == 20 and res["densify"]
    assert set(res["compilations"]) == {"count", "seconds", "cache_hits"}
    # the intersection buffer shrank to what the views need (the reference kept 16 per Gaussian):
    # the parameters are the same bit for bit
    assert tr.isect <= 8.0 and tr.capacity_ctl.shrunk, tr.capacity_ctl
    _assert_same(ref, tr.state)


def test_several_steps_per_call_are_bit_identical(tiny, tmp_path):
  # the same 20 iterations as above with calls of 3 steps where no host work falls between them
  kw = dict(iterations=20, densify_grad_threshold=1e-5, checkpoint_interval=0, eval_max_frames=1)
  ref_tr = Trainer(tiny_config(tiny, tmp_path / "ref", **kw))
  ref = _reference_loop(ref_tr, 20)
  tr = Trainer(tiny_config(tiny, tmp_path / "k3", steps_per_call=3, prefetch=2, frames_on_device="on", **kw))
  calls = []
  step_fn = tr.step_fn
  tr.step_fn = lambda deg, several=False: (calls.append(several), step_fn(deg, several))[1]
  res = tr.run()
  assert res["iterations"] == 20 and sum(calls) >= 3 and not all(calls), calls  # both kinds of call ran
  _assert_same(ref, tr.state)
  # the metrics of a call's steps reach the history at the log intervals, as single steps do
  assert [h["iteration"] for h in tr.history] == [4, 5, 10, 12, 15, 20]


def _host_work(c, it: int) -> bool:
  """Iterations after which the loop has host work, from the flags (the rule the calls respect)."""
  dens = c.densify_from < it < c.densify_until and it % c.densify_interval == 0
  return (
    dens
    or it % c.opacity_reset_interval == 0
    or it % c.run.log_interval == 0
    or any(n and it % n == 0 for n in (c.save_interval, c.eval_interval, c.run.checkpoint_interval))
    or min(c.sh_degree, it // c.sh_degree_interval) != min(c.sh_degree, (it + 1) // c.sh_degree_interval)
  )


@pytest.mark.parametrize(
  "flags, all_full",
  [
    (dict(log_interval=10, densify_from=10, densify_interval=10, sh_degree_interval=1000), True),
    (dict(log_interval=7, densify_from=3, densify_interval=6, sh_degree_interval=11, save_interval=9), False),
  ],
)
def test_calls_of_several_steps_never_span_host_work(tiny, tmp_path, flags, all_full):
  kw = dict(
    iterations=60,
    densify_until=40,
    opacity_reset_interval=1000,
    reset_opacity_at_densify_from=False,
    checkpoint_interval=0,
    steps_per_call=5,
  )
  tr = Trainer(tiny_config(tiny, tmp_path / "run", **{**kw, **flags}))
  c, it, plan = tr.cfg, 0, []
  while it < c.iterations:
    k = tr.steps_in_call(it + 1, c.iterations, c.run.checkpoint_interval)
    assert k in (1, 5)
    assert not any(_host_work(c, j) for j in range(it + 1, it + k)), (it, k)
    plan.append(k)
    it += k
  assert it == c.iterations
  # aligned intervals: every call runs 5 steps (an SH rise at iteration n*interval, which uses the new
  # degree, is not aligned with calls that end at multiples of 5: single steps around it);
  # other intervals: single steps where a call would span host work
  assert (plan == [5] * 12) if all_full else (5 in plan and 1 in plan), plan


def test_read_ahead_decodes_the_same_images_in_threads(tiny, tmp_path):
  plain = AvatarDataset(tiny, "train", cache_size=0)
  ds = AvatarDataset(tiny, "train", cache_size=0)
  idx = list(range(len(ds)))
  ds.read_ahead(idx + idx[:3], workers=2)  # a frame asked twice is decoded once
  assert len(ds._ahead) == len(idx)
  for i in idx:
    np.testing.assert_array_equal(ds.rgb(i), plain.rgb(i))
  assert not ds._ahead  # each started frame was taken by its rgb(i)
  # a missing image: its error is raised by the frame that needs it, as without read-ahead
  data = tmp_path / "data"
  shutil.copytree(tiny, data)
  broken = AvatarDataset(data, "train", cache_size=0)
  broken.records[2].image_path.unlink()
  broken.read_ahead([1, 2], workers=2)
  broken.rgb(1)
  with pytest.raises(Exception) as got:
    broken.rgb(2)
  with pytest.raises(type(got.value), match="image not found"):
    AvatarDataset(data, "train", cache_size=0).rgb(2)
  assert str(got.value).endswith(str(broken.records[2].image_path))


def test_device_frames_give_the_host_batches_bit_for_bit(tiny):
  ds = AvatarDataset(tiny, "train")
  fr = DeviceFrames(ds)
  assert not fr.written.any()
  n = len(ds)
  for idx, new in (([0], True), ([3, 1, 3], True), ([n - 1, 0, 2], True), ([3, 1, 3], False)):
    before = fr.images
    got = fr.batch(idx)
    b = ds.batch(idx)
    _assert_same((b.image, b.camera, b.timestep), got)
    assert got[0].dtype == jnp.float32 and got[0].shape == (len(idx), *ds.image_size, 3)
    assert (fr.images is not before) == new  # a batch of frames already there writes nothing
  assert sorted(np.flatnonzero(fr.written)) == [0, 1, 2, 3, n - 1]


def test_frames_on_device_choice(tiny, tmp_path):
  ds = AvatarDataset(tiny, "train")
  size = frames_bytes(ds)
  assert size == len(ds) * 64 * 48 * 3
  gpu = dict(platform="gpu")  # auto's decision on an accelerator (the budget; the CPU never)
  assert keep_on_device(ds, "auto", size, **gpu) and not keep_on_device(ds, "auto", size - 1, **gpu)
  assert not keep_on_device(ds, "auto", 1e12, platform="cpu")
  assert keep_on_device(ds, "on", 0) and not keep_on_device(ds, "off", 1e12)
  with pytest.raises(InputError, match="--frames-on-device 'yes': expected one of auto, on, off"):
    keep_on_device(ds, "yes", 1e12)
  # frames of two sizes cannot be stacked: auto reads them per batch, on is refused
  mixed = tmp_path / "mixed"
  shutil.copytree(tiny, mixed)
  tj = mixed / "transforms_train.json"
  d = json.loads(tj.read_text())
  d["frames"][0].update(w=24, h=32)
  tj.write_text(json.dumps(d))
  ds2 = AvatarDataset(mixed, "train")
  assert ds2.cameras is None and not keep_on_device(ds2, "auto", 1e12, **gpu)
  with pytest.raises(InputError, match="--frames-on-device on: the frames have different image sizes"):
    keep_on_device(ds2, "on", 1e12)


def test_edit_prefetch_is_bit_identical(edit_setup, tmp_path):
  runs = []
  for p in (0, 2):
    r = EditRun(tiny_edit_config(edit_setup, tmp_path / f"e{p}", prefetch=p, iterations=4, checkpoint_interval=0))
    res = r.run()
    # the summary counts the run's compilations (none here when an earlier run in this process
    # compiled the same step)
    comp = res["compilations"]
    assert set(comp) == {"count", "seconds", "cache_hits"} and 0 <= comp["cache_hits"] <= comp["count"], comp
    runs.append(r.state)
  _assert_same(runs[0], runs[1])


def test_prefetcher_order_bound_errors_and_stop():
  made: list[int] = []
  ahead = threading.Event()

  def make(it):
    made.append(it)
    if it == 3:
      ahead.set()
    if it == 5:
      raise ValueError("bad frame 5")
    return it * 10

  with Prefetcher(make, 1, 9, depth=2) as p:
    assert ahead.wait(10)  # it prepares ahead without being asked, at most depth + 1 batches
    assert made == [1, 2, 3]  # (2 queued, the 3rd waits for room) until the loop takes one
    assert [p.get(i) for i in (1, 2, 3, 4)] == [10, 20, 30, 40]
    with pytest.raises(ValueError, match="bad frame 5"):
      p.get(5)  # an error goes to an error to the iteration that needed the batch
    thread = p._thread
  assert thread is not None and not thread.is_alive()
  assert made == [1, 2, 3, 4, 5]  # stopped at the error

  with Prefetcher(lambda it: it, 3, 4, depth=0) as p:  # no thread: made when asked
    assert p._thread is None and p.get(3) == 3
    with pytest.raises(ValueError, match="next iteration is 4"):
      p.get(6)

  q = Prefetcher(lambda it: np.zeros(3) + it, 1, 10_000, depth=1)  # closing a full queue stops it
  assert q.get(1)[0] == 1
  q.close()
  assert q._thread is None


def test_compile_cache_folder_from_environment(tmp_path):
  assert compile_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}, gpu=True) == str(tmp_path / "gaedit" / "jax")
  assert compile_cache_dir({"GAEDIT_COMPILE_CACHE": str(tmp_path / "cc")}) == str(tmp_path / "cc")
  assert compile_cache_dir({"GAEDIT_COMPILE_CACHE": "1", "XDG_CACHE_HOME": "/x"}) == "/x/gaedit/jax"
  for off in ("0", "off", "false", "no"):
    assert compile_cache_dir({"GAEDIT_COMPILE_CACHE": off, "XDG_CACHE_HOME": "/x"}) is None
  home = compile_cache_dir({}, gpu=True)
  assert home is not None and home.endswith(os.path.join(".cache", "gaedit", "jax"))
  assert compile_cache_dir({}, gpu=False) is None  # CPU-only JAX: off unless asked for
  assert compile_cache_dir({"GAEDIT_COMPILE_CACHE": "1", "XDG_CACHE_HOME": str(tmp_path)}, gpu=False) == str(
    tmp_path / "gaedit" / "jax"
  )


_SCRIPT = """
import json, sys
from gaedit_jax.train.loop import CompileCounter
snap = CompileCounter.snapshot()
from gaedit_jax import cli
sys.argv = ["gaedit", *sys.argv[1:]]
cli.main()
print("COMPILES " + json.dumps(CompileCounter.since(snap)))
"""


def _gaedit(tmp_path: Path, env_extra: dict, *args: str) -> dict:
  env = dict(os.environ)
  env.pop("GAEDIT_COMPILE_CACHE", None)
  env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)  # gaedit stores every program by default
  env.update(PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "xdg"))  # never the real home cache
  env.update(env_extra)
  out = subprocess.run(
    [sys.executable, "-c", _SCRIPT, *args], env=env, capture_output=True, text=True, timeout=300, check=True
  ).stdout
  line = [x for x in out.splitlines() if x.startswith("COMPILES ")][-1]
  return json.loads(line[len("COMPILES ") :])


def _files(d: Path) -> set[str]:
  return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and not p.name.endswith("-atime")}


def test_compile_cache_reused_by_a_second_process(tmp_path):
  cc = tmp_path / "cc"
  scene = lambda i: ("render-scene", "--out", str(tmp_path / f"s{i}.png"), "--size", "48", "--views", "2")  # noqa: E731
  first = _gaedit(tmp_path, {"GAEDIT_COMPILE_CACHE": str(cc)}, *scene(1))
  entries = _files(cc)
  assert first["count"] >= 1 and first["cache_hits"] == 0 and entries
  second = _gaedit(tmp_path, {"GAEDIT_COMPILE_CACHE": str(cc)}, *scene(2))
  assert second["cache_hits"] >= 1 and second["cache_hits"] == second["count"]  # every program loaded
  assert _files(cc) == entries  # nothing new compiled
  assert (tmp_path / "s1.png").read_bytes() == (tmp_path / "s2.png").read_bytes()
  assert not (tmp_path / "xdg").exists()  # GAEDIT_COMPILE_CACHE=DIR replaced the default folder

  # off: the flag, or GAEDIT_COMPILE_CACHE=0 (the default folder under XDG_CACHE_HOME stays empty)
  off1 = _gaedit(tmp_path, {"GAEDIT_COMPILE_CACHE": "1"}, "--no-compile-cache", *scene(3))  # the flag wins
  off2 = _gaedit(tmp_path, {"GAEDIT_COMPILE_CACHE": "0"}, *scene(4))
  assert off1["cache_hits"] == off2["cache_hits"] == 0 and off1["count"] >= 1
  assert not (tmp_path / "xdg").exists()
  on = _gaedit(tmp_path, {"GAEDIT_COMPILE_CACHE": "1"}, *scene(5))  # the default folder, XDG_CACHE_HOME/gaedit/jax
  assert on["cache_hits"] == 0 and _files(tmp_path / "xdg" / "gaedit" / "jax")


def test_isect_capacity_follows_the_need():
  c = IsectCapacity(16.0)
  assert c.update(Flushed([], 5.0)) == [] and c.value == 16.0  # 2 x 5 -> 16: no saving
  c.update(Flushed([], 1.7))  # the largest need seen stays 5
  assert c.value == 16.0
  c = IsectCapacity(16.0)
  c.update(Flushed([], 1.7))
  assert c.value == 4.0 and c.shrunk  # the smallest power of two >= 3.4
  msgs = c.update(Flushed([7], 2.5))  # an overflow after the shrink: doubled, no more shrinking
  assert c.value == 8.0 and c.frozen and "iteration 7" in msgs[0]
  c.update(Flushed([], 0.1))
  assert c.value == 8.0
  fixed = IsectCapacity(16.0, adapt=False)
  fixed.update(Flushed([], 0.5))
  assert fixed.value == 16.0
  assert fixed.update(Flushed([3], 0.0)) and fixed.value == 32.0
