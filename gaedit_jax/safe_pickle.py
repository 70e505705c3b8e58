"""The one unpickler of the project: files are data, never code.

A pickle is a small program; a plain `pickle.load` runs whatever callable the file names (a
hostile `.pkl` / `.pth` can call `os.system`). Every pickle we read (FLAME model and mask files,
the records of PyTorch checkpoints) goes through `SafeUnpickler`, which

* resolves only the globals of an explicit allow-list `{(module, name): object}` given by the
  caller, and refuses any other global as soon as the file names it, before anything runs;
* refuses persistent ids unless the caller hands in a handler;
* lets BUILD (the opcode that sets an object's state) touch only data objects: `StandIn`s, numpy
  arrays, numpy dtypes and the dicts listed in `build_dict_types`; everything else is refused;
* turns every other failure (a truncated file, a bad opcode, a broken state) into one
  `InputError` line that names the file.

The allow-lists below hold the data constructors that pickles of numpy arrays and scalars need,
under the names both python-2 era files (`copy_reg`, `__builtin__`, `numpy.core`) and current ones
(`copyreg`, `builtins`, `numpy._core`) use. A `StandIn` is an inert class that only keeps the state
a pickle gives it; loaders use it for classes of packages we do not import (chumpy, scipy.sparse).

The pure-python unpickler (`pickle._Unpickler`) is the base class: unlike the C one it lets us
replace the BUILD opcode. Pickles read here are small programs (large arrays are single opcodes),
so its speed does not matter.
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections import OrderedDict
from typing import IO, Any, Callable, Iterable, Mapping

import numpy as np

from gaedit_jax.errors import InputError

_np_core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core


class Refusal(Exception):
  """Raised by allow-listed constructors for arguments they refuse; `SafeUnpickler` turns it into
  an `InputError` naming the file. The message says what was refused, without the file name."""


class StandIn:
  """An inert stand-in for a class we do not import: keeps the state a pickle gives it in `_state`
  and does nothing else. Subclass it (one subclass per pickled class name, see `standin`)."""

  _pickled_class = "?"

  def __setstate__(self, state):
    object.__setattr__(self, "_state", state)


_STANDINS: dict[tuple[type, str, str], type] = {}


def standin(base: type, module: str, name: str) -> type:
  """The (cached) `StandIn` subclass of `base` that stands for `module.name`."""
  if not issubclass(base, StandIn):
    raise TypeError(f"standin: {base!r} is not a StandIn")
  key = (base, module, name)
  if key not in _STANDINS:
    _STANDINS[key] = type(name, (base,), {"_pickled_class": f"{module}.{name}"})
  return _STANDINS[key]


# ------------------------------------------------------------------------------------------------
# Data constructors (allow-list values). Each checks its arguments: they come from the file.
# ------------------------------------------------------------------------------------------------


def _dtype(obj, align=False, copy=False):
  """`numpy.dtype` as pickles call it: `dtype('f8', False, True)`, then BUILD with the state."""
  if isinstance(obj, bytes):
    obj = obj.decode("latin1")
  if not isinstance(obj, str):
    raise Refusal(f"refusing numpy.dtype({type(obj).__name__}): only dtype names are read")
  d = np.dtype(obj, align=bool(align), copy=True)  # a copy: BUILD then sets state on it, never on
  # numpy's shared builtin descriptors
  if d.hasobject:
    raise Refusal(f"refusing numpy.dtype({obj!r}): object arrays are not read")
  return d


class _NdarrayClass:
  """What the global `numpy.ndarray` resolves to: a token that `_reconstruct` accepts; it cannot
  be called or instantiated (NEWOBJ / REDUCE on it fail), so no array is made but through
  `_reconstruct` + BUILD."""

  __slots__ = ()

  def __repr__(self):
    return "numpy.ndarray"


_NDARRAY = _NdarrayClass()


def _reconstruct(subtype, shape, dtype):
  """`numpy.core.multiarray._reconstruct`: an empty ndarray that BUILD then fills."""
  if subtype is not _NDARRAY:
    raise Refusal(
      f"refusing to rebuild an array of class {getattr(subtype, '__name__', subtype)!r}: "
      "only plain numpy arrays are read"
    )
  if not (isinstance(shape, tuple) and all(type(s) is int and 0 <= s <= 1 for s in shape)):
    raise Refusal(f"refusing numpy _reconstruct with shape {shape!r} (pickles give (0,))")
  return _np_core.multiarray._reconstruct(np.ndarray, shape, _dtype(dtype))


def _scalar(dtype, data=None):
  """`numpy.core.multiarray.scalar`: a numpy scalar from its dtype and raw bytes."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise Refusal("refusing numpy scalar of a non-numeric dtype")
  if isinstance(data, str):  # python-2 str read with encoding='latin1'
    data = data.encode("latin1")
  if not isinstance(data, bytes):
    raise Refusal(f"refusing numpy scalar from {type(data).__name__} data")
  if len(data) != dtype.itemsize:
    raise Refusal(f"numpy {dtype} scalar with {len(data)} bytes, expected {dtype.itemsize}")
  return _np_core.multiarray.scalar(dtype, data)


def _frombuffer(buf, dtype, shape, order):
  """`numpy.core.numeric._frombuffer` (arrays pickled with protocol 5)."""
  if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
    raise Refusal(f"refusing numpy array from a {type(buf).__name__} buffer")
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise Refusal("refusing numpy array of a non-numeric dtype")
  if order not in ("C", "F"):
    raise Refusal(f"refusing numpy array with order {order!r}")
  return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
  """`_codecs.encode`: protocol-2 pickles spell `bytes` as encode(str, 'latin1')."""
  if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
    raise Refusal(f"refusing _codecs.encode(..., {encoding!r}): only latin1 text is read")
  return codecs.encode(obj, "latin1")


def _bytes(*args):
  if args and not (len(args) == 1 and isinstance(args[0], (bytes, bytearray, list))):
    raise Refusal("refusing builtins.bytes with these arguments (only bytes or a list of ints)")
  return bytes(*args)


def _bytearray(*args):
  """`bytearray` as protocol-2 pickles call it: bytearray(text, 'latin-1'), or from bytes/a list
  (never from a count, which would allocate whatever the file says)."""
  if len(args) == 2 and isinstance(args[0], str):
    return bytearray(_codecs_encode(args[0], args[1]))
  if args and not (len(args) == 1 and isinstance(args[0], (bytes, bytearray, list))):
    raise Refusal("refusing builtins.bytearray with these arguments (only text, bytes or a list of ints)")
  return bytearray(*args)


def reconstructor(classes: Iterable[type]) -> Callable:
  """`copyreg._reconstructor(cls, base, state)` (protocol 0/1 pickles of plain classes) for the
  given `StandIn` classes only: the real one calls `base.__new__(cls)` / `base.__init__(obj,
  state)`, which for other classes would run their code."""
  allowed = frozenset(classes)
  for c in allowed:
    if not (isinstance(c, type) and issubclass(c, StandIn)):
      raise TypeError(f"reconstructor: {c!r} is not a StandIn class")

  def _reconstructor(cls, base, state):
    if cls not in allowed:
      raise Refusal(f"refusing copyreg._reconstructor for {getattr(cls, '__name__', type(cls).__name__)}")
    if base is not object or state is not None:
      raise Refusal("refusing copyreg._reconstructor with a base other than object")
    return object.__new__(cls)

  return _reconstructor


def _both(module_pairs: Iterable[str], name: str, obj) -> dict[tuple[str, str], Any]:
  return {(m, name): obj for m in module_pairs}


# numpy arrays, dtypes and scalars under the names of numpy 1 (numpy.core) and 2 (numpy._core).
NUMPY_DATA: dict[tuple[str, str], Any] = {
  ("numpy", "dtype"): _dtype,
  ("numpy", "ndarray"): _NDARRAY,
  **_both(("numpy.core.multiarray", "numpy._core.multiarray"), "_reconstruct", _reconstruct),
  **_both(("numpy.core.multiarray", "numpy._core.multiarray"), "scalar", _scalar),
  **_both(("numpy.core.numeric", "numpy._core.numeric"), "_frombuffer", _frombuffer),
}

# Plain python data that protocol-2 pickles spell as globals (python 2 names included).
BUILTIN_DATA: dict[tuple[str, str], Any] = {
  **_both(("_codecs",), "encode", _codecs_encode),
  **_both(("builtins", "__builtin__"), "object", object),
  **_both(("builtins", "__builtin__"), "set", set),
  **_both(("builtins", "__builtin__"), "frozenset", frozenset),
  **_both(("builtins", "__builtin__"), "complex", complex),
  **_both(("builtins", "__builtin__"), "bytearray", _bytearray),
  **_both(("builtins", "__builtin__"), "bytes", _bytes),
  ("collections", "OrderedDict"): OrderedDict,
}


def reconstructor_entries(classes: Iterable[type]) -> dict[tuple[str, str], Any]:
  """Allow-list entries for `copyreg._reconstructor` / python-2 `copy_reg._reconstructor`."""
  r = reconstructor(classes)
  return {("copyreg", "_reconstructor"): r, ("copy_reg", "_reconstructor"): r}


# ------------------------------------------------------------------------------------------------
# The unpickler
# ------------------------------------------------------------------------------------------------


def _one_line(text: str, limit: int = 300) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit] + "..."


class _BoundedReader:
  """Reads from a binary file but never asks for more than the bytes left (a length field in a
  hostile pickle can claim petabytes; a short read then ends as 'pickle data was truncated')."""

  def __init__(self, f: IO[bytes]):
    self._f = f
    try:
      pos = f.tell()
      f.seek(0, os.SEEK_END)
      self._end = f.tell()
      f.seek(pos)
    except (AttributeError, OSError, ValueError):
      self._end = None

  def _left(self) -> int | None:
    return None if self._end is None else max(self._end - self._f.tell(), 0)

  def read(self, n: int = -1) -> bytes:
    left = self._left()
    if left is not None and (n is None or n < 0 or n > left):
      n = left
    return self._f.read(n)

  def readline(self) -> bytes:
    return self._f.readline()

  def readinto(self, b) -> int:
    left = self._left()
    if left is not None and len(b) > left:
      return self._f.readinto(memoryview(b)[:left])
    return self._f.readinto(b)


class _Dispatch(dict):
  def __missing__(self, opcode):
    raise pickle.UnpicklingError(f"unknown opcode {opcode:#04x}")


class SafeUnpickler(pickle._Unpickler):
  """Unpickles data only. `allowed` maps (module, name) to the object a global resolves to;
  `source` names the file in errors; `why` ends the refusal message (what is read instead).
  `persistent_load(pid)` handles persistent ids (None: refused). `build_dict_types`: the exact
  types whose instances BUILD may give attributes (e.g. OrderedDict, which torch state dicts carry
  `_metadata` on). `error`: the InputError subclass raised."""

  def __init__(
    self,
    file: IO[bytes],
    *,
    source: str | os.PathLike,
    allowed: Mapping[tuple[str, str], Any],
    why: str = "only data is read",
    error: type[InputError] = InputError,
    persistent_load: Callable[[Any], Any] | None = None,
    build_dict_types: Iterable[type] = (OrderedDict,),
    encoding: str = "ASCII",
    errors: str = "strict",
    what: str = "pickle",
  ):
    super().__init__(_BoundedReader(file), fix_imports=False, encoding=encoding, errors=errors)
    self._source, self._allowed, self._why, self._error = os.fspath(source), allowed, why, error
    self._pid_handler, self._what = persistent_load, what
    self._build_dict_types = tuple(build_dict_types)

  def find_class(self, module, name):
    try:
      return self._allowed[(module, name)]
    except (KeyError, TypeError):
      raise self._error(f"{self._source}: refusing to unpickle {module}.{name}: {self._why}") from None

  def persistent_load(self, pid):
    if self._pid_handler is None:
      raise self._error(f"{self._source}: refusing a persistent id {_one_line(repr(pid), 80)}: {self._why}")
    return self._pid_handler(pid)

  def load_build(self):
    stack = self.stack
    state = stack.pop()
    inst = stack[-1]
    if isinstance(inst, StandIn):
      inst.__setstate__(state)
    elif type(inst) is np.ndarray or isinstance(inst, np.dtype):
      inst.__setstate__(state)
      if (inst if isinstance(inst, np.dtype) else inst.dtype).hasobject:
        raise Refusal("refusing a numpy object array")
    elif type(inst) in self._build_dict_types:
      if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
        state = state[0]
      if not isinstance(state, dict) or not all(type(k) is str and not k.startswith("__") for k in state):
        raise Refusal(f"refusing to set state {type(state).__name__} on a {type(inst).__name__}")
      inst.__dict__.update(state)
    else:
      raise Refusal(f"refusing to set the state of a {type(inst).__name__}")

  dispatch = _Dispatch(pickle._Unpickler.dispatch)
  dispatch[pickle.BUILD[0]] = load_build

  def load(self):
    try:
      return super().load()
    except InputError:
      raise
    except Refusal as e:
      raise self._error(f"{self._source}: {_one_line(e)}") from None
    except RecursionError:
      raise self._error(f"{self._source}: not a readable {self._what} (nested too deeply)") from None
    except Exception as e:  # noqa: BLE001 - anything else is a malformed file; name it, in one line
      msg = _one_line(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
      if isinstance(e, EOFError):
        msg = "the file ends early"
      raise self._error(f"{self._source}: not a readable {self._what} ({msg})") from None


def load(file: IO[bytes], **kwargs) -> Any:
  """One pickle record from an open binary file (see `SafeUnpickler` for the arguments)."""
  return SafeUnpickler(file, **kwargs).load()


def load_path(path: str | os.PathLike, **kwargs) -> Any:
  """The pickle in `path` (`source` defaults to the path)."""
  kwargs.setdefault("source", path)
  with open(path, "rb") as f:
    return SafeUnpickler(f, **kwargs).load()


__all__ = [
  "SafeUnpickler",
  "StandIn",
  "Refusal",
  "standin",
  "reconstructor",
  "reconstructor_entries",
  "NUMPY_DATA",
  "BUILTIN_DATA",
  "load",
  "load_path",
]
