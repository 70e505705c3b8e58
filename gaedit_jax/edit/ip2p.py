"""InstructPix2Pix on Flax, with the exact semantics of the original editor's call (SPEC 5.3, 5.4).

Assembled from diffusers' Flax UNet (8 input channels) and VAE and transformers' Flax CLIP text
encoder and tokenizer, with our own DDIM step so that the noise level t is a traced value (no
value of t recompiles). One `jax.jit`-compiled call maps

    (renders [B,H,W,3], originals [B,H,W,3], prompt embedding [3,77,D], key) -> edits [B,S,S,3]

batched over B images, all in [0, 1]. Per image (GaussianEditor's / GAE's `InstructPix2PixGuidance`):

1. pad to a square with white and resize to S = 512 (bilinear, align_corners=True) (SPEC 5.3);
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
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.edit import flax_patches, images as imops
from gaedit_jax.edit.weights import IP2PModel, load_ip2p

flax_patches.apply()


@dataclasses.dataclass(frozen=True)
class IP2PConfig:
  """InstructPix2Pix settings; defaults are the original editor's (SPEC 5.4)."""
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
  attention: str = "xla"
  """UNet self-attention: `xla` (diffusers' einsum) or `cudnn` (flash attention on NVIDIA GPUs)."""


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
    self.params = {"unet": cast(params["unet"]), "vae": cast(params["vae"]),
                   "text_encoder": jax.tree_util.tree_map(jnp.asarray, params["text_encoder"])}
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
    return np.asarray(tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                          return_tensors="np").input_ids, np.int32)

  def _text_hidden(self, params, ids):
    pos = jnp.broadcast_to(jnp.arange(ids.shape[-1]), ids.shape)
    out = self.text_encoder.apply({"params": params}, ids, jnp.ones_like(ids), pos, deterministic=True)
    return out[0]   # last_hidden_state (after the final layer norm), as the SD pipelines use

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
    img = self.vae.apply({"params": params}, z, method=self.vae.decode).sample     # NCHW
    return jnp.clip(img.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)

  def _edit_with_noise(self, params, renders_sq, originals_sq, prompt_embeds, t, posterior_eps, noise,
                       guidance_scale, image_guidance_scale):
    """The edit on square images with explicit randomness (parity tests):
    t [B] int, posterior_eps and noise [B, 4, S/8, S/8] (NCHW, as torch draws them)."""
    b = renders_sq.shape[0]
    n = self.config.num_steps
    sf = self.model.scaling_factor
    alphas = jnp.asarray(self._alphas)
    final_alpha = jnp.float32(self._final_alpha)
    t = jnp.clip(jnp.asarray(t, jnp.int32), n, alphas.shape[0] - 1)   # num_train_timesteps >= steps
    mean, std = self._encode(params["vae"], renders_sq)
    z0 = (mean + std * posterior_eps) * sf                               # posterior.sample() * 0.18215
    cond, _ = self._encode(params["vae"], originals_sq)                  # posterior.mode(), unscaled
    cond3 = jnp.concatenate([cond, cond, jnp.zeros_like(cond)], axis=0)
    emb = jnp.repeat(prompt_embeds.astype(self.unet.dtype), b, axis=0)  # [text]*B, [""]*B, [""]*B
    bc = lambda v: v[:, None, None, None]
    a_t0 = alphas[t]
    z = bc(jnp.sqrt(a_t0)) * z0 + bc(jnp.sqrt(1.0 - a_t0)) * noise      # add_noise at t itself
    step = t // n                                                        # (T := t) // num_steps
    gs = jnp.asarray(guidance_scale, jnp.float32)
    igs = jnp.asarray(image_guidance_scale, jnp.float32)
    unet_params = params["unet"]

    def body(i, z):
      tau = step * (n - 1 - i) + 1                                       # "leading" + steps_offset 1
      x = jnp.concatenate([jnp.concatenate([z, z, z], axis=0), cond3], axis=1).astype(self.unet.dtype)
      eps = self.unet.apply({"params": unet_params}, x, jnp.tile(tau, 3), encoder_hidden_states=emb).sample
      e_text, e_img, e_unc = jnp.split(eps.astype(jnp.float32), 3, axis=0)
      eps = e_unc + gs * (e_text - e_img) + igs * (e_img - e_unc)
      prev = tau - step
      a_t = bc(alphas[tau])
      a_prev = bc(jnp.where(prev >= 0, alphas[jnp.maximum(prev, 0)], final_alpha))
      x0 = (z - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
      if self.model.schedule.clip_sample:
        x0 = jnp.clip(x0, -1.0, 1.0)
      return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps      # DDIM, eta = 0

    with flax_patches.attention_implementation(self.config.attention):
      z = jax.lax.fori_loop(0, n, body, z)
    return self._decode(params["vae"], z)

  def _edit(self, params, renders, originals, prompt_embeds, key, t=None, guidance_scale=None,
            image_guidance_scale=None, *, output="square"):
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
        params, r_sq, o_sq, prompt_embeds, t, jax.random.normal(k_post, lat), jax.random.normal(k_noise, lat),
        c.guidance_scale if guidance_scale is None else guidance_scale,
        c.image_guidance_scale if image_guidance_scale is None else image_guidance_scale)
    if output == "input":
      return imops.from_square(out, h, w)
    if output != "square":
      raise ValueError(f"output must be 'square' or 'input', got {output!r}")
    return out

  def edit(self, renders, originals, prompt_embeds, key, *, t=None, guidance_scale=None,
           image_guidance_scale=None, output: str = "square") -> jax.Array:
    """Edit a batch: renders, originals [B,H,W,3] in [0,1] -> [B,S,S,3] (or [B,H,W,3] with
    output="input"). `t`: optional int timesteps [B] (else drawn from `key`); guidance scales
    default to the config's. Nothing here recompiles for new t, scales or keys."""
    return self.edit_fn(self.params, renders, originals, prompt_embeds, key, t, guidance_scale,
                        image_guidance_scale, output=output)

  def __call__(self, renders, originals, prompt_embeds, key, **kw):
    return self.edit(renders, originals, prompt_embeds, key, **kw)
