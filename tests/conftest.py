import os
import sys

import pytest

# tests import small helpers (e.g. raster_scenes) from this folder
sys.path.insert(0, os.path.dirname(__file__))


def _has_gpu() -> bool:
  try:
    import jax
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
