"""A small textured-mesh z-buffer rasterizer in numpy (pinhole, OpenCV camera convention).

It is deliberately independent of the Gaussian rasterizer (gaedit_jax.render): the synthetic dataset
is made with this image model, so reconstruction is tested against a different one. Vectorised over
(triangle, pixel) candidates in chunks; perspective-correct barycentrics; optional back-face culling
(for closed surfaces) per face; pixel centres at (i + 0.5, j + 0.5).
"""

from __future__ import annotations

import numpy as np


def project(verts_cam: np.ndarray, fx, fy, cx, cy) -> np.ndarray:
  """Camera-space points [N,3] (z forward) -> pixel coordinates [N,2]."""
  z = verts_cam[:, 2]
  return np.stack([fx * verts_cam[:, 0] / z + cx, fy * verts_cam[:, 1] / z + cy], -1)


def rasterize(
  verts_cam: np.ndarray,
  faces: np.ndarray,
  fx: float,
  fy: float,
  cx: float,
  cy: float,
  width: int,
  height: int,
  *,
  cull: np.ndarray | bool = True,
  near: float = 1e-3,
  chunk: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
  """Visible face per pixel and its perspective-correct barycentrics.

  verts_cam [V,3] camera-space vertices (OpenCV: x right, y down, z forward); faces [F,3], wound
  counter-clockwise seen from outside (outward normals). cull: bool or per-face bool [F] (back faces
  of those faces are dropped). Returns face_id [H,W] int32 (-1: background) and bary [H,W,3]
  float32 (weights of the face's three vertices, summing to 1).
  """
  verts_cam = np.asarray(verts_cam, np.float64)
  faces = np.asarray(faces, np.int64)
  nf = faces.shape[0]
  cull = np.broadcast_to(np.asarray(cull, bool), (nf,))
  tri = verts_cam[faces]  # [F,3,3]
  z = tri[..., 2]
  ok = (z > near).all(axis=1)
  normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  facing = np.einsum("fc,fc->f", normal, tri[:, 0]) < 0  # normal points to the camera (at origin)
  ok &= facing | ~cull
  uv = np.empty(tri.shape[:2] + (2,))
  zs = np.where(z > near, z, 1.0)
  uv[..., 0] = fx * tri[..., 0] / zs + cx
  uv[..., 1] = fy * tri[..., 1] / zs + cy
  area = (uv[:, 1, 0] - uv[:, 0, 0]) * (uv[:, 2, 1] - uv[:, 0, 1]) - (uv[:, 2, 0] - uv[:, 0, 0]) * (
    uv[:, 1, 1] - uv[:, 0, 1]
  )
  ok &= np.abs(area) > 1e-12
  x0 = np.clip(np.floor(uv[..., 0].min(1) - 0.5), 0, width - 1).astype(np.int64)
  x1 = np.clip(np.ceil(uv[..., 0].max(1) - 0.5), 0, width - 1).astype(np.int64)
  y0 = np.clip(np.floor(uv[..., 1].min(1) - 0.5), 0, height - 1).astype(np.int64)
  y1 = np.clip(np.ceil(uv[..., 1].max(1) - 0.5), 0, height - 1).astype(np.int64)
  inside_img = (
    (uv[..., 0].max(1) >= 0) & (uv[..., 0].min(1) <= width) & (uv[..., 1].max(1) >= 0) & (uv[..., 1].min(1) <= height)
  )
  ok &= inside_img
  idx = np.flatnonzero(ok)

  npix = width * height
  zbuf = np.full(npix, np.inf)
  fbuf = np.full(npix, -1, np.int64)
  bbuf = np.zeros((npix, 3))
  for s in range(0, idx.size, chunk):
    fi = idx[s : s + chunk]
    nx = x1[fi] - x0[fi] + 1
    ny = y1[fi] - y0[fi] + 1
    cnt = nx * ny
    tot = int(cnt.sum())
    if tot == 0:
      continue
    f = np.repeat(fi, cnt)
    start = np.repeat(np.cumsum(cnt) - cnt, cnt)
    local = np.arange(tot) - start
    nxr = np.repeat(nx, cnt)
    px = np.repeat(x0[fi], cnt) + local % nxr
    py = np.repeat(y0[fi], cnt) + local // nxr
    qx, qy = px + 0.5, py + 0.5
    t = uv[f]  # [N,3,2]
    a = area[f]
    w0 = ((t[:, 1, 0] - qx) * (t[:, 2, 1] - qy) - (t[:, 2, 0] - qx) * (t[:, 1, 1] - qy)) / a
    w1 = ((t[:, 2, 0] - qx) * (t[:, 0, 1] - qy) - (t[:, 0, 0] - qx) * (t[:, 2, 1] - qy)) / a
    w2 = 1.0 - w0 - w1
    eps = -1e-9
    inn = (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
    if not inn.any():
      continue
    f, px, py, w0, w1, w2 = f[inn], px[inn], py[inn], w0[inn], w1[inn], w2[inn]
    zz = z[f]
    inv = w0 / zz[:, 0] + w1 / zz[:, 1] + w2 / zz[:, 2]  # 1/z is affine in screen space
    depth = 1.0 / inv
    pix = py * width + px
    order = np.lexsort((depth, pix))
    pix_s = pix[order]
    first = np.ones(pix_s.size, bool)
    first[1:] = pix_s[1:] != pix_s[:-1]
    sel = order[first]
    p = pix[sel]
    better = depth[sel] < zbuf[p]
    sel, p = sel[better], p[better]
    zbuf[p] = depth[sel]
    fbuf[p] = f[sel]
    b = np.stack([w0[sel] / zz[sel, 0], w1[sel] / zz[sel, 1], w2[sel] / zz[sel, 2]], -1)
    bbuf[p] = b / b.sum(-1, keepdims=True)
  return fbuf.reshape(height, width).astype(np.int32), bbuf.reshape(height, width, 3).astype(np.float32)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """Area-weighted vertex normals [V,3] (unit; zero for unused vertices)."""
  verts = np.asarray(verts, np.float64)
  faces = np.asarray(faces, np.int64)
  fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
  vn = np.zeros_like(verts)
  for k in range(3):
    np.add.at(vn, faces[:, k], fn)
  n = np.linalg.norm(vn, axis=-1, keepdims=True)
  return vn / np.maximum(n, 1e-20)


def interpolate(attr: np.ndarray, faces: np.ndarray, face_id: np.ndarray, bary: np.ndarray) -> np.ndarray:
  """Per-vertex attributes [V,C] -> per covered pixel [N,C] (pixels where face_id >= 0, row-major)."""
  m = face_id >= 0
  f = np.asarray(faces)[face_id[m]]
  b = bary[m]
  return np.einsum("nk,nkc->nc", b, np.asarray(attr)[f])


def downsample(img: np.ndarray, factor: int) -> np.ndarray:
  """Box filter by an integer factor over the first two axes."""
  if factor == 1:
    return img
  h, w = img.shape[0] // factor, img.shape[1] // factor
  return img[: h * factor, : w * factor].reshape(h, factor, w, factor, *img.shape[2:]).mean(axis=(1, 3))
