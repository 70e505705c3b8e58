"""Files are data, never code: hostile pickles of every kind we read (FLAME model and masks pickles,
legacy and zip PyTorch checkpoints, GaussianAvatars-like chkpnt files) are refused before anything
runs; tensor views outside their storage are refused; the real formats still load exactly."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import struct
import subprocess
import time
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from gaedit_jax import flame as F
from gaedit_jax import safe_pickle
from gaedit_jax.errors import InputError
from gaedit_jax.flame import files as flame_files
from gaedit_jax.flame import synthetic as sh
from gaedit_jax.nets import torch_pickle as TP

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------------------------------------
# Hostile payloads: each would leave a trace (create the marker, or delete the victim) if it ran.
# ------------------------------------------------------------------------------------------------


class Evil:
  def __init__(self, fn, args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return (self.fn, self.args)


PAYLOADS = ("os.system", "builtins.exec", "builtins.eval", "subprocess.Popen", "os.remove")


def _evil(kind: str, marker, victim) -> Evil:
  touch = f"open({str(marker)!r}, 'w').close()"
  return {
    "os.system": Evil(os.system, (f"touch '{marker}'",)),
    "builtins.exec": Evil(builtins.exec, (touch,)),
    "builtins.eval": Evil(builtins.eval, (touch,)),
    "subprocess.Popen": Evil(subprocess.Popen, (["touch", str(marker)],)),
    "os.remove": Evil(os.remove, (str(victim),)),
  }[kind]


@pytest.fixture
def traps(tmp_path):
  marker, victim = tmp_path / "MARKER", tmp_path / "victim.txt"
  victim.write_text("keep me")
  return marker, victim


def _nothing_ran(marker, victim) -> bool:
  time.sleep(0.05)  # a Popen that had started would have touched the marker by now
  return not marker.exists() and victim.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_safe_unpickler_refuses_what_plain_pickle_runs(kind, traps, tmp_path):
  """The same bytes run their payload under `pickle.load` (the control: a payload that ran would be
  seen) and are refused by `safe_pickle` before anything runs."""
  marker, victim = traps
  p = tmp_path / "evil.pkl"
  p.write_bytes(pickle.dumps({"x": [1, 2], "y": _evil(kind, marker, victim)}, protocol=2))
  with open(p, "rb") as f:
    out = pickle.load(f)
  if isinstance(out["y"], subprocess.Popen):
    out["y"].wait()
  assert not _nothing_ran(marker, victim)
  marker.unlink(missing_ok=True)
  victim.write_text("keep me")
  with pytest.raises(InputError, match=rf"^{re.escape(str(p))}: refusing to unpickle [\w.]+: only data"):
    safe_pickle.load_path(p, allowed={**safe_pickle.NUMPY_DATA, **safe_pickle.BUILTIN_DATA}, why="only data is read")
  assert _nothing_ran(marker, victim)


def _capture(extra=None, spatial_lr_scale=np.float64(2.75)):
  """A GaussianAvatars-like `(capture_tuple, iteration)`: active_sh_degree, the parameters, the
  densification buffers, `optimizer.state_dict()` of an Adam over named groups, spatial_lr_scale."""
  g = torch.Generator().manual_seed(0)
  n = 7
  params = [
    torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((n, 3), (n, 1, 3), (n, 15, 3), (n, 3), (n, 4), (n, 1))
  ]
  names = ("xyz", "f_dc", "f_rest", "scaling", "rotation", "opacity")
  opt = torch.optim.Adam(
    [
      {"params": [p], "lr": lr, "name": nm}
      for p, nm, lr in zip(params, names, (1.6e-4, 2.5e-3, 1.25e-4, 5e-3, 1e-3, 0.05))
    ],
    lr=0.0,
    eps=1e-15,
  )
  sum((p**2).sum() for p in params).backward()
  opt.step()
  sd = opt.state_dict()
  if extra is not None:
    sd["param_groups"][0]["name"] = extra
  capture = (3, *params, torch.zeros(n), torch.zeros(n, 1), torch.zeros(n, 1, dtype=torch.int32), sd, spatial_lr_scale)
  return (capture, 30000)


def _write_legacy_records(path, *records):
  with open(path, "wb") as f:
    for r in records:
      pickle.dump(r, f, protocol=2)


_SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _small_flame():
  return sh.make_synthetic_flame(0, n_shape=3, n_expr=2, rows=16, cols=24, eye_res=(4, 6))


def _write_hostile(where: str, evil: Evil, tmp_path):
  """Writes a file of kind `where` with `evil` inside; returns (loader, path)."""
  if where == "flame":
    p = tmp_path / "evil_flame.pkl"
    p.write_bytes(pickle.dumps({"v_template": evil, "f": np.zeros((1, 3), np.uint32)}, protocol=2))
    return F.load_flame, p
  if where == "masks":
    model = F.save_flame(_small_flame(), tmp_path / "head.pkl")
    p = tmp_path / "evil_masks.pkl"
    p.write_bytes(pickle.dumps({"face": np.arange(3), "nose": evil}, protocol=2))
    return lambda q: F.load_flame(model, masks_path=q), p
  if where == "legacy_header":  # the first record (the magic number) is hostile
    p = tmp_path / "evil_header.pth"
    _write_legacy_records(p, evil, 1001, _SYS_INFO, {"a": 1}, [])
    return TP.load, p
  if where == "legacy_sysinfo":
    p = tmp_path / "evil_sysinfo.pth"
    _write_legacy_records(p, TP._LEGACY_MAGIC, 1001, {"little_endian": evil}, {"a": 1}, [])
    return TP.load, p
  if where == "legacy_keys":  # the storage-key record after the object
    p = tmp_path / "evil_keys.pth"
    _write_legacy_records(p, TP._LEGACY_MAGIC, 1001, _SYS_INFO, {"a": 1}, evil)
    return TP.load, p
  if where == "zip":
    p = tmp_path / "evil_zip.pth"
    torch.save({"w": torch.ones(3), "evil": evil}, p)
    return TP.load, p
  if where in ("chkpnt_zip", "chkpnt_legacy"):
    p = tmp_path / f"{where}.pth"
    torch.save(_capture(extra=evil), p, _use_new_zipfile_serialization=where == "chkpnt_zip")
    return TP.load, p
  raise AssertionError(where)


WHERE = ("flame", "masks", "legacy_header", "legacy_sysinfo", "legacy_keys", "zip", "chkpnt_zip", "chkpnt_legacy")


@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("where", WHERE)
def test_hostile_files_are_refused_before_anything_runs(where, kind, traps, tmp_path):
  marker, victim = traps
  load, path = _write_hostile(where, _evil(kind, marker, victim), tmp_path)
  with pytest.raises(InputError) as e:
    load(path)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"{path}: refusing to unpickle "), msg
  assert msg.split(": refusing to unpickle ")[1].split(":")[0] in (
    "posix.system",
    "__builtin__.exec",
    "builtins.exec",
    "__builtin__.eval",
    "builtins.eval",
    "subprocess.Popen",
    "commands.Popen",
    "posix.remove",
  ), msg
  assert _nothing_ran(marker, victim)


# ------------------------------------------------------------------------------------------------
# The unpickler itself
# ------------------------------------------------------------------------------------------------


def test_build_cannot_change_an_allowed_class(tmp_path):
  """BUILD on a global (here the chumpy stand-in class) would set class attributes for the rest of
  the process; only data objects may receive state."""
  cls = flame_files._FLAME_ALLOWED[("chumpy.ch", "Ch")]
  text = lambda t: b"X" + struct.pack("<I", len(t)) + t.encode()
  state = b"N}" + text("_pickled_class") + text("pwned") + b"s\x86"  # (None, {name: value})
  p = tmp_path / "build.pkl"
  p.write_bytes(b"\x80\x02cchumpy.ch\nCh\n" + state + b"b.")
  with pytest.raises(F.FlameFileError, match=r"build\.pkl: refusing to set the state of a type"):
    F.load_flame(p)
  assert cls._pickled_class == "chumpy.ch.Ch"


def test_reconstructor_only_builds_stand_ins_on_object(tmp_path):
  p = tmp_path / "recon.pkl"
  # copy_reg._reconstructor(chumpy Ch, __builtin__.set, None): base.__new__ of another class
  p.write_bytes(b"\x80\x02ccopy_reg\n_reconstructor\ncchumpy.ch\nCh\nc__builtin__\nset\nN\x87R.")
  with pytest.raises(F.FlameFileError, match=r"recon\.pkl: refusing copyreg._reconstructor"):
    F.load_flame(p)
  p.write_bytes(b"\x80\x02ccopy_reg\n_reconstructor\nc__builtin__\nset\nc__builtin__\nobject\nN\x87R.")
  with pytest.raises(F.FlameFileError, match=r"recon\.pkl: refusing copyreg._reconstructor for set"):
    F.load_flame(p)


def test_persistent_ids_need_a_handler(tmp_path):
  class P(pickle.Pickler):
    def persistent_id(self, obj):
      return "ext" if obj == "secret" else None

  buf = io.BytesIO()
  P(buf, protocol=2).dump({"v_template": "secret"})
  p = tmp_path / "pid.pkl"
  p.write_bytes(buf.getvalue())
  with pytest.raises(F.FlameFileError, match=r"pid\.pkl: refusing a persistent id 'ext'"):
    F.load_flame(p)


@pytest.mark.parametrize(
  "case,expect",
  [
    ("truncated", r"not a readable FLAME pickle \(the file ends early\)"),
    ("opcode", r"not a readable FLAME pickle \(UnpicklingError: unknown opcode 0xff\)"),
    ("object_array", r"refusing numpy.dtype\('O8'\): object arrays are not read"),
    ("huge_length", r"not a readable FLAME pickle"),
  ],
)
def test_broken_pickles_give_one_line_naming_the_file(case, expect, tmp_path):
  good = pickle.dumps({"v_template": np.arange(30.0).reshape(10, 3)}, protocol=2)
  raw = {
    "truncated": good[: len(good) // 2],
    "opcode": b"\x80\x02\xff.",
    "object_array": pickle.dumps({"v_template": np.array([1, "a"], object)}, protocol=2),
    "huge_length": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"xx",
  }[case]
  p = tmp_path / f"{case}.pkl"
  p.write_bytes(raw)
  with pytest.raises(F.FlameFileError) as e:
    F.load_flame(p)
  assert str(e.value).startswith(f"{p}: ") and "\n" not in str(e.value)
  assert re.search(expect, str(e.value)), str(e.value)


class _Py2Writer(flame_files._PickleWriter):
  """Writes bytes the way python 2 wrote `str` (SHORT_BINSTRING / BINSTRING), as in the official
  FLAME files (numpy's raw array data is a python-2 str there)."""

  dispatch = dict(flame_files._PickleWriter.dispatch)

  def save_bytes(self, obj):
    if len(obj) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    self.memoize(obj)

  dispatch[bytes] = save_bytes


def test_python2_era_flame_pickle_loads(tmp_path, monkeypatch):
  model = _small_flame()
  monkeypatch.setattr(flame_files, "_PickleWriter", _Py2Writer)
  path = F.save_flame(model, tmp_path / "py2.pkl")
  monkeypatch.undo()
  raw = path.read_bytes().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
  path.write_bytes(raw)
  for name in (
    b"copy_reg\n_reconstructor\n",
    b"__builtin__\nobject\n",
    b"numpy.core.multiarray\n_reconstruct\n",
    b"numpy\ndtype\n",
    b"chumpy.ch\nCh\n",
    b"scipy.sparse.csc\ncsc_matrix\n",
  ):
    assert name in raw, name
  assert pickle.BINSTRING in raw and b"numpy._core" not in raw
  back = F.load_flame(path)
  for f in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights", "faces"):
    np.testing.assert_allclose(np.asarray(getattr(back, f)), np.asarray(getattr(model, f)), atol=1e-6, err_msg=f)
  assert back.region_names and set(back.region_names) == set(model.region_names)


def test_numpy_scalars_and_protocol_5_arrays_are_data(tmp_path):
  rec = np.zeros(2, [("a", "<f4"), ("b", "<i8")])
  rec["b"] = [3, -4]
  obj = {
    "a": np.arange(4, dtype=np.int16),
    "s": np.float64(2.5),
    "c": np.complex64(1 + 2j),
    "b": b"xy\xff",
    "ba": bytearray(b"\x00\xfe"),
    "set": {1, 2},
    "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "rec": rec,
  }
  for proto in (2, 4, 5):
    p = tmp_path / f"p{proto}.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=proto))
    back = safe_pickle.load_path(p, allowed={**safe_pickle.NUMPY_DATA, **safe_pickle.BUILTIN_DATA})
    np.testing.assert_array_equal(back["a"], obj["a"])
    assert back["a"].dtype == np.int16 and type(back["s"]) is np.float64 and back["s"] == 2.5
    assert type(back["c"]) is np.complex64 and back["c"] == obj["c"]
    assert back["b"] == obj["b"] and back["ba"] == obj["ba"] and back["set"] == {1, 2}
    np.testing.assert_array_equal(back["f"], obj["f"])
    assert back["rec"].dtype == rec.dtype and back["rec"]["b"].tolist() == [3, -4]
  # a numpy array is made only through _reconstruct + its state, never by calling numpy.ndarray
  p.write_bytes(b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x10\x85\x85R.")  # ndarray((2**28,))
  with pytest.raises(InputError, match=r"p5\.pkl: not a readable pickle"):
    safe_pickle.load_path(p, allowed=safe_pickle.NUMPY_DATA)


# ------------------------------------------------------------------------------------------------
# PyTorch checkpoints: the real formats, and views against their storages
# ------------------------------------------------------------------------------------------------


def _to_numpy_tree(obj):
  if isinstance(obj, torch.Tensor):
    return obj.detach().numpy()
  if isinstance(obj, dict):
    return {k: _to_numpy_tree(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_to_numpy_tree(v) for v in obj)
  return obj


def _assert_same(got, want, where="root"):
  if isinstance(want, np.ndarray):
    assert isinstance(got, (np.ndarray, np.generic)), where
    assert np.asarray(got).dtype == want.dtype and np.asarray(got).shape == want.shape, where
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=where)
    return
  assert type(got) is type(want), (where, type(got), type(want))
  if isinstance(want, dict):
    assert list(got) == list(want), where
    for k in want:
      _assert_same(got[k], want[k], f"{where}.{k}")
  elif isinstance(want, (list, tuple)):
    assert len(got) == len(want), where
    for i, (a, b) in enumerate(zip(got, want)):
      _assert_same(a, b, f"{where}[{i}]")
  else:
    assert got == want, where


@pytest.mark.parametrize("zip_format", [True, False])
def test_gaussianavatars_chkpnt_round_trips_exactly(zip_format, tmp_path):
  obj = _capture()
  p = tmp_path / "chkpnt30000.pth"
  torch.save(obj, p, _use_new_zipfile_serialization=zip_format)
  assert zipfile.is_zipfile(p) == zip_format
  got = TP.load(p)
  _assert_same(got, _to_numpy_tree(obj))
  (capture, it) = got
  assert it == 30000 and capture[0] == 3 and type(capture[-1]) is np.float64 and capture[-1] == 2.75
  st = capture[-2]["state"]
  assert sorted(st) == list(range(6)) and st[0]["exp_avg"].shape == (7, 3)
  assert capture[-2]["param_groups"][2]["name"] == "f_rest" and capture[-2]["param_groups"][0]["betas"] == (0.9, 0.999)


class _Ref:
  def __init__(self, key, numel, view=None):
    self.key, self.numel, self.view = key, numel, view


class _T:
  """A tensor view as torch pickles it: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

  def __init__(self, ref, offset, size, stride):
    self.args = (ref, offset, size, stride, False, OrderedDict())

  def __reduce__(self):
    return (torch._utils._rebuild_tensor_v2, self.args)


class _TorchPickler(pickle.Pickler):
  legacy = False

  def persistent_id(self, obj):
    if isinstance(obj, _Ref):
      pid = ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
      return pid + (obj.view,) if self.legacy else pid
    return None


def _dumps(obj, legacy=False) -> bytes:
  buf = io.BytesIO()
  p = _TorchPickler(buf, protocol=2)
  p.legacy = legacy
  p.dump(obj)
  return buf.getvalue()


def _write_zip(path, obj, data: dict[str, bytes]):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", _dumps(obj))
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
    for k, b in data.items():
      z.writestr(f"archive/data/{k}", b)


def _write_legacy(path, obj, data: dict[str, np.ndarray], numel_override=None):
  with open(path, "wb") as f:
    for r in (TP._LEGACY_MAGIC, 1001, _SYS_INFO):
      pickle.dump(r, f, protocol=2)
    f.write(_dumps(obj, legacy=True))
    pickle.dump(list(data), f, protocol=2)
    for k, a in data.items():
      f.write(struct.pack("<q", a.size if numel_override is None else numel_override))
      f.write(a.astype("<f4").tobytes())


BASE = np.arange(6, dtype=np.float32)


def test_handmade_views_match_torch(tmp_path):
  """The hand-written layouts used below are what torch writes: torch.load reads the same values."""
  ok = {
    "a": _T(_Ref("0", 6), 1, (2, 2), (1, 3)),
    "b": _T(_Ref("0", 6), 5, (), ()),
    "e": _T(_Ref("0", 6), 9, (0, 4), (4, 1)),
  }
  _write_zip(tmp_path / "ok.pth", ok, {"0": BASE.tobytes()})
  got, ref = TP.load(tmp_path / "ok.pth"), torch.load(tmp_path / "ok.pth", weights_only=True)
  for k in ok:
    np.testing.assert_array_equal(np.asarray(got[k]), ref[k].numpy(), err_msg=k)
    assert np.asarray(got[k]).shape == tuple(ref[k].shape)
  view = {"v": _T(_Ref("0", 6, ("1", 2, 3)), 0, (3,), (1,))}
  _write_legacy(tmp_path / "ok_legacy.pth", view, {"0": BASE})
  got, ref = TP.load(tmp_path / "ok_legacy.pth"), torch.load(tmp_path / "ok_legacy.pth", weights_only=False)
  np.testing.assert_array_equal(got["v"], ref["v"].numpy())
  np.testing.assert_array_equal(got["v"], [2, 3, 4])


@pytest.mark.parametrize(
  "offset,size,stride,expect",
  [
    (0, (7,), (1,), "reaches element 6 of storage 0, which holds 6"),
    (4, (3,), (1,), "reaches element 6"),
    (0, (4,), (2,), "reaches element 6"),
    (0, (2, 3), (3, 2), "reaches element 7"),
    (6, (), (), "reaches element 6"),
    (0, (3,), (-1,), "expected non-negative ints"),
    (-1, (2,), (1,), "expected non-negative ints"),
    (0, (2, 2), (1,), "one stride per size"),
  ],
)
def test_zip_tensor_view_past_its_storage_is_refused(offset, size, stride, expect, tmp_path):
  p = tmp_path / "view.pth"
  _write_zip(p, {"w": _T(_Ref("0", 6), offset, size, stride)}, {"0": BASE.tobytes()})
  with pytest.raises(TP.TorchFileError, match=expect) as e:
    TP.load(p)
  assert str(e.value).startswith(f"{p}: ")


def test_zip_storage_shorter_than_its_numel_is_refused(tmp_path):
  p = tmp_path / "short.pth"
  _write_zip(p, {"w": _T(_Ref("0", 6), 0, (6,), (1,))}, {"0": BASE.tobytes()[:20]})
  with pytest.raises(
    TP.TorchFileError,
    match=r"short\.pth: storage 0: entry archive/data/0 holds 20 "
    r"bytes, but 6 float32 elements need 24",
  ):
    TP.load(p)
  _write_zip(p, {"w": _T(_Ref("0", 6), 0, (6,), (1,))}, {})
  with pytest.raises(TP.TorchFileError, match=r"short\.pth: storage 0: no entry archive/data/0"):
    TP.load(p)


@pytest.mark.parametrize(
  "view,tensor,expect",
  [
    (("1", 4, 5), (0, (2,), (1,)), r"storage view \('1', 4, 5\) outside storage 0 \(6 elements\)"),
    (("1", -1, 2), (0, (2,), (1,)), "outside storage 0"),
    (("1", 2, 3), (0, (4,), (1,)), "reaches element 3 of storage 0, which holds 3"),
    (("1", 2, 3), (2, (2,), (1,)), "reaches element 3"),
  ],
)
def test_legacy_view_past_its_storage_is_refused(view, tensor, expect, tmp_path):
  p = tmp_path / "legacy_view.pth"
  _write_legacy(p, {"w": _T(_Ref("0", 6, view), *tensor)}, {"0": BASE})
  with pytest.raises(TP.TorchFileError, match=expect) as e:
    TP.load(p)
  assert str(e.value).startswith(f"{p}: ")


def test_legacy_storage_data_must_match_the_pickle(tmp_path):
  p = tmp_path / "legacy.pth"
  _write_legacy(p, {"w": _T(_Ref("0", 6), 0, (6,), (1,))}, {"0": BASE}, numel_override=5)
  with pytest.raises(TP.TorchFileError, match=r"storage 0 holds 5 elements, the pickle says 6"):
    TP.load(p)
  _write_legacy(p, {"w": _T(_Ref("0", 6), 0, (6,), (1,))}, {"0": BASE})
  p.write_bytes(p.read_bytes()[:-4])
  with pytest.raises(TP.TorchFileError, match=r"legacy\.pth: truncated file \(storage 0 needs 24 bytes, 20 left\)"):
    TP.load(p)
  _write_legacy(p, {"w": _T(_Ref("0", 6), 0, (6,), (1,))}, {"0": BASE, "9": BASE})
  with pytest.raises(TP.TorchFileError, match=r"storage 9 is listed but no tensor uses it"):
    TP.load(p)


def test_deeply_nested_checkpoint_is_an_input_error(tmp_path):
  n = 200_000
  p = tmp_path / "deep.pth"
  with open(p, "wb") as f:
    for r in (TP._LEGACY_MAGIC, 1001, _SYS_INFO):
      pickle.dump(r, f, protocol=2)
    f.write(b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".")
    pickle.dump([], f, protocol=2)
  with pytest.raises(TP.TorchFileError, match=r"deep\.pth: not a readable PyTorch checkpoint \(nested too deeply\)"):
    TP.load(p)
