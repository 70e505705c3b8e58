"""Hugging Face layout folders: finding and reading weight files, and fitting them to Flax trees.

A component folder (`unet/`, `vae/`, `text_encoder/` of timbrooks/instruct-pix2pix, or a CLIP model
folder such as openai/clip-vit-large-patch14) holds `config.json` and one of
```
diffusion_flax_model.msgpack | diffusion_pytorch_model[.fp16].safetensors | .bin     (diffusers)
flax_model.msgpack | model[.fp16].safetensors | pytorch_model[.fp16].bin            (transformers)
```
Sharded checkpoints (`*.safetensors.index.json`) are read too. Flax msgpack is preferred when
present (what `gaedit convert-weights` writes), then safetensors, then `.bin` (read by
`torch_pickle`, no torch needed). Nothing is ever downloaded.

Mapping PyTorch tensors onto Flax is our own: the expected Flax parameter tree comes from
`jax.eval_shape` of the module's init (no compute), both sides' names are brought to one canonical
form (`down_blocks_0` == `down_blocks.0`), `weight` maps to `kernel` (conv OIHW -> HWIO, linear
transposed), `scale` (norms) or `embedding`; the VAE's attention is `to_q/to_k/to_v/to_out.0` in
new PyTorch files and `query/key/value/proj_attn` in old ones and in Flax. Missing, unexpected and
mis-shaped tensors are all reported together, naming the file.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable

import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from gaedit_jax.errors import InputError
from gaedit_jax.nets import torch_pickle


class WeightsError(InputError):
  """A weights folder or file that is missing pieces or does not fit the model."""


def flax_clip_modules() -> tuple[type, type]:
  """transformers' Flax CLIP modules (FlaxCLIPModule, FlaxCLIPTextModule), whose parameter trees
  the weights are fitted to. transformers 5 dropped its Flax models: then a one-line error that
  names the installed version and the one pyproject.toml pins."""
  import importlib

  try:
    m = importlib.import_module("transformers.models.clip.modeling_flax_clip")
  except ImportError:
    import transformers

    raise InputError(
      f"transformers {transformers.__version__} has no Flax CLIP models (transformers 5 removed them); "
      "gaedit needs transformers 4 (pyproject.toml pins 4.57.6: pip install transformers==4.57.6)"
    ) from None
  return m.FlaxCLIPModule, m.FlaxCLIPTextModule


def _raise_if_misfit(source, missing, unexpected, mismatched) -> None:
  """One error naming every missing, unexpected and wrongly shaped piece of a weights file."""
  if missing or unexpected or mismatched:
    lines = [f"{source}: the weights do not fit the model described by its config.json"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
      if items:
        lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
    raise WeightsError("\n".join(lines))


# --------------------------------------------------------------------------------------------
# file discovery
# --------------------------------------------------------------------------------------------

DIFFUSERS_STEMS = (
  "diffusion_flax_model.msgpack",
  "diffusion_pytorch_model.safetensors",
  "diffusion_pytorch_model.fp16.safetensors",
  "diffusion_pytorch_model.bin",
  "diffusion_pytorch_model.fp16.bin",
)
TRANSFORMERS_STEMS = (
  "flax_model.msgpack",
  "model.safetensors",
  "model.fp16.safetensors",
  "pytorch_model.bin",
  "pytorch_model.fp16.bin",
)


def find_weights(folder: str, stems: Iterable[str]) -> list[str]:
  """The weight file(s) of one component folder, in order of preference."""
  for stem in stems:
    p = os.path.join(folder, stem)
    if os.path.isfile(p):
      return [p]
    index = p + ".index.json"
    if os.path.isfile(index):
      with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
      if missing:
        raise WeightsError(f"{index}: shards missing: {missing}")
      return [os.path.join(folder, s) for s in shards]
  raise WeightsError(f"{folder}: no weights found; expected one of {list(stems)} (or a sharded *.index.json of them)")


def read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise WeightsError(f"{path}: missing")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise WeightsError(f"{path}: not valid JSON ({e})") from e


def read_tensors(paths: list[str]) -> dict[str, np.ndarray] | dict:
  """A flat {name: array} of PyTorch-layout tensors, or the nested Flax tree of a msgpack."""
  if len(paths) == 1 and paths[0].endswith(".msgpack"):
    with open(paths[0], "rb") as f:
      return serialization.msgpack_restore(f.read())
  out: dict[str, np.ndarray] = {}
  for p in paths:
    if p.endswith(".safetensors"):
      from safetensors import safe_open

      try:
        with safe_open(p, framework="numpy") as f:
          for k in f.keys():
            out[k] = f.get_tensor(k)
      except (TypeError, ValueError):  # bf16 is not a numpy dtype: read through jax
        with safe_open(p, framework="flax") as f:
          for k in f.keys():
            out[k] = np.asarray(f.get_tensor(k))
    elif p.endswith((".bin", ".pth", ".pt", ".ckpt")):
      out.update(torch_pickle.load_state_dict(p))
    else:
      raise WeightsError(f"{p}: unknown weight file type")
  return out


# --------------------------------------------------------------------------------------------
# PyTorch <-> Flax names
# --------------------------------------------------------------------------------------------

_INDEX = re.compile(r"_(\d+)(?=\.|$)")
# names that are literally `<word>_<digit>` in PyTorch too (diffusers' TimestepEmbedding)
_LITERAL = ("linear_1", "linear_2")
# PyTorch-only buffers that have no Flax counterpart
_IGNORED = re.compile(r"(^|\.)(position_ids|num_batches_tracked)$")
# VAE attention: new PyTorch names -> Flax (= old PyTorch) names
_VAE_ATTN = ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn."))


def _canon(name: str) -> str:
  return _INDEX.sub(r".\1", name)


def _flax_leaf_to_pt(leaf: str) -> str:
  return {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)


def torch_to_flax(state: dict[str, np.ndarray], target: Any, *, source: str, dtype=np.float32) -> dict:
  """Map a PyTorch state dict onto the Flax tree `target` (arrays or ShapeDtypeStructs).

  Raises WeightsError listing every missing, unexpected or mis-shaped tensor of `source`.
  """
  flat_target = flatten_dict(target)
  index: dict[str, tuple] = {}
  for fk in flat_target:
    ck = _canon(".".join(fk[:-1] + (_flax_leaf_to_pt(fk[-1]),)))
    if ck in index:
      raise WeightsError(f"internal: two Flax parameters map to {ck}")
    index[ck] = fk
  out: dict[tuple, np.ndarray] = {}
  unexpected, mismatched = [], []
  for pk, arr in state.items():
    ck = _canon(pk)
    fk = index.get(ck)
    if fk is None:
      dotted = "." + ck + "."
      for new, old in _VAE_ATTN:
        if new in dotted:
          fk = index.get(dotted.replace(new, old)[1:-1])
          break
    if fk is None:
      if not _IGNORED.search(pk):
        unexpected.append(pk)
      continue
    want = tuple(flat_target[fk].shape)
    a = np.asarray(arr)
    if fk[-1] == "kernel":
      if a.ndim == 4 and len(want) == 2 and a.shape[2:] == (1, 1):  # 1x1 conv stored for a Dense
        a = a[:, :, 0, 0]
      a = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T  # OIHW -> HWIO; [out,in] -> [in,out]
    if tuple(a.shape) != want:
      mismatched.append(f"{pk}: file has {tuple(np.shape(arr))}, the model expects {want} (as {'/'.join(fk)})")
      continue
    out[fk] = a.astype(dtype) if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16" else a
  missing = [".".join(fk) for fk in flat_target if fk not in out]
  _raise_if_misfit(source, missing, unexpected, mismatched)
  return unflatten_dict(out)


def flax_to_torch(params: Any, *, vae_attention: bool = False) -> dict[str, np.ndarray]:
  """Inverse of `torch_to_flax`: PyTorch names and layouts (used to write test model sets).

  `vae_attention=True` writes the VAE attention with the new PyTorch names (to_q, ..., to_out.0).
  """
  out = {}
  for fk, v in flatten_dict(params).items():
    parts = []
    for p in fk[:-1]:
      parts.append(p if p in _LITERAL else _INDEX.sub(r".\1", p))
    name = ".".join(parts + [_flax_leaf_to_pt(fk[-1])])
    if vae_attention:
      dotted = "." + name + "."
      for new, old in _VAE_ATTN:
        if old in dotted:
          name = dotted.replace(old, new)[1:-1]
    a = np.asarray(v, np.float32)
    if fk[-1] == "kernel":
      a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
    out[name] = a.copy(order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
  return out


def check_flax_tree(tree: Any, target: Any, *, source: str, dtype=np.float32) -> dict:
  """Validate a restored Flax msgpack tree against the expected shapes (same error style)."""
  flat, flat_t = flatten_dict(tree), flatten_dict(target)
  missing = ["/".join(k) for k in flat_t if k not in flat]
  unexpected = ["/".join(k) for k in flat if k not in flat_t]
  mismatched = [
    f"{'/'.join(k)}: file has {tuple(np.shape(flat[k]))}, the model expects {tuple(flat_t[k].shape)}"
    for k in flat_t
    if k in flat and tuple(np.shape(flat[k])) != tuple(flat_t[k].shape)
  ]
  _raise_if_misfit(source, missing, unexpected, mismatched)
  return unflatten_dict({k: np.asarray(v, dtype) for k, v in flat.items()})


def load_component(folder: str, stems, target, *, name: str) -> dict:
  """The Flax parameters of one component folder, checked against `target` (ShapeDtypeStructs)."""
  files = find_weights(folder, stems)
  tensors = read_tensors(files)
  src = files[0] if len(files) == 1 else f"{folder} ({len(files)} shards)"
  if files[0].endswith(".msgpack"):
    return check_flax_tree(tensors, target, source=src)
  return torch_to_flax(tensors, target, source=src)


def load_tokenizer(folder: str):
  """The CLIP BPE tokenizer of a folder holding vocab.json and merges.txt."""
  from transformers import CLIPTokenizer

  for f in ("vocab.json", "merges.txt"):
    if not os.path.isfile(os.path.join(folder, f)):
      raise WeightsError(f"{os.path.join(folder, f)}: missing (CLIP tokenizer)")
  return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
