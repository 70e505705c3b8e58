"""InstructPix2Pix on Flax: parity with the PyTorch reference, the original's semantics, one jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaedit_jax.errors import InputError
from gaedit_jax.io.media import read_png, save_png
from gaedit_jax.nets import images as imops
from gaedit_jax.nets.ip2p import InstructPix2Pix, IP2PConfig, load_ip2p
from gaedit_jax.nets.tiny import make_tiny_ip2p

S = 64  # working resolution of the tiny model (latents 4 x 16 x 16)
PROMPT = "turn him into a statue"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return make_tiny_ip2p(str(tmp_path_factory.mktemp("ip2p") / "tiny"), seed=0)


@pytest.fixture(scope="module")
def ip2p(tiny):
  return InstructPix2Pix.from_pretrained(tiny, IP2PConfig(size=S))


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  b = 2
  renders = rng.random((b, S, S, 3), dtype=np.float32)
  originals = np.clip(renders + 0.2 * rng.standard_normal(renders.shape), 0, 1).astype(np.float32)
  eps = rng.standard_normal((b, 4, S // 4, S // 4)).astype(np.float32)
  noise = rng.standard_normal((b, 4, S // 4, S // 4)).astype(np.float32)
  return renders, originals, eps, noise


def _torch_reference(tiny, renders, originals, eps, noise, ts, prompt, s_t=7.5, s_i=1.5):
  """The original's call (GAE `InstructPix2PixGuidance.edit_latents` and friends), on diffusers'
  PyTorch modules and DDIMScheduler with its `num_train_timesteps = t` trick, same noise."""
  import torch
  from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
  from transformers import CLIPTextModel, CLIPTokenizer

  unet, info_u = UNet2DConditionModel.from_pretrained(tiny, subfolder="unet", output_loading_info=True)
  vae, info_v = AutoencoderKL.from_pretrained(tiny, subfolder="vae", output_loading_info=True)
  text, info_t = CLIPTextModel.from_pretrained(tiny, subfolder="text_encoder", output_loading_info=True)
  for info in (info_u, info_v, info_t):  # our tiny folder is a complete PyTorch checkpoint
    assert not info["missing_keys"] and not info["unexpected_keys"], info
  tok = CLIPTokenizer.from_pretrained(tiny, subfolder="tokenizer")
  sched = DDIMScheduler.from_pretrained(tiny, subfolder="scheduler")
  outs = []
  with torch.no_grad():
    ids = tok([prompt, ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    h = text(ids)[0]
    emb = torch.cat([h[:1], h[1:], h[1:]])  # [positive, negative, negative]
    for b in range(len(ts)):
      x = torch.from_numpy(renders[b : b + 1]).permute(0, 3, 1, 2) * 2 - 1
      c = torch.from_numpy(originals[b : b + 1]).permute(0, 3, 1, 2) * 2 - 1
      post = vae.encode(x).latent_dist  # posterior.sample() with our eps
      lat = (post.mean + post.std * torch.from_numpy(eps[b : b + 1])) * vae.config.scaling_factor
      cl = vae.encode(c).latent_dist.mode()
      cl = torch.cat([cl, cl, torch.zeros_like(cl)])
      t = torch.tensor([ts[b]])
      sched.config.num_train_timesteps = t.item()  # the original's trick
      sched.set_timesteps(20)
      lat = sched.add_noise(lat, torch.from_numpy(noise[b : b + 1]), t)
      for tt in sched.timesteps:
        e = unet(torch.cat([torch.cat([lat] * 3), cl], dim=1), tt, encoder_hidden_states=emb).sample
        e_text, e_img, e_unc = e.chunk(3)
        e = e_unc + s_t * (e_text - e_img) + s_i * (e_img - e_unc)
        lat = sched.step(e, tt, lat).prev_sample
      img = (vae.decode(lat / vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1)
      outs.append(img.permute(0, 2, 3, 1).numpy())
  return np.concatenate(outs), h.numpy()


def test_parity_with_pytorch(tiny, ip2p, inputs):
  pytest.importorskip("torch")
  renders, originals, eps, noise = inputs
  ts = [733, 251]
  ref, ref_hidden = _torch_reference(tiny, renders, originals, eps, noise, ts, PROMPT)
  emb = ip2p.encode_prompt(PROMPT)
  np.testing.assert_allclose(np.asarray(emb), ref_hidden[[0, 1, 1]], atol=5e-6)
  got = np.asarray(ip2p.edit_with_noise_fn(ip2p.params, renders, originals, emb, jnp.asarray(ts), eps, noise, 7.5, 1.5))
  assert ((ref > 0) & (ref < 1)).mean() > 0.5  # the comparison is not of clipped pixels
  err = np.abs(got - ref).max()
  print(f"InstructPix2Pix Flax vs PyTorch: max |image diff| = {err:.2e}")
  assert err < 1e-5


def test_timesteps_are_the_original_ones():
  """Our traced steps tau_i = floor(t/20) i + 1 equal diffusers' with num_train_timesteps = t."""
  pytest.importorskip("torch")
  from diffusers import DDIMScheduler

  sched = DDIMScheduler(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
  )
  for t in (20, 21, 39, 40, 500, 733, 980):
    sched.config.num_train_timesteps = t
    sched.set_timesteps(20)
    step = t // 20
    ours = [step * (19 - i) + 1 for i in range(20)]
    assert sched.timesteps.tolist() == ours, t


def test_one_compile_for_all_t_keys_and_scales(ip2p, inputs):
  """t is drawn inside the jitted call from the key: new keys (so new t) and new guidance scales
  reuse the one compiled program."""
  renders, originals, _, _ = inputs
  emb = ip2p.encode_prompt(PROMPT)
  outs = [
    ip2p.edit(renders, originals, emb, jax.random.PRNGKey(i), guidance_scale=gs)
    for i, gs in enumerate((7.5, 5.0, 12.5))
  ]
  again = ip2p.edit(renders, originals, emb, jax.random.PRNGKey(0), guidance_scale=7.5)
  assert ip2p.edit_fn._cache_size() == 1
  for o in outs:
    assert o.shape == (2, S, S, 3) and bool(jnp.all(jnp.isfinite(o)))
    assert 0.0 <= float(o.min()) and float(o.max()) <= 1.0
  np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(again))  # deterministic given the key
  assert float(jnp.abs(outs[0] - outs[1]).max()) > 1e-3
  t = np.asarray(ip2p.sample_timesteps(jax.random.PRNGKey(0), 4096))
  assert t.min() == 20 and t.max() == 980  # UniformInt[int(0.02 T), int(0.98 T)], inclusive


def test_square_padding_and_back():
  x = np.random.default_rng(1).random((1, 20, 12, 3)).astype(np.float32)
  sq = imops.to_square(jnp.asarray(x), 20)
  assert sq.shape == (1, 20, 20, 3)
  np.testing.assert_array_equal(np.asarray(sq[:, :, :4]), 1.0)  # 4 white columns on each side
  np.testing.assert_array_equal(np.asarray(sq[:, :, -4:]), 1.0)
  np.testing.assert_allclose(np.asarray(sq[:, :, 4:16]), x, atol=1e-6)
  np.testing.assert_allclose(np.asarray(imops.from_square(sq, 20, 12)), x, atol=1e-6)
  # the original's 802x550 -> 512: (802 - 550) // 2 = 126 columns each side
  assert imops.square_padding(802, 550) == ((0, 0), (126, 126))
  smooth = jnp.broadcast_to(jnp.linspace(0, 1, 550)[None, :, None], (1, 802, 550, 3))
  back = imops.from_square(imops.to_square(smooth, 512), 802, 550)
  assert back.shape == (1, 802, 550, 3)  # (the border columns blend with the white padding)
  assert float(jnp.abs(back - smooth)[:, :, 2:-2].max()) < 5e-3


def test_bad_input(ip2p):
  r = np.random.default_rng(2).random((1, 40, 30, 3), dtype=np.float32)
  emb = ip2p.encode_prompt(PROMPT)
  with pytest.raises(ValueError, match=r"renders and originals must both be \[B, H, W, 3\]"):
    ip2p.edit(r, r[:, :20], emb, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"prompt_embeds must be \[3, L, D\]"):
    ip2p.edit(r, r, emb[:2], jax.random.PRNGKey(0))


def test_bf16(tiny, ip2p, inputs):
  renders, originals, eps, noise = inputs
  model, params = load_ip2p(tiny)
  bf = InstructPix2Pix(model, params, IP2PConfig(size=S, dtype="bfloat16"))
  assert jax.tree_util.tree_leaves(bf.params["unet"])[0].dtype == jnp.bfloat16
  emb = ip2p.encode_prompt(PROMPT)
  ts = jnp.array([300, 300])
  a = bf.edit_with_noise_fn(bf.params, renders, originals, emb, ts, eps, noise, 7.5, 1.5)
  b = ip2p.edit_with_noise_fn(ip2p.params, renders, originals, emb, ts, eps, noise, 7.5, 1.5)
  assert a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a)))
  assert float(jnp.abs(a - b).mean()) < 0.05


def test_edit2d_command(tiny, tmp_path):
  from gaedit_jax import cli

  rng = np.random.default_rng(3)
  img = tmp_path / "view.png"
  save_png(img, rng.random((48, 36, 3)))
  out = tmp_path / "edit.png"
  cli.main(
    [
      "edit2d",
      "--image",
      str(img),
      "--original",
      str(img),
      "--prompt",
      PROMPT,
      "--ip2p",
      tiny,
      "--out",
      str(out),
      "--size",
      str(S),
      "--t",
      "500",
      "--guidance-scale",
      "5",
    ]
  )
  assert read_png(out).shape == (48, 36, 3)  # edited at 64x64, written back at the input size
  with pytest.raises(FileNotFoundError, match="missing.png"):
    cli.main(["edit2d", "--image", str(tmp_path / "missing.png"), "--prompt", "x", "--ip2p", tiny])
  with pytest.raises(InputError, match="--attention must be one of cudnn, xla, got 'flash'"):
    cli.main(["edit2d", "--image", str(img), "--prompt", "x", "--ip2p", tiny, "--attention", "flash"])
