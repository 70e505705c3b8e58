"""Motion files (io.motion): GaussianAvatars' flame_param.npz, VHAP per-frame folders, plain
sequence npz files; expression fitting; one-line errors for malformed files."""

from __future__ import annotations

import pickle
import re
import warnings

import numpy as np
import pytest

from gaedit_jax.errors import DatasetError, DatasetFileNotFoundError, InputError
from gaedit_jax.flame import FlameMotion, FlameParams
from gaedit_jax.io.flame_npz import write_flame_npz
from gaedit_jax.io.motion import read_motion, read_motion_file

T, E, NV = 5, 12, 9
FIELDS = {"expr": E, "rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}


def sequence(t=T, e=E, seed=0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  d = {k: rng.normal(size=(t, n)).astype(np.float32) * 0.1 for k, n in FIELDS.items()}
  d["expr"] = rng.normal(size=(t, e)).astype(np.float32)
  return d


def write_ga_flame_param(path, seq, n_shape=300):
  """flame_param.npz as GaussianAvatars' FlameGaussianModel.save_ply writes it: np.savez of its
  flame_param dict (float32 tensors moved to numpy): shape, the per-timestep fields, static_offset
  and dynamic_offset."""
  t = seq["expr"].shape[0]
  flame_param = {
    "shape": np.zeros(n_shape, np.float32),
    **seq,
    "static_offset": np.zeros((1, NV, 3), np.float32),
    "dynamic_offset": np.zeros((t, NV, 3), np.float32),
  }
  np.savez(str(path), **flame_param)
  return path


def write_vhap_folder(folder, seq):
  """flame_param/<t>.npz as the dataset writer (io.flame_npz.write_flame_npz) writes them."""
  t = seq["expr"].shape[0]
  for i in range(t):
    p = FlameParams(
      shape=np.zeros(4, np.float32),
      static_offset=np.zeros((NV, 3), np.float32),
      **{k: v[i] for k, v in seq.items()},
    )
    write_flame_npz(folder / f"{i:05d}.npz", p)
  return folder


def assert_motion(m: FlameMotion, seq):
  assert isinstance(m, FlameMotion)
  for k in FIELDS:
    np.testing.assert_array_equal(np.asarray(getattr(m, k)), seq[k], err_msg=k)


# ------------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------------


def test_gaussianavatars_flame_param(tmp_path):
  seq = sequence()
  p = write_ga_flame_param(tmp_path / "flame_param.npz", seq)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # same expression count: no warning
    ms = read_motion_file(p, E)
  assert_motion(ms.motion, seq)
  assert ms.num_timesteps == T and ms.fps is None and ms.file_n_expr == E
  assert_motion(read_motion(p, E), seq)


def test_vhap_frame_folder_and_dataset_folder(tmp_path):
  seq = sequence(t=12)  # 12 frames: 00010.npz must come after 00009.npz (and not after 00001.npz)
  folder = write_vhap_folder(tmp_path / "data" / "flame_param", seq)
  (folder / "notes.npz").write_bytes(b"not a frame")  # no frame number: not part of the sequence
  ms = read_motion_file(folder, E)
  assert_motion(ms.motion, seq)
  assert [p.name for p in ms.frame_files] == [f"{i:05d}.npz" for i in range(12)]
  assert_motion(read_motion(tmp_path / "data", E), seq)  # the dataset folder holding flame_param/


def test_plain_sequence_npz_with_fps_and_single_frame(tmp_path):
  seq = sequence()
  np.savez(tmp_path / "m.npz", fps=np.float32(30.0), **seq)
  ms = read_motion_file(tmp_path / "m.npz", E)
  assert_motion(ms.motion, seq)
  assert ms.fps == 30.0
  # one VHAP per-frame file read on its own: a sequence of one timestep
  one = {k: v[:1] for k, v in seq.items()}
  write_vhap_folder(tmp_path / "f", one)
  assert_motion(read_motion(tmp_path / "f" / "00000.npz", E), one)


def test_motion_drives_jit_and_at(tmp_path):
  seq = sequence()
  np.savez(tmp_path / "m.npz", **seq)
  m = read_motion(tmp_path / "m.npz", E)
  np.testing.assert_array_equal(np.asarray(m.at(3).jaw_pose), seq["jaw_pose"][3])


# ------------------------------------------------------------------------------------------------
# Expression fitting
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_expr", [5, 20])
def test_expression_truncated_or_padded_with_one_warning(tmp_path, n_expr):
  seq = sequence()
  p = write_ga_flame_param(tmp_path / "flame_param.npz", seq)
  with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    m = read_motion(p, n_expr)
  assert len(w) == 1
  msg = str(w[0].message)
  assert "\n" not in msg and "flame_param.npz" in msg and f"{E} components" in msg
  assert ("truncated" if n_expr < E else "zero-padded") in msg
  expr = np.asarray(m.expr)
  assert expr.shape == (T, n_expr)
  k = min(n_expr, E)
  np.testing.assert_array_equal(expr[:, :k], seq["expr"][:, :k])
  assert not expr[:, k:].any()


def test_folder_expression_padded(tmp_path):
  seq = sequence(e=3)
  folder = write_vhap_folder(tmp_path / "flame_param", seq)
  with pytest.warns(UserWarning, match=r"flame_param: expr has 3 components, the avatar uses 8: zero-padded"):
    m = read_motion(folder, 8)
  assert np.asarray(m.expr).shape == (T, 8)


# ------------------------------------------------------------------------------------------------
# Malformed files: one line naming the file, the field and what was expected
# ------------------------------------------------------------------------------------------------


def _raises(path, pattern, exc=DatasetError, n_expr=E):
  with pytest.raises(exc) as e:
    read_motion(path, n_expr)
  msg = str(e.value)
  assert isinstance(e.value, InputError)
  assert "\n" not in msg, msg
  assert re.search(pattern, msg), msg
  return msg


def test_sequence_npz_errors(tmp_path):
  def write(name, **change):
    d = sequence()
    d.update(change)
    d = {k: v for k, v in d.items() if v is not None}
    np.savez(tmp_path / name, **d)
    return tmp_path / name

  _raises(write("a.npz", jaw_pose=None), r"a\.npz: missing key 'jaw_pose' \(expected .*shape \[T,3\]\)")
  _raises(
    write("b.npz", eyes_pose=np.zeros((T, 3), np.float32)),
    r"b\.npz: key 'eyes_pose' has shape \[5, 3\], expected \[T,6\]",
  )
  _raises(
    write("c.npz", expr=np.zeros((T, 2, 3), np.float32)), r"c\.npz: key 'expr' has shape \[5, 2, 3\], expected \[T,E\]"
  )
  bad = sequence()["rotation"]
  bad[2, 1] = np.nan
  _raises(write("d.npz", rotation=bad), r"d\.npz: key 'rotation' has non-finite values")
  _raises(
    write("e.npz", translation=np.zeros((T + 1, 3), np.float32)),
    r"e\.npz: key 'translation' has 6 timesteps but 'expr' has 5",
  )
  _raises(
    write("f.npz", neck_pose=np.array(["a", "b", "c"])),
    r"f\.npz: key 'neck_pose' has dtype <U1, expected a numeric array",
  )
  _raises(write("g.npz", fps=np.float32(-1)), r"g\.npz: key 'fps' = .*expected one positive number")
  empty = {k: np.zeros((0, n), np.float32) for k, n in FIELDS.items()}
  _raises(write("h.npz", **empty), r"h\.npz: key 'expr' has no timesteps")


class Boom:
  def __reduce__(self):
    return (print, ("this must never run",))


def test_pickles_are_never_loaded(tmp_path, capsys):
  d = sequence()
  d["expr"] = np.array([Boom()] * T, dtype=object)
  np.savez(tmp_path / "obj.npz", **d)  # numpy pickles an object array inside the npz
  _raises(tmp_path / "obj.npz", r"obj\.npz: key 'expr' holds pickled objects, expected a numeric array \[T,E\]")
  (tmp_path / "seq.pkl").write_bytes(pickle.dumps({k: v for k, v in sequence().items()}))
  _raises(tmp_path / "seq.pkl", r"seq\.pkl: not a readable npz")
  np.save(tmp_path / "one.npy", np.zeros((T, 3), np.float32))
  _raises(tmp_path / "one.npy", r"one\.npy: not a readable npz \(a single \.npy array")
  assert "must never run" not in capsys.readouterr().out


def test_folder_errors(tmp_path):
  _raises(tmp_path / "nothing.npz", r"motion file not found: .*nothing\.npz", DatasetFileNotFoundError)
  (tmp_path / "empty").mkdir()
  _raises(tmp_path / "empty", r"empty: no per-frame FLAME files", DatasetFileNotFoundError)
  seq = sequence()
  folder = write_vhap_folder(tmp_path / "fp", seq)
  # a frame whose expression count differs from the first frame's
  d = dict(np.load(folder / "00003.npz"))
  d["expr"] = np.zeros((1, E + 1), np.float32)
  np.savez(folder / "00003.npz", **d)
  _raises(folder, r"00003\.npz: key 'expr' has shape \[1, 13\], expected \[1,12\]")
  del d["eyes_pose"]
  d["expr"] = np.zeros((1, E), np.float32)
  np.savez(folder / "00003.npz", **d)
  _raises(folder, r"00003\.npz: missing key 'eyes_pose'")
  (folder / "00003.npz").write_bytes(b"garbage")
  _raises(folder, r"00003\.npz: not a readable npz")
