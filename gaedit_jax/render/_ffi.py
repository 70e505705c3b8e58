"""Loading and registering the native rasterizer libraries (the only module that touches jax.ffi).

The libraries are plain shared objects loaded with ctypes. Each records the jaxlib it was compiled
against; XLA only accepts handlers built for its own FFI API, so a library built for another
jaxlib is refused here with instructions, instead of failing later with "No FFI handler registered".
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import sysconfig
from pathlib import Path

import jax
import jaxlib

FWD_TARGET = "gaedit_rasterize_fwd"
BWD_TARGET = "gaedit_rasterize_bwd"
_LIBS = {"cpu": "libgaedit_cpu.so", "cuda": "libgaedit_cuda.so"}
_SYMBOLS = {FWD_TARGET: "GaeditRasterizeFwd", BWD_TARGET: "GaeditRasterizeBwd"}

REBUILD_HINT = (
  "Rebuild it against the installed jaxlib from the repository root:\n"
  "    pip install --no-build-isolation -e .\n"
  "or, without pip:\n"
  "    cmake -S ffi -B build/native && cmake --build build/native && cmake --install build/native"
)


class NativeLibraryError(RuntimeError):
  """The native rasterizer library is missing or does not match the installed jaxlib."""


def _search_dirs() -> list[Path]:
  dirs = []
  if os.environ.get("GAEDIT_NATIVE_DIR"):
    dirs.append(Path(os.environ["GAEDIT_NATIVE_DIR"]))
  dirs.append(Path(__file__).resolve().parent.parent / "_native")  # source tree / regular install
  for key in ("platlib", "purelib"):  # editable installs put compiled files in site-packages
    dirs.append(Path(sysconfig.get_paths()[key]) / "gaedit_jax" / "_native")
  return list(dict.fromkeys(dirs))


def find_library(kind: str) -> Path | None:
  for d in _search_dirs():
    p = d / _LIBS[kind]
    if p.exists():
      return p
  return None


def _parse_info(lib: ctypes.CDLL) -> dict[str, str]:
  fn = lib.gaedit_build_info
  fn.restype = ctypes.c_char_p
  return dict(kv.split("=", 1) for kv in fn().decode().split(";"))


def _load(kind: str) -> ctypes.CDLL:
  path = find_library(kind)
  if path is None:
    searched = "\n".join(f"    {d}" for d in _search_dirs())
    raise NativeLibraryError(
      f"gaedit_jax: the {kind.upper()} rasterizer library {_LIBS[kind]} was not found in:\n"
      f"{searched}\nIt is compiled when the package is installed. {REBUILD_HINT}"
    )
  lib = ctypes.cdll.LoadLibrary(str(path))
  info = _parse_info(lib)
  if info.get("jaxlib") != jaxlib.__version__:
    raise NativeLibraryError(
      f"gaedit_jax: {path} was built for jaxlib {info.get('jaxlib')} (XLA FFI API "
      f"{info.get('ffi_api')}), but jaxlib {jaxlib.__version__} is installed (python "
      f"{sys.executable}). {REBUILD_HINT}"
    )
  return lib


def _has_gpu() -> bool:
  try:
    return any(d.platform == "gpu" for d in jax.devices())
  except RuntimeError:
    return False


_CUDA_LIB: ctypes.CDLL | None = None


def _query(name: str, *args: int) -> int:
  fn = getattr(_CUDA_LIB, name)
  fn.restype = ctypes.c_int64
  fn.argtypes = [ctypes.c_int64] * len(args)
  return int(fn(*args))


def cuda_fwd_workspace_bytes(v: int, n: int, cap: int, vt: int, tile: int, wabe_k: int) -> int:
  """Forward workspace bytes the CUDA kernels need for V views of N Gaussians, `cap` pooled
  intersections, VT (view, tile) pairs of tile x tile pixels and `wabe_k` WABE slots per pixel (1
  when no CUDA library is registered)."""
  if _CUDA_LIB is None:
    return 1
  return _query("gaedit_cuda_fwd_workspace_bytes", v, n, cap, vt, tile, wabe_k)


def cuda_bwd_workspace_bytes(v: int, n: int, cap: int, vt: int, tile: int) -> int:
  """Backward workspace bytes the CUDA kernels need for V views of N Gaussians, `cap` pooled
  intersections and VT (view, tile) pairs of tile x tile pixels (1 when no CUDA library is
  registered)."""
  if _CUDA_LIB is None:
    return 1
  return _query("gaedit_cuda_bwd_workspace_bytes", v, n, cap, vt, tile)


@functools.cache
def ensure_registered() -> tuple[str, ...]:
  """Registers the FFI targets once; returns the platforms they are registered for."""
  platforms = []
  lib = _load("cpu")
  for target, sym in _SYMBOLS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, sym)), platform="cpu")
  platforms.append("cpu")
  if _has_gpu():
    lib = _load("cuda")  # a GPU without the CUDA library is an error, not a silent CPU fallback
    global _CUDA_LIB
    _CUDA_LIB = lib
    for target, sym in _SYMBOLS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, sym + "Cuda")), platform="CUDA")
    platforms.append("cuda")
  return tuple(platforms)


def build_info() -> dict[str, dict[str, str] | None]:
  """What was built, for what jaxlib (for `gaedit --version`-style diagnostics and tests)."""
  out = {}
  for kind in _LIBS:
    p = find_library(kind)
    out[kind] = None if p is None else {"path": str(p), **_parse_info(ctypes.cdll.LoadLibrary(str(p)))}
  return out
