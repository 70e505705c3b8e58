"""Local weight loading: torch-free .pth/.bin reader, PyTorch <-> Flax conversion, clear errors,
`gaedit convert-weights`, tiny random model sets."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from gaedit_jax.nets import torch_pickle
from gaedit_jax.nets.hf_weights import WeightsError, flax_to_torch, torch_to_flax
from gaedit_jax.nets.ip2p import DDIMSchedule, load_ip2p, unet_shapes, vae_shapes
from gaedit_jax.nets.tiny import TINY_UNET, TINY_VAE, make_tiny_ip2p, random_params


def _flat_equal(a, b):
  fa, fb = flatten_dict(a), flatten_dict(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("w") / "ip2p")
  make_tiny_ip2p(path, seed=3)
  return path


@pytest.fixture(scope="module")
def loaded(tiny):
  return load_ip2p(tiny)


# ------------------------------------------------------------------------------------------
# torch pickle reader
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_pickle_matches_torch(tmp_path, zip_format):
  torch = pytest.importorskip("torch")
  from collections import OrderedDict

  base = torch.randn(6, 4)
  sd = OrderedDict(
    conv=torch.randn(3, 4, 2, 2),
    long=torch.arange(5),
    half=torch.randn(7).half(),
    bf16=torch.randn(5).bfloat16(),
    view=base[2:5, 1:3],
    transposed=base.t(),
    scalar=torch.tensor(3.5),
    param=torch.nn.Parameter(torch.ones(2)),
  )
  p = tmp_path / "x.pth"
  torch.save(sd, p, _use_new_zipfile_serialization=zip_format)
  out = torch_pickle.load(p)
  assert list(out) == list(sd)
  for k, v in sd.items():
    ref = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
    assert out[k].shape == ref.shape, k
    np.testing.assert_array_equal(np.asarray(out[k]).astype(ref.dtype), ref, err_msg=k)
  assert str(out["bf16"].dtype) == "bfloat16" and out["half"].dtype == np.float16


def test_torch_pickle_refuses_code(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  p = tmp_path / "evil.bin"
  # a legacy-layout stream whose object pickle would call os.system
  with open(p, "wb") as f:
    for obj in (torch_pickle._LEGACY_MAGIC, 1001, {}):
      pickle.dump(obj, f)
    pickle.dump({"w": Evil()}, f)
  with pytest.raises(torch_pickle.TorchFileError, match="refusing to unpickle"):
    torch_pickle.load(p)
  (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
  with pytest.raises(torch_pickle.TorchFileError, match="junk.bin"):
    torch_pickle.load(tmp_path / "junk.bin")


# ------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------


def test_flax_torch_roundtrip_names_and_layouts():
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel

  for module, shapes in (
    (FlaxUNet2DConditionModel(**TINY_UNET), unet_shapes),
    (FlaxAutoencoderKL(**TINY_VAE), vae_shapes),
  ):
    target = shapes(module)
    params = random_params(target, 0)
    for new_names in (False, True):
      pt = flax_to_torch(params, vae_attention=new_names)
      if new_names and isinstance(module, FlaxAutoencoderKL):
        assert any(".to_q." in k for k in pt) and not any(".query." in k for k in pt)
      _flat_equal(torch_to_flax(pt, target, source="x"), params)
  # PyTorch names really look like diffusers' (spot checks)
  pt = flax_to_torch(random_params(unet_shapes(FlaxUNet2DConditionModel(**TINY_UNET)), 0))
  for k in (
    "time_embedding.linear_1.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
    "conv_in.weight",
    "up_blocks.1.attentions.0.proj_in.weight",
    "mid_block.resnets.1.norm1.weight",
  ):
    assert k in pt, k
  assert pt["conv_in.weight"].shape == (32, 8, 3, 3)


def test_conversion_errors_name_everything():
  from diffusers import FlaxAutoencoderKL

  target = vae_shapes(FlaxAutoencoderKL(**TINY_VAE))
  pt = flax_to_torch(random_params(target, 0))
  del pt["decoder.conv_out.bias"]
  pt["encoder.conv_in.weight"] = pt["encoder.conv_in.weight"][:16]
  pt["some.extra.weight"] = np.zeros(3, np.float32)
  pt["text_model.embeddings.position_ids"] = np.arange(3)  # known buffer: ignored
  with pytest.raises(WeightsError) as e:
    torch_to_flax(pt, target, source="vae/diffusion_pytorch_model.safetensors")
  msg = str(e.value)
  assert "vae/diffusion_pytorch_model.safetensors" in msg
  assert "missing (2)" in msg and "decoder/conv_out/bias" not in msg and "decoder.conv_out.bias" in msg
  assert "unexpected (1): some.extra.weight" in msg
  assert "encoder.conv_in.weight: file has (16, 3, 3, 3), the model expects (3, 3, 3, 32)" in msg


# ------------------------------------------------------------------------------------------
# folders
# ------------------------------------------------------------------------------------------


def test_load_tiny_folder(tiny, loaded):
  model, params = loaded
  assert model.unet.in_channels == 8 and model.latent_channels == 4 and model.downsample == 4
  assert abs(model.scaling_factor - 0.18215) < 1e-9
  assert model.schedule == DDIMSchedule()
  ids = model.tokenizer(["turn him into a statue"]).input_ids[0]
  vocab = model.tokenizer.vocab_size
  assert ids[0] == vocab - 2 and ids[-1] == vocab - 1 and 7 <= len(ids) < 20  # BOS ... EOS
  assert max(ids[1:-1]) < vocab - 2
  # the same weights as written (flax_to_torch is the inverse of the loader's conversion)
  from safetensors.numpy import load_file

  st = load_file(os.path.join(tiny, "unet", "diffusion_pytorch_model.safetensors"))
  np.testing.assert_array_equal(params["unet"]["conv_in"]["kernel"], st["conv_in.weight"].transpose(2, 3, 1, 0))


def test_convert_weights_cli_and_flax_folder(tiny, loaded, tmp_path):
  from gaedit_jax import cli

  out = str(tmp_path / "flax")
  cli.main(["convert-weights", "--src", tiny, "--out", out])
  assert os.path.isfile(os.path.join(out, "unet", "diffusion_flax_model.msgpack"))
  assert os.path.isfile(os.path.join(out, "text_encoder", "flax_model.msgpack"))
  model2, params2 = load_ip2p(out)
  _flat_equal(params2, loaded[1])
  # diffusers' own Flax loader reads our output too
  from diffusers import FlaxUNet2DConditionModel

  _, p = FlaxUNet2DConditionModel.from_pretrained(out, subfolder="unet", local_files_only=True)
  _flat_equal(p, loaded[1]["unet"])


def test_bin_and_old_vae_names(tiny, loaded, tmp_path):
  """`.bin` files (torch zip pickles) load without torch being used; old VAE attention names too."""
  torch = pytest.importorskip("torch")
  from safetensors.numpy import load_file

  d = tmp_path / "bin"
  shutil.copytree(tiny, d)
  for comp, stem in (
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
  ):
    st = load_file(d / comp / f"{stem}.safetensors")
    if comp == "vae":  # diffusers < 0.14 names
      st = {
        k.replace(".to_q.", ".query.")
        .replace(".to_k.", ".key.")
        .replace(".to_v.", ".value.")
        .replace(".to_out.0.", ".proj_attn."): v
        for k, v in st.items()
      }
      assert any(".proj_attn." in k for k in st)
    os.remove(d / comp / f"{stem}.safetensors")
    name = "pytorch_model.bin" if comp == "text_encoder" else "diffusion_pytorch_model.bin"
    torch.save({k: torch.from_numpy(v) for k, v in st.items()}, d / comp / name)
  _flat_equal(load_ip2p(d)[1], loaded[1])


def test_fp16_safetensors_variant(tiny, loaded, tmp_path):
  from safetensors.numpy import load_file, save_file

  d = tmp_path / "fp16"
  shutil.copytree(tiny, d)
  st = load_file(d / "unet" / "diffusion_pytorch_model.safetensors")
  os.remove(d / "unet" / "diffusion_pytorch_model.safetensors")
  save_file({k: v.astype(np.float16) for k, v in st.items()}, d / "unet" / "diffusion_pytorch_model.fp16.safetensors")
  _, p = load_ip2p(d)
  ref = loaded[1]["unet"]["conv_in"]["kernel"]
  np.testing.assert_allclose(p["unet"]["conv_in"]["kernel"], ref.astype(np.float16).astype(np.float32))
  assert p["unet"]["conv_in"]["kernel"].dtype == np.float32


def test_folder_errors(tiny, tmp_path):
  with pytest.raises(WeightsError, match="not a folder"):
    load_ip2p(tmp_path / "nope")
  d = tmp_path / "broken"
  shutil.copytree(tiny, d)
  shutil.rmtree(d / "tokenizer")
  with pytest.raises(WeightsError, match=r"missing component folder\(s\) \['tokenizer'\]"):
    load_ip2p(d)
  shutil.copytree(os.path.join(tiny, "tokenizer"), d / "tokenizer")
  os.remove(d / "tokenizer" / "merges.txt")
  with pytest.raises(WeightsError, match="merges.txt: missing"):
    load_ip2p(d)
  shutil.copyfile(os.path.join(tiny, "tokenizer", "merges.txt"), d / "tokenizer" / "merges.txt")
  os.remove(d / "vae" / "diffusion_pytorch_model.safetensors")
  with pytest.raises(WeightsError, match=r"vae: no weights found; expected one of"):
    load_ip2p(d)
  shutil.copyfile(
    os.path.join(tiny, "vae", "diffusion_pytorch_model.safetensors"), d / "vae" / "diffusion_pytorch_model.safetensors"
  )
  cfg = json.loads((d / "unet" / "config.json").read_text())
  (d / "unet" / "config.json").write_text(json.dumps(dict(cfg, in_channels=4)))
  with pytest.raises(WeightsError, match="in_channels=4; InstructPix2Pix needs 2 x latent_channels = 8"):
    load_ip2p(d)
  (d / "unet" / "config.json").write_text(json.dumps(dict(cfg, resnet_time_scale_shift="scale_shift")))
  with pytest.raises(WeightsError, match="resnet_time_scale_shift"):
    load_ip2p(d)


def test_schedule_matches_diffusers():
  pytest.importorskip("torch")
  from diffusers import DDIMScheduler

  ref = DDIMScheduler(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
  ).alphas_cumprod.numpy()
  np.testing.assert_allclose(DDIMSchedule().alphas_cumprod(), ref, rtol=2e-6, atol=0)


def test_transformers_without_flax_models_is_a_one_line_error(monkeypatch, tmp_path):
  """transformers 5 has no Flax CLIP: loading IP2P weights then names the installed version and
  the pinned one instead of failing with an ImportError traceback."""
  import sys

  from gaedit_jax.errors import InputError
  from gaedit_jax.nets.hf_weights import flax_clip_modules
  from gaedit_jax.nets.ip2p import load_ip2p
  from gaedit_jax.nets.tiny import make_tiny_ip2p

  folder = make_tiny_ip2p(tmp_path / "ip2p")
  assert flax_clip_modules()[1].__name__ == "FlaxCLIPTextModule"
  monkeypatch.setitem(sys.modules, "transformers.models.clip.modeling_flax_clip", None)  # import fails
  with pytest.raises(InputError, match=r"transformers \S+ has no Flax CLIP models .*pins 4\.57\.6"):
    load_ip2p(folder)
