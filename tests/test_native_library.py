"""The native library loader: clear errors instead of XLA's bare "No FFI handler registered"."""

import ctypes

import jaxlib
import pytest

from gaedit_jax.render import _ffi


def test_library_is_built_for_the_installed_jaxlib():
  info = _ffi.build_info()["cpu"]
  assert info is not None and info["jaxlib"] == jaxlib.__version__
  assert info["ffi_api"].startswith("0.")


def test_missing_library_names_the_file_and_the_fix(monkeypatch, tmp_path):
  monkeypatch.setattr(_ffi, "_search_dirs", lambda: [tmp_path])
  with pytest.raises(_ffi.NativeLibraryError) as e:
    _ffi._load("cpu")
  msg = str(e.value)
  assert "libgaedit_cpu.so" in msg and str(tmp_path) in msg and "--no-build-isolation" in msg


def test_library_for_another_jaxlib_is_refused(monkeypatch):
  built = _ffi.build_info()["cpu"]["jaxlib"]
  monkeypatch.setattr(jaxlib, "__version__", "0.0.1")
  with pytest.raises(_ffi.NativeLibraryError) as e:
    _ffi._load("cpu")
  msg = str(e.value)
  assert f"built for jaxlib {built}" in msg and "jaxlib 0.0.1 is installed" in msg


@pytest.mark.gpu
def test_cuda_library_sizes_both_workspaces():
  """The forward's and the backward's workspace sizes are the CUDA library's own answers."""
  assert "cuda" in _ffi.ensure_registered()
  info = _ffi.build_info()["cuda"]
  assert info is not None and info["jaxlib"] == jaxlib.__version__ and info["cuda"] == "1"
  lib = ctypes.cdll.LoadLibrary(info["path"])
  assert hasattr(lib, "gaedit_cuda_fwd_workspace_bytes") and hasattr(lib, "gaedit_cuda_bwd_workspace_bytes")
  fwd = _ffi.cuda_fwd_workspace_bytes
  assert fwd(4, 100, 8000, 32, 8, 0) > fwd(1, 100, 2000, 8, 8, 0) > 1

  # a single view of 1M Gaussians splits the forward too: per chunk of 128 entries and pixel, two
  # float4 of sums and, with K WABE slots, min(K, 10) contributor records of 12 bytes (the sort's
  # buffers grow with cap alike at either size)
  def split_bytes(k):
    return fwd(1, 10**6, 128 * 1000, 64, 8, k) - fwd(1, 10**6, 128, 64, 8, k)

  unsplit = fwd(1, 100, 128 * 1000, 64, 8, 0) - fwd(1, 100, 128, 64, 8, 0)
  assert split_bytes(0) - unsplit >= 990 * 64 * 32
  assert split_bytes(10) - split_bytes(0) >= 990 * 64 * 10 * 12
  assert split_bytes(32) == split_bytes(10) > split_bytes(3) > split_bytes(0)
  # the backward accumulates 10 floats per (view, Gaussian): 3 more views of 100 need >= 12000 B
  bwd = _ffi.cuda_bwd_workspace_bytes
  assert bwd(4, 100, 4 * 800, 4 * 64, 8) - bwd(1, 100, 4 * 800, 4 * 64, 8) >= 3 * 100 * 10 * 4
  assert bwd(1, 1, 1, 1, 8) > 1
  # a single view of 1M Gaussians splits its tile lists into chunks of 128 entries: two floats per
  # chunk and pixel, for up to cap / 128 + VT chunks; 100 Gaussians do not
  split = bwd(1, 10**6, 128 * 1000, 64, 8) - bwd(1, 10**6, 128, 64, 8)
  assert split >= 999 * 64 * 8
  assert bwd(1, 100, 128 * 1000, 64, 8) - bwd(1, 100, 128, 64, 8) < split
