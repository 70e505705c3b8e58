"""Pure-jnp dense rasterizer with the semantics of the native kernels: the test oracle.

Every pixel looks at every Gaussian (memory O(H W N)): use it for small scenes only. It reproduces
the kernels' discrete decisions exactly (near-plane and degenerate culling, 3-sigma tile rectangles,
alpha clamps, the 1/255 skip, early termination at T < 1e-4), so forward parity is to rounding and
`jax.grad` of it is the reference for the hand-written backward. `wabe_backward=True` is emulated
with stop-gradient mixing: x -> s x + (1 - s) sg(x) scales dL/dx by s without changing values;
`alpha_clamp_grad="pass"` likewise: the clamped alpha is 0.99 + (o G - sg(o G)), whose derivative
is that of o G. Gaussians that are not drawn get finite stand-in values before anything is
differentiated, so a NaN or inf parameter never reaches the image or a gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gaedit_jax.camera import Camera
from gaedit_jax.quaternion import quat_to_matrix
from gaedit_jax.render import _inputs
from gaedit_jax.render.types import SH_C0, Gaussians, RenderConfig, RenderOutput

ALPHA_MAX, ALPHA_MIN, T_MIN, EPS2D, FOV_PAD = 0.99, 1.0 / 255.0, 1e-4, 0.3, 0.3

_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (
  -0.5900435899266435,
  2.890611442640554,
  -0.4570457994644658,
  0.3731763325901154,
  -0.4570457994644658,
  1.445305721320277,
  -0.5900435899266435,
)


def sh_basis(degree: int, d: jax.Array) -> jax.Array:
  """Real SH basis (3DGS sign convention) of unit directions d [...,3] -> [..., (degree+1)^2]."""
  x, y, z = d[..., 0], d[..., 1], d[..., 2]
  out = [jnp.full_like(x, SH_C0)]
  if degree >= 1:
    out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
  if degree >= 2:
    xx, yy, zz = x * x, y * y, z * z
    out += [
      _SH_C2[0] * x * y,
      _SH_C2[1] * y * z,
      _SH_C2[2] * (2 * zz - xx - yy),
      _SH_C2[3] * x * z,
      _SH_C2[4] * (xx - yy),
    ]
  if degree >= 3:
    out += [
      _SH_C3[0] * y * (3 * xx - yy),
      _SH_C3[1] * x * y * z,
      _SH_C3[2] * y * (4 * zz - xx - yy),
      _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
      _SH_C3[4] * x * (4 * zz - xx - yy),
      _SH_C3[5] * z * (xx - yy),
      _SH_C3[6] * x * (xx - 3 * yy),
    ]
  return jnp.stack(out, -1)


def project(means, quats, scales, opac, sh, offset, w2c, intr, *, width, height, tile_size, near_plane, sh_degree):
  """Per-Gaussian projection of one view: (u, v, conic, z, radius, rect, colour, valid)."""
  fx, fy, cx, cy = intr[0], intr[1], intr[2], intr[3]
  rot, t = w2c[:3, :3], w2c[:3, 3]
  pc = means @ rot.T + t
  z = pc[:, 2]
  finite = (
    jnp.all(jnp.isfinite(means), -1)
    & jnp.all(jnp.isfinite(scales), -1)
    & jnp.isfinite(opac)
    & jnp.all(jnp.isfinite(offset), -1)
  )
  qfin = jnp.all(jnp.isfinite(quats), -1)  # (the kernels see it as a non-finite |q|^2)
  n2 = jnp.sum(jnp.where(qfin[:, None], quats, 1.0) ** 2, -1)
  valid = finite & qfin & (z > near_plane) & (n2 > 1e-24) & jnp.isfinite(n2)
  zs = jnp.where(valid, z, 1.0)  # safe values where invalid keep gradients finite
  qn = jnp.where(valid[:, None], quats, jnp.array([1.0, 0, 0, 0])) / jnp.sqrt(jnp.where(valid, n2, 1.0))[:, None]
  sc = jnp.where(valid[:, None], scales, 1.0)
  pcs = jnp.where(valid[:, None], pc, jnp.array([0.0, 0.0, 1.0]))
  tanx, tany = 0.5 * width / fx, 0.5 * height / fy
  limxp, limxn = (width - cx) / fx + FOV_PAD * tanx, cx / fx + FOV_PAD * tanx
  limyp, limyn = (height - cy) / fy + FOV_PAD * tany, cy / fy + FOV_PAD * tany
  tx = zs * jnp.clip(pcs[:, 0] / zs, -limxn, limxp)
  ty = zs * jnp.clip(pcs[:, 1] / zs, -limyn, limyp)
  zero = jnp.zeros_like(zs)
  jac = jnp.stack(
    [jnp.stack([fx / zs, zero, -fx * tx / zs**2], -1), jnp.stack([zero, fy / zs, -fy * ty / zs**2], -1)], -2
  )  # [N,2,3]
  tm = jac @ rot @ quat_to_matrix(qn) * sc[:, None, :]  # T M, [N,2,3]
  a = jnp.sum(tm[:, 0] ** 2, -1) + EPS2D
  b = jnp.sum(tm[:, 0] * tm[:, 1], -1)
  c = jnp.sum(tm[:, 1] ** 2, -1) + EPS2D
  det = a * c - b * b
  valid &= (det > 0) & jnp.isfinite(det)
  dets = jnp.where(valid, det, 1.0)
  conic = jnp.stack([c / dets, -b / dets, a / dets], -1)
  mid = 0.5 * (a + c)
  lam = mid + jnp.sqrt(jnp.maximum(0.1, mid * mid - dets))
  radius = jax.lax.stop_gradient(jnp.ceil(3.0 * jnp.sqrt(lam)))
  valid &= radius < 1e6
  u = fx * pcs[:, 0] / zs + cx + offset[:, 0]
  v = fy * pcs[:, 1] / zs + cy + offset[:, 1]
  valid &= jnp.isfinite(u) & jnp.isfinite(v)
  gx, gy = -(-width // tile_size), -(-height // tile_size)
  ug, vg = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  x0 = jnp.clip(jnp.floor((ug - radius) / tile_size), 0, gx)
  x1 = jnp.clip(jnp.ceil((ug + radius) / tile_size), 0, gx)
  y0 = jnp.clip(jnp.floor((vg - radius) / tile_size), 0, gy)
  y1 = jnp.clip(jnp.ceil((vg + radius) / tile_size), 0, gy)
  valid &= (x1 - x0) * (y1 - y0) > 0
  # colour: only the active coefficients are read; a non-finite one is not drawn (the kernels see
  # it as a non-finite unclamped colour, which also catches a sum that overflows)
  campos = -rot.T @ t
  k = (sh_degree + 1) ** 2
  valid &= jnp.all(jnp.isfinite(sh[:, :k]), (-2, -1))
  d = jnp.where(valid[:, None], means, campos + jnp.array([0.0, 0.0, 1.0])) - campos
  dn = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
  raw = jnp.einsum("nk,nkc->nc", sh_basis(sh_degree, dn), jnp.where(valid[:, None, None], sh[:, :k], 0.0)) + 0.5
  valid &= jnp.all(jnp.isfinite(raw), -1)
  rgb = jnp.where(valid[:, None], jnp.maximum(raw, 0.0), 0.0)
  rect = jnp.stack([x0, y0, x1, y1], -1)
  # finite stand-ins where not drawn: `where` passes no cotangent to the other branch, while
  # 0 * NaN in a later product would
  safe = lambda x, fill: jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 1)), x, fill)
  return dict(
    u=safe(u, -1e6),
    v=safe(v, -1e6),
    conic=safe(conic, 1.0),
    z=zs,
    radius=jnp.where(valid, radius, 0).astype(jnp.int32),
    rect=rect,
    rgb=rgb,
    valid=valid,
    opac=safe(opac, 0.0),
  )


def render_view(means, quats, scales, opac, sh, offset, w2c, intr, bg, *, width, height, config: RenderConfig):
  """One view, dense. Returns (image, alpha, depth, radii, wabe_mask, wabe_weight)."""
  # full float32 products: on GPUs XLA would otherwise use TF32 for matmuls and einsums
  with jax.default_matmul_precision("highest"):
    return _render_view(
      means, quats, scales, opac, sh, offset, w2c, intr, bg, width=width, height=height, config=config
    )


def _render_view(means, quats, scales, opac, sh, offset, w2c, intr, bg, *, width, height, config):
  p = project(
    means,
    quats,
    scales,
    opac,
    sh,
    offset,
    w2c,
    intr,
    width=width,
    height=height,
    tile_size=config.tile_size,
    near_plane=config.near_plane,
    sh_degree=config.sh_degree,
  )
  n = means.shape[0]
  order = jnp.argsort(jnp.where(p["valid"], jax.lax.stop_gradient(p["z"]), jnp.inf), stable=True)
  g = {k: v[order] for k, v in p.items()}
  ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5  # [P]
  tx, ty = (xs.reshape(-1) // config.tile_size)[:, None], (ys.reshape(-1) // config.tile_size)[:, None]
  r = g["rect"]
  in_rect = (tx >= r[:, 0]) & (tx < r[:, 2]) & (ty >= r[:, 1]) & (ty < r[:, 3])  # [P,N]
  dx, dy = g["u"][None] - px[:, None], g["v"][None] - py[:, None]
  co = g["conic"]
  power = -0.5 * (co[:, 0] * dx * dx + co[:, 2] * dy * dy) - co[:, 1] * dx * dy
  acc = g["valid"][None] & in_rect & (power <= 0)
  o_g = g["opac"][None] * jnp.exp(jnp.minimum(power, 0.0))
  if config.alpha_clamp_grad == "pass":  # value min(0.99, o G), derivative that of o G
    alpha = jnp.where(o_g > ALPHA_MAX, ALPHA_MAX + (o_g - jax.lax.stop_gradient(o_g)), o_g)
  else:
    alpha = jnp.where(o_g > ALPHA_MAX, ALPHA_MAX, o_g)
  acc &= alpha >= ALPHA_MIN
  a_acc = jnp.where(acc, alpha, 0.0)
  t_before = jnp.cumprod(1.0 - a_acc, axis=1) / (1.0 - a_acc)
  stop = jnp.cumsum(acc & (t_before * (1.0 - a_acc) < T_MIN), axis=1) > 0
  inc = jax.lax.stop_gradient(acc & ~stop)
  a_inc = jnp.where(inc, alpha, 0.0)
  col, zz = jnp.broadcast_to(g["rgb"][None], (px.shape[0], n, 3)), jnp.broadcast_to(g["z"][None], a_inc.shape)
  tb = jnp.cumprod(1.0 - a_inc, axis=1) / (1.0 - a_inc)  # transmittance before each contributor
  if config.wabe_backward:
    s = jax.lax.stop_gradient(jnp.exp(-config.wabe_beta * (1.0 - tb)))
    mix = lambda x, s_: s_ * x + (1.0 - s_) * jax.lax.stop_gradient(x)
    a_inc = mix(a_inc, s)
    col, zz = mix(col, s[..., None]), mix(zz, s)
    tb = jnp.cumprod(1.0 - a_inc, axis=1) / (1.0 - a_inc)
  w = a_inc * tb
  t_final = jnp.prod(1.0 - a_inc, axis=1)
  image = jnp.einsum("pn,pnc->pc", w, col) + t_final[:, None] * bg
  alpha_img = 1.0 - t_final
  dsum = jnp.sum(w * zz, 1)
  depth = jnp.where(alpha_img > 0, dsum / jnp.where(alpha_img > 0, alpha_img, 1.0), 0.0)
  # WABE slots (see RenderConfig.wabe_visibility)
  kk = config.wabe_k
  ww = jax.lax.stop_gradient(jnp.exp(-config.wabe_beta * (1.0 - tb)) * a_inc)
  if config.wabe_visibility == "tile":
    # per tile: the first K Gaussians (depth order) accepted by some pixel of the tile, each with
    # its largest weight there; every pixel of the tile (npix of them) carries the tile's slots
    gx = -(-width // config.tile_size)
    tile_of = (ty * gx + tx)[:, 0]
    ntiles = gx * -(-height // config.tile_size)
    hit = jax.ops.segment_max(inc.astype(jnp.int32), tile_of, ntiles) > 0  # [T,N]
    w_t = jax.ops.segment_max(jnp.where(inc, ww, 0.0), tile_of, ntiles)
    npix = jax.ops.segment_sum(jnp.ones_like(tile_of), tile_of, ntiles)
    slot_t = hit & (jnp.cumsum(hit, axis=1) <= kk)
    cnt_t, tot_t = _normalised_slots(slot_t, w_t, kk)
    cnt, tot = jnp.sum(cnt_t * npix[:, None], 0), jnp.sum(tot_t * npix[:, None], 0)
  else:  # first K accepted contributors of each pixel
    slot = inc & (jnp.cumsum(inc, axis=1) <= kk)
    cnt, tot = _normalised_slots(slot, ww, kk)
    cnt, tot = jnp.sum(cnt, 0), jnp.sum(tot, 0)
  inv = jnp.argsort(order)
  cnt, tot = cnt[inv], tot[inv]
  wabe_weight = jnp.where(cnt > 0, tot / jnp.maximum(cnt, 1), 0.0)
  shape = (height, width)
  return (
    image.reshape(shape + (3,)),
    alpha_img.reshape(shape),
    depth.reshape(shape),
    p["radius"],
    cnt > 0,
    wabe_weight,
  )


def _normalised_slots(slot, w, k):
  """Slot lists [L,N] (L pixels or tiles) -> (occupied [L,N] as 0/1, min-max normalised weight
  where occupied, else 0); empty slots of a list with fewer than K count as weight 0."""
  nslot = jnp.sum(slot, 1)
  mx = jnp.max(jnp.where(slot, w, 0.0), 1)
  mn = jnp.where(nslot < k, 0.0, jnp.min(jnp.where(slot, w, jnp.inf), 1))
  nrm = (w - mn[:, None]) / (mx - mn + 1e-10)[:, None]
  return slot.astype(jnp.float32), jnp.where(slot, nrm, 0.0)


def rasterize_reference(
  gaussians: Gaussians, camera: Camera, background, config: RenderConfig = RenderConfig()
) -> RenderOutput:
  """Same contract as `rasterize` (batching by broadcasting); overflow is always False."""
  named, batch = _inputs.prepare_inputs(gaussians, camera, background, config)
  flat = _inputs.flat_views(named, batch)
  fn = lambda *a: render_view(*a, width=camera.width, height=camera.height, config=config)
  outs = jax.vmap(fn)(*flat)
  outs = [o.reshape(batch + o.shape[1:]) for o in outs]
  image, alpha, depth, radii, mask, weight = outs
  return RenderOutput(
    image=image,
    alpha=alpha,
    depth=depth,
    radii=radii,
    wabe_mask=mask,
    wabe_weight=weight,
    overflow=jnp.zeros(batch, bool),
    intersections=jnp.zeros(batch, jnp.int32),
  )
