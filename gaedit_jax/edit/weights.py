"""InstructPix2Pix weights from a local folder, converted to Flax without torch.

Folder layout: the Hugging Face layout of `timbrooks/instruct-pix2pix`:
```
model_index.json                  (optional)
unet/config.json          + diffusion_pytorch_model[.fp16].safetensors | .bin | diffusion_flax_model.msgpack
vae/config.json           + the same choices
text_encoder/config.json  + model[.fp16].safetensors | pytorch_model[.fp16].bin | flax_model.msgpack
tokenizer/vocab.json, merges.txt (+ tokenizer_config.json, special_tokens_map.json)
scheduler/scheduler_config.json   (optional; only its beta schedule is read, see `DDIMSchedule`)
```
Sharded checkpoints (`*.safetensors.index.json`) are read too. Flax msgpack is preferred when
present (what `gaedit convert-weights` writes), then safetensors, then `.bin` (read by
`torch_pickle`, no torch needed). Nothing is ever downloaded.

Conversion PyTorch -> Flax is our own: the expected Flax parameter tree comes from
`jax.eval_shape` of the module's init (no compute), both sides' names are brought to one canonical
form (`down_blocks_0` == `down_blocks.0`), `weight` maps to `kernel` (conv OIHW -> HWIO, linear
transposed), `scale` (norms) or `embedding`; the VAE's attention is `to_q/to_k/to_v/to_out.0` in
new PyTorch files and `query/key/value/proj_attn` in old ones and in Flax. Missing, unexpected and
mis-shaped tensors are all reported together, naming the file.

Tiny random model sets for tests: `make_tiny_ip2p(path)` and `make_tiny_clip(path)` write complete
folders (PyTorch-layout safetensors by default, so that diffusers / transformers PyTorch can load
the very same weights for parity tests). They need no torch and no network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from gaedit_jax.edit import flax_patches, torch_pickle
from gaedit_jax.errors import InputError

try:  # only the command-line entry point needs tyro (annotation read by tyro.cli)
  import tyro
except ImportError:  # pragma: no cover
  tyro = None


class WeightsError(InputError):
  """A weights folder or file that is missing pieces or does not fit the model."""


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

_DIFFUSERS_STEMS = ("diffusion_flax_model.msgpack", "diffusion_pytorch_model.safetensors",
                    "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin",
                    "diffusion_pytorch_model.fp16.bin")
_TRANSFORMERS_STEMS = ("flax_model.msgpack", "model.safetensors", "model.fp16.safetensors",
                       "pytorch_model.bin", "pytorch_model.fp16.bin")


def _find_weights(folder: str, stems: Iterable[str]) -> list[str]:
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
  raise WeightsError(f"{folder}: no weights found; expected one of {list(stems)} "
                     "(or a sharded *.index.json of them)")


def _read_json(path: str) -> dict:
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
      except (TypeError, ValueError):       # bf16 is not a numpy dtype: read through jax
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
_VAE_ATTN = ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
             (".to_out.0.", ".proj_attn."))


def _canon(name: str) -> str:
  return _INDEX.sub(r".\1", name)


def _flax_leaf_to_pt(leaf: str) -> str:
  return {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)


def torch_to_flax(state: dict[str, np.ndarray], target: Any, *, source: str,
                  dtype=np.float32) -> dict:
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
      if a.ndim == 4 and len(want) == 2 and a.shape[2:] == (1, 1):   # 1x1 conv stored for a Dense
        a = a[:, :, 0, 0]
      a = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T            # OIHW -> HWIO; [out,in] -> [in,out]
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
    out[name] = a.copy(order="C")   # (np.ascontiguousarray would make 0-d arrays 1-d)
  return out


def check_flax_tree(tree: Any, target: Any, *, source: str, dtype=np.float32) -> dict:
  """Validate a restored Flax msgpack tree against the expected shapes (same error style)."""
  flat, flat_t = flatten_dict(tree), flatten_dict(target)
  missing = ["/".join(k) for k in flat_t if k not in flat]
  unexpected = ["/".join(k) for k in flat if k not in flat_t]
  mismatched = [f"{'/'.join(k)}: file has {tuple(np.shape(flat[k]))}, the model expects {tuple(flat_t[k].shape)}"
                for k in flat_t if k in flat and tuple(np.shape(flat[k])) != tuple(flat_t[k].shape)]
  _raise_if_misfit(source, missing, unexpected, mismatched)
  return unflatten_dict({k: np.asarray(v, dtype) for k, v in flat.items()})


# --------------------------------------------------------------------------------------------
# modules and their expected parameter shapes
# --------------------------------------------------------------------------------------------

# PyTorch UNet config values that the Flax UNet cannot represent (it would silently ignore them).
_UNET_UNSUPPORTED = {
    "class_embed_type": None, "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
    "conv_in_kernel": 3, "conv_out_kernel": 3, "act_fn": "silu", "norm_num_groups": 32,
    "center_input_sample": False, "encoder_hid_dim": None, "time_cond_proj_dim": None,
    "num_class_embeds": None, "mid_block_only_cross_attention": None,
    "cross_attention_norm": None, "attention_type": "default", "reverse_transformer_layers_per_block": None,
    "dual_cross_attention": False, "class_embeddings_concat": False, "timestep_post_act": None,
}


def _unet_from_config(cfg: dict, source: str):
  from diffusers import FlaxUNet2DConditionModel

  for k, default in _UNET_UNSUPPORTED.items():
    if k in cfg and cfg[k] != default:
      raise WeightsError(f"{source}: {k}={cfg[k]!r} is not supported by the Flax UNet (needs {default!r})")
  if cfg.get("norm_eps", 1e-5) != 1e-5:
    raise WeightsError(f"{source}: norm_eps={cfg['norm_eps']} is not supported by the Flax UNet (needs 1e-5)")
  keep = {f.name for f in dataclasses.fields(FlaxUNet2DConditionModel)} - {"parent", "name", "dtype"}
  kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in keep}
  return FlaxUNet2DConditionModel(**kwargs)


def _vae_from_config(cfg: dict, source: str):
  from diffusers import FlaxAutoencoderKL

  for k, default in (("act_fn", "silu"), ("use_quant_conv", True), ("use_post_quant_conv", True),
                     ("mid_block_add_attention", True), ("force_upcast", None)):
    if k in cfg and default is not None and cfg[k] != default:
      raise WeightsError(f"{source}: {k}={cfg[k]!r} is not supported by the Flax VAE (needs {default!r})")
  keep = {f.name for f in dataclasses.fields(FlaxAutoencoderKL)} - {"parent", "name", "dtype"}
  kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in keep}
  return FlaxAutoencoderKL(**kwargs)


def unet_shapes(unet) -> Any:
  return jax.eval_shape(unet.init_weights, jax.random.PRNGKey(0))


def vae_shapes(vae) -> Any:
  return jax.eval_shape(vae.init_weights, jax.random.PRNGKey(0))


def clip_text_shapes(module) -> Any:
  ids = jnp.zeros((1, 8), jnp.int32)
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids),
                                            jnp.arange(8)[None])["params"])


def clip_shapes(module) -> Any:
  ids = jnp.zeros((1, 8), jnp.int32)
  s = module.config.vision_config.image_size
  pix = jnp.zeros((1, s, s, 3), jnp.float32)
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, pix, jnp.ones_like(ids),
                                            jnp.arange(8)[None])["params"])


def _load_component(folder: str, stems, target, *, name: str) -> dict:
  files = _find_weights(folder, stems)
  tensors = read_tensors(files)
  src = files[0] if len(files) == 1 else f"{folder} ({len(files)} shards)"
  if files[0].endswith(".msgpack"):
    return check_flax_tree(tensors, target, source=src)
  return torch_to_flax(tensors, target, source=src)


# --------------------------------------------------------------------------------------------
# the InstructPix2Pix model set
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DDIMSchedule:
  """The DDIM scheduler of the original (SPEC 5.4): Stable Diffusion v1.5's config
  (1000 training steps, scaled-linear betas 0.00085 -> 0.012, steps_offset 1, set_alpha_to_one
  False) as `DDIMScheduler`; clip_sample False (our reading of SD v1.5's scheduler_config.json)."""
  num_train_timesteps: int = 1000
  beta_start: float = 0.00085
  beta_end: float = 0.012
  beta_schedule: str = "scaled_linear"
  set_alpha_to_one: bool = False
  steps_offset: int = 1
  clip_sample: bool = False

  def alphas_cumprod(self) -> np.ndarray:
    """float32 table [num_train_timesteps], computed as diffusers' PyTorch scheduler does."""
    t = self.num_train_timesteps
    if self.beta_schedule == "scaled_linear":
      betas = np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, t, dtype=np.float32) ** 2
    elif self.beta_schedule == "linear":
      betas = np.linspace(self.beta_start, self.beta_end, t, dtype=np.float32)
    else:
      raise WeightsError(f"beta_schedule {self.beta_schedule!r} is not supported (scaled_linear, linear)")
    return np.cumprod(np.float32(1.0) - betas.astype(np.float32), dtype=np.float32)

  @classmethod
  def from_folder(cls, folder: str) -> "DDIMSchedule":
    """Reads the beta schedule of `scheduler/scheduler_config.json` if present; keeps DDIM's
    set_alpha_to_one / clip_sample / steps_offset of the original (whatever the file's class)."""
    p = os.path.join(folder, "scheduler", "scheduler_config.json")
    if not os.path.isfile(p):
      return cls()
    c = _read_json(p)
    if c.get("trained_betas"):
      raise WeightsError(f"{p}: trained_betas are not supported")
    return cls(num_train_timesteps=int(c.get("num_train_timesteps", 1000)),
               beta_start=float(c.get("beta_start", 0.00085)), beta_end=float(c.get("beta_end", 0.012)),
               beta_schedule=c.get("beta_schedule", "scaled_linear"))


@dataclasses.dataclass(frozen=True, eq=False)
class IP2PModel:
  """The static half of an InstructPix2Pix model set (modules, tokenizer, schedule); parameters
  travel separately as a pytree {"unet", "vae", "text_encoder"} (see `load_ip2p`)."""
  unet: Any            # diffusers.FlaxUNet2DConditionModel (8 input channels)
  vae: Any             # diffusers.FlaxAutoencoderKL
  text_encoder: Any    # transformers FlaxCLIPTextModule
  tokenizer: Any       # transformers.CLIPTokenizer
  schedule: DDIMSchedule
  source: str

  @property
  def scaling_factor(self) -> float:
    return float(self.vae.scaling_factor)

  @property
  def latent_channels(self) -> int:
    return int(self.vae.latent_channels)

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.vae.block_out_channels) - 1)


def load_tokenizer(folder: str):
  from transformers import CLIPTokenizer

  for f in ("vocab.json", "merges.txt"):
    if not os.path.isfile(os.path.join(folder, f)):
      raise WeightsError(f"{os.path.join(folder, f)}: missing (CLIP tokenizer)")
  return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def load_ip2p(path: str | os.PathLike) -> tuple[IP2PModel, dict]:
  """Load an InstructPix2Pix folder (HF layout, see module doc) -> (IP2PModel, params).

  Parameters are float32 numpy arrays; cast them for bf16 in `ip2p.InstructPix2Pix`."""
  from transformers import CLIPTextConfig
  from transformers.models.clip.modeling_flax_clip import FlaxCLIPTextModule

  flax_patches.apply()
  flax_patches.silence_library_logs()
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise WeightsError(f"{path}: not a folder (expected the Hugging Face layout of timbrooks/instruct-pix2pix)")
  missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer") if not os.path.isdir(os.path.join(path, c))]
  if missing:
    raise WeightsError(f"{path}: missing component folder(s) {missing}; expected unet/, vae/, text_encoder/, "
                       "tokenizer/ (+ scheduler/) as in timbrooks/instruct-pix2pix")
  ucfg_path = os.path.join(path, "unet", "config.json")
  ucfg = _read_json(ucfg_path)
  unet = _unet_from_config(ucfg, ucfg_path)
  vcfg_path = os.path.join(path, "vae", "config.json")
  vae = _vae_from_config(_read_json(vcfg_path), vcfg_path)
  tcfg_path = os.path.join(path, "text_encoder", "config.json")
  tcfg = CLIPTextConfig.from_dict(_read_json(tcfg_path))
  text = FlaxCLIPTextModule(config=tcfg)
  if unet.in_channels != 2 * vae.latent_channels:
    raise WeightsError(f"{ucfg_path}: in_channels={unet.in_channels}; InstructPix2Pix needs "
                       f"2 x latent_channels = {2 * vae.latent_channels} (noisy latent + image latent). "
                       "Is this a plain Stable Diffusion folder?")
  if unet.cross_attention_dim != tcfg.hidden_size:
    raise WeightsError(f"{ucfg_path}: cross_attention_dim={unet.cross_attention_dim} does not match the text "
                       f"encoder's hidden_size={tcfg.hidden_size} ({tcfg_path})")
  params = {
      "unet": _load_component(os.path.join(path, "unet"), _DIFFUSERS_STEMS, unet_shapes(unet), name="unet"),
      "vae": _load_component(os.path.join(path, "vae"), _DIFFUSERS_STEMS, vae_shapes(vae), name="vae"),
      "text_encoder": _load_component(os.path.join(path, "text_encoder"), _TRANSFORMERS_STEMS,
                                      clip_text_shapes(text), name="text_encoder"),
  }
  model = IP2PModel(unet=unet, vae=vae, text_encoder=text, tokenizer=load_tokenizer(os.path.join(path, "tokenizer")),
                    schedule=DDIMSchedule.from_folder(path), source=path)
  return model, params


def save_flax(model: IP2PModel, params: dict, out: str | os.PathLike) -> None:
  """Write a converted set: Flax msgpack per component (+ the configs, tokenizer, scheduler).

  The result loads with `load_ip2p` (fast path) and with diffusers' / transformers' own Flax
  `from_pretrained`."""
  out, src = os.fspath(out), model.source
  for comp, fname in (("unet", "diffusion_flax_model.msgpack"), ("vae", "diffusion_flax_model.msgpack"),
                      ("text_encoder", "flax_model.msgpack")):
    os.makedirs(os.path.join(out, comp), exist_ok=True)
    shutil.copyfile(os.path.join(src, comp, "config.json"), os.path.join(out, comp, "config.json"))
    tree = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params[comp])
    with open(os.path.join(out, comp, fname), "wb") as f:
      f.write(serialization.msgpack_serialize(tree))
  for comp in ("tokenizer", "scheduler"):
    if os.path.isdir(os.path.join(src, comp)):
      shutil.copytree(os.path.join(src, comp), os.path.join(out, comp), dirs_exist_ok=True)
  if os.path.isfile(os.path.join(src, "model_index.json")):
    shutil.copyfile(os.path.join(src, "model_index.json"), os.path.join(out, "model_index.json"))


# --------------------------------------------------------------------------------------------
# `gaedit convert-weights`
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ConvertConfig:
  """Convert PyTorch weights to Flax once (no torch needed)."""
  src: str
  """InstructPix2Pix folder in the Hugging Face layout (e.g. a local copy of timbrooks/instruct-pix2pix)."""
  out: str
  """Output folder for the Flax weights (msgpack + configs + tokenizer + scheduler)."""
  kind: str = "ip2p"
  """What `src` holds: `ip2p` (InstructPix2Pix folder), `clip` (a CLIP model folder, e.g.
  openai/clip-vit-large-patch14, used by `gaedit eval`) or `lpips` (a folder with torchvision's
  vgg16-397923af.pth and the LPIPS heads vgg.pth; writes <out>/lpips_vgg.safetensors)."""


def convert_main(cfg: tyro.conf.OmitArgPrefixes[ConvertConfig]) -> None:
  """Entry point of `gaedit convert-weights --src DIR --out DIR [--kind ip2p|clip]`."""
  if cfg.kind == "ip2p":
    model, params = load_ip2p(cfg.src)
    save_flax(model, params, cfg.out)
  elif cfg.kind == "clip":
    from gaedit_jax.edit import clip as clip_mod
    m = clip_mod.load_clip(cfg.src)
    clip_mod.save_flax(m, cfg.out)
  elif cfg.kind == "lpips":
    from gaedit_jax.edit import lpips as lpips_mod
    os.makedirs(cfg.out, exist_ok=True)
    lpips_mod.save_lpips(lpips_mod.load_lpips(cfg.src), os.path.join(cfg.out, "lpips_vgg.safetensors"))
  else:
    raise SystemExit(f"gaedit convert-weights: --kind must be ip2p, clip or lpips, got {cfg.kind!r}")
  print(f"wrote Flax weights to {cfg.out}")


# --------------------------------------------------------------------------------------------
# tiny random model sets (tests, CPU demos); never downloaded
# --------------------------------------------------------------------------------------------

TINY_UNET = dict(sample_size=16, in_channels=8, out_channels=4,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8,
                 cross_attention_dim=32)
# 4x downsampling: a 64x64 image has 4x16x16 latents. (The Flax UNet hard-codes GroupNorm(32):
# channel counts must be multiples of 32.)
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 32, 64),
                layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=64)
TINY_WORDS = ("turn", "him", "into", "a", "statue", "make", "it", "clown", "photo", "photograph",
              "of", "man", "the", "elf", "bearded", "old", "face", "paint")


def _random_params(shapes: Any, seed: int) -> dict:
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
    else:                                   # embeddings, class embedding
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


def _tiny_text_config(vocab_size: int, **extra):
  from transformers import CLIPTextConfig

  return CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                        pad_token_id=vocab_size - 1, **extra)


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
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  from transformers.models.clip.modeling_flax_clip import FlaxCLIPTextModule

  flax_patches.silence_library_logs()
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  vocab = write_tiny_tokenizer(os.path.join(path, "tokenizer"))
  tcfg = _tiny_text_config(vocab, architectures=["CLIPTextModel"])
  unet = FlaxUNet2DConditionModel(**TINY_UNET)
  vae = FlaxAutoencoderKL(**TINY_VAE)
  text = FlaxCLIPTextModule(config=tcfg)
  comps = {
      "unet": (_random_params(unet_shapes(unet), seed), dict(TINY_UNET, _class_name="UNet2DConditionModel")),
      "vae": (_random_params(vae_shapes(vae), seed + 1), dict(TINY_VAE, _class_name="AutoencoderKL")),
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
  tparams = _random_params(clip_text_shapes(text), seed + 2)
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
    json.dump({"_class_name": "DDIMScheduler", "_diffusers_version": "0.39.0", "num_train_timesteps": 1000,
               "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}, f, indent=2)
  with open(os.path.join(path, "model_index.json"), "w") as f:
    json.dump({"_class_name": "StableDiffusionInstructPix2PixPipeline", "_diffusers_version": "0.39.0",
               "feature_extractor": [None, None], "requires_safety_checker": False,
               "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
               "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
               "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
  return path


def make_tiny_clip(path: str | os.PathLike, *, seed: int = 0, image_size: int = 32) -> str:
  """Write a tiny random CLIP model (text + vision towers, PyTorch-layout safetensors, tokenizer)
  in the layout of openai/clip-vit-*: for metric tests. No torch needed."""
  from transformers import CLIPConfig, CLIPVisionConfig
  from transformers.models.clip.modeling_flax_clip import FlaxCLIPModule

  flax_patches.silence_library_logs()
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  vocab = write_tiny_tokenizer(path)
  tcfg = _tiny_text_config(vocab)
  vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          image_size=image_size, patch_size=8, projection_dim=32)
  cfg = CLIPConfig(text_config=tcfg.to_dict(), vision_config=vcfg.to_dict(), projection_dim=32,
                   architectures=["CLIPModel"])
  module = FlaxCLIPModule(config=cfg)
  params = _random_params(clip_shapes(module), seed)
  cfg.to_json_file(os.path.join(path, "config.json"))
  _save_tensors(path, "model", flax_to_torch(params), "safetensors")
  with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
    json.dump({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": image_size},
               "crop_size": {"height": image_size, "width": image_size},
               "image_mean": [0.48145466, 0.4578275, 0.40821073],
               "image_std": [0.26862954, 0.26130258, 0.27577711]}, f, indent=2)
  return path
