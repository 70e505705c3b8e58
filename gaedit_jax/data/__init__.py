"""Datasets in the GaussianAvatars / VHAP export layout, and the built-in synthetic head.

* `layout`: transforms*.json / flame_param npz reading and writing (`read_transforms`,
  `read_flame_npz`, `load_flame_sequence`, `DatasetWriter`, `vhap_splits`, `DatasetError`).
* `dataset`: `AvatarDataset(root, split)` with lazy, cached image loading; `Frame`, `Batch`.
* `validate`: `validate_dataset(root, splits)` (every frame, image header and FLAME file, before
  training), `check_path`, `check_flags` (config values; errors name the flag).
* `synthetic_head`: `make_synthetic_flame(...)`, the procedural FLAME-compatible head.
* `synthetic`: `gaedit synth` (multi-view video dataset of that head), `mesh_raster`, `textures`.

Submodules are imported on demand (`from gaedit_jax.data.dataset import AvatarDataset`).
"""
