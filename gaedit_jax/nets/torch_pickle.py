"""Read PyTorch checkpoint files (`.pth`, `.bin`, `.pt`) into numpy arrays, without torch.

Checkpoints of the reference networks come as `torch.save` pickles: torchvision's VGG16
(`vgg16-397923af.pth`, the old "legacy" layout), the LPIPS linear heads (`vgg.pth`) and
diffusers / transformers `*.bin` files (the zip layout of torch >= 1.6); GaussianAvatars'
`chkpnt*.pth` (`torch.save((capture_tuple, iteration))`: ints, parameters, an optimizer state
dict, floats) reads too. Only data is understood (nested dicts / lists / tuples of tensors,
parameters, numpy arrays and scalars, numbers, strings): every pickle record, the legacy header
records included, goes through the allow-listed `gaedit_jax.safe_pickle.SafeUnpickler`, so a
malicious file cannot run code (the idea of torch's `weights_only=True` loading). Every tensor view is
checked against its storage, and every storage against the bytes the file holds for it.

Layouts (torch/serialization.py):
- zip: `<root>/data.pkl` holds the object, with tensors pickled as
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and storages as persistent
  ids `('storage', torch.FloatStorage, key, location, numel)`; raw bytes in `<root>/data/<key>`.
- legacy: a stream of pickles: magic number, protocol version, system info, the object (persistent
  ids `('storage', type, key, location, numel, view_metadata)`), the list of storage keys, then
  for each key an int64 element count followed by the raw bytes.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from typing import Any

import ml_dtypes
import numpy as np

from gaedit_jax import safe_pickle
from gaedit_jax.errors import InputError
from gaedit_jax.safe_pickle import Refusal

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype
_STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
  "UntypedStorage": np.uint8,
}


class TorchFileError(InputError):
  """A checkpoint that this reader cannot (or will not) read; the message names the file."""


class _StorageType:
  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _StorageRef:
  """A storage to be filled with bytes later (legacy) or read at once (zip)."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.array: np.ndarray | None = None


class _View(_StorageRef):
  """A legacy storage view: a window [offset, offset + size) into a root storage."""

  def __init__(self, root: _StorageRef, offset: int, size: int):
    super().__init__(root.key, root.dtype, size)
    self.root, self.view_offset = root, offset

  @property
  def array(self):
    if self.root.array is None:
      return None
    return self.root.array[self.view_offset : self.view_offset + self.numel]

  @array.setter
  def array(self, value):
    pass


def _is_index(x) -> bool:
  return type(x) is int and x >= 0


class _LazyTensor:
  """A tensor view (offset, size, stride, in elements) of a storage; checked when it is built, so
  that `materialise` never reads outside the storage."""

  def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def materialise(self) -> np.ndarray:
    base = self.storage.array
    if base is None:
      raise Refusal(f"storage {self.storage.key} has no data")
    if 0 in self.size:
      return np.empty(self.size, base.dtype)
    if base.shape[0] < self.storage.numel:
      raise Refusal(f"storage {self.storage.key} holds {base.shape[0]} elements, {self.storage.numel} expected")
    if not self.size:
      return base[self.offset].copy()
    item = base.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
      base[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
    )
    return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor[_v2]`: checks the view against its storage (torch does the same
  when it sets a tensor's storage): offset, sizes and strides >= 0, and the last element
  offset + sum((size_i - 1) * stride_i) inside the storage unless the tensor is empty."""
  if not isinstance(storage, _StorageRef):
    raise Refusal(f"a tensor whose storage is a {type(storage).__name__}")
  if isinstance(size, list):
    size = tuple(size)
  if isinstance(stride, list):
    stride = tuple(stride)
  if not (
    isinstance(size, tuple)
    and isinstance(stride, tuple)
    and len(size) == len(stride)
    and all(_is_index(s) for s in size + stride)
    and _is_index(storage_offset)
  ):
    raise Refusal(
      f"tensor view of storage {storage.key} with offset {storage_offset!r}, size "
      f"{size!r}, stride {stride!r}: expected non-negative ints, one stride per size"
    )
  if 0 not in size:
    last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= storage.numel:
      raise Refusal(
        f"tensor view (offset {storage_offset}, size {list(size)}, stride {list(stride)}) "
        f"reaches element {last} of storage {storage.key}, which holds {storage.numel}"
      )
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  if not isinstance(data, _LazyTensor):
    raise Refusal(f"a torch.nn.Parameter holding a {type(data).__name__}")
  return data


# What a checkpoint may name: tensors, storages, parameters, numpy arrays and scalars (e.g. a
# GaussianAvatars checkpoint's spatial_lr_scale), OrderedDict and plain python data.
_ALLOWED = {
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  **{("torch", n): _StorageType(n) for n in _STORAGE_DTYPES},
  **safe_pickle.NUMPY_DATA,
  **safe_pickle.BUILTIN_DATA,
}
_WHY = (
  "only state dicts of tensors are read (load it once with torch and save `model.state_dict()` or a safetensors file)"
)


class _Storages:
  """The persistent-id handler: storages by key, their bytes read from the zip at once, or filled in
  from the legacy stream after the object."""

  def __init__(self, path: str, archive: zipfile.ZipFile | None = None, zip_root: str = ""):
    self.path, self.archive, self.refs = path, archive, {}
    self.prefix = f"{zip_root}/data/" if zip_root else "data/"

  def _err(self, msg: str) -> TorchFileError:
    return TorchFileError(f"{self.path}: {msg}")

  def __call__(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
      raise self._err(f"unsupported persistent id {safe_pickle._one_line(repr(pid), 80)}")
    stype, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(stype, _StorageType):
      raise self._err(f"a storage of type {type(stype).__name__} (expected a torch *Storage)")
    if not isinstance(key, (str, int)) or not _is_index(numel):
      raise self._err(f"storage {key!r} with element count {numel!r}")
    key = str(key)
    ref = self.refs.get(key)
    if ref is None:
      ref = self.refs[key] = _StorageRef(key, stype.dtype, numel)
      if self.archive is not None:
        ref.array = self._read_zip(ref)
    elif ref.dtype != stype.dtype or ref.numel != numel:
      raise self._err(f"storage {key} is named as {ref.numel} {ref.dtype} and as {numel} {stype.dtype}")
    if len(pid) == 6 and pid[5] is not None:  # legacy view of a storage
      view = pid[5]
      if not (
        isinstance(view, tuple)
        and len(view) == 3
        and _is_index(view[1])
        and _is_index(view[2])
        and view[1] + view[2] <= numel
      ):
        raise self._err(
          f"storage view {safe_pickle._one_line(repr(view), 80)} outside storage {key} ({numel} elements)"
        )
      return _View(ref, view[1], view[2])
    return ref

  def _read_zip(self, ref: _StorageRef) -> np.ndarray:
    name = self.prefix + ref.key
    need = ref.numel * ref.dtype.itemsize
    try:
      info = self.archive.getinfo(name)
    except KeyError:
      raise self._err(f"storage {ref.key}: no entry {name} in the archive") from None
    if info.file_size < need:
      raise self._err(
        f"storage {ref.key}: entry {name} holds {info.file_size} bytes, but "
        f"{ref.numel} {ref.dtype} elements need {need}"
      )
    try:
      with self.archive.open(info) as g:
        raw = g.read(need)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
      raise self._err(f"storage {ref.key}: entry {name} cannot be read ({e})") from None
    if len(raw) != need:
      raise self._err(f"storage {ref.key}: entry {name} ends after {len(raw)} of {need} bytes")
    return np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<")).astype(ref.dtype)


def _unpickle(f, path: str, storages: _Storages | None = None) -> Any:
  """One pickle record of a checkpoint through the allow-listed unpickler. Records without a
  storage handler (the legacy header and key list) may name no global at all."""
  return safe_pickle.load(  # safe: the allow-listed unpickler
    f,
    source=path,
    allowed=_ALLOWED if storages is not None else {},
    why=_WHY,
    error=TorchFileError,
    persistent_load=storages,
    encoding="utf-8",
    what="PyTorch checkpoint",
  )


def _materialise(obj: Any) -> Any:
  if isinstance(obj, _LazyTensor):
    return obj.materialise()
  if isinstance(obj, dict):
    return (
      type(obj)((k, _materialise(v)) for k, v in obj.items())
      if isinstance(obj, OrderedDict)
      else {k: _materialise(v) for k, v in obj.items()}
    )
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  if isinstance(obj, (set, frozenset)) and any(isinstance(v, _LazyTensor) for v in obj):
    raise Refusal("a set of tensors")
  return obj


def _finish(obj: Any, path: str) -> Any:
  try:
    return _materialise(obj)
  except Refusal as e:
    raise TorchFileError(f"{path}: {e}") from None
  except RecursionError:
    raise TorchFileError(f"{path}: not a readable PyTorch checkpoint (nested too deeply)") from None


def load(path: str | os.PathLike) -> Any:
  """Load a `torch.save` file of tensors; tensors come back as numpy arrays (bf16 as ml_dtypes)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  if zipfile.is_zipfile(path):
    try:
      with zipfile.ZipFile(path) as archive:
        return _finish(_load_zip(archive, path), path)
    except (zipfile.BadZipFile, zlib.error) as e:
      raise TorchFileError(f"{path}: a damaged zip archive ({e})") from None
  with open(path, "rb") as f:
    return _finish(_load_legacy(f, path), path)


def _load_zip(archive: zipfile.ZipFile, path: str) -> Any:
  names = archive.namelist()
  pkls = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
  if not pkls:
    raise TorchFileError(f"{path}: a zip file without data.pkl (TorchScript archives are not read)")
  root = pkls[0][: -len("/data.pkl")] if "/" in pkls[0] else ""
  byteorder = f"{root}/byteorder" if root else "byteorder"
  if byteorder in names and archive.read(byteorder).strip() != b"little":
    raise TorchFileError(f"{path}: big-endian checkpoints are not supported")
  storages = _Storages(path, archive, root)
  with archive.open(pkls[0]) as g:
    return _unpickle(io.BytesIO(g.read()), path, storages)


def _load_legacy(f, path: str) -> Any:
  head = f.read(512)
  if len(head) >= 262 and head[257:262] == b"ustar":
    raise TorchFileError(
      f"{path}: the pre-2018 tar checkpoint layout is not supported; re-save it "
      "once with torch (torch.save(torch.load(p), q))"  # safe: message text
    )
  f.seek(0, os.SEEK_END)
  size = f.tell()
  f.seek(0)
  magic = _unpickle(f, path)
  if type(magic) is not int or magic != _LEGACY_MAGIC:
    raise TorchFileError(f"{path}: not a PyTorch checkpoint (bad magic number)")
  version = _unpickle(f, path)
  if version != _LEGACY_PROTOCOL:
    raise TorchFileError(f"{path}: legacy protocol version {version!r}, expected {_LEGACY_PROTOCOL}")
  info = _unpickle(f, path)  # system info (endianness, type sizes)
  if isinstance(info, dict) and info.get("little_endian") is False:
    raise TorchFileError(f"{path}: big-endian checkpoints are not supported")
  storages = _Storages(path)
  obj = _unpickle(f, path, storages)
  keys = _unpickle(f, path)
  if not (isinstance(keys, list) and all(isinstance(k, (str, int)) for k in keys)):
    raise TorchFileError(f"{path}: the storage key record is not a list of keys")
  for key in keys:
    ref = storages.refs.get(str(key))
    if ref is None:
      raise TorchFileError(f"{path}: storage {key} is listed but no tensor uses it")
    raw = f.read(8)
    if len(raw) != 8:
      raise TorchFileError(f"{path}: truncated file (storage {key}: no element count)")
    (numel,) = struct.unpack("<q", raw)
    if numel != ref.numel:
      raise TorchFileError(f"{path}: storage {key} holds {numel} elements, the pickle says {ref.numel}")
    need = numel * ref.dtype.itemsize
    if need > size - f.tell():
      raise TorchFileError(f"{path}: truncated file (storage {key} needs {need} bytes, {size - f.tell()} left)")
    raw = f.read(need)
    if len(raw) != need:
      raise TorchFileError(f"{path}: truncated file (storage {key})")
    ref.array = np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<")).astype(ref.dtype)
  return obj


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A flat {name: array} state dict; unwraps the usual {'state_dict': ...} / {'model': ...}."""
  obj = load(path)
  for wrapper in ("state_dict", "model", "params"):
    if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise TorchFileError(f"{os.fspath(path)}: expected a state dict, found {type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    if isinstance(v, np.ndarray):
      out[str(k)] = v
  return out
