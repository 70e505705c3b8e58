"""flame_forward under jit with real FLAME sizes (random model): prints a table.

5143 vertices (FLAME 2023 + GaussianAvatars teeth), 300 shape + 100 expression components, 36 pose
correctives, 5 joints. Forward alone and forward + gradient w.r.t. the per-timestep parameters
(as in training, where expression and pose are fine-tuned), for 1 and 64 timesteps; also with the
identity baked into the template (`bake_identity`; shape and static_offset are fixed in GA training).

  python experiments/bench_flame.py [--batches 1 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from gaedit_jax.flame import FlameModel, FlameParams, bake_identity, flame_forward


def random_flame(nv=5143, n_shape=300, n_expr=100, nf=10144, seed=0) -> FlameModel:
  rng = np.random.default_rng(seed)
  w = rng.uniform(size=(nv, 5)) ** 4
  w /= w.sum(1, keepdims=True)
  jr = rng.uniform(size=(5, nv))
  jr /= jr.sum(1, keepdims=True)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return FlameModel(
    v_template=f32(rng.normal(size=(nv, 3)) * 0.1),
    shapedirs=f32(rng.normal(size=(nv, 3, n_shape)) * 1e-3),
    exprdirs=f32(rng.normal(size=(nv, 3, n_expr)) * 1e-3),
    posedirs=f32(rng.normal(size=(36, nv * 3)) * 1e-3),
    j_regressor=f32(jr),
    lbs_weights=f32(w),
    faces=jnp.asarray(rng.integers(0, nv, (nf, 3)), jnp.int32),
    region_masks=jnp.zeros((0, nv), bool),
  )


def random_params(model: FlameModel, T: int, seed=1) -> FlameParams:
  rng = np.random.default_rng(seed)
  n = lambda *s: jnp.asarray(rng.normal(size=s) * 0.2, jnp.float32)
  return FlameParams(
    shape=n(model.n_shape),
    expr=n(T, model.n_expr),
    rotation=n(T, 3),
    neck_pose=n(T, 3),
    jaw_pose=n(T, 3),
    eyes_pose=n(T, 6),
    translation=n(T, 3),
    static_offset=n(model.num_vertices, 3) * 0.01,
  )


def timeit(fn, *args, repeats: int):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, float(np.median(times)), float(np.min(times))


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
  ap.add_argument("--repeats", type=int, default=20)
  args = ap.parse_args()
  model = random_flame()
  fwd = jax.jit(flame_forward)
  target = jnp.asarray(np.random.default_rng(2).normal(size=(model.num_vertices, 3)), jnp.float32)

  @jax.jit
  def fwd_grad(m, p):
    def loss(dyn):
      q = FlameParams(**{**p.__dict__, **dyn})
      return jnp.sum(flame_forward(m, q) * target)

    dyn = {k: getattr(p, k) for k in FlameParams.PER_TIMESTEP}
    return jax.value_and_grad(loss)(dyn)

  dev = jax.devices()[0]
  print(
    f"flame_forward, random FLAME: V={model.num_vertices}, shape={model.n_shape}, "
    f"expr={model.n_expr}, joints={model.num_joints}; jax {jax.__version__} on {dev.platform} "
    f"({os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}); "
    f"median of {args.repeats} runs after compilation"
  )
  hdr = f"{'timesteps':>9} | {'what':<16} | {'compile s':>9} | {'median ms':>9} | {'min ms':>8} | {'ms/timestep':>11}"
  print(hdr)
  print("-" * len(hdr))
  for T in args.batches:
    p = random_params(model, T)
    # identity baked into the template (shape / static_offset are not optimised in GA training)
    baked = bake_identity(model, p.shape, p.static_offset)
    pb = FlameParams(**{**p.__dict__, "shape": jnp.zeros(0), "static_offset": jnp.zeros_like(p.static_offset)})
    for name, fn, m, q in (
      ("forward", fwd, model, p),
      ("forward+grad", fwd_grad, model, p),
      ("baked forward", fwd, baked, pb),
      ("baked fwd+grad", fwd_grad, baked, pb),
    ):
      c, med, mn = timeit(fn, m, q, repeats=args.repeats)
      print(f"{T:>9} | {name:<16} | {c:>9.2f} | {med * 1e3:>9.2f} | {mn * 1e3:>8.2f} | {med * 1e3 / T:>11.3f}")


if __name__ == "__main__":
  main()
