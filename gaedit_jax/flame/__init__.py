"""FLAME head model as pure JAX functions (METHOD §2.1). Knows nothing of Gaussians.

* `model`: `FlameModel` / `FlameParams` pytrees, `flame_forward` (blendshapes + static offset + pose
  correctives + linear blend skinning over the 5 FLAME joints + translation; pure, jit-able,
  vmappable), `axis_angle_to_matrix`, `bake_identity`, region masks (`region_face_mask`, ...).
* `teeth`: `add_teeth(model)`, the GaussianAvatars "teethV3" teeth (120 vertices, 168 faces, face
  133 fixed); `teeth_faces`.
* `regions`: GaussianAvatars' fixed region index lists of the 5023-vertex FLAME topology;
  `complete_flame_regions` (which `load_flame` and `add_teeth` call), `require_regions`,
  `is_flame_topology`.
* `files`: `load_flame` / `save_flame`, the official pickle layout (read without chumpy) with
  `FLAME_masks.pkl`, or our own `.npz`.
* `synthetic`: `make_synthetic_flame(...)`, the built-in procedural FLAME-compatible head.

The names below are the package's public API (`from gaedit_jax.flame import load_flame`); the
modules of the package import one another directly, never this file.
"""

from __future__ import annotations

from gaedit_jax.flame.files import load_flame, save_flame
from gaedit_jax.flame.model import (
  FLAME_PARENTS,
  JOINT_NAMES,
  NUM_JOINTS,
  FlameFileError,
  FlameModel,
  FlameMotion,
  FlameParams,
  all_region_face_masks,
  axis_angle_to_matrix,
  bake_identity,
  flame_forward,
  forward,
  region_face_mask,
  region_vertex_mask,
  with_regions,
)
from gaedit_jax.flame.regions import (
  FLAME_LIP_RING_LOWER,
  FLAME_LIP_RING_UPPER,
  FLAME_NUM_VERTICES,
  NUM_TEETH_FACES,
  NUM_TEETH_VERTICES,
  complete_flame_regions,
  is_flame_topology,
  require_regions,
)
from gaedit_jax.flame.synthetic import make_synthetic_flame
from gaedit_jax.flame.teeth import add_teeth, teeth_faces

__all__ = [
  "FlameModel",
  "FlameMotion",
  "FlameParams",
  "FlameFileError",
  "flame_forward",
  "axis_angle_to_matrix",
  "add_teeth",
  "teeth_faces",
  "region_vertex_mask",
  "region_face_mask",
  "all_region_face_masks",
  "with_regions",
  "complete_flame_regions",
  "is_flame_topology",
  "require_regions",
  "forward",
  "bake_identity",
  "load_flame",
  "save_flame",
  "make_synthetic_flame",
  "NUM_JOINTS",
  "FLAME_PARENTS",
  "JOINT_NAMES",
  "FLAME_LIP_RING_UPPER",
  "FLAME_LIP_RING_LOWER",
  "FLAME_NUM_VERTICES",
  "NUM_TEETH_VERTICES",
  "NUM_TEETH_FACES",
]
