"""Data parallelism over views with `jax.sharding`.

One 1-D device mesh with the axis "views". A step's batch of B views (images, cameras, timesteps)
is sharded along it; the FLAME, optimizer and discriminator state is replicated, except that a
reconstruction splits every per-Gaussian array of its state (parameters, Adam moments, density
statistics) over the same devices along the Gaussian axis (`split_gaussians`), so that the update
of each Gaussian runs on one device only: XLA gathers the parameters before the rasterizer, and
Adam, the overflow guard and the statistics are no longer repeated on every device (a run over
several hosts keeps it replicated: densification reads whole arrays on the host). Inside
the jitted step XLA partitions everything it can by itself (FLAME, losses, InstructPix2Pix,
LPIPS, the discriminator) and inserts the cross-device reductions (the mean loss, the gradients of
the replicated state). The one thing it cannot partition is the rasterizer's FFI custom call, so
`rasterize` wraps its kernel call in `shard_map` over the same axis when the RenderConfig carries
the mesh (`RenderConfig.mesh`): each device renders its own views, and the transpose of shard_map
sums the shared Gaussians' gradients over devices.

A batch that holds several images per view (InstructPix2Pix's three guidance branches and its
render/original VAE pair, the discriminator's real/fake pair) is laid out view-major, [B, k] ->
[B*k]: each device then holds whole views and XLA moves no activations between devices; a
batch-major concatenation makes it permute them at every use (tests/multidevice checks the
compiled programs).

Several hosts: call `jax.distributed.initialize()` first (README); `jax.devices()` then lists
every host's devices and the same code runs on each host (each host feeds the whole batch; a
NamedSharding sends every device its views).
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gaedit_jax.errors import InputError

VIEWS = "views"


def init_distributed() -> bool:
  """Multi-host start (README): `jax.distributed.initialize` from GAEDIT_COORDINATOR (host:port),
  GAEDIT_NUM_PROCESSES, GAEDIT_PROCESS_ID, or with no arguments (SLURM / Open MPI detection) when
  GAEDIT_DISTRIBUTED=1. Must run before anything else uses JAX. Returns whether it initialised."""
  env = os.environ
  if env.get("GAEDIT_COORDINATOR"):
    try:
      n, i = int(env["GAEDIT_NUM_PROCESSES"]), int(env["GAEDIT_PROCESS_ID"])
    except (KeyError, ValueError):
      raise InputError(
        "GAEDIT_COORDINATOR is set, so GAEDIT_NUM_PROCESSES and GAEDIT_PROCESS_ID "
        "must be integers (the number of processes and this one's index)"
      ) from None
    jax.distributed.initialize(env["GAEDIT_COORDINATOR"], num_processes=n, process_id=i)
    return True
  if env.get("GAEDIT_DISTRIBUTED") == "1":
    jax.distributed.initialize()
    return True
  return False


def is_primary() -> bool:
  """Process 0 writes the logs, exports and summaries (every process runs the same steps)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits for every process (multi-host); nothing to wait for in a one-process run."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def local(tree):
  """The arrays as this process can use them alone, on one device: an array on several of this
  host's devices (replicated, or split by `split_gaussians`) moves to the first of them (a
  replicated one without a copy between devices); in a multi-host run a replicated array is not
  fully addressable, but this process holds a whole copy in its first shard; anything else is
  gathered."""

  def get(x):
    if not isinstance(x, jax.Array):
      return x
    if x.is_fully_addressable:
      if len(x.sharding.device_set) == 1:
        return x
      return jax.device_put(x, x.addressable_shards[0].device)
    if x.sharding.is_fully_replicated:
      return x.addressable_data(0)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, tree)


def first_view(x) -> np.ndarray:
  """View 0 of a [B,...] array that may be split over devices (multi-host: from this process's
  first shard, which holds view 0 on process 0)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_shards[0].data[0])
  return np.asarray(x[0])


def view_mesh(devices: int | None, batch_size: int, *, what: str = "gaedit") -> Mesh | None:
  """The mesh for `devices` devices (None: all), or None when one device does the work.

  The views of a step are split evenly, so the device count must divide the batch size. With the
  default (all devices) an indivisible batch falls back to fewer devices with a warning; an
  explicit count that does not divide it is an error.
  """
  avail = jax.devices()
  if devices is not None and not 1 <= devices <= len(avail):
    raise ValueError(f"{what}: --devices {devices}, but {len(avail)} device(s) are available ({avail[0].platform})")
  n = len(avail) if devices is None else devices
  if batch_size % n:
    if devices is not None:
      raise ValueError(
        f"{what}: --batch-size {batch_size} views cannot be split evenly over "
        f"--devices {n}; use a batch size divisible by the device count"
      )
    m = max(d for d in range(1, n + 1) if batch_size % d == 0)
    if m > 1 or n > 1:
      warnings.warn(
        f"{what}: a batch of {batch_size} view(s) cannot be split over {n} devices; "
        f"using {m} (raise --batch-size to a multiple of {n} to use them all)",
        stacklevel=2,
      )
    n = m
  if n == 1:
    return None
  return Mesh(np.asarray(avail[:n]), (VIEWS,))


def replicate(tree, mesh: Mesh | None):
  """Places every leaf on all devices of the mesh (unchanged without a mesh)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P()))


def _gaussian_layout(mesh: Mesh, capacity: int):
  """x -> its sharding in the split layout: split along the mesh when its leading dim is the
  Gaussian capacity and the device count divides it, else replicated."""
  split, rep = NamedSharding(mesh, P(VIEWS)), NamedSharding(mesh, P())
  ok = capacity % mesh.size == 0
  return lambda x: split if ok and np.ndim(x) and np.shape(x)[0] == capacity else rep


def split_gaussians(tree, mesh: Mesh | None, capacity: int):
  """Places the leaves whose leading dim is the Gaussian capacity split along it over the mesh, the
  others on all devices (unchanged without a mesh). A capacity the device count does not divide
  stays replicated."""
  if mesh is None:
    return tree
  layout = _gaussian_layout(mesh, capacity)
  return jax.tree.map(lambda x: jax.device_put(x, layout(x)), tree)


def constrain_split(tree, mesh: Mesh | None, capacity: int):
  """Inside a jitted step: the layout of `split_gaussians` (per-Gaussian leaves split, the rest
  replicated). On the state a step returns it keeps the sharding the step was given (no
  recompilation, no gather between steps); on the gradients it leaves each device its half (XLA
  may reduce-scatter them, or all-reduce and slice)."""
  if mesh is None or capacity % mesh.size:
    return tree
  layout = _gaussian_layout(mesh, capacity)
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, layout(x)), tree)


def constrain_whole(tree, mesh: Mesh | None):
  """Inside a jitted step: every leaf replicated, i.e. split per-Gaussian arrays gathered here, once
  per array (left to itself, XLA may gather column slices separately, one collective each)."""
  if mesh is None:
    return tree
  rep = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, rep), tree)


def shard_views(tree, mesh: Mesh | None):
  """Splits every leaf's leading (view) axis over the mesh; scalars are replicated (unchanged
  without a mesh)."""
  if mesh is None:
    return tree
  split, rep = NamedSharding(mesh, P(VIEWS)), NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.device_put(x, split if np.ndim(x) else rep), tree)


def view_major(*xs: jax.Array) -> jax.Array:
  """k arrays [B,...] as one batch [B*k,...] ordered view by view (x0[0], x1[0], .., x0[1], ..):
  split over the view mesh, each device then holds whole views (see the module docstring)."""
  return jnp.stack(xs, axis=1).reshape((-1,) + xs[0].shape[1:])


def from_view_major(x: jax.Array, k: int) -> jax.Array:
  """The inverse of `view_major` for k arrays: [B*k,...] -> [B, k, ...]."""
  return x.reshape((-1, k) + x.shape[1:])


def over_views(fn, mesh: Mesh | None, operands: list, batch: tuple[int, ...]):
  """fn(*operands), split over the mesh's devices when the call's leading view dim (batch[0])
  divides evenly: under shard_map, the operands whose leading dim is the view batch are split,
  the others (size-1 broadcast dims) replicated, and every output split along its leading dim.
  Otherwise (no mesh, one view, an indivisible batch) fn runs as it is.

  check_vma is off because FFI outputs carry no varying-axis types; the transpose still sums the
  replicated operands' cotangents over devices (tests/multidevice checks the gradients)."""
  if mesh is None or not batch or batch[0] <= 1 or batch[0] % mesh.size:
    return fn(*operands)
  spec = lambda x: P(VIEWS) if x.ndim and x.shape[0] == batch[0] else P()
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec(x) for x in operands), out_specs=P(VIEWS), check_vma=False)(
    *operands
  )


__all__ = [
  "VIEWS",
  "init_distributed",
  "is_primary",
  "barrier",
  "local",
  "first_view",
  "view_mesh",
  "replicate",
  "shard_views",
  "split_gaussians",
  "constrain_split",
  "constrain_whole",
  "over_views",
  "view_major",
  "from_view_major",
]
