"""Tiny random model sets for tests and CPU demos; never downloaded, no torch needed.

`make_tiny_ip2p(path)` and `make_tiny_clip(path)` write complete folders in the Hugging Face
layouts that `ip2p.load_ip2p` and `clip.load_clip` read (PyTorch-layout safetensors by default, so
that diffusers / transformers PyTorch can load the very same weights for parity tests);
`random_lpips_params` gives LPIPS-VGG parameters in the tree of `lpips.lpips`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from gaedit_jax.nets import flax_patches
from gaedit_jax.nets.clip import clip_shapes
from gaedit_jax.nets.hf_weights import flax_clip_modules, flax_to_torch
from gaedit_jax.nets.ip2p import clip_text_shapes, unet_shapes, vae_shapes
from gaedit_jax.nets.lpips import LPIPS_CHANNELS, VGG16_CHANNELS

TINY_UNET = dict(
  sample_size=16,
  in_channels=8,
  out_channels=4,
  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
  block_out_channels=(32, 64),
  layers_per_block=1,
  attention_head_dim=8,
  cross_attention_dim=32,
)
# 4x downsampling: a 64x64 image has 4x16x16 latents. (The Flax UNet hard-codes GroupNorm(32):
# channel counts must be multiples of 32.)
TINY_VAE = dict(
  in_channels=3,
  out_channels=3,
  down_block_types=("DownEncoderBlock2D",) * 3,
  up_block_types=("UpDecoderBlock2D",) * 3,
  block_out_channels=(32, 32, 64),
  layers_per_block=1,
  latent_channels=4,
  norm_num_groups=32,
  sample_size=64,
)
TINY_WORDS = (
  "turn",
  "him",
  "into",
  "a",
  "statue",
  "make",
  "it",
  "clown",
  "photo",
  "photograph",
  "of",
  "man",
  "the",
  "elf",
  "bearded",
  "old",
  "face",
  "paint",
)


def random_params(shapes: Any, seed: int) -> dict:
  """Random but well-scaled values for a tree of ShapeDtypeStructs (fast: no module init)."""
  rng = np.random.default_rng(seed)
  flat = flatten_dict(shapes)
  out = {}
  for k in sorted(flat):
    shape, leaf = tuple(flat[k].shape), k[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      v = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
    elif leaf == "scale":
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif leaf == "bias":
      v = 0.05 * rng.standard_normal(shape)
    elif leaf == "logit_scale":
      v = np.full(shape, np.log(1 / 0.07))
    else:  # embeddings, class embedding
      v = 0.5 * rng.standard_normal(shape)
    out[k] = v.astype(np.float32)
  return unflatten_dict(out)


def write_tiny_tokenizer(folder: str, words: Iterable[str] = TINY_WORDS) -> int:
  """A CLIP-layout BPE tokenizer (byte-level alphabet + merges of `words`); returns the vocab
  size. `<|startoftext|>`, `<|endoftext|>` get the two highest ids (argmax finds EOS)."""
  from transformers import CLIPTokenizer
  from transformers.models.clip.tokenization_clip import bytes_to_unicode

  chars = list(bytes_to_unicode().values())
  vocab = chars + [c + "</w>" for c in chars]
  merges = []
  for w in words:
    pieces = list(w)
    pieces[-1] += "</w>"
    cur = pieces[0]
    for p in pieces[1:]:
      if (cur, p) not in merges:
        merges.append((cur, p))
      cur = cur + p
      if cur not in vocab:
        vocab.append(cur)
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  os.makedirs(folder, exist_ok=True)
  tmp_v, tmp_m = os.path.join(folder, "_vocab.json"), os.path.join(folder, "_merges.txt")
  with open(tmp_v, "w") as f:
    json.dump({t: i for i, t in enumerate(vocab)}, f)
  with open(tmp_m, "w") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  CLIPTokenizer(tmp_v, tmp_m, model_max_length=77).save_pretrained(folder)
  os.remove(tmp_v)
  os.remove(tmp_m)
  return len(vocab)


def _tiny_text_config(vocab_size: int, hidden_size: int = 32, **extra):
  from transformers import CLIPTextConfig

  return CLIPTextConfig(
    vocab_size=vocab_size,
    hidden_size=hidden_size,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
    bos_token_id=vocab_size - 2,
    eos_token_id=vocab_size - 1,
    pad_token_id=vocab_size - 1,
    **extra,
  )


def _save_tensors(folder: str, stem: str, tensors: dict[str, np.ndarray], fmt: str) -> None:
  os.makedirs(folder, exist_ok=True)
  if fmt == "safetensors":
    from safetensors.numpy import save_file

    save_file(tensors, os.path.join(folder, stem + ".safetensors"))
  else:
    raise ValueError(f"unknown format {fmt!r}")


def make_tiny_ip2p(path: str | os.PathLike, *, seed: int = 0, fmt: str = "safetensors") -> str:
  """Write a tiny random InstructPix2Pix set in the timbrooks/instruct-pix2pix layout.

  UNet 8->4 channels (32, 64), VAE with 4x downsampling, a 2-layer CLIP text encoder of width 32,
  a hand-made BPE tokenizer and the SD DDIM scheduler config. `fmt`: "safetensors" (PyTorch
  names/layout, loadable by diffusers' PyTorch classes too) or "flax" (msgpack). ~2 s, no torch.
  """
  return write_random_ip2p(path, TINY_UNET, TINY_VAE, seed=seed, fmt=fmt)


def write_random_ip2p(
  path: str | os.PathLike, unet_config: dict, vae_config: dict, *, seed: int = 0, fmt: str = "safetensors"
) -> str:
  """An InstructPix2Pix folder (timbrooks/instruct-pix2pix layout) with random weights for any
  UNet / VAE configuration, e.g. SD 1.5's for timing `gaedit edit` at full size (~1 min, ~4 GB);
  the text encoder is the tiny 2-layer one at the UNet's cross-attention width."""
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel

  _, FlaxCLIPTextModule = flax_clip_modules()

  flax_patches.silence_library_logs()
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  vocab = write_tiny_tokenizer(os.path.join(path, "tokenizer"))
  tcfg = _tiny_text_config(vocab, unet_config["cross_attention_dim"], architectures=["CLIPTextModel"])
  unet = FlaxUNet2DConditionModel(**unet_config)
  vae = FlaxAutoencoderKL(**vae_config)
  text = FlaxCLIPTextModule(config=tcfg)
  comps = {
    "unet": (random_params(unet_shapes(unet), seed), dict(unet_config, _class_name="UNet2DConditionModel")),
    "vae": (random_params(vae_shapes(vae), seed + 1), dict(vae_config, _class_name="AutoencoderKL")),
  }
  for comp, (params, cfg) in comps.items():
    d = os.path.join(path, comp)
    os.makedirs(d, exist_ok=True)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    with open(os.path.join(d, "config.json"), "w") as f:
      json.dump(dict(cfg, _diffusers_version="0.39.0"), f, indent=2)
    if fmt == "flax":
      with open(os.path.join(d, "diffusion_flax_model.msgpack"), "wb") as f:
        f.write(serialization.msgpack_serialize(params))
    else:
      _save_tensors(d, "diffusion_pytorch_model", flax_to_torch(params, vae_attention=comp == "vae"), fmt)
  tparams = random_params(clip_text_shapes(text), seed + 2)
  d = os.path.join(path, "text_encoder")
  os.makedirs(d, exist_ok=True)
  tcfg.to_json_file(os.path.join(d, "config.json"))
  if fmt == "flax":
    with open(os.path.join(d, "flax_model.msgpack"), "wb") as f:
      f.write(serialization.msgpack_serialize(tparams))
  else:
    _save_tensors(d, "model", flax_to_torch(tparams), fmt)
  os.makedirs(os.path.join(path, "scheduler"), exist_ok=True)
  with open(os.path.join(path, "scheduler", "scheduler_config.json"), "w") as f:
    json.dump(
      {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.39.0",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
      },
      f,
      indent=2,
    )
  with open(os.path.join(path, "model_index.json"), "w") as f:
    json.dump(
      {
        "_class_name": "StableDiffusionInstructPix2PixPipeline",
        "_diffusers_version": "0.39.0",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
      },
      f,
      indent=2,
    )
  return path


def make_tiny_clip(path: str | os.PathLike, *, seed: int = 0, image_size: int = 32) -> str:
  """Write a tiny random CLIP model (text + vision towers, PyTorch-layout safetensors, tokenizer)
  in the layout of openai/clip-vit-*: for metric tests. No torch needed."""
  from transformers import CLIPConfig, CLIPVisionConfig

  FlaxCLIPModule, _ = flax_clip_modules()

  flax_patches.silence_library_logs()
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  vocab = write_tiny_tokenizer(path)
  tcfg = _tiny_text_config(vocab)
  vcfg = CLIPVisionConfig(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=image_size,
    patch_size=8,
    projection_dim=32,
  )
  cfg = CLIPConfig(
    text_config=tcfg.to_dict(), vision_config=vcfg.to_dict(), projection_dim=32, architectures=["CLIPModel"]
  )
  module = FlaxCLIPModule(config=cfg)
  params = random_params(clip_shapes(module), seed)
  cfg.to_json_file(os.path.join(path, "config.json"))
  _save_tensors(path, "model", flax_to_torch(params), "safetensors")
  with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
    json.dump(
      {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
      },
      f,
      indent=2,
    )
  return path


def random_lpips_params(seed: int = 0) -> dict:
  """Random VGG16 trunk (He-scaled) and random non-negative heads, for tests."""
  rng = np.random.default_rng(seed)
  feats = []
  for i, c in enumerate(VGG16_CHANNELS):
    cin = 3 if i == 0 else VGG16_CHANNELS[i - 1]
    w = rng.standard_normal((3, 3, cin, c)) * np.sqrt(2.0 / (9 * cin))
    feats.append({"kernel": w.astype(np.float32), "bias": (0.01 * rng.standard_normal(c)).astype(np.float32)})
  lins = [np.abs(rng.standard_normal(c)).astype(np.float32) * 0.1 for c in LPIPS_CHANNELS]
  return {"features": feats, "lin": lins}
