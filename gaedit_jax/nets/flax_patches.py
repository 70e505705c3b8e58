"""Fixes to diffusers 0.39's Flax attention code, applied once, process-wide.

1. Parity patch (docs/DEPENDENCIES.md 3.4). Stock diffusers Flax differs from the PyTorch models
   that the real InstructPix2Pix weights were trained with in two places:
   - `FlaxGEGLU` uses `flax.linen.gelu`, the tanh approximation; PyTorch's GEGLU uses exact erf GELU;
   - `FlaxTransformer2DModel` normalises with GroupNorm eps 1e-5; PyTorch's uses eps 1e-6.
   `attention_flax` looks up `nn.gelu` / `nn.GroupNorm` in its module namespace at call time, so we
   give it a proxy of `flax.linen` with those two replaced. (Replacing a Module's `setup` does not
   work: Flax wraps `setup` when the class is created.) With the fix the decoded images of our
   pipeline match PyTorch to ~1e-6 instead of ~1e-4 (tests/test_ip2p.py).
   This changes every diffusers Flax UNet in the process, which is what real weights need.

2. Attention implementation switch. `FlaxAttention` (the UNet's self / cross attention) is replaced
   by a subclass with the same parameters that, when `attention_implementation("cudnn")` is active
   at trace time and the shapes allow it, calls `jax.nn.dot_product_attention(..., "cudnn")`
   (flash attention on NVIDIA GPUs) instead of materialising the [heads, N, N] score matrix.
   The default ("xla") keeps diffusers' own einsum code.
"""

from __future__ import annotations

import contextlib
import contextvars
import types

import jax
import jax.numpy as jnp

_ATTENTION = contextvars.ContextVar("gaedit_attention_impl", default="xla")
_APPLIED = False
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


@contextlib.contextmanager
def attention_implementation(name: str):
  """Trace-time switch for the UNet attention: "xla" (diffusers' einsum) or "cudnn"."""
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {name!r}")
  token = _ATTENTION.set(name)
  try:
    yield
  finally:
    _ATTENTION.reset(token)


def _cudnn_ok(q: jax.Array, k: jax.Array, head_dim: int) -> bool:
  # cuDNN flash attention: GPU, half precision, head dim <= 128 and a multiple of 8. Self-attention
  # only: the 77-token cross-attention is cheap and its odd length is best left to XLA.
  return (
    jax.default_backend() == "gpu"
    and q.dtype in (jnp.bfloat16, jnp.float16)
    and head_dim <= 128
    and head_dim % 8 == 0
    and q.shape[1] == k.shape[1]
    and q.shape[1] % 64 == 0
  )


def apply() -> None:
  """Apply both patches (idempotent). Must run before the first trace of a diffusers Flax UNet."""
  global _APPLIED
  if _APPLIED:
    return
  import flax.linen as linen
  from diffusers.models import attention_flax as af

  proxy = types.SimpleNamespace(**{k: getattr(linen, k) for k in dir(linen) if not k.startswith("__")})
  proxy.gelu = lambda x: jax.nn.gelu(x, approximate=False)  # torch GEGLU: exact GELU
  proxy.GroupNorm = lambda *a, **kw: linen.GroupNorm(*a, **{**kw, "epsilon": 1e-6})  # torch eps
  af.nn = proxy

  base = af.FlaxAttention

  class FlaxAttention(base):  # same fields and parameter names as diffusers' class
    def __call__(self, hidden_states, context=None, deterministic=True):
      if _ATTENTION.get() == "xla" or self.use_memory_efficient_attention or context is not None:
        return super().__call__(hidden_states, context, deterministic)
      q = self.query(hidden_states)
      k = self.key(hidden_states)
      v = self.value(hidden_states)
      b, n, _ = q.shape
      split = lambda x: x.reshape(b, x.shape[1], self.heads, self.dim_head)  # [B, N, heads, d]
      q, k, v = split(q), split(k), split(v)
      impl = "cudnn" if _cudnn_ok(q, k, self.dim_head) else "xla"
      out = jax.nn.dot_product_attention(q, k, v, scale=self.scale, implementation=impl)
      out = self.proj_attn(out.reshape(b, n, self.heads * self.dim_head))
      return self.dropout_layer(out, deterministic=deterministic)

  FlaxAttention.__module__ = __name__
  af.FlaxAttention = FlaxAttention  # FlaxBasicTransformerBlock.setup looks it up at call time
  _APPLIED = True


def silence_library_logs() -> None:
  """diffusers logs a Flax deprecation warning from every submodule's setup (hundreds per trace)."""
  import diffusers

  diffusers.utils.logging.set_verbosity_error()
  try:
    import transformers

    transformers.utils.logging.set_verbosity_error()
  except ImportError:  # pragma: no cover  (not needed by the UNet/VAE path)
    pass
