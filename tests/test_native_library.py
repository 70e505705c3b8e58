"""The native library loader: clear errors instead of XLA's bare "No FFI handler registered"."""

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
