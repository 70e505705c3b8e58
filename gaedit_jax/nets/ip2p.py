"""InstructPix2Pix on Flax, with the exact semantics of the original editor's call (METHOD §5.3, 5.4).

Assembled from diffusers' Flax UNet (8 input channels) and VAE and transformers' Flax CLIP text
encoder and tokenizer, with our own DDIM step so that the noise level t is a traced value (no
value of t recompiles). One `jax.jit`-compiled call maps

    (renders [B,H,W,3], originals [B,H,W,3], prompt embedding [3,77,D], key) -> edits [B,S,S,3]

batched over B images, all in [0, 1]. Per image (GaussianEditor's / GAE's `InstructPix2PixGuidance`):

1. pad to a square with white and resize to S = 512 (bilinear, align_corners=True) (METHOD §5.3);
2. start latent z0 = VAE posterior *sample* of the render x 0.18215; condition c = posterior *mode*
   of the original photo, unscaled; condition batch [c, c, 0];
3. t ~ UniformInt[int(0.02 T), int(0.98 T)] (T = 1000), z = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps;
4. the original sets the scheduler's `num_train_timesteps = t` and asks for 20 "leading" DDIM
   steps, so the steps are tau_i = floor(t/20) * i + 1, i = 19..0, each stepping to
   tau_i - floor(t/20) on the unchanged 1000-step abar table (abar_prev = abar_0 below 0;
   eta = 0). We compute the same steps from a traced t;
5. each step runs the UNet on [z, z, z] (+) [c, c, 0] (channel concat) with text [prompt, "", ""]
   and eps = eps_u + s_T (eps_text - eps_img) + s_I (eps_img - eps_u), s_T = 7.5, s_I = 1.5;
6. decode z / 0.18215, (x / 2 + 0.5).clip(0, 1). The edit is returned at S x S (what the
   original's losses compare with) or, with `output="input"`, resized back to H x W.

Each image of a batch draws its own t (for B = 1 this is the original exactly). Guidance scales
are traced too. The prompt is encoded once per edit run (`encode_prompt`). bf16: parameters and
activations of UNet and VAE in bfloat16, the DDIM arithmetic in float32.

Weights come from a local folder in the Hugging Face layout of `timbrooks/instruct-pix2pix`
(`load_ip2p`; file choices and the PyTorch -> Flax mapping in `hf_weights`):
```
model_index.json                  (optional)
unet/config.json          + diffusion_pytorch_model[.fp16].safetensors | .bin | diffusion_flax_model.msgpack
vae/config.json           + the same choices
text_encoder/config.json  + model[.fp16].safetensors | pytorch_model[.fp16].bin | flax_model.msgpack
tokenizer/vocab.json, merges.txt (+ tokenizer_config.json, special_tokens_map.json)
scheduler/scheduler_config.json   (optional; only its beta schedule is read, see `DDIMSchedule`)
```
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from gaedit_jax import parallel
from gaedit_jax.nets import flax_patches
from gaedit_jax.nets import images as imops
from gaedit_jax.nets.hf_weights import (
  DIFFUSERS_STEMS,
  TRANSFORMERS_STEMS,
  WeightsError,
  flax_clip_modules,
  load_component,
  load_tokenizer,
  read_json,
)

flax_patches.apply()


# --------------------------------------------------------------------------------------------
# modules and their expected parameter shapes
# --------------------------------------------------------------------------------------------

# PyTorch UNet config values that the Flax UNet cannot represent (it would silently ignore them).
_UNET_UNSUPPORTED = {
  "class_embed_type": None,
  "resnet_time_scale_shift": "default",
  "time_embedding_type": "positional",
  "conv_in_kernel": 3,
  "conv_out_kernel": 3,
  "act_fn": "silu",
  "norm_num_groups": 32,
  "center_input_sample": False,
  "encoder_hid_dim": None,
  "time_cond_proj_dim": None,
  "num_class_embeds": None,
  "mid_block_only_cross_attention": None,
  "cross_attention_norm": None,
  "attention_type": "default",
  "reverse_transformer_layers_per_block": None,
  "dual_cross_attention": False,
  "class_embeddings_concat": False,
  "timestep_post_act": None,
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

  for k, default in (
    ("act_fn", "silu"),
    ("use_quant_conv", True),
    ("use_post_quant_conv", True),
    ("mid_block_add_attention", True),
    ("force_upcast", None),
  ):
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
  return jax.eval_shape(
    lambda: module.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids), jnp.arange(8)[None])["params"]
  )


# --------------------------------------------------------------------------------------------
# the InstructPix2Pix model set
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DDIMSchedule:
  """The DDIM scheduler of the original (METHOD §5.4): Stable Diffusion v1.5's config
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
      betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, t, dtype=np.float32) ** 2
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
    c = read_json(p)
    if c.get("trained_betas"):
      raise WeightsError(f"{p}: trained_betas are not supported")
    return cls(
      num_train_timesteps=int(c.get("num_train_timesteps", 1000)),
      beta_start=float(c.get("beta_start", 0.00085)),
      beta_end=float(c.get("beta_end", 0.012)),
      beta_schedule=c.get("beta_schedule", "scaled_linear"),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class IP2PModel:
  """The static half of an InstructPix2Pix model set (modules, tokenizer, schedule); parameters
  travel separately as a pytree {"unet", "vae", "text_encoder"} (see `load_ip2p`)."""

  unet: Any  # diffusers.FlaxUNet2DConditionModel (8 input channels)
  vae: Any  # diffusers.FlaxAutoencoderKL
  text_encoder: Any  # transformers FlaxCLIPTextModule
  tokenizer: Any  # transformers.CLIPTokenizer
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


def load_ip2p(path: str | os.PathLike) -> tuple[IP2PModel, dict]:
  """Load an InstructPix2Pix folder (HF layout, see module doc) -> (IP2PModel, params).

  Parameters are float32 numpy arrays; cast them for bf16 in `InstructPix2Pix`."""
  from transformers import CLIPTextConfig

  _, FlaxCLIPTextModule = flax_clip_modules()

  flax_patches.apply()
  flax_patches.silence_library_logs()
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise WeightsError(f"{path}: not a folder (expected the Hugging Face layout of timbrooks/instruct-pix2pix)")
  missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer") if not os.path.isdir(os.path.join(path, c))]
  if missing:
    raise WeightsError(
      f"{path}: missing component folder(s) {missing}; expected unet/, vae/, text_encoder/, "
      "tokenizer/ (+ scheduler/) as in timbrooks/instruct-pix2pix"
    )
  ucfg_path = os.path.join(path, "unet", "config.json")
  ucfg = read_json(ucfg_path)
  unet = _unet_from_config(ucfg, ucfg_path)
  vcfg_path = os.path.join(path, "vae", "config.json")
  vae = _vae_from_config(read_json(vcfg_path), vcfg_path)
  tcfg_path = os.path.join(path, "text_encoder", "config.json")
  tcfg = CLIPTextConfig.from_dict(read_json(tcfg_path))
  text = FlaxCLIPTextModule(config=tcfg)
  if unet.in_channels != 2 * vae.latent_channels:
    raise WeightsError(
      f"{ucfg_path}: in_channels={unet.in_channels}; InstructPix2Pix needs "
      f"2 x latent_channels = {2 * vae.latent_channels} (noisy latent + image latent). "
      "Is this a plain Stable Diffusion folder?"
    )
  if unet.cross_attention_dim != tcfg.hidden_size:
    raise WeightsError(
      f"{ucfg_path}: cross_attention_dim={unet.cross_attention_dim} does not match the text "
      f"encoder's hidden_size={tcfg.hidden_size} ({tcfg_path})"
    )
  params = {
    "unet": load_component(os.path.join(path, "unet"), DIFFUSERS_STEMS, unet_shapes(unet), name="unet"),
    "vae": load_component(os.path.join(path, "vae"), DIFFUSERS_STEMS, vae_shapes(vae), name="vae"),
    "text_encoder": load_component(
      os.path.join(path, "text_encoder"), TRANSFORMERS_STEMS, clip_text_shapes(text), name="text_encoder"
    ),
  }
  model = IP2PModel(
    unet=unet,
    vae=vae,
    text_encoder=text,
    tokenizer=load_tokenizer(os.path.join(path, "tokenizer")),
    schedule=DDIMSchedule.from_folder(path),
    source=path,
  )
  return model, params


def save_flax(model: IP2PModel, params: dict, out: str | os.PathLike) -> None:
  """Write a converted set: Flax msgpack per component (+ the configs, tokenizer, scheduler).

  The result loads with `load_ip2p` (fast path) and with diffusers' / transformers' own Flax
  `from_pretrained`."""
  out, src = os.fspath(out), model.source
  for comp, fname in (
    ("unet", "diffusion_flax_model.msgpack"),
    ("vae", "diffusion_flax_model.msgpack"),
    ("text_encoder", "flax_model.msgpack"),
  ):
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
# the edit call
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IP2PConfig:
  """InstructPix2Pix settings; defaults are the original editor's (METHOD §5.4)."""

  guidance_scale: float = 7.5
  """Text guidance s_T."""
  image_guidance_scale: float = 1.5
  """Image guidance s_I (the original's `condition_scale`)."""
  num_steps: int = 20
  """DDIM steps spanning [1, t]."""
  min_step_percent: float = 0.02
  """t is drawn uniformly in [int(min * 1000), int(max * 1000)]."""
  max_step_percent: float = 0.98
  size: int = 512
  """Square working resolution (the original pads 802x550 to 802x802, then resizes to 512)."""
  pad_value: float = 1.0
  """Padding colour of the square (white, as the original)."""
  dtype: str = "float32"
  """`float32` or `bfloat16` for the UNet and VAE (the DDIM arithmetic stays float32)."""
  attention: str = "cudnn"
  """UNet self-attention: `cudnn` (flash attention where cuDNN runs it: an NVIDIA GPU, bfloat16 /
  float16, self-attention; diffusers' einsum elsewhere, e.g. on the CPU or in float32) or `xla`
  (diffusers' einsum everywhere, which holds the [heads, 4096, 4096] scores in memory)."""


def _dtype(name: str):
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be float32 or bfloat16, got {name!r}")
  return jnp.float32 if name == "float32" else jnp.bfloat16


class InstructPix2Pix:
  """A loaded InstructPix2Pix model with one jitted, batched edit call.

  ```
  ip2p = InstructPix2Pix.from_pretrained("weights/instruct-pix2pix")        # or (model, params)
  emb = ip2p.encode_prompt("Turn him into the Tolkien Elf")                 # once per run
  edits = ip2p.edit(renders, originals, emb, key)                           # [B,512,512,3]
  ```
  Inside your own jitted step use the pure function `ip2p.edit_fn(ip2p.params, ...)`.
  """

  def __init__(self, model: IP2PModel, params: dict, config: IP2PConfig = IP2PConfig()):
    self.model, self.config = model, config
    dt = _dtype(config.dtype)
    if config.attention not in flax_patches.ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"attention must be one of {flax_patches.ATTENTION_IMPLEMENTATIONS}")
    if config.num_steps < 1 or not (0 < config.min_step_percent <= config.max_step_percent < 1):
      raise ValueError(f"bad step settings in {config}")
    if config.size % model.downsample:
      raise ValueError(f"size={config.size} must be a multiple of the VAE's downsampling {model.downsample}")
    self.unet = model.unet.clone(dtype=dt)
    self.vae = model.vae.clone(dtype=dt)
    self.text_encoder = model.text_encoder
    cast = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), tree)
    self.params = {
      "unet": cast(params["unet"]),
      "vae": cast(params["vae"]),
      "text_encoder": jax.tree_util.tree_map(jnp.asarray, params["text_encoder"]),
    }
    sched = model.schedule
    self._alphas = sched.alphas_cumprod()
    self._final_alpha = np.float32(1.0) if sched.set_alpha_to_one else self._alphas[0]
    self.min_step = int(sched.num_train_timesteps * config.min_step_percent)
    self.max_step = int(sched.num_train_timesteps * config.max_step_percent)
    self.edit_fn = jax.jit(self._edit, static_argnames=("output",))
    self.edit_with_noise_fn = jax.jit(self._edit_with_noise)
    self._encode_ids = jax.jit(self._text_hidden)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, config: IP2PConfig = IP2PConfig()) -> "InstructPix2Pix":
    model, params = load_ip2p(path)
    return cls(model, params, config)

  # ------------------------------------------------------------------------------------------
  # text
  # ------------------------------------------------------------------------------------------
  def tokenize(self, texts: list[str]) -> np.ndarray:
    tok = self.model.tokenizer
    return np.asarray(
      tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="np").input_ids,
      np.int32,
    )

  def _text_hidden(self, params, ids):
    pos = jnp.broadcast_to(jnp.arange(ids.shape[-1]), ids.shape)
    out = self.text_encoder.apply({"params": params}, ids, jnp.ones_like(ids), pos, deterministic=True)
    return out[0]  # last_hidden_state (after the final layer norm), as the SD pipelines use

  def encode_prompt(self, prompt: str, negative_prompt: str = "") -> jax.Array:
    """[3, 77, D] float32 embeddings in the original's order [prompt, negative, negative]."""
    h = self._encode_ids(self.params["text_encoder"], jnp.asarray(self.tokenize([prompt, negative_prompt])))
    return jnp.concatenate([h[:1], h[1:], h[1:]], axis=0).astype(jnp.float32)

  # ------------------------------------------------------------------------------------------
  # the edit
  # ------------------------------------------------------------------------------------------
  def sample_timesteps(self, key: jax.Array, batch: int) -> jax.Array:
    """t ~ UniformInt[min_step, max_step] per image (torch.randint(min, max + 1))."""
    return jax.random.randint(key, (batch,), self.min_step, self.max_step + 1, dtype=jnp.int32)

  def _encode(self, params, x01):
    """VAE posterior (mean, std) of [B,S,S,3] images in [0,1], as NCHW latents."""
    x = (x01 * 2.0 - 1.0).astype(self.vae.dtype).transpose(0, 3, 1, 2)
    post = self.vae.apply({"params": params}, x, method=self.vae.encode).latent_dist
    to_nchw = lambda a: a.astype(jnp.float32).transpose(0, 3, 1, 2)
    return to_nchw(post.mean), to_nchw(post.std)

  def _decode(self, params, latents):
    z = (latents / self.model.scaling_factor).astype(self.vae.dtype).transpose(0, 2, 3, 1)
    img = self.vae.apply({"params": params}, z, method=self.vae.decode).sample  # NCHW
    return jnp.clip(img.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)

  def _edit_with_noise(
    self, params, renders_sq, originals_sq, prompt_embeds, t, posterior_eps, noise, guidance_scale, image_guidance_scale
  ):
    """The edit on square images with explicit randomness (parity tests):
    t [B] int, posterior_eps and noise [B, 4, S/8, S/8] (NCHW, as torch draws them)."""
    b = renders_sq.shape[0]
    n = self.config.num_steps
    sf = self.model.scaling_factor
    alphas = jnp.asarray(self._alphas)
    final_alpha = jnp.float32(self._final_alpha)
    t = jnp.clip(jnp.asarray(t, jnp.int32), n, alphas.shape[0] - 1)  # num_train_timesteps >= steps
    # Batches of several images per view are laid out view-major ([B, k] -> [B k]): with the views
    # split over devices (gaedit_jax.parallel) each device then holds whole views, and XLA
    # partitions the edit along B with no data moved between devices.
    per_view = parallel.view_major
    # one VAE pass over renders and originals (batch 2B): the render's posterior is sampled, the
    # original's mode (its mean, unscaled) conditions the UNet
    mean, std = self._encode(params["vae"], per_view(renders_sq, originals_sq))
    mean, std = parallel.from_view_major(mean, 2), parallel.from_view_major(std, 2)
    z0 = (mean[:, 0] + std[:, 0] * posterior_eps) * sf  # posterior.sample() * 0.18215
    cond = mean[:, 1]
    cond3 = per_view(cond, cond, jnp.zeros_like(cond))
    # per view: [text, "", ""] (prompt_embeds' rows)
    emb = jnp.tile(prompt_embeds.astype(self.unet.dtype), (b, 1, 1))
    bc = lambda v: v[:, None, None, None]
    a_t0 = alphas[t]
    z = bc(jnp.sqrt(a_t0)) * z0 + bc(jnp.sqrt(1.0 - a_t0)) * noise  # add_noise at t itself
    step = t // n  # (T := t) // num_steps
    gs = jnp.asarray(guidance_scale, jnp.float32)
    igs = jnp.asarray(image_guidance_scale, jnp.float32)
    unet_params = params["unet"]

    def body(i, z):
      tau = step * (n - 1 - i) + 1  # "leading" + steps_offset 1
      x = jnp.concatenate([per_view(z, z, z), cond3], axis=1).astype(self.unet.dtype)
      eps = self.unet.apply({"params": unet_params}, x, jnp.repeat(tau, 3), encoder_hidden_states=emb).sample
      eps = parallel.from_view_major(eps.astype(jnp.float32), 3)
      e_text, e_img, e_unc = eps[:, 0], eps[:, 1], eps[:, 2]
      eps = e_unc + gs * (e_text - e_img) + igs * (e_img - e_unc)
      prev = tau - step
      a_t = bc(alphas[tau])
      a_prev = bc(jnp.where(prev >= 0, alphas[jnp.maximum(prev, 0)], final_alpha))
      x0 = (z - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
      if self.model.schedule.clip_sample:
        x0 = jnp.clip(x0, -1.0, 1.0)
      return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps  # DDIM, eta = 0

    with flax_patches.attention_implementation(self.config.attention):
      z = jax.lax.fori_loop(0, n, body, z)
    return self._decode(params["vae"], z)

  def _edit(
    self,
    params,
    renders,
    originals,
    prompt_embeds,
    key,
    t=None,
    guidance_scale=None,
    image_guidance_scale=None,
    *,
    output="square",
  ):
    renders = jnp.asarray(renders)
    if renders.ndim != 4 or renders.shape[-1] != 3 or originals.shape != renders.shape:
      raise ValueError(f"renders and originals must both be [B, H, W, 3]; got {renders.shape} and {originals.shape}")
    if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 3:
      raise ValueError(f"prompt_embeds must be [3, L, D] ([prompt, '', '']); got {prompt_embeds.shape}")
    c = self.config
    b, h, w, _ = renders.shape
    k_t, k_post, k_noise = jax.random.split(key, 3)
    if t is None:
      t = self.sample_timesteps(k_t, b)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))
    lat = (b, self.model.latent_channels, c.size // self.model.downsample, c.size // self.model.downsample)
    r_sq = imops.to_square(renders.astype(jnp.float32), c.size, c.pad_value)
    o_sq = imops.to_square(originals.astype(jnp.float32), c.size, c.pad_value)
    out = self._edit_with_noise(
      params,
      r_sq,
      o_sq,
      prompt_embeds,
      t,
      jax.random.normal(k_post, lat),
      jax.random.normal(k_noise, lat),
      c.guidance_scale if guidance_scale is None else guidance_scale,
      c.image_guidance_scale if image_guidance_scale is None else image_guidance_scale,
    )
    if output == "input":
      return imops.from_square(out, h, w)
    if output != "square":
      raise ValueError(f"output must be 'square' or 'input', got {output!r}")
    return out

  def edit(
    self,
    renders,
    originals,
    prompt_embeds,
    key,
    *,
    t=None,
    guidance_scale=None,
    image_guidance_scale=None,
    output: str = "square",
  ) -> jax.Array:
    """Edit a batch: renders, originals [B,H,W,3] in [0,1] -> [B,S,S,3] (or [B,H,W,3] with
    output="input"). `t`: optional int timesteps [B] (else drawn from `key`); guidance scales
    default to the config's. Nothing here recompiles for new t, scales or keys."""
    return self.edit_fn(
      self.params, renders, originals, prompt_embeds, key, t, guidance_scale, image_guidance_scale, output=output
    )

  def __call__(self, renders, originals, prompt_embeds, key, **kw):
    return self.edit(renders, originals, prompt_embeds, key, **kw)
