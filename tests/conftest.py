"""Shared fixtures. The helper modules of this folder (raster_scenes, recon_data, ...) and the
scripts of experiments/ are importable by name: pyproject.toml's [tool.pytest.ini_options]
`pythonpath` puts both folders on the import path."""

import gc
import os

import jax
import pytest

# `gaedit` processes started by tests never use the user's persistent compilation cache (the tests
# of the cache set their own folder)
os.environ.setdefault("GAEDIT_COMPILE_CACHE", "0")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops the compiled XLA programs after each test module. Every program compiled on the CPU
  keeps memory mappings of its machine code; a whole session compiles thousands, and one process
  reached the kernel's limit of mappings (vm.max_map_count, 65530 here), where the next compilation
  crashed with a segmentation fault. The programs are compiled again when a later module needs them."""
  yield
  jax.clear_caches()
  gc.collect()


def _has_gpu() -> bool:
  try:
    return any(d.platform == "gpu" for d in jax.devices())
  except Exception:
    return False


def pytest_collection_modifyitems(config, items):
  if _has_gpu():
    return
  skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
  """The device a test runs on: every array it makes and every kernel call is placed there (the
  rasterizer tests compute their reference oracle on the CPU). "cpu" always; "gpu" (marked `gpu`)
  where a CUDA device is present, skipped elsewhere."""
  dev = jax.devices(request.param)[0]
  with jax.default_device(dev):
    yield dev


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
  """The tiny synthetic dataset (recon_data.make_tiny_dataset: 48x64, 9 cameras, 4 timesteps), shared
  read-only by the reconstruction tests; a test that changes files works on its own copy."""
  from recon_data import make_tiny_dataset

  return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def edit_setup(tmp_path_factory):
  """One tiny reconstructed avatar and its datasets (recon_data.make_edit_setup), shared read-only by
  the edit tests."""
  from recon_data import make_edit_setup

  return make_edit_setup(tmp_path_factory.mktemp("edit"))
