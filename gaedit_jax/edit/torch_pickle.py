"""Read PyTorch checkpoint files (`.pth`, `.bin`, `.pt`) into numpy arrays, without torch.

Checkpoints of the reference networks come as `torch.save` pickles: torchvision's VGG16
(`vgg16-397923af.pth`, the old "legacy" layout), the LPIPS linear heads (`vgg.pth`) and
diffusers / transformers `*.bin` files (the zip layout of torch >= 1.6). Only a state dict (a
possibly nested dict / list of tensors, numbers and strings) is understood; the unpickler
accepts nothing else, so a malicious pickle cannot run code (the same idea as
`torch.load(weights_only=True)`).

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
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any

import ml_dtypes
import numpy as np

from gaedit_jax.errors import InputError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

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
  """A storage to be filled with bytes later (legacy) or read lazily (zip)."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.array: np.ndarray | None = None


class _LazyTensor:
  def __init__(self, storage: _StorageRef, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

  def materialise(self) -> np.ndarray:
    base = self.storage.array
    if base is None:
      raise TorchFileError(f"storage {self.storage.key} has no data")
    if not self.size:
      return base[self.offset].copy()
    item = base.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        base[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride))
    return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, path: str, storages: dict[str, _StorageRef], zip_root: str | None = None,
               archive: zipfile.ZipFile | None = None):
    super().__init__(file, encoding="utf-8")
    self._path, self._storages, self._zip_root, self._archive = path, storages, zip_root, archive

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise TorchFileError(
        f"{self._path}: refusing to unpickle {module}.{name}: only state dicts of tensors are read "
        "(load it once with torch and save `model.state_dict()` or a safetensors file)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
      raise TorchFileError(f"{self._path}: unsupported persistent id {pid!r}")
    stype, key, numel = pid[1], str(pid[2]), int(pid[4])
    dtype = stype.dtype if isinstance(stype, _StorageType) else np.dtype(np.uint8)
    ref = self._storages.get(key)
    if ref is None:
      ref = self._storages[key] = _StorageRef(key, dtype, numel)
      if self._archive is not None:
        raw = self._archive.read(f"{self._zip_root}/data/{key}")
        ref.array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=numel).astype(dtype)
    if len(pid) > 5 and pid[5] is not None:       # legacy view of a storage
      view_key, offset, view_size = pid[5]
      return _View(ref, int(offset), int(view_size))
    return ref


class _View(_StorageRef):
  """A legacy storage view: a window [offset, offset + size) into a root storage."""

  def __init__(self, root: _StorageRef, offset: int, size: int):
    super().__init__(root.key, root.dtype, size)
    self.root, self.view_offset = root, offset

  @property
  def array(self):
    if self.root.array is None:
      return None
    return self.root.array[self.view_offset:self.view_offset + self.numel]

  @array.setter
  def array(self, value):
    pass


def _materialise(obj: Any) -> Any:
  if isinstance(obj, _LazyTensor):
    return obj.materialise()
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v)) for k, v in obj.items()) if isinstance(obj, OrderedDict) \
        else {k: _materialise(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


def load(path: str | os.PathLike) -> Any:
  """Load a `torch.save` file of tensors; tensors come back as numpy arrays (bf16 as ml_dtypes)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  storages: dict[str, _StorageRef] = {}
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
      if not pkls:
        raise TorchFileError(f"{path}: a zip file without data.pkl (TorchScript archives are not read)")
      root = pkls[0][: -len("/data.pkl")] if "/" in pkls[0] else ""
      byteorder = f"{root}/byteorder"
      if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
        raise TorchFileError(f"{path}: big-endian checkpoints are not supported")
      obj = _Unpickler(io.BytesIO(archive.read(pkls[0])), path, storages, root, archive).load()
    return _materialise(obj)
  with open(path, "rb") as f:
    head = f.read(512)
    if len(head) >= 262 and head[257:262] == b"ustar":
      raise TorchFileError(f"{path}: the pre-2018 tar checkpoint layout is not supported; re-save it "
                           "once with torch (torch.save(torch.load(p), q))")
    f.seek(0)
    try:
      magic = pickle.load(f)
    except Exception as e:  # noqa: BLE001  (anything unpicklable here is not a torch file)
      raise TorchFileError(f"{path}: not a PyTorch checkpoint ({e})") from e
    if magic != _LEGACY_MAGIC:
      raise TorchFileError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    pickle.load(f)                       # protocol version
    pickle.load(f)                       # system info (endianness, type sizes)
    obj = _Unpickler(f, path, storages).load()
    keys = pickle.load(f)
    for key in keys:
      ref = storages[str(key)]
      (numel,) = struct.unpack("<q", f.read(8))
      raw = f.read(numel * ref.dtype.itemsize)
      if len(raw) != numel * ref.dtype.itemsize:
        raise TorchFileError(f"{path}: truncated file (storage {key})")
      ref.array = np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<")).astype(ref.dtype)
  return _materialise(obj)


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
