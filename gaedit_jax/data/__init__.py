"""Datasets in the GaussianAvatars / VHAP export layout, and the synthetic dataset.

* `layout`: transforms*.json reading and writing, per-timestep flame_param files as a sequence
  (`read_transforms`, `load_flame_sequence`, `DatasetWriter`, `vhap_splits`); one FLAME npz file is
  `gaedit_jax.io.flame_npz`, the errors `gaedit_jax.errors.DatasetError`.
* `dataset`: `AvatarDataset(root, split)` with lazy, cached image loading; `Frame`, `Batch`.
* `validate`: `validate_dataset(root, splits)` (every frame, image header and FLAME file, before
  training), `check_path`, `check_flags` (config values; errors name the flag).
* `synthetic`: `gaedit synth` (multi-view video dataset of the built-in head,
  `gaedit_jax.flame.synthetic`), `mesh_raster`, `textures`.

Submodules are imported on demand (`from gaedit_jax.data.dataset import AvatarDataset`).
"""
