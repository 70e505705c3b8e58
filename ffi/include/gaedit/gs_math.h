// Per-Gaussian and per-pixel math of 3D Gaussian splatting, shared by the CPU and the CUDA kernels.
//
// Conventions (the contract of gaedit_jax.render.rasterize):
//   * world_to_camera is a row-major 3x4 [R|t] (OpenCV: x right, y down, z forward);
//   * intrinsics (fx, fy, cx, cy) in pixels, pixel (i, j) has its centre at (i + 0.5, j + 0.5);
//   * quaternions are wxyz and need not be normalised; scales are activated (> 0);
//   * colour = SH(dir) + 0.5, clamped at 0 (3DGS), dir = normalize(mean - camera centre).
// Numerical constants are those of the 3DGS rasterizer (graphdeco 59f5f77) used by GaussianAvatars.
// Every forward function has its hand-written vector-Jacobian product next to it.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GS_HD __host__ __device__ __forceinline__
#define GS_HD_NOINLINE __host__ __device__ __noinline__
#define GS_UNROLL _Pragma("unroll")
#else
#define GS_UNROLL
#define GS_HD inline
#define GS_HD_NOINLINE __attribute__((noinline)) inline
using std::isfinite;
#endif

namespace gs {

constexpr float kAlphaMax = 0.99f;          // alpha = min(0.99, o * G)
constexpr float kAlphaMin = 1.0f / 255.0f;  // contributions below are skipped
constexpr float kTMin = 1e-4f;              // stop before T would fall below this
constexpr float kEps2d = 0.3f;              // low-pass dilation of the 2D covariance
constexpr float kFovPad = 0.3f;             // J is evaluated at the point clamped to 1.3 x FoV
constexpr float kMaxRadius = 1e6f;          // guards the float -> int conversion
constexpr float kQuatNorm2Min = 1e-24f;     // zero-norm quaternions are not drawn

// Limits of the static settings (checked in Python and again at the FFI entry points).
constexpr int kMaxTile = 16;                // a CUDA compositing block holds at most 16 x 16 pixels
constexpr int kMaxImageSide = 16384;        // image width and height, pixels

// ---------------------------------------------------------------- small linear algebra
struct M3 {
  float m[3][3];
};

GS_HD M3 quat_to_rotmat(float w, float x, float y, float z) {
  M3 r;
  r.m[0][0] = 1.f - 2.f * (y * y + z * z);
  r.m[0][1] = 2.f * (x * y - w * z);
  r.m[0][2] = 2.f * (x * z + w * y);
  r.m[1][0] = 2.f * (x * y + w * z);
  r.m[1][1] = 1.f - 2.f * (x * x + z * z);
  r.m[1][2] = 2.f * (y * z - w * x);
  r.m[2][0] = 2.f * (x * z - w * y);
  r.m[2][1] = 2.f * (y * z + w * x);
  r.m[2][2] = 1.f - 2.f * (x * x + y * y);
  return r;
}

// VJP of quat_to_rotmat w.r.t. the (normalised) quaternion.
GS_HD void quat_to_rotmat_vjp(float w, float x, float y, float z, const M3& g, float dq[4]) {
  const float(*d)[3] = g.m;
  dq[0] = 2.f * (-z * d[0][1] + y * d[0][2] + z * d[1][0] - x * d[1][2] - y * d[2][0] + x * d[2][1]);
  dq[1] = 2.f * (y * d[0][1] + z * d[0][2] + y * d[1][0] - 2.f * x * d[1][1] - w * d[1][2] +
                 z * d[2][0] + w * d[2][1] - 2.f * x * d[2][2]);
  dq[2] = 2.f * (-2.f * y * d[0][0] + x * d[0][1] + w * d[0][2] + x * d[1][0] + z * d[1][2] -
                 w * d[2][0] + z * d[2][1] - 2.f * y * d[2][2]);
  dq[3] = 2.f * (-2.f * z * d[0][0] - w * d[0][1] + x * d[0][2] + w * d[1][0] - 2.f * z * d[1][1] +
                 y * d[1][2] + x * d[2][0] + y * d[2][1]);
}

// ---------------------------------------------------------------- spherical harmonics
// Real SH basis of degree <= 3 in the 3DGS sign convention. Y has (deg+1)^2 entries.
constexpr float kSH0 = 0.28209479177387814f;
constexpr float kSH1 = 0.4886025119029199f;
// scalars rather than arrays: constexpr arrays are not visible in CUDA device code
constexpr float kSH2_0 = 1.0925484305920792f, kSH2_1 = -1.0925484305920792f,
                kSH2_2 = 0.31539156525252005f, kSH2_3 = -1.0925484305920792f,
                kSH2_4 = 0.5462742152960396f;
constexpr float kSH3_0 = -0.5900435899266435f, kSH3_1 = 2.890611442640554f,
                kSH3_2 = -0.4570457994644658f, kSH3_3 = 0.3731763325901154f,
                kSH3_4 = -0.4570457994644658f, kSH3_5 = 1.445305721320277f,
                kSH3_6 = -0.5900435899266435f;

GS_HD int sh_count(int degree) { return (degree + 1) * (degree + 1); }

// The forward's per-view status word: the view's tile-intersection count (saturated at 2^30 - 1)
// times two, plus 1 when the view did not fit the intersection pool (an incomplete image). Python
// unpacks it (render/api.py) into RenderOutput.intersections and .overflow.
GS_HD int32_t pack_isect(int64_t count, bool overflow) {
  const int64_t c = count < 0 ? 0 : (count > 0x3fffffff ? 0x3fffffff : count);
  return (int32_t)(2 * c + (overflow ? 1 : 0));
}

// Basis values Y[k] and, if dY != nullptr, their derivatives dY[k][0..2] w.r.t. the unit
// direction's components treated as independent variables (the normalisation is chained outside).
GS_HD void sh_basis(int degree, float x, float y, float z, float Y[16], float (*dY)[3]) {
  Y[0] = kSH0;
  if (dY) dY[0][0] = dY[0][1] = dY[0][2] = 0.f;
  if (degree < 1) return;
  Y[1] = -kSH1 * y;
  Y[2] = kSH1 * z;
  Y[3] = -kSH1 * x;
  if (dY) {
    dY[1][0] = 0.f, dY[1][1] = -kSH1, dY[1][2] = 0.f;
    dY[2][0] = 0.f, dY[2][1] = 0.f, dY[2][2] = kSH1;
    dY[3][0] = -kSH1, dY[3][1] = 0.f, dY[3][2] = 0.f;
  }
  if (degree < 2) return;
  const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  Y[4] = kSH2_0 * xy;
  Y[5] = kSH2_1 * yz;
  Y[6] = kSH2_2 * (2.f * zz - xx - yy);
  Y[7] = kSH2_3 * xz;
  Y[8] = kSH2_4 * (xx - yy);
  if (dY) {
    float a;
    a = kSH2_0, dY[4][0] = a * y, dY[4][1] = a * x, dY[4][2] = 0.f;
    a = kSH2_1, dY[5][0] = 0.f, dY[5][1] = a * z, dY[5][2] = a * y;
    a = kSH2_2, dY[6][0] = -2.f * a * x, dY[6][1] = -2.f * a * y, dY[6][2] = 4.f * a * z;
    a = kSH2_3, dY[7][0] = a * z, dY[7][1] = 0.f, dY[7][2] = a * x;
    a = kSH2_4, dY[8][0] = 2.f * a * x, dY[8][1] = -2.f * a * y, dY[8][2] = 0.f;
  }
  if (degree < 3) return;
  Y[9] = kSH3_0 * y * (3.f * xx - yy);
  Y[10] = kSH3_1 * xy * z;
  Y[11] = kSH3_2 * y * (4.f * zz - xx - yy);
  Y[12] = kSH3_3 * z * (2.f * zz - 3.f * xx - 3.f * yy);
  Y[13] = kSH3_4 * x * (4.f * zz - xx - yy);
  Y[14] = kSH3_5 * z * (xx - yy);
  Y[15] = kSH3_6 * x * (xx - 3.f * yy);
  if (dY) {
    float a;
    a = kSH3_0, dY[9][0] = 6.f * a * xy, dY[9][1] = 3.f * a * (xx - yy), dY[9][2] = 0.f;
    a = kSH3_1, dY[10][0] = a * yz, dY[10][1] = a * xz, dY[10][2] = a * xy;
    a = kSH3_2, dY[11][0] = -2.f * a * xy, dY[11][1] = a * (4.f * zz - xx - 3.f * yy),
    dY[11][2] = 8.f * a * yz;
    a = kSH3_3, dY[12][0] = -6.f * a * xz, dY[12][1] = -6.f * a * yz,
    dY[12][2] = 3.f * a * (2.f * zz - xx - yy);
    a = kSH3_4, dY[13][0] = a * (4.f * zz - 3.f * xx - yy), dY[13][1] = -2.f * a * xy,
    dY[13][2] = 8.f * a * xz;
    a = kSH3_5, dY[14][0] = 2.f * a * xz, dY[14][1] = -2.f * a * yz, dY[14][2] = a * (xx - yy);
    a = kSH3_6, dY[15][0] = 3.f * a * (xx - yy), dY[15][1] = -6.f * a * xy, dY[15][2] = 0.f;
  }
}

// ---------------------------------------------------------------- camera
struct Cam {
  float R[3][3];  // world -> camera rotation (rows = camera axes)
  float t[3];
  float fx, fy, cx, cy;
  float pos[3];  // camera centre in world coordinates = -R^T t
  int width, height;
};

GS_HD Cam make_cam(const float* w2c /*4x4 row-major*/, const float* intr /*fx,fy,cx,cy*/, int width,
                   int height) {
  Cam c;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) c.R[i][j] = w2c[i * 4 + j];
    c.t[i] = w2c[i * 4 + 3];
  }
  for (int j = 0; j < 3; ++j)
    c.pos[j] = -(c.R[0][j] * c.t[0] + c.R[1][j] * c.t[1] + c.R[2][j] * c.t[2]);
  c.fx = intr[0], c.fy = intr[1], c.cx = intr[2], c.cy = intr[3];
  c.width = width, c.height = height;
  return c;
}

// ---------------------------------------------------------------- projection (EWA splatting)
struct Projected {
  float u, v;      // 2D mean in pixels (screen_offset included)
  float conic[3];  // inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
  float z;         // view-space depth of the mean
  int radius;      // 0 = not drawn
  int rect[4];     // tile rectangle x0, y0, x1, y1 (exclusive ends)
};

GS_HD bool finite3(const float* p) {
  return isfinite(p[0]) && isfinite(p[1]) && isfinite(p[2]);
}

// Tile rectangle [r0, r2) x [r1, r3) touched by the square of half-size `radius` (pixels) around
// (u, v), clipped to the image's tile grid. The CUDA emit pass recomputes it from the stored radius.
GS_HD void tile_rect(float u, float v, float radius, int width, int height, int tile, int r[4]) {
  const int gx = (width + tile - 1) / tile, gy = (height + tile - 1) / tile;
  const float ts = (float)tile;
  r[0] = (int)fminf((float)gx, fmaxf(0.f, floorf((u - radius) / ts)));
  r[2] = (int)fminf((float)gx, fmaxf(0.f, ceilf((u + radius) / ts)));
  r[1] = (int)fminf((float)gy, fmaxf(0.f, floorf((v - radius) / ts)));
  r[3] = (int)fminf((float)gy, fmaxf(0.f, ceilf((v + radius) / ts)));
}

// Forward projection of one Gaussian into one view. Gaussians that are behind the near plane,
// have a zero-norm quaternion, non-finite parameters, or a tile rectangle of zero area get
// radius 0 and are neither drawn nor differentiated.
GS_HD Projected project(const Cam& c, const float* mean, const float* quat, const float* scale,
                        float opacity, const float* offset, float near_plane, int tile_size) {
  Projected p;
  p.radius = 0;
  p.u = p.v = p.z = 0.f;
  p.conic[0] = p.conic[1] = p.conic[2] = 0.f;
  p.rect[0] = p.rect[1] = p.rect[2] = p.rect[3] = 0;
  if (!finite3(mean) || !finite3(scale) || !isfinite(opacity) || !isfinite(offset[0]) ||
      !isfinite(offset[1]))
    return p;
  float pc[3];
  for (int i = 0; i < 3; ++i)
    pc[i] = c.R[i][0] * mean[0] + c.R[i][1] * mean[1] + c.R[i][2] * mean[2] + c.t[i];
  const float z = pc[2];
  if (!(z > near_plane)) return p;
  const float n2 = quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3];
  if (!(n2 > kQuatNorm2Min) || !isfinite(n2)) return p;
  const float inv = 1.f / sqrtf(n2);
  const M3 R = quat_to_rotmat(quat[0] * inv, quat[1] * inv, quat[2] * inv, quat[3] * inv);
  // T = J W with J the perspective Jacobian at the FoV-clamped point.
  const float tanx = 0.5f * c.width / c.fx, tany = 0.5f * c.height / c.fy;
  const float limxp = (c.width - c.cx) / c.fx + kFovPad * tanx, limxn = c.cx / c.fx + kFovPad * tanx;
  const float limyp = (c.height - c.cy) / c.fy + kFovPad * tany, limyn = c.cy / c.fy + kFovPad * tany;
  const float tx = z * fminf(limxp, fmaxf(-limxn, pc[0] / z));
  const float ty = z * fminf(limyp, fmaxf(-limyn, pc[1] / z));
  const float J00 = c.fx / z, J02 = -c.fx * tx / (z * z), J11 = c.fy / z, J12 = -c.fy * ty / (z * z);
  float T[2][3];
  for (int j = 0; j < 3; ++j) {
    T[0][j] = J00 * c.R[0][j] + J02 * c.R[2][j];
    T[1][j] = J11 * c.R[1][j] + J12 * c.R[2][j];
  }
  // cov2d = T R S S^T R^T T^T = (T M)(T M)^T with M = R diag(s)
  float TM[2][3];
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < 3; ++j)
      TM[r][j] = (T[r][0] * R.m[0][j] + T[r][1] * R.m[1][j] + T[r][2] * R.m[2][j]) * scale[j];
  const float a = TM[0][0] * TM[0][0] + TM[0][1] * TM[0][1] + TM[0][2] * TM[0][2] + kEps2d;
  const float b = TM[0][0] * TM[1][0] + TM[0][1] * TM[1][1] + TM[0][2] * TM[1][2];
  const float cc = TM[1][0] * TM[1][0] + TM[1][1] * TM[1][1] + TM[1][2] * TM[1][2] + kEps2d;
  const float det = a * cc - b * b;
  if (!(det > 0.f) || !isfinite(det)) return p;
  const float mid = 0.5f * (a + cc);
  const float lambda1 = mid + sqrtf(fmaxf(0.1f, mid * mid - det));
  const float radius_f = ceilf(3.f * sqrtf(lambda1));
  if (!(radius_f < kMaxRadius)) return p;
  const float u = c.fx * pc[0] / z + c.cx + offset[0];
  const float v = c.fy * pc[1] / z + c.cy + offset[1];
  if (!isfinite(u) || !isfinite(v)) return p;
  int rect[4];
  tile_rect(u, v, radius_f, c.width, c.height, tile_size, rect);
  if ((rect[2] - rect[0]) * (rect[3] - rect[1]) <= 0) return p;
  p.u = u, p.v = v, p.z = z;
  p.conic[0] = cc / det, p.conic[1] = -b / det, p.conic[2] = a / det;
  p.radius = (int)radius_f;
  for (int i = 0; i < 4; ++i) p.rect[i] = rect[i];
  return p;
}

// ---------------------------------------------------------------- tile culling
// Largest q = d^T Q d (Q = conic) at which a pixel can still pass the alpha test:
// o exp(-q / 2) >= kAlphaMin  <=>  q <= 2 ln(o / kAlphaMin). The margin keeps every pixel that an
// approximate exp could let through, so culling never changes an image (NaN/o <= 0: nothing).
GS_HD float alpha_reach_q(float opacity) {
  return 2.f * logf(opacity / kAlphaMin) * 1.0001f + 1e-3f;
}

// Minimum over dy in [lo, hi] of q(X, dy) = A X^2 + 2 B X dy + C dy^2 (C > 0).
GS_HD float edge_min_q(float A, float B, float C, float X, float lo, float hi) {
  const float dy = fminf(hi, fmaxf(lo, -B * X / C));
  return A * X * X + 2.f * B * X * dy + C * dy * dy;
}

// Can the Gaussian at (u, v) with conic (A, B, C) reach alpha >= kAlphaMin at a pixel centre of
// tile (tx, ty)? The minimum of the convex q over the box of pixel centres is 0 when the mean is
// inside it, else it lies on one of the four edges. Exact tile lists instead of the 3-sigma
// square's (gsplat/Inria): a small Gaussian near a tile corner no longer costs 3 extra tiles.
// Not inlined, so the counting and the emitting pass run the same instructions; the conic comes by
// value (A, B, C) so that a GPU caller passes registers, not a pointer into a local-memory frame.
GS_HD_NOINLINE bool tile_reached(float u, float v, float A, float B, float C, float qmax, int tx,
                                 int ty, int tile) {
  if (!(qmax > 0.f)) return false;
  // d = mean - pixel over pixel centres x in [tx*ts + 0.5, tx*ts + ts - 0.5]
  const float x0 = u - (tx * tile + tile - 0.5f), x1 = u - (tx * tile + 0.5f);
  const float y0 = v - (ty * tile + tile - 0.5f), y1 = v - (ty * tile + 0.5f);
  if (x0 <= 0.f && x1 >= 0.f && y0 <= 0.f && y1 >= 0.f) return true;
  float q = fminf(edge_min_q(A, B, C, x0, y0, y1), edge_min_q(A, B, C, x1, y0, y1));
  q = fminf(q, fminf(edge_min_q(C, B, A, y0, x0, x1), edge_min_q(C, B, A, y1, x0, x1)));
  return q <= qmax;
}

// Colour of one Gaussian seen from camera position `cam_pos`: SH(dir) + 0.5, clamped at 0.
// sh points at K x 3 coefficients. raw (optional) receives the unclamped value. Returns false when
// an unclamped channel is not finite, which happens exactly when an active coefficient is NaN or
// +-inf (inf * Y is inf, or NaN where Y = 0) or the sum overflows: such a Gaussian is not drawn
// (the clamp would turn NaN and -inf into a finite 0 whose backward is NaN).
GS_HD bool sh_color(int degree, const float* sh, const float* mean, const float* cam_pos, float rgb[3],
                    float raw[3]) {
  float d[3] = {mean[0] - cam_pos[0], mean[1] - cam_pos[1], mean[2] - cam_pos[2]};
  const float n = sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
  const float inv = n > 0.f ? 1.f / n : 0.f;
  float Y[16];
  sh_basis(degree, d[0] * inv, d[1] * inv, d[2] * inv, Y, nullptr);
  // Loops over all 16 slots with a guard, unrolled: constant indices keep Y (and dY) in registers
  // instead of a local-memory stack frame on the GPU.
  const int k = sh_count(degree);
  bool finite = true;
  for (int ch = 0; ch < 3; ++ch) {
    float s = 0.f;
    GS_UNROLL
    for (int i = 0; i < 16; ++i)
      if (i < k) s += Y[i] * sh[i * 3 + ch];
    s += 0.5f;
    if (raw) raw[ch] = s;
    finite = finite && isfinite(s);
    rgb[ch] = fmaxf(s, 0.f);
  }
  return finite;
}

// VJP of sh_color: accumulates into dsh (K x 3, element j at dsh[j * dsh_stride]) and dmean (3).
GS_HD void sh_color_vjp(int degree, const float* sh, const float* mean, const float* cam_pos,
                        const float drgb[3], float* dsh, float dmean[3], int dsh_stride = 1) {
  float d[3] = {mean[0] - cam_pos[0], mean[1] - cam_pos[1], mean[2] - cam_pos[2]};
  const float n = sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
  const float inv = n > 0.f ? 1.f / n : 0.f;
  const float dir[3] = {d[0] * inv, d[1] * inv, d[2] * inv};
  float Y[16], dY[16][3];
  sh_basis(degree, dir[0], dir[1], dir[2], Y, dY);
  const int k = sh_count(degree);
  float draw[3];
  for (int ch = 0; ch < 3; ++ch) {
    float s = 0.5f;
    GS_UNROLL
    for (int i = 0; i < 16; ++i)
      if (i < k) s += Y[i] * sh[i * 3 + ch];
    draw[ch] = s < 0.f ? 0.f : drgb[ch];  // clamped channels get no gradient
  }
  float ddir[3] = {0.f, 0.f, 0.f};
  GS_UNROLL
  for (int i = 0; i < 16; ++i) {
    if (i >= k) break;
    const float g = sh[i * 3 + 0] * draw[0] + sh[i * 3 + 1] * draw[1] + sh[i * 3 + 2] * draw[2];
    for (int ch = 0; ch < 3; ++ch) dsh[(i * 3 + ch) * dsh_stride] += Y[i] * draw[ch];
    ddir[0] += g * dY[i][0], ddir[1] += g * dY[i][1], ddir[2] += g * dY[i][2];
  }
  // dir = d / |d|  =>  dd = (ddir - dir (dir . ddir)) / |d|
  const float proj = dir[0] * ddir[0] + dir[1] * ddir[1] + dir[2] * ddir[2];
  for (int j = 0; j < 3; ++j) dmean[j] += (ddir[j] - dir[j] * proj) * inv;
}

// 3D covariance Sigma = M M^T, M = R(q / |q|) diag(s), as its 6 unique entries
// (xx, xy, xz, yy, yz, zz). It does not depend on the view, so a multi-view backward forms it once.
// R of the normalised quaternion and M = R diag(s); returns 1 / |q| (qn receives q / |q|).
GS_HD float rot_scale(const float* quat, const float* scale, float qn[4], M3& R, float M[3][3]) {
  const float inv = 1.f / sqrtf(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
  for (int i = 0; i < 4; ++i) qn[i] = quat[i] * inv;
  R = quat_to_rotmat(qn[0], qn[1], qn[2], qn[3]);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) M[i][j] = R.m[i][j] * scale[j];
  return inv;
}

GS_HD void cov3(const float* quat, const float* scale, float sig[6]) {
  float qn[4], M[3][3];
  M3 R;
  rot_scale(quat, scale, qn, R, M);
  const int I[6] = {0, 0, 0, 1, 1, 2}, J[6] = {0, 1, 2, 1, 2, 2};
  for (int k = 0; k < 6; ++k)
    sig[k] = M[I[k]][0] * M[J[k]][0] + M[I[k]][1] * M[J[k]][1] + M[I[k]][2] * M[J[k]][2];
}

// VJP of `project` for one view down to Sigma (only for drawn Gaussians): from dL/d(u, v),
// dL/dconic, dL/dz to dL/dmean and dL/dSigma (6 unique entries, accumulated; off-diagonal entries
// hold the sum of both symmetric positions). The camera is not differentiated.
GS_HD void project_vjp_view(const Cam& c, const float* mean, const float sig[6], float du, float dv,
                            const float dconic[3], float dz_in, float dmean[3], float dsig[6]) {
  float pc[3];
  for (int i = 0; i < 3; ++i)
    pc[i] = c.R[i][0] * mean[0] + c.R[i][1] * mean[1] + c.R[i][2] * mean[2] + c.t[i];
  const float z = pc[2];
  const float tanx = 0.5f * c.width / c.fx, tany = 0.5f * c.height / c.fy;
  const float limxp = (c.width - c.cx) / c.fx + kFovPad * tanx, limxn = c.cx / c.fx + kFovPad * tanx;
  const float limyp = (c.height - c.cy) / c.fy + kFovPad * tany, limyn = c.cy / c.fy + kFovPad * tany;
  const float rx = pc[0] / z, ry = pc[1] / z;
  const float tx = z * fminf(limxp, fmaxf(-limxn, rx));
  const float ty = z * fminf(limyp, fmaxf(-limyn, ry));
  const float J00 = c.fx / z, J02 = -c.fx * tx / (z * z), J11 = c.fy / z, J12 = -c.fy * ty / (z * z);
  float T[2][3];
  for (int j = 0; j < 3; ++j) {
    T[0][j] = J00 * c.R[0][j] + J02 * c.R[2][j];
    T[1][j] = J11 * c.R[1][j] + J12 * c.R[2][j];
  }
  const float Sig[3][3] = {{sig[0], sig[1], sig[2]}, {sig[1], sig[3], sig[4]}, {sig[2], sig[4], sig[5]}};
  float TS[2][3];  // T Sigma
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < 3; ++j) TS[r][j] = T[r][0] * Sig[0][j] + T[r][1] * Sig[1][j] + T[r][2] * Sig[2][j];
  const float a = TS[0][0] * T[0][0] + TS[0][1] * T[0][1] + TS[0][2] * T[0][2] + kEps2d;
  const float b = TS[0][0] * T[1][0] + TS[0][1] * T[1][1] + TS[0][2] * T[1][2];
  const float cc = TS[1][0] * T[1][0] + TS[1][1] * T[1][1] + TS[1][2] * T[1][2] + kEps2d;
  const float det = a * cc - b * b;
  const float Q[2][2] = {{cc / det, -b / det}, {-b / det, a / det}};
  // conic = cov^-1: dcov = -Q S Q with S the symmetric matrix of dL/dQ (off-diagonal halved).
  const float S[2][2] = {{dconic[0], 0.5f * dconic[1]}, {0.5f * dconic[1], dconic[2]}};
  float QS[2][2], G[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) QS[i][j] = Q[i][0] * S[0][j] + Q[i][1] * S[1][j];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) G[i][j] = -(QS[i][0] * Q[0][j] + QS[i][1] * Q[1][j]);
  // cov = T Sigma T^T: dSigma = T^T G T (symmetric; off-diagonals counted twice), dT = 2 G T Sigma
  const int I[6] = {0, 0, 0, 1, 1, 2}, Jx[6] = {0, 1, 2, 1, 2, 2};
  for (int k = 0; k < 6; ++k) {
    float s = 0.f;
    for (int r = 0; r < 2; ++r)
      for (int q = 0; q < 2; ++q) s += T[r][I[k]] * G[r][q] * T[q][Jx[k]];
    dsig[k] += I[k] == Jx[k] ? s : 2.f * s;
  }
  float dT[2][3];
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < 3; ++j) dT[r][j] = 2.f * (G[r][0] * TS[0][j] + G[r][1] * TS[1][j]);
  // T = J W: dJ = dT W^T (only the non-constant entries of J matter)
  const float dJ00 = dT[0][0] * c.R[0][0] + dT[0][1] * c.R[0][1] + dT[0][2] * c.R[0][2];
  const float dJ02 = dT[0][0] * c.R[2][0] + dT[0][1] * c.R[2][1] + dT[0][2] * c.R[2][2];
  const float dJ11 = dT[1][0] * c.R[1][0] + dT[1][1] * c.R[1][1] + dT[1][2] * c.R[1][2];
  const float dJ12 = dT[1][0] * c.R[2][0] + dT[1][1] * c.R[2][1] + dT[1][2] * c.R[2][2];
  const float iz = 1.f / z, iz2 = iz * iz, iz3 = iz2 * iz;
  float dpc[3] = {0.f, 0.f, 0.f};
  dpc[2] += -c.fx * iz2 * dJ00 + 2.f * c.fx * tx * iz3 * dJ02 - c.fy * iz2 * dJ11 +
            2.f * c.fy * ty * iz3 * dJ12;
  const float dtx = -c.fx * iz2 * dJ02, dty = -c.fy * iz2 * dJ12;
  // tx = z clamp(x / z): the identity inside the limits, z * limit outside.
  if (rx > limxp) dpc[2] += dtx * limxp;
  else if (rx < -limxn) dpc[2] -= dtx * limxn;
  else dpc[0] += dtx;
  if (ry > limyp) dpc[2] += dty * limyp;
  else if (ry < -limyn) dpc[2] -= dty * limyn;
  else dpc[1] += dty;
  // 2D mean and depth
  dpc[0] += c.fx * iz * du;
  dpc[1] += c.fy * iz * dv;
  dpc[2] += -c.fx * pc[0] * iz2 * du - c.fy * pc[1] * iz2 * dv + dz_in;
  for (int j = 0; j < 3; ++j) dmean[j] += c.R[0][j] * dpc[0] + c.R[1][j] * dpc[1] + c.R[2][j] * dpc[2];
}

// VJP of cov3: from dL/dSigma (as accumulated by project_vjp_view) to dL/dquat and dL/dscale
// (accumulated).
GS_HD void cov3_vjp(const float* quat, const float* scale, const float dsig[6], float dquat[4],
                    float dscale[3]) {
  float qn[4], M[3][3];
  M3 R;
  const float inv = rot_scale(quat, scale, qn, R, M);
  // back to the symmetric matrix D with dL = <D, dSigma>: off-diagonals were summed twice
  const float D[3][3] = {{dsig[0], 0.5f * dsig[1], 0.5f * dsig[2]},
                         {0.5f * dsig[1], dsig[3], 0.5f * dsig[4]},
                         {0.5f * dsig[2], 0.5f * dsig[4], dsig[5]}};
  // Sigma = M M^T: dM = 2 D M; M = R diag(s)
  M3 dR;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      const float dM = 2.f * (D[i][0] * M[0][j] + D[i][1] * M[1][j] + D[i][2] * M[2][j]);
      dR.m[i][j] = dM * scale[j];
      dscale[j] += dM * R.m[i][j];
    }
  float dqn[4];
  quat_to_rotmat_vjp(qn[0], qn[1], qn[2], qn[3], dR, dqn);
  const float dot = qn[0] * dqn[0] + qn[1] * dqn[1] + qn[2] * dqn[2] + qn[3] * dqn[3];
  for (int i = 0; i < 4; ++i) dquat[i] += (dqn[i] - qn[i] * dot) * inv;
}

// VJP of `project` for one view (only for drawn Gaussians): dL/dmean, dL/dquat, dL/dscale
// (accumulated) from dL/d(u, v), dL/dconic, dL/dz.
GS_HD void project_vjp(const Cam& c, const float* mean, const float* quat, const float* scale,
                       float du, float dv, const float dconic[3], float dz_in, float dmean[3],
                       float dquat[4], float dscale[3]) {
  float sig[6], dsig[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  cov3(quat, scale, sig);
  project_vjp_view(c, mean, sig, du, dv, dconic, dz_in, dmean, dsig);
  cov3_vjp(quat, scale, dsig, dquat, dscale);
}

// ---------------------------------------------------------------- per pixel
// Gaussian falloff exponent at pixel centre (px, py): power = -0.5 d^T Q d, d = mean - pixel.
GS_HD float pixel_power(float u, float v, const float conic[3], float px, float py) {
  const float dx = u - px, dy = v - py;
  return -0.5f * (conic[0] * dx * dx + conic[2] * dy * dy) - conic[1] * dx * dy;
}

// The raster backward's accumulators per (view, Gaussian), in the CPU and CUDA kernels alike:
// the alpha moments [0, 6) of alpha_moments, dL/dcolour [6, 9), dL/dz [9]. The per-Gaussian pass
// turns them into gradients (alpha_grads_of_moments, then the colour and projection VJPs).
constexpr int kAcc = 10;

// Backward of alpha = min(kAlphaMax, o G(d)), G = exp(p), p = -0.5 d^T Q d, d = mean - pixel,
// summed over the pixels of one Gaussian: given dal = dL/dalpha of a pixel, accumulates the moments
// m = sum (dp, dp dx, dp dy, dp dx^2, dp dx dy, dp dy^2) of dp = dL/dp = o G dal. The gradients
// w.r.t. the 2D mean, the conic and the opacity are linear in them (`alpha_grads_of_moments`), so
// a pixel costs 9 operations instead of the 16 of applying the conic per pixel (docs/METHOD.md
// §2.4). Where the clamp is active (o G > kAlphaMax), clamp_zero = false passes the gradient
// through as if alpha = o G (the 3DGS CUDA backward, which never tests the clamp); clamp_zero =
// true gives the clamp's true derivative, 0.
GS_HD void alpha_moments(float dal, float oG, float dx, float dy, float m[6], bool clamp_zero) {
  if (clamp_zero && oG > kAlphaMax) return;
  const float dp = oG * dal, px = dp * dx, py = dp * dy;
  m[0] += dp;
  m[1] += px;
  m[2] += py;
  m[3] += px * dx;
  m[4] += px * dy;
  m[5] += py * dy;
}

// The gradients of the summed moments of alpha_moments, for the conic Q = [[a, b], [b, c]] and
// opacity o the pixels saw: g[0..1] = dL/dmean2d = -Q (m1, m2), g[2..4] = dL/d(a, b, c) =
// (-m3 / 2, -m4, -m5 / 2), g[5] = dL/do = sum G dL/dalpha = m0 / o (o > 0 wherever any pixel
// contributed). g may be m.
GS_HD void alpha_grads_of_moments(const float m[6], const float conic[3], float opac, float g[6]) {
  const float m0 = m[0], m1 = m[1], m2 = m[2], m3 = m[3], m4 = m[4], m5 = m[5];
  g[0] = -(conic[0] * m1 + conic[1] * m2);
  g[1] = -(conic[1] * m1 + conic[2] * m2);
  g[2] = -0.5f * m3;
  g[3] = -m4;
  g[4] = -0.5f * m5;
  g[5] = opac > 0.f ? m0 / opac : 0.f;
}

// One step of a pixel's back-to-front pass (the backward of C = sum_k c_k alpha_k T_k + T_N bg and
// of the depth), for contributor k with transmittance T_k before it (docs/METHOD.md §2.4):
//   dL/dalpha_k = T_k gcz_k - (S_k - K) / (1 - alpha_k),
// gcz_k = dL/dC . c_k + dL/dD z_k (dL/dD: the depth gradient over the pixel's alpha),
// K = T_N (dL/dA - dL/dC . bg) and S_k = sum over the contributors j behind k of alpha_j T_j gcz_j,
// which takes in k's own term on return. One scalar S in place of the colour and depth sums
// behind k: 8 operations per pixel and contributor instead of about 20.
GS_HD float dalpha_back(float gcz, float Tk, float om, float K, float wgt, float* S) {
  const float dal = gcz * Tk + (K - *S) * om;
  *S += gcz * wgt;
  return dal;
}

// WABE visibility weight of the contributor with transmittance T before it.
GS_HD float wabe_weight(float T, float alpha, float beta) { return expf(-beta * (1.f - T)) * alpha; }

constexpr int kWabeMaxK = 32;
constexpr double kWabeScale = 16777216.0;  // per-pixel weights in [0,1] are summed as fixed point 2^-24

// Min-max range of a slot list of n <= K weights; empty slots (n < K) count as weight 0 (the
// released code's buffers start at 0).
GS_HD void wabe_range(const float* w, int n, int K, float* mn, float* mx) {
  float lo = n < K ? 0.f : w[0], hi = 0.f;
  for (int k = 0; k < n; ++k) lo = fminf(lo, w[k]), hi = fmaxf(hi, w[k]);
  *mn = lo, *mx = hi;
}

// A slot's min-max normalised weight as fixed point 2^-24: per-Gaussian sums of these are exact
// integers, so their order (threads, atomics) never changes the result.
GS_HD long long wabe_fixed(float w, float mn, float mx) {
  const double nk = (w - mn) / (mx - mn + 1e-10f);
  return llround(nk * kWabeScale);
}

}  // namespace gs
