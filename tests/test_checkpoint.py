"""Checkpoints: round trip, keep-last-N, and resume equality (interrupted + resumed == straight)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from recon_data import tiny_config

from gaedit_jax.flame import FlameMotion
from gaedit_jax.io.checkpoint import CheckpointManager
from gaedit_jax.reconstruct import Trainer


def test_roundtrip_and_keep(tmp_path):
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3, jnp.bfloat16), "e": jnp.zeros((4, 0, 3))}
  state = dict(
    params=params, opt=optax.adam(1e-3).init(params), step=jnp.int32(7), key=jax.random.key_data(jax.random.key(3))
  )
  m = CheckpointManager(tmp_path / "ck", keep=2)
  for s in (1, 2, 3):
    m.save(s, state, {"note": "x", "step": s})
  m.wait()
  assert m.all_steps() == [2, 3]
  assert m.read_meta(3)["note"] == "x"
  back = m.restore(3, state)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, state)
  assert type(back["opt"][0]).__name__ == "ScaleByAdamState"
  m.close()


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.avatar, state.flame, state.opt_state, state.stats))]


def test_resume_equals_uninterrupted(tiny, tmp_path):
  kw = dict(
    iterations=16,
    densify_from=4,
    densify_interval=4,
    densify_until=14,
    opacity_reset_interval=8,
    checkpoint_interval=5,
    densify_grad_threshold=1e-5,
    sh_degree=0,
    eval_max_frames=1,
  )
  straight = Trainer(tiny_config(tiny, tmp_path / "a", **kw))
  straight.run()
  first = Trainer(tiny_config(tiny, tmp_path / "b", stop_after=10, **kw))
  r1 = first.run()
  assert r1["iterations"] == 10 and "export" not in r1
  resumed = Trainer(tiny_config(tiny, tmp_path / "b", resume=True, **kw))
  r2 = resumed.run()
  assert r2["iterations"] == 16
  assert int(resumed.state.avatar.num_active) == int(straight.state.avatar.num_active)
  assert resumed.state.avatar.capacity == straight.state.avatar.capacity
  for a, b in zip(_leaves(straight.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)


def _damage_state(step_dir):
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      with open(f, "r+b") as fh:
        fh.truncate(7)


def test_restore_newest_falls_back_past_damaged_checkpoints(tmp_path):
  from gaedit_jax.errors import InputError

  template = {"w": jnp.zeros(6), "step": jnp.int32(0)}
  m = CheckpointManager(tmp_path / "ck", keep=5)
  for s in (1, 2, 3):
    m.save(s, {"w": jnp.arange(6.0) * s, "step": jnp.int32(s)}, {"step": s})
  m.wait()
  (tmp_path / "ck" / "3" / "meta" / "metadata").unlink()  # broken metadata
  _damage_state(tmp_path / "ck" / "2")  # broken state
  got = m.restore_newest(lambda meta: template)
  assert got.step == 1 and got.meta == {"step": 1}
  np.testing.assert_array_equal(np.asarray(got.state["w"]), np.arange(6.0))
  assert [s for s, _ in got.skipped] == [3, 2]
  assert got.skipped[0][1].startswith(f"{tmp_path / 'ck' / '3' / 'meta' / 'metadata'}: unreadable")
  assert got.skipped[1][1].startswith(f"{tmp_path / 'ck' / '2' / 'state'}: unreadable")

  # settings that do not fit are an error, not a reason to fall back to an older checkpoint
  def refuse(step, meta):
    raise InputError(f"checkpoint {step}: other settings")

  with pytest.raises(InputError, match="checkpoint 2: other settings"):  # the newest with metadata
    m.restore_newest(lambda meta: template, refuse)
  # damaged ones are moved out of the way (kept), not deleted
  dest = m.set_aside(3, tmp_path / "unreadable")
  assert m.all_steps() == [1, 2] and (dest / "state").is_dir()
  _damage_state(tmp_path / "ck" / "1")
  with pytest.raises(InputError, match=r"no readable checkpoint to resume from: 2: .*; 1: "):
    m.restore_newest(lambda meta: template)
  m.close()


def test_checkpoint_with_dict_flame_state_restores_into_flame_motion(tiny, tmp_path):
  """Checkpoints written while the per-timestep FLAME state was a {field: array} dict (before
  FlameMotion) restore into today's typed state, Adam moments included."""
  tr = Trainer(tiny_config(tiny, tmp_path / "run", iterations=3, eval_max_frames=1))
  tr.run()
  st = tr.state
  as_dict = lambda t: jax.tree.map(
    lambda x: dict(x.items()) if isinstance(x, FlameMotion) else x, t, is_leaf=lambda x: isinstance(x, FlameMotion)
  )
  old = as_dict(st)
  assert isinstance(old.flame, dict) and jax.tree.structure(old) != jax.tree.structure(st)
  m = CheckpointManager(tmp_path / "ck")
  m.save(3, old, {"step": 3})
  m.wait()
  back = m.restore(3, st)
  assert isinstance(back.flame, FlameMotion)
  assert jax.tree.structure(back) == jax.tree.structure(st)
  for a, b in zip(_leaves(back), _leaves(st)):
    np.testing.assert_array_equal(a, b)
  m.close()
