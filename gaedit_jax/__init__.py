"""gaedit-jax: text-driven editing of animatable Gaussian head avatars in JAX.

Light at import: submodules (render, flame, rig, data, edit, ...) are imported on demand, so that
`import gaedit_jax.render` needs nothing beyond jax and numpy.
"""

__version__ = "0.1.0"
