"""The training frames kept on the device: decoded images (uint8), cameras and timesteps as device
arrays, an image written the first time its frame is used. A batch is then one gather on the device,
so after the first epoch a step moves only its frame indices to the device: no image decoding,
float conversion or host-to-device copy per iteration (README, "Compilation cache and input
pipeline").

The batch is the same, bit for bit, as `AvatarDataset.batch` gives: the uint8 -> float values are
looked up in a table of the host's x / 255 (XLA would compile the division into a multiplication
by 1/255, which differs in the last bit for a fifth of the values)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gaedit_jax import parallel
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.errors import InputError

FRAMES_ON_DEVICE = ("auto", "on", "off")
# auto keeps the frames on the device when they take at most this share of its memory
DEVICE_SHARE = 0.25


def frames_bytes(ds: AvatarDataset) -> int:
  """Device memory of a split's frames as uint8 images."""
  h, w = ds.image_size
  return len(ds) * h * w * 3


def _device_limit() -> int | None:
  """The default device's memory in bytes (None where the backend does not report it)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def keep_on_device(
  ds: AvatarDataset, mode: str, budget_bytes: float, *, platform: str | None = None, flag: str = "--frames-on-device"
) -> bool:
  """Whether a run keeps `ds`'s frames on the device. `mode`: "on", "off", or "auto": on when one
  process trains on an accelerator (`platform`, default: the first local device's) on frames of one
  size that take at most `budget_bytes` and DEVICE_SHARE of the device's memory. Not on the CPU:
  there the "device" is host memory, a host batch costs about 1 ms against a step of tens, and a
  gather dispatched while a step runs waits for it (README, "Compilation cache and input
  pipeline"). "on" where it cannot work is an InputError naming `flag`."""
  if mode not in FRAMES_ON_DEVICE:
    raise InputError(f"{flag} {mode!r}: expected one of {', '.join(FRAMES_ON_DEVICE)}")
  if mode == "off":
    return False
  why = None
  if ds.cameras is None:
    why = "the frames have different image sizes"
  elif jax.process_count() > 1:
    why = "several processes train (each would need every frame)"
  if mode == "on":
    if why:
      raise InputError(f"{flag} on: {why}; use auto or off")
    return True
  platform = platform or jax.local_devices()[0].platform
  if why or len(ds) == 0 or platform == "cpu":
    return False
  need = frames_bytes(ds)
  limit = _device_limit()
  return need <= budget_bytes and (limit is None or need <= DEVICE_SHARE * limit)


def _write(images: jax.Array, idx: jax.Array, rgb: jax.Array) -> jax.Array:
  return images.at[idx].set(rgb)


# the host's conversion (AvatarDataset.batch) of every uint8 value
_UNIT = np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0


def _gather(images, cameras, timesteps, idx, mesh: Mesh | None):
  image = jnp.asarray(_UNIT)[images[idx]]
  camera = jax.tree.map(lambda a: a[idx], cameras)
  out = (image, camera, timesteps[idx])
  if mesh is None:
    return out
  split = NamedSharding(mesh, P(parallel.VIEWS))
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, split), out)


class DeviceFrames:
  """A split's frames on the device (on every device of `mesh`), written as first used.

  `batch(idx)` -> (image [B,H,W,3] float32, camera [B], timestep [B]), the views split over the
  mesh as `parallel.shard_views` places them. One thread at a time may call it (the loop's
  prefetch thread)."""

  def __init__(self, ds: AvatarDataset, mesh: Mesh | None = None):
    if ds.cameras is None:
      raise ValueError(f"{ds.json_path}: frames have different image sizes; they cannot be stacked on the device")
    h, w = ds.image_size
    self.ds, self.mesh = ds, mesh
    rep = None if mesh is None else NamedSharding(mesh, P())
    self.images = jax.jit(lambda: jnp.zeros((len(ds), h, w, 3), jnp.uint8), out_shardings=rep)()
    self.cameras = parallel.replicate(jax.tree.map(jnp.asarray, ds.cameras), mesh)
    self.timesteps = parallel.replicate(jnp.asarray(ds.timesteps), mesh)
    self.written = np.zeros(len(ds), bool)
    self._write = jax.jit(_write, donate_argnums=0, out_shardings=rep)
    self._gather = jax.jit(_gather, static_argnames="mesh")

  def batch(self, indices) -> tuple[jax.Array, object, jax.Array]:
    idx = np.asarray(indices, np.int32).reshape(-1)
    if not self.written[idx].all():
      # the whole batch is written (frames already there again, with the same bytes): one shape,
      # one compilation, whichever of its frames are new
      rgb = np.stack([self.ds.rgb(int(i)) for i in idx])
      self.images = self._write(self.images, idx, rgb)
      self.written[idx] = True
    return self._gather(self.images, self.cameras, self.timesteps, idx, mesh=self.mesh)


__all__ = ["DeviceFrames", "FRAMES_ON_DEVICE", "frames_bytes", "keep_on_device"]
