"""Differentiable Gaussian rasterizer with WABE outputs (C++/CUDA kernels behind XLA FFI)."""

from gaedit_jax.render.api import rasterize
from gaedit_jax.render.types import Gaussians, RenderConfig, RenderOutput

__all__ = ["Gaussians", "RenderConfig", "RenderOutput", "rasterize"]
