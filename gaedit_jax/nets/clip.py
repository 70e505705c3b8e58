"""CLIP image and text towers on Flax (transformers' FlaxCLIPModule) for the editing metrics.

Embeddings as InstructPix2Pix's / Instruct-NeRF2NeRF's `ClipSimilarity` computes them (FIELD.md 3.1):

    E_I(x) = normalize(encode_image((bicubic_resize(x, R) - mean) / std))   x in [0, 1], no crop
    E_T(s) = normalize(encode_text(tokenize(s, truncate=True)))

with PyTorch's bicubic (A = -0.75, no antialias, align_corners=False), R the model's input size
(224 for ViT-L/14) and CLIP's mean/std. The model comes from a local folder in the Hugging Face
layout of `openai/clip-vit-large-patch14` (config.json, model.safetensors | pytorch_model.bin |
flax_model.msgpack, vocab.json, merges.txt); the variant name is recorded with every result.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from gaedit_jax.nets import flax_patches
from gaedit_jax.nets import images as imops
from gaedit_jax.nets.hf_weights import (
  TRANSFORMERS_STEMS,
  WeightsError,
  check_flax_tree,
  find_weights,
  flax_clip_modules,
  load_tokenizer,
  read_json,
  read_tensors,
  torch_to_flax,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _l2n(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True, eq=False)
class ClipModel:
  """A loaded CLIP model: `encode_images` / `encode_texts` give unit-norm embeddings."""

  module: Any  # transformers FlaxCLIPModule
  params: Any
  tokenizer: Any
  image_size: int
  mean: tuple
  std: tuple
  variant: str  # recorded with every metric result, e.g. "clip-vit-large-patch14"
  source: str
  _image_fn: Callable = dataclasses.field(repr=False, default=None)
  _text_fn: Callable = dataclasses.field(repr=False, default=None)

  def __post_init__(self):
    module, size = self.module, self.image_size
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)

    def image_fn(params, images):
      x = imops.resize(images.astype(jnp.float32), size, size, "bicubic", align_corners=False)
      x = (x - mean) / std

      def f(m, pix):
        return m.visual_projection(m.vision_model(pixel_values=pix, deterministic=True)[1])

      return _l2n(module.apply({"params": params}, x, method=f))

    def text_fn(params, ids):
      def f(m, ids):
        pos = jnp.broadcast_to(jnp.arange(ids.shape[-1]), ids.shape)
        out = m.text_model(input_ids=ids, attention_mask=jnp.ones_like(ids), position_ids=pos, deterministic=True)
        return m.text_projection(out[1])

      return _l2n(module.apply({"params": params}, ids, method=f))

    object.__setattr__(self, "_image_fn", jax.jit(image_fn))
    object.__setattr__(self, "_text_fn", jax.jit(text_fn))

  def image_embedding_fn(self) -> Callable:
    """The pure, jitted function (params, images [B,H,W,3] in [0,1]) -> [B,D]."""
    return self._image_fn

  def encode_images(self, images, batch_size: int = 16) -> jax.Array:
    """[B,H,W,3] in [0,1] -> [B,D] unit-norm image embeddings (in chunks of `batch_size`)."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"encode_images: expected [B,H,W,3] images, got {images.shape}")
    outs = [self._image_fn(self.params, images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return jnp.concatenate(outs, 0)

  def encode_texts(self, texts: list[str]) -> jax.Array:
    """Strings -> [N,D] unit-norm text embeddings (77-token context, truncated like clip.tokenize)."""
    n_ctx = self.module.config.text_config.max_position_embeddings
    ids = self.tokenizer(
      list(texts), padding="max_length", max_length=n_ctx, truncation=True, return_tensors="np"
    ).input_ids
    return self._text_fn(self.params, jnp.asarray(ids, jnp.int32))


def clip_shapes(module) -> Any:
  """The Flax parameter tree (ShapeDtypeStructs) of a FlaxCLIPModule, without compute."""
  ids = jnp.zeros((1, 8), jnp.int32)
  s = module.config.vision_config.image_size
  pix = jnp.zeros((1, s, s, 3), jnp.float32)
  return jax.eval_shape(
    lambda: module.init(jax.random.PRNGKey(0), ids, pix, jnp.ones_like(ids), jnp.arange(8)[None])["params"]
  )


def load_clip(path: str | os.PathLike, variant: str | None = None) -> ClipModel:
  """Load a CLIP model folder (HF layout: config.json + weights + vocab.json/merges.txt)."""
  from transformers import CLIPConfig

  FlaxCLIPModule, _ = flax_clip_modules()

  flax_patches.silence_library_logs()
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise WeightsError(
      f"{path}: not a folder (expected a CLIP model in the Hugging Face layout, "
      "e.g. a local copy of openai/clip-vit-large-patch14)"
    )
  cfg_path = os.path.join(path, "config.json")
  cfg_json = read_json(cfg_path)
  if "vision_config" not in cfg_json or "text_config" not in cfg_json:
    raise WeightsError(f"{cfg_path}: not a CLIPModel config (needs text_config and vision_config)")
  cfg = CLIPConfig.from_dict(cfg_json)
  module = FlaxCLIPModule(config=cfg)
  files = find_weights(path, TRANSFORMERS_STEMS)
  tensors = read_tensors(files)
  target = clip_shapes(module)
  if files[0].endswith(".msgpack"):
    params = check_flax_tree(tensors, target, source=files[0])
  else:
    params = torch_to_flax(tensors, target, source=files[0])
  params = jax.tree_util.tree_map(jnp.asarray, params)
  mean, std = CLIP_MEAN, CLIP_STD
  pp = os.path.join(path, "preprocessor_config.json")
  if os.path.isfile(pp):
    j = read_json(pp)
    mean, std = tuple(j.get("image_mean", mean)), tuple(j.get("image_std", std))
  name = variant or cfg_json.get("_name_or_path") or os.path.basename(os.path.normpath(path))
  return ClipModel(
    module=module,
    params=params,
    tokenizer=load_tokenizer(path),
    image_size=int(cfg.vision_config.image_size),
    mean=mean,
    std=std,
    variant=os.path.basename(os.path.normpath(str(name))),
    source=path,
  )


def save_flax(model: ClipModel, out: str | os.PathLike) -> None:
  """Write `flax_model.msgpack` + config + tokenizer (+ preprocessor config) to `out`."""
  out = os.fspath(out)
  os.makedirs(out, exist_ok=True)
  src = model.source
  for f in (
    "config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "tokenizer.json",
  ):
    if os.path.isfile(os.path.join(src, f)):
      shutil.copyfile(os.path.join(src, f), os.path.join(out, f))
  tree = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), model.params)
  with open(os.path.join(out, "flax_model.msgpack"), "wb") as f:
    f.write(serialization.msgpack_serialize(tree))
