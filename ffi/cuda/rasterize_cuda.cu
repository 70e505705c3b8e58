// CUDA kernels of the WABE Gaussian rasterizer, bound as XLA FFI handlers (platform "CUDA").
//
// Same stages, math (gaedit/gs_math.h) and residual layout as the CPU kernels, so a forward on one
// device and a backward on another would agree. No host synchronisation and no device-to-host
// copy: the intersection list has a static capacity (padding keys sort to the end) and scratch is
// an explicit workspace output sized at trace time, so the handlers are command-buffer compatible.
//
// forward:  project (+SH) -> exclusive scan of tile counts -> emit (view|tile|depth) keys ->
//           radix sort (stable: equal depths keep Gaussian order, as on the CPU) -> tile ranges ->
//           per-tile compositing with per-pixel WABE slots -> WABE weights.
// backward: per-tile back-to-front pass, warp-level reduction before one atomic per warp and
//           Gaussian -> per-Gaussian projection/SH VJP (one thread per Gaussian over all views).

#include <cuda_runtime.h>

#include <algorithm>
#include <cub/cub.cuh>
#include <cstdlib>
#include <string>
#include <vector>

#include "gaedit/batch.h"
#include "gaedit/ffi_args.h"
#include "gaedit/gs_math.h"
#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using gs::BatchIndex;


namespace {

using gs::kAcc;

using DevInputs = gs::Inputs;

struct DevStatic {
  int width, height, tile, degree, wabe_k, gx, gy;
  float near_plane, wabe_beta;
  bool alpha_clamp_zero;  // backward: no gradient where alpha = min(0.99, o G) is clamped
};

// a / b (remainder in *r) for a >= 0, b > 0: a 32-bit division whenever both fit, since a 64-bit
// one is a long software routine on the GPU and kernels take their indices apart this way per thread.
__device__ __forceinline__ int64_t divmod(int64_t a, int64_t b, int64_t* r) {
  const int64_t q = ((uint64_t)a | (uint64_t)b) >> 32 ? a / b : (int64_t)((uint32_t)a / (uint32_t)b);
  *r = a - q * b;
  return q;
}

// Copies the first n floats of rows [0, nb) of `src` (rows of W floats) into s[row][0, n), all the
// block's threads together so that consecutive threads read consecutive addresses: a thread
// reading its own row alone would touch one sector per float. Rows padded to P floats (P odd) make
// a thread's later reads of its own row s[threadIdx.x][i] free of bank conflicts.
template <int P>
__device__ __forceinline__ void stage_rows(const float* src, int nb, int W, int n, float (*s)[P]) {
  int row = threadIdx.x / n, i = threadIdx.x % n;
  const int drow = blockDim.x / n, di = blockDim.x % n;
  for (int e = threadIdx.x; e < nb * n; e += blockDim.x) {
    s[row][i] = src[row * W + i];
    row += drow, i += di;
    if (i >= n) i -= n, ++row;
  }
}

constexpr int kShRow = 49;  // a staged SH row: up to 48 coefficients and one float of padding

__device__ __forceinline__ gs::Cam cam_of(const DevInputs& in, const DevStatic& st, int64_t v) {
  return gs::make_cam(in.viewmat + 16 * in.i_viewmat(v), in.intr + 4 * in.i_intr(v), st.width,
                      st.height);
}

// ------------------------------------------------------------------------------------ forward
constexpr int kProjBlock = 128;

// The GPU's shape for launch choices, asked of the driver once per process (host side only).
struct GpuShape {
  int sms = 0, threads_per_sm = 0;
};
static const GpuShape& gpu_shape() {
  static const GpuShape g = [] {
    GpuShape r;
    int dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&r.sms, cudaDevAttrMultiProcessorCount, dev);
    cudaDeviceGetAttribute(&r.threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, dev);
    return r;
  }();
  return g;
}

// Views a projection block takes its Gaussians through: all of them while the grid still gives
// every SM 4 blocks, fewer (more blocks, the views split into groups) for small N.
int project_views_per_block(int64_t V, int64_t N) {
  const int64_t sms = gpu_shape().sms;
  const int64_t nblk = (N + kProjBlock - 1) / kProjBlock;
  const int64_t groups = std::min<int64_t>(V, std::max<int64_t>(1, (4 * sms + nblk - 1) / nblk));
  return (int)((V + groups - 1) / groups);
}

// A block takes kProjBlock consecutive Gaussians through `vpb` consecutive views. Their parameters
// come from DRAM once, and their SH coefficients (192 B per Gaussian) are staged in shared memory
// once per input SH slice, so once in all when the views share them, instead of once per view.
// Block order: the view groups of one Gaussian block are neighbours (they share what L2 holds).
// At most 80 registers (6 blocks per SM): with the view loop the compiler takes 95 (61 without),
// which costs a single view, where the kernel waits on its loads, a quarter of its resident warps.
__global__ void __launch_bounds__(kProjBlock, 6) project_kernel(DevInputs in, DevStatic st, int vpb,
                                                                int32_t* radii, float* means2d,
                                                                float* conic_opac, float* colors,
                                                                float* zs, int32_t* counts) {
  const int64_t N = in.N, groups = (in.V + vpb - 1) / vpb;
  int64_t grp;
  const int64_t g0 = divmod(blockIdx.x, groups, &grp) * kProjBlock, g = g0 + threadIdx.x;
  const bool valid = g < N;  // threads past N stay for the block's barriers (staging)
  const int nb = (int)min((int64_t)kProjBlock, N - g0), W = (int)(3 * in.K);
  const int nsh = 3 * gs::sh_count(st.degree);
  __shared__ float s_sh[kProjBlock][kShRow];
  int64_t sh_row = -1;  // the input SH slice staged in s_sh
  const int64_t v_end = min(in.V, (grp + 1) * vpb);
  for (int64_t v = grp * vpb; v < v_end; ++v) {
    const int64_t ish = in.i_sh(v);
    if (ish != sh_row) {  // uniform over the block
      __syncthreads();    // the previous slice's readers are done
      stage_rows(in.sh + (ish * N + g0) * W, nb, W, nsh, s_sh);
      __syncthreads();
      sh_row = ish;
    }
    if (!valid) continue;
    const int64_t vg = v * N + g;
    const gs::Cam cam = cam_of(in, st, v);
    const float* mean = in.means + 3 * (in.i_means(v) * N + g);
    const float op = in.opac[in.i_opac(v) * N + g];
    gs::Projected p = gs::project(cam, mean, in.quats + 4 * (in.i_quats(v) * N + g),
                                  in.scales + 3 * (in.i_scales(v) * N + g), op,
                                  in.offset + 2 * (in.i_offset(v) * N + g), st.near_plane, st.tile);
    float rgb[3] = {0.f, 0.f, 0.f};
    if (p.radius > 0 && !gs::sh_color(st.degree, s_sh[threadIdx.x], mean, cam.pos, rgb, nullptr)) {
      rgb[0] = rgb[1] = rgb[2] = 0.f;  // a non-finite active SH coefficient: not drawn
      p.radius = 0;
    }
    const bool on = p.radius > 0;
    radii[vg] = p.radius;
    // one 8- and one 16-byte store (XLA's buffers are aligned): whole sectors instead of strided words
    reinterpret_cast<float2*>(means2d)[vg] = on ? make_float2(p.u, p.v) : make_float2(0.f, 0.f);
    reinterpret_cast<float4*>(conic_opac)[vg] =
        on ? make_float4(p.conic[0], p.conic[1], p.conic[2], op) : make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j = 0; j < 3; ++j) colors[3 * vg + j] = rgb[j];
    zs[vg] = on ? p.z : 0.f;
    int n = 0;
    if (on) {
      const float qmax = gs::alpha_reach_q(op), A = p.conic[0], B = p.conic[1], C = p.conic[2];
      for (int ty = p.rect[1]; ty < p.rect[3]; ++ty)
        for (int tx = p.rect[0]; tx < p.rect[2]; ++tx) n += gs::tile_reached(p.u, p.v, A, B, C, qmax, tx, ty, st.tile);
    }
    counts[vg] = n;
  }
}

// Sort keys: (view * T + tile) << kDepthBits | the depth's float bits. Drawn depths are positive
// floats (z > near_plane > 0), whose bit patterns order like the numbers and have the sign bit 0:
// 31 bits keep the exact order, and the radix sort makes one pass fewer whenever that brings the
// key under a multiple of 8 bits (16 views of 550 x 802 in 8 x 8 tiles: 49 -> 48 bits, 7 -> 6).
constexpr int kDepthBits = 31;
constexpr uint64_t kDepthMask = (uint64_t(1) << kDepthBits) - 1;

// Writes exactly counts[vg] keys (the tiles that pass gs::tile_reached, as counted by
// project_kernel; should the two passes ever disagree, the slots stay padding or the extra tiles are
// dropped, never another Gaussian's slots).
__global__ void emit_kernel(int64_t VN, int64_t N, DevStatic st, const int32_t* radii,
                            const float* means2d, const float* conic_opac, const float* zs,
                            const int32_t* offsets, const int32_t* counts, int64_t cap, uint64_t* keys,
                            int32_t* vals) {
  const int64_t vg = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (vg >= VN || radii[vg] <= 0) return;
  int64_t g;
  const int64_t v = divmod(vg, N, &g);
  int r[4];
  const float2 uv = reinterpret_cast<const float2*>(means2d)[vg];
  const float4 co = reinterpret_cast<const float4*>(conic_opac)[vg];
  const float u = uv.x, vv = uv.y;
  gs::tile_rect(u, vv, (float)radii[vg], st.width, st.height, st.tile, r);  // as gs::project's
  const float qmax = gs::alpha_reach_q(co.w);
  const int64_t T = (int64_t)st.gx * st.gy;
  const uint32_t zbits = __float_as_uint(zs[vg]);  // z > 0: float order == integer order
  int64_t idx = offsets[vg];
  const int64_t end = min(cap, idx + counts[vg]);
  for (int ty = r[1]; ty < r[3]; ++ty)
    for (int tx = r[0]; tx < r[2]; ++tx) {
      if (idx >= end) return;
      if (!gs::tile_reached(u, vv, co.x, co.y, co.z, qmax, tx, ty, st.tile)) continue;
      keys[idx] = ((uint64_t)(v * T + (int64_t)ty * st.gx + tx) << kDepthBits) | zbits;
      vals[idx] = (int32_t)g;
      ++idx;
    }
}

// Every slot starts as a key that sorts after every real one; emit_kernel overwrites the used ones.
__global__ void pad_kernel(int64_t cap, uint64_t pad_key, uint64_t* keys, int32_t* vals) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < cap) keys[i] = pad_key, vals[i] = 0;
}

__global__ void overflow_kernel(int64_t V, int64_t N, const int32_t* offsets, const int32_t* counts,
                                int64_t cap, int32_t* overflow) {
  const int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (v >= V) return;
  // offsets is the exclusive scan over all views' Gaussians, so the end of view v is the pool's
  // fill after v; the output packs view v's own count and the overflow bit (gs::pack_isect).
  const int64_t last = v * N + N - 1;
  const int64_t end = (int64_t)offsets[last] + counts[last];
  const int64_t begin = v == 0 ? 0 : (int64_t)offsets[v * N - 1] + counts[v * N - 1];
  overflow[v] = gs::pack_isect(end - begin, end > cap);
}

__global__ void ranges_kernel(int64_t cap, int64_t VT, const uint64_t* keys, int32_t* ranges) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= cap) return;
  const int64_t t = (int64_t)(keys[i] >> kDepthBits);
  if (t >= VT) {  // first padding slot closes the last real tile
    if (i > 0) {
      const int64_t tp = (int64_t)(keys[i - 1] >> kDepthBits);
      if (tp < VT) ranges[2 * tp + 1] = (int32_t)i;
    }
    return;
  }
  if (i == 0 || (int64_t)(keys[i - 1] >> kDepthBits) != t) ranges[2 * t] = (int32_t)i;
  if (i == cap - 1 || (int64_t)(keys[i + 1] >> kDepthBits) != t) ranges[2 * t + 1] = (int32_t)i + 1;
}

constexpr int kBlock = 256;  // pixel slots of the largest tile (16 x 16)
// The compositing kernels' shared-memory rows (one per pixel slot of a batch) come in two sizes:
// kSmallRows for tiles up to 8 x 8, kBlock above. Rows sized for 16 x 16 tiles would hold a block
// of 8 x 8 tiles to 16 per SM by shared memory alone (13 KB each) and leave the latency of the
// serial walk uncovered; sized to the tile, registers set the limit (24 blocks at 16 views).
constexpr int kSmallRows = 64;
inline int rows_for(int slots) { return slots <= kSmallRows ? kSmallRows : kBlock; }

// Rows [lo, hi] (pixel-centre y) outside which the Gaussian cannot reach alpha >= kAlphaMin: the
// ellipse d^T Q d <= qmax spans |dy| <= sqrt(qmax (Q^-1)_yy) = sqrt(qmax A / det Q). A warp whose
// pixel rows all lie outside skips the Gaussian with one uniform test instead of per-pixel math;
// the margin in alpha_reach_q keeps this exact. lo > hi: reaches no pixel.
__device__ __forceinline__ float2 reach_rows(float2 uv, float4 co) {
  const float qmax = gs::alpha_reach_q(co.w), det = co.x * co.z - co.y * co.y;
  const float e = (qmax > 0.f && det > 0.f) ? sqrtf(qmax * co.x / det) : -1.f;
  return make_float2(uv.y - e, uv.y + e);
}

// Pixel-centre rows [lo, hi] of the 32 consecutive pixel slots from `slot0` of a tile at row y0.
__device__ __forceinline__ float2 warp_rows(int y0, int slot0, int ts) {
  return make_float2(y0 + slot0 / ts + 0.5f, y0 + (slot0 + 31) / ts + 0.5f);
}

__device__ __forceinline__ bool rows_meet(float2 a, float2 b) { return a.x <= b.y && b.x <= a.y; }

// Stages Gaussian g of a view (m2, cop, cols, zv: that view's rows of the projected records) in
// slot `s` of a compositing block's shared rows, with the pixel rows it can reach.
__device__ __forceinline__ void stage_gaussian(const float* m2, const float* cop, const float* cols,
                                               const float* zv, int32_t g, int s, float2* s_uv,
                                               float4* s_co, float4* s_col, float2* s_rows) {
  s_uv[s] = reinterpret_cast<const float2*>(m2)[g];
  s_co[s] = reinterpret_cast<const float4*>(cop)[g];
  s_col[s] = make_float4(cols[3 * g], cols[3 * g + 1], cols[3 * g + 2], zv[g]);
  s_rows[s] = reach_rows(s_uv[s], s_co[s]);
}

// alpha = min(0.99, o exp(power)) of a Gaussian at pixel centre (px, py), or 0 where it does not
// contribute (power > 0, or alpha < 1/255): the same test in every forward kernel.
__device__ __forceinline__ float fwd_alpha(float2 uv, float4 co4, float px, float py) {
  const float co[3] = {co4.x, co4.y, co4.z};
  const float power = gs::pixel_power(uv.x, uv.y, co, px, py);
  if (power > 0.f) return 0.f;
  const float a = fminf(gs::kAlphaMax, co4.w * __expf(power));
  return a < gs::kAlphaMin ? 0.f : a;
}

// A pixel's forward outputs: C + T_N bg, alpha 1 - T_N, depth D / alpha, T_N and its last
// contributor (+1).
struct FwdOut {
  float* image;
  float* alpha;
  float* depth;
  float* final_T;
  int32_t* last;
};

__device__ __forceinline__ void write_pixel(const DevInputs& in, const DevStatic& st, const FwdOut& o,
                                            int64_t v, int x, int y, float Tr, const float C[3],
                                            float D, int32_t lastp) {
  const int64_t pix = v * (int64_t)st.width * st.height + (int64_t)y * st.width + x;
  const float* bg = in.bg + 3 * in.i_bg(v);
  for (int ch = 0; ch < 3; ++ch) o.image[3 * pix + ch] = C[ch] + Tr * bg[ch];
  const float A = 1.f - Tr;
  o.alpha[pix] = A;
  o.depth[pix] = A > 0.f ? D / A : 0.f;
  o.final_T[pix] = Tr;
  o.last[pix] = lastp;
}

// Adds a pixel's WABE slots (Gaussians sid of view row vN, weights sw) to the per-Gaussian fixed-
// point sums, each weight normalised by the pixel's range (gs::wabe_range).
__device__ __forceinline__ void flush_wabe_slots(int64_t vN, const int32_t* sid, const float* sw,
                                                 int nslot, int WK, unsigned long long* wabe_sum,
                                                 int32_t* wabe_count) {
  if (nslot == 0) return;
  float mn, mx;
  gs::wabe_range(sw, nslot, WK, &mn, &mx);
  for (int k = 0; k < nslot; ++k) {
    atomicAdd(&wabe_sum[vN + sid[k]], (unsigned long long)gs::wabe_fixed(sw[k], mn, mx));
    atomicAdd(&wabe_count[vN + sid[k]], 1);
  }
}

// kTile: WABE slots per tile instead of per pixel (definition: the CPU kernel's `forward`). The
// tile's slots are filled batch by batch: every pixel that accepts a batch Gaussian raises its
// shared max weight (atomicMax on the bits of a float >= 0, order-independent), then one thread
// appends the batch's accepted Gaussians in list order while slots remain. Deterministic.
template <bool kTile, int kRows>
__global__ void __launch_bounds__(kRows) raster_fwd_kernel(
    DevInputs in, DevStatic st, const float* means2d, const float* conic_opac, const float* colors,
    const float* zs, const int32_t* isect, const int32_t* ranges, FwdOut out,
    unsigned long long* wabe_sum, int32_t* wabe_count) {
  const int64_t vt = blockIdx.x;
  const int64_t T = (int64_t)st.gx * st.gy;
  int64_t t, tx;
  const int64_t v = divmod(vt, T, &t), ty = divmod(t, st.gx, &tx);
  const int ts = st.tile, tid = threadIdx.x;
  const int x = (int)tx * ts + tid % ts, y = (int)ty * ts + tid / ts;
  const bool inside = tid < ts * ts && x < st.width && y < st.height;
  const int32_t start = ranges[2 * vt], end = ranges[2 * vt + 1];
  const int64_t N = in.N;
  const float* m2 = means2d + 2 * v * N;
  const float* cop = conic_opac + 4 * v * N;
  const float* cols = colors + 3 * v * N;
  const float* zv = zs + v * N;
  __shared__ int32_t s_id[kRows];
  __shared__ float2 s_uv[kRows];
  __shared__ float4 s_co[kRows];    // conic, opacity
  __shared__ float4 s_col[kRows];   // rgb, z
  __shared__ float2 s_rows[kRows];  // reach_rows
  __shared__ int s_hitw[kTile ? kRows : 1];  // max weight bits of a batch Gaussian, -1: no pixel
  __shared__ int32_t s_tsid[kTile ? gs::kWabeMaxK : 1];
  __shared__ float s_tsw[kTile ? gs::kWabeMaxK : 1];
  __shared__ int s_ntile;
  const float2 wrows = warp_rows((int)ty * ts, tid & ~31, ts);
  float Tr = 1.f, C[3] = {0.f, 0.f, 0.f}, D = 0.f;
  int32_t lastp = start, nslot = 0;
  bool done = !inside;
  const int WK = st.wabe_k;
  int32_t sid[kTile ? 1 : gs::kWabeMaxK];
  float sw[kTile ? 1 : gs::kWabeMaxK];
  const float px = x + 0.5f, py = y + 0.5f;
  const int nth = blockDim.x;  // one pixel slot per thread (>= the tile's pixels, a multiple of 32)
  if (kTile && tid == 0) s_ntile = 0;
  for (int32_t b0 = start; b0 < end; b0 += nth) {
    if (__syncthreads_count(done) == nth) break;
    const int32_t j = b0 + tid;
    if (kTile) s_hitw[tid] = -1;
    if (j < end) {
      s_id[tid] = isect[j];
      stage_gaussian(m2, cop, cols, zv, s_id[tid], tid, s_uv, s_co, s_col, s_rows);
    }
    __syncthreads();
    const int cnt = min(nth, end - b0);
    const bool tile_slot = kTile && s_ntile < WK;  // uniform: the tile still has free slots
    for (int k = 0; k < cnt && !done; ++k) {
      if (!rows_meet(s_rows[k], wrows)) continue;  // uniform over the warp
      const float a = fwd_alpha(s_uv[k], s_co[k], px, py);
      if (a == 0.f) continue;
      const float4 c4 = s_col[k];
      const float nT = Tr * (1.f - a);
      if (nT < gs::kTMin) {
        done = true;
        break;
      }
      const float w = a * Tr;
      C[0] += c4.x * w, C[1] += c4.y * w, C[2] += c4.z * w;
      D += c4.w * w;
      if (tile_slot) {
        atomicMax(&s_hitw[k], __float_as_int(gs::wabe_weight(Tr, a, st.wabe_beta)));
      } else if (!kTile && nslot < WK) {
        sid[nslot] = s_id[k];
        sw[nslot] = gs::wabe_weight(Tr, a, st.wabe_beta);
        ++nslot;
      }
      Tr = nT;
      lastp = b0 + k + 1;
    }
    if (tile_slot) {
      __syncthreads();
      if (tid == 0) {
        int n = s_ntile;
        for (int k = 0; k < cnt && n < WK; ++k)
          if (s_hitw[k] >= 0) s_tsid[n] = s_id[k], s_tsw[n] = __int_as_float(s_hitw[k]), ++n;
        s_ntile = n;
      }
    }
  }
  if (kTile) {  // the tile's pixels inside the image all carry the tile's slots
    __syncthreads();
    const int n = s_ntile;
    if (tid < n) {
      const int x0 = (int)tx * ts, y0 = (int)ty * ts;
      const long long npix = (long long)min(ts, st.width - x0) * min(ts, st.height - y0);
      float mn, mx;
      gs::wabe_range(s_tsw, n, WK, &mn, &mx);
      const int64_t vg = v * N + s_tsid[tid];
      atomicAdd(&wabe_sum[vg], (unsigned long long)(npix * gs::wabe_fixed(s_tsw[tid], mn, mx)));
      atomicAdd(&wabe_count[vg], (int)npix);
    }
  }
  if (!inside) return;
  write_pixel(in, st, out, v, x, y, Tr, C, D, lastp);
  if (!kTile) flush_wabe_slots(v * N, sid, sw, nslot, WK, wabe_sum, wabe_count);
}

// ---- chunks: a tile's list cut into pieces of `chunk` entries, one block each (the split forward
// and backward). With few tiles in the call (a single view) one block per tile leaves most SMs
// idle while the longest lists set the kernel's time. Chunks are numbered by an exclusive scan of
// the tiles' chunk counts (chunk_off[VT] = total); grids are launched for an upper bound
// (max_chunks: cap / chunk + VT) and blocks past the total return.

// The (view, tile) whose chunks hold block b: the last vt with chunk_off[vt] <= b.
__device__ __forceinline__ int64_t chunk_tile(const int32_t* off, int64_t VT, int64_t b) {
  int64_t lo = 0, hi = VT;  // off[lo] <= b < off[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (off[mid] <= b) lo = mid;
    else hi = mid;
  }
  return lo;
}

__global__ void chunk_count_kernel(int64_t VT, const int32_t* ranges, int chunk, int32_t* cnt) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i > VT) return;
  cnt[i] = i == VT ? 0 : (ranges[2 * i + 1] - ranges[2 * i] + chunk - 1) / chunk;
}

// Split forward (docs/METHOD.md §2.4). Front-to-back compositing is a product of per-chunk maps:
// from T = 1, chunk c alone gives P_c = prod (1 - alpha_j), C_c = sum c_j alpha_j T_j^c and
// D_c = sum z_j alpha_j T_j^c; entered at T, it adds T C_c and T D_c and leaves T P_c. Passes:
//   fwd_chunk_kernel:   per (chunk, pixel), all chunks at once, without the stopping rule:
//                       (P_c, C_c, D_c), the contributor count n_c, the last contributor + 1 and the
//                       first R contributors (ChunkRecs, R = min(K, kMaxRecs) with WABE slots, else 0);
//   fwd_combine_kernel: per (tile, pixel), the chunks in order, each taken from its sums and records
//                       except where it must be walked again entry by entry from the true T, as the
//                       whole-tile kernel does: where T P_c lies within kStopMargin of kTMin (the
//                       sums cannot tell whether the stopping rule acts), or where the pixel's free
//                       WABE slots outnumber the chunk's records (K > kMaxRecs). The chunk where the
//                       stopping rule acts is left to
//   fwd_stop_kernel:    per (chunk, pixel), the pixels whose walk stops in that chunk, so that the
//                       several stopping chunks of a tile's pixels are walked by several blocks.
// A contributor record holds the Gaussian's id, T^c before it and its alpha: a pixel still filling
// its slots on entering the chunk at T takes weight(T T^c, alpha) from it, and where the chunk stops
// the pixel, tests the rule on T T^c (1 - alpha) record by record. With R >= K, no chunk is walked
// for its slots: a tile whose pixels fill their slots over a long list would otherwise walk most of
// it in one block.
constexpr int kMaxRecs = 10;
inline int chunk_recs(int wabe_k) { return wabe_k < kMaxRecs ? wabe_k : kMaxRecs; }
struct ChunkRecs {
  int32_t* id;  // [chunk][record][pixel slot]
  float2* ta;   // T^c before the contributor, its alpha
  int n;        // records per (chunk, pixel): R
};

template <int kRows>
__global__ void __launch_bounds__(kRows) fwd_chunk_kernel(
    DevInputs in, DevStatic st, const float* means2d, const float* conic_opac, const float* colors,
    const float* zs, const int32_t* isect, const int32_t* ranges, const int32_t* chunk_off,
    int64_t VT, int chunk, float4* sum_c, float4* sum_d, ChunkRecs recs) {
  const int64_t b = blockIdx.x;
  if (b >= chunk_off[VT]) return;
  const int64_t vt = chunk_tile(chunk_off, VT, b), T = (int64_t)st.gx * st.gy, N = in.N;
  int64_t t, tx;
  const int64_t v = divmod(vt, T, &t), ty = divmod(t, st.gx, &tx);
  const int ts = st.tile, tid = threadIdx.x, slots = ts * ts;
  const int32_t lo = ranges[2 * vt] + (int32_t)(b - chunk_off[vt]) * chunk;
  const int32_t hi = min(ranges[2 * vt + 1], lo + chunk);
  const int x = (int)tx * ts + tid % ts, y = (int)ty * ts + tid / ts;
  const bool inside = tid < slots && x < st.width && y < st.height;
  const float* m2 = means2d + 2 * v * N;
  const float* cop = conic_opac + 4 * v * N;
  const float* cols = colors + 3 * v * N;
  const float* zv = zs + v * N;
  __shared__ float2 s_uv[kRows];
  __shared__ float4 s_co[kRows];
  __shared__ float4 s_col[kRows];
  __shared__ float2 s_rows[kRows];
  const float2 wrows = warp_rows((int)ty * ts, tid & ~31, ts);
  const float px = x + 0.5f, py = y + 0.5f;
  float Tl = 1.f, C[3] = {0.f, 0.f, 0.f}, D = 0.f;
  int32_t n = 0, lastc = 0;
  const int nth = blockDim.x;
  __shared__ int32_t s_id[kRows];
  for (int32_t b0 = lo; b0 < hi; b0 += nth) {
    __syncthreads();
    const int32_t j = b0 + tid;
    if (j < hi) {
      s_id[tid] = isect[j];
      stage_gaussian(m2, cop, cols, zv, s_id[tid], tid, s_uv, s_co, s_col, s_rows);
    }
    __syncthreads();
    const int cnt = min(nth, hi - b0);
    for (int k = 0; k < cnt; ++k) {
      if (!rows_meet(s_rows[k], wrows)) continue;  // uniform over the warp
      const float a = inside ? fwd_alpha(s_uv[k], s_co[k], px, py) : 0.f;
      if (a == 0.f) continue;
      const float4 c4 = s_col[k];
      const float w = a * Tl;
      C[0] += c4.x * w, C[1] += c4.y * w, C[2] += c4.z * w;
      D += c4.w * w;
      if (n < recs.n) {
        const int64_t r = (b * recs.n + n) * slots + tid;
        recs.id[r] = s_id[k], recs.ta[r] = make_float2(Tl, a);
      }
      Tl *= 1.f - a;
      ++n, lastc = b0 + k + 1;
    }
  }
  if (tid < slots) {
    sum_c[b * slots + tid] = make_float4(Tl, C[0], C[1], C[2]);
    sum_d[b * slots + tid] = make_float4(D, __int_as_float(n), __int_as_float(lastc), 0.f);
  }
}

// T P_c is a chunk's final transmittance up to rounding (a relative 1e-5 for 128 factors), so the
// stopping rule cannot act in a chunk with T P_c >= kTMin (1 + kStopMargin), and acts for certain
// in one with T P_c < kTMin (1 - kStopMargin); the combine pass walks the chunks in between itself.
constexpr float kStopMargin = 1e-3f;

// A pixel's compositing state at the start of the chunk where its walk stops (fwd_stop_kernel).
struct FwdStop {
  float4* tc;      // T, C
  float2* dl;      // D, last contributor + 1 (int bits)
  int32_t* chunk;  // the tile's chunk index, -1 where the combine pass finished the pixel
};

// One block per (view, tile), one thread per pixel slot. The chunks are taken in order by the
// whole block: a chunk some pixel must walk is staged in shared memory once (its entries read
// together, as in the whole-tile kernel) and walked by those pixels only; a pixel walking its
// chunk from global memory on its own would wait on a chain of dependent gathers.
template <int kRows>
__global__ void __launch_bounds__(kRows) fwd_combine_kernel(
    DevInputs in, DevStatic st, const float* means2d, const float* conic_opac, const float* colors,
    const float* zs, const int32_t* isect, const int32_t* ranges, const int32_t* chunk_off, int chunk,
    const float4* sum_c, const float4* sum_d, ChunkRecs recs, FwdOut out, FwdStop stop,
    unsigned long long* wabe_sum, int32_t* wabe_count) {
  const int64_t vt = blockIdx.x, T = (int64_t)st.gx * st.gy, N = in.N;
  int64_t t, tx;
  const int64_t v = divmod(vt, T, &t), ty = divmod(t, st.gx, &tx);
  const int ts = st.tile, tid = threadIdx.x, slots = ts * ts;
  const int x = (int)tx * ts + tid % ts, y = (int)ty * ts + tid / ts;
  const bool inside = tid < slots && x < st.width && y < st.height;
  const float* m2 = means2d + 2 * v * N;
  const float* cop = conic_opac + 4 * v * N;
  const float* cols = colors + 3 * v * N;
  const float* zv = zs + v * N;
  __shared__ int32_t s_id[kRows];
  __shared__ float2 s_uv[kRows];
  __shared__ float4 s_co[kRows];
  __shared__ float4 s_col[kRows];
  __shared__ float2 s_rows[kRows];
  const float2 wrows = warp_rows((int)ty * ts, tid & ~31, ts);
  const float px = x + 0.5f, py = y + 0.5f;
  const int32_t start = ranges[2 * vt], end = ranges[2 * vt + 1];
  const int32_t c0 = chunk_off[vt], nc = chunk_off[vt + 1] - c0;
  const int WK = st.wabe_k, nth = blockDim.x;
  float Tr = 1.f, C[3] = {0.f, 0.f, 0.f}, D = 0.f;
  int32_t lastp = start, nslot = 0;
  int32_t sid[gs::kWabeMaxK];
  float sw[gs::kWabeMaxK];
  bool done = !inside;
  int32_t stop_c = -1;
  for (int32_t c = 0; c < nc; ++c) {
    bool walk = false;
    if (!done) {
      const int64_t e = (int64_t)(c0 + c) * slots + tid;
      const float4 sd = sum_d[e];
      const int32_t n_c = __float_as_int(sd.y);
      if (n_c > 0) {  // else no contributor: P_c = 1, sums 0
        const float4 sc = sum_c[e];
        const float Tend = Tr * sc.x;
        // the stopping rule acts in this chunk for certain (stops), or cannot act in it
        const bool stops = Tend < gs::kTMin * (1.f - kStopMargin);
        walk = !stops && Tend < gs::kTMin * (1.f + kStopMargin);
        if (!walk && nslot < WK) {  // the pixel's next slots from the chunk's records, in order
          const int nslot0 = nslot, nrec = min(n_c, recs.n);
          bool stopped = false;
          for (int r = 0; r < nrec && nslot < WK && !walk; ++r) {
            const int64_t ri = ((int64_t)(c0 + c) * recs.n + r) * slots + tid;
            const float2 ta = recs.ta[ri];
            const float Tb = Tr * ta.x;
            if (stops) {  // the rule on T T^c (1 - alpha): acts, cannot act, or too close to tell
              const float nT = Tb * (1.f - ta.y);
              stopped = nT < gs::kTMin * (1.f - kStopMargin);
              walk = !stopped && nT < gs::kTMin * (1.f + kStopMargin);
              if (stopped || walk) break;
            }
            sid[nslot] = recs.id[ri], sw[nslot] = gs::wabe_weight(Tb, ta.y, st.wabe_beta), ++nslot;
          }
          // records exhausted with slots free: more contributors than records (K > kMaxRecs), or
          // (rounding) a stopping chunk whose stop the records do not show
          if (!stopped && nslot < WK && (n_c > nrec || stops)) walk = true;
          if (walk) nslot = nslot0;  // the walk fills them again from the true T
        }
        if (!walk && stops) {
          stop_c = c, done = true;  // fwd_stop_kernel composites the chunk
        } else if (!walk) {
          C[0] += Tr * sc.y, C[1] += Tr * sc.z, C[2] += Tr * sc.w;
          D += Tr * sd.x;
          Tr = Tend;
          lastp = __float_as_int(sd.z);
        }
      }
    }
    if (!__syncthreads_or(walk)) continue;
    const int32_t lo = start + c * chunk, hi = min(end, lo + chunk);
    for (int32_t b0 = lo; b0 < hi; b0 += nth) {
      __syncthreads();
      const int32_t j = b0 + tid;
      if (j < hi) {
        s_id[tid] = isect[j];
        stage_gaussian(m2, cop, cols, zv, s_id[tid], tid, s_uv, s_co, s_col, s_rows);
      }
      __syncthreads();
      const int cnt = min(nth, hi - b0);
      for (int k = 0; k < cnt && walk; ++k) {
        if (!rows_meet(s_rows[k], wrows)) continue;  // uniform over the warp
        const float a = fwd_alpha(s_uv[k], s_co[k], px, py);
        if (a == 0.f) continue;
        const float4 c4 = s_col[k];
        const float nT = Tr * (1.f - a);
        if (nT < gs::kTMin) {
          done = true, walk = false;
          break;
        }
        const float w = a * Tr;
        C[0] += c4.x * w, C[1] += c4.y * w, C[2] += c4.z * w;
        D += c4.w * w;
        if (nslot < WK) sid[nslot] = s_id[k], sw[nslot] = gs::wabe_weight(Tr, a, st.wabe_beta), ++nslot;
        Tr = nT;
        lastp = b0 + k + 1;
      }
    }
    __syncthreads();  // the staged rows are read before the next chunk's staging
  }
  if (tid < slots) stop.chunk[vt * slots + tid] = stop_c;
  if (!inside) return;
  flush_wabe_slots(v * N, sid, sw, nslot, WK, wabe_sum, wabe_count);  // complete before the stop chunk
  if (stop_c < 0) {
    write_pixel(in, st, out, v, x, y, Tr, C, D, lastp);
  } else {
    stop.tc[vt * slots + tid] = make_float4(Tr, C[0], C[1], C[2]);
    stop.dl[vt * slots + tid] = make_float2(D, __int_as_float(lastp));
  }
}

// One block per chunk, one thread per pixel slot: the pixels whose walk stops in this chunk walk it
// from the state the combine pass left, to the stopping rule, and write their outputs.
template <int kRows>
__global__ void __launch_bounds__(kRows) fwd_stop_kernel(
    DevInputs in, DevStatic st, const float* means2d, const float* conic_opac, const float* colors,
    const float* zs, const int32_t* isect, const int32_t* ranges, const int32_t* chunk_off,
    int64_t VT, int chunk, FwdStop stop, FwdOut out) {
  const int64_t b = blockIdx.x;
  if (b >= chunk_off[VT]) return;
  const int64_t vt = chunk_tile(chunk_off, VT, b), T = (int64_t)st.gx * st.gy, N = in.N;
  int64_t t, tx;
  const int64_t v = divmod(vt, T, &t), ty = divmod(t, st.gx, &tx);
  const int ts = st.tile, tid = threadIdx.x, slots = ts * ts;
  const int32_t c = (int32_t)(b - chunk_off[vt]);
  const int x = (int)tx * ts + tid % ts, y = (int)ty * ts + tid / ts;
  const bool inside = tid < slots && x < st.width && y < st.height;
  bool walk = inside && stop.chunk[vt * slots + tid] == c;
  if (!__syncthreads_or(walk)) return;
  float Tr = 1.f, C[3] = {0.f, 0.f, 0.f}, D = 0.f;
  int32_t lastp = 0;
  if (walk) {
    const float4 tc = stop.tc[vt * slots + tid];
    const float2 dl = stop.dl[vt * slots + tid];
    Tr = tc.x, C[0] = tc.y, C[1] = tc.z, C[2] = tc.w, D = dl.x, lastp = __float_as_int(dl.y);
  }
  const float* m2 = means2d + 2 * v * N;
  const float* cop = conic_opac + 4 * v * N;
  const float* cols = colors + 3 * v * N;
  const float* zv = zs + v * N;
  __shared__ float2 s_uv[kRows];
  __shared__ float4 s_co[kRows];
  __shared__ float4 s_col[kRows];
  __shared__ float2 s_rows[kRows];
  const float2 wrows = warp_rows((int)ty * ts, tid & ~31, ts);
  const float px = x + 0.5f, py = y + 0.5f;
  const int32_t lo = ranges[2 * vt] + c * chunk, hi = min(ranges[2 * vt + 1], lo + chunk);
  const bool mine = walk;
  const int nth = blockDim.x;
  for (int32_t b0 = lo; b0 < hi; b0 += nth) {
    __syncthreads();
    const int32_t j = b0 + tid;
    if (j < hi) stage_gaussian(m2, cop, cols, zv, isect[j], tid, s_uv, s_co, s_col, s_rows);
    __syncthreads();
    const int cnt = min(nth, hi - b0);
    for (int k = 0; k < cnt && walk; ++k) {
      if (!rows_meet(s_rows[k], wrows)) continue;  // uniform over the warp
      const float a = fwd_alpha(s_uv[k], s_co[k], px, py);
      if (a == 0.f) continue;
      const float nT = Tr * (1.f - a);
      if (nT < gs::kTMin) {
        walk = false;
        break;
      }
      const float4 c4 = s_col[k];
      const float w = a * Tr;
      C[0] += c4.x * w, C[1] += c4.y * w, C[2] += c4.z * w;
      D += c4.w * w;
      Tr = nT;
      lastp = b0 + k + 1;
    }
  }
  if (mine) write_pixel(in, st, out, v, x, y, Tr, C, D, lastp);
}

__global__ void wabe_finalize_kernel(int64_t VN, const unsigned long long* sum, const int32_t* count,
                                     float* weight) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= VN) return;
  weight[i] = count[i] > 0 ? (float)(sum[i] / gs::kWabeScale / count[i]) : 0.f;
}

// ------------------------------------------------------------------------------------ backward
using DevSaved = gs::Saved;
using DevGrads = gs::Grads;

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// One butterfly step of the multi-value warp sum: lanes with `bit` set keep the upper half of
// their H values and send the lower half, their partners the opposite, so each lane ends with H/2
// partial sums (value indices now carry `bit` as their high part).
template <int H>
__device__ __forceinline__ void halve(const float* x, float* y, int lane, int bit) {
  const bool up = lane & bit;
#pragma unroll
  for (int i = 0; i < H / 2; ++i) {
    const float lo = x[i], hi = x[i + H / 2];
    y[i] = (up ? hi : lo) + __shfl_xor_sync(0xffffffffu, up ? lo : hi, bit);
  }
}

// Warp sums of the kAcc = 10 values in 12 shuffles (recursive halving shaped for 10: a halving
// step where the values do not pair up sums the odd one in full instead of padding to 16, which
// would cost 16 shuffles and 30 selects against 12 and 18). On return, each lane holds the sum over
// the warp of the value `warp_sum10_value(lane)` names (each value in one such lane).
static_assert(kAcc == 10, "warp_sum10 is shaped for 10 accumulators");
__device__ __forceinline__ float warp_sum10(const float (&x)[kAcc], int lane) {
  float a[5], b[3], c[2], d[1];
  halve<10>(x, a, lane, 16);  // value i + 5 * bit16 in slot i
  {
    const bool up = lane & 8;  // slots 0, 1 pair with 3, 4; slot 2 is summed in full
#pragma unroll
    for (int i = 0; i < 2; ++i)
      b[i] = (up ? a[i + 3] : a[i]) + __shfl_xor_sync(0xffffffffu, up ? a[i] : a[i + 3], 8);
    b[2] = a[2] + __shfl_xor_sync(0xffffffffu, a[2], 8);
  }
  {
    const bool up = lane & 4;  // slots 0 and 1 pair; slot 2 is summed in full
    c[0] = (up ? b[1] : b[0]) + __shfl_xor_sync(0xffffffffu, up ? b[0] : b[1], 4);
    c[1] = b[2] + __shfl_xor_sync(0xffffffffu, b[2], 4);
  }
  halve<2>(c, d, lane, 2);
  return d[0] + __shfl_xor_sync(0xffffffffu, d[0], 1);
}

// The value whose warp sum `warp_sum10` leaves in `lane`, or -1 where another lane owns it.
__device__ __forceinline__ int warp_sum10_value(int lane) {
  const int b16 = (lane >> 4) & 1;
  if (lane & 1) return -1;
  if (lane & 2) return (lane & 12) ? -1 : 2 + 5 * b16;
  return ((lane >> 2) & 1) + 3 * ((lane >> 3) & 1) + 5 * b16;
}

// Pixel (x, y) of view v in the backward: its cotangents dL/dC (gC), dL/dD over the pixel's alpha
// (gD), K = T_N (dL/dA' - dL/dC . bg) of gs::dalpha_back, its final transmittance T_N and its last
// contributor (+1). dL/dA' is dL/dA less the part the depth normalisation D / A sends to alpha.
__device__ __forceinline__ void pixel_cotangents(const DevInputs& in, const DevStatic& st,
                                                 const DevSaved& sv, int64_t v, int x, int y,
                                                 float gC[3], float* gD, float* K, float* TN,
                                                 int32_t* last) {
  const int64_t HW = (int64_t)st.width * st.height, pin = (int64_t)y * st.width + x;
  const int64_t pix = sv.i_pix(v) * HW + pin;
  const float tn = sv.final_T[pix], Aout = 1.f - tn;
  const float* bg = in.bg + 3 * in.i_bg(v);
  const float* di = sv.d_image + 3 * (sv.i_dimage(v) * HW + pin);
  gC[0] = di[0], gC[1] = di[1], gC[2] = di[2];
  float gA = sv.d_alpha[sv.i_dalpha(v) * HW + pin];
  const float dd = sv.d_depth[sv.i_ddepth(v) * HW + pin];
  *gD = 0.f;
  if (Aout > 0.f) {
    *gD = dd / Aout;
    gA -= dd * sv.depth_out[pix] / Aout;
  }
  *K = tn * (gA - (gC[0] * bg[0] + gC[1] * bg[1] + gC[2] * bg[2]));
  *TN = tn;
  *last = sv.last[pix];
}

// ---- split backward: a tile's list cut into chunks walked by separate blocks.
// With few tiles in the call (a single view) the pixel-parallel backward runs one block per tile,
// and the longest lists set the kernel's time while most SMs idle. Cutting every tile's list into
// chunks of `chunk` entries gives one block per (tile, chunk); a chunk's back-to-front pass needs
// each pixel's transmittance T after the chunk and S after it (gs::dalpha_back: the sum of
// alpha_j T_j gcz_j over the contributors behind the chunk). Two passes give them:
//   chunk_local_kernel:   per (chunk, pixel), front to back from T = 1: P_c = prod (1 - alpha_j)
//                         and L_c = sum alpha_j T_j gcz_j, chunks independent of each other;
//   chunk_combine_kernel: per (tile, pixel), T_end(c) = prod_{c' <= c} P_c' and
//                         S_end(c) = sum_{c' > c} T_end(c' - 1) L_c', written over (P_c, L_c).
// Chunks are numbered as in the split forward (chunk_count_kernel, chunk_tile).

// One block per chunk, one thread per pixel slot (tile at most kRows pixels). Same per-pixel
// tests as the backward (last contributor, power > 0, alpha < kAlphaMin), so both passes see the
// same contributors.
template <int kRows>
__global__ void __launch_bounds__(kRows) chunk_local_kernel(DevInputs in, DevStatic st, DevSaved sv,
                                                            const int32_t* chunk_off, int64_t VT,
                                                            int chunk, float2* state) {
  const int64_t b = blockIdx.x;
  if (b >= chunk_off[VT]) return;
  const int64_t vt = chunk_tile(chunk_off, VT, b), T = (int64_t)st.gx * st.gy, N = in.N;
  int64_t t, tx;
  const int64_t v = divmod(vt, T, &t), ty = divmod(t, st.gx, &tx);
  const int ts = st.tile, tid = threadIdx.x, slots = ts * ts;
  const int32_t lo = sv.tile_ranges[2 * vt] + (int32_t)(b - chunk_off[vt]) * chunk;
  const int32_t hi = min(sv.tile_ranges[2 * vt + 1], lo + chunk);
  const int x = (int)tx * ts + tid % ts, y = (int)ty * ts + tid / ts;
  const bool inside = tid < slots && x < st.width && y < st.height;
  float gC[3] = {0.f, 0.f, 0.f}, gD = 0.f, K, TN;
  int32_t last = lo;
  if (inside) pixel_cotangents(in, st, sv, v, x, y, gC, &gD, &K, &TN, &last);
  __shared__ int32_t s_stop;  // the block's walk ends at its pixels' last contributor
  if (tid == 0) s_stop = lo;
  __syncthreads();
  if (inside) atomicMax(&s_stop, min(last, hi));
  __syncthreads();
  const int32_t stop = s_stop;
  const int64_t rv = sv.i_gauss(v) * N;
  const float* m2 = sv.means2d + 2 * rv;
  const float* cop = sv.conic_opac + 4 * rv;
  const float* cols = sv.colors + 3 * rv;
  const float* zv = sv.zs + rv;
  __shared__ float2 s_uv[kRows];
  __shared__ float4 s_co[kRows];
  __shared__ float4 s_col[kRows];
  __shared__ float2 s_rows[kRows];
  const float2 wrows = warp_rows((int)ty * ts, tid & ~31, ts);
  const float px = x + 0.5f, py = y + 0.5f;
  float Tl = 1.f, L = 0.f;
  const int nth = blockDim.x;
  for (int32_t b0 = lo; b0 < stop; b0 += nth) {
    __syncthreads();
    const int32_t j = b0 + tid;
    if (j < stop) {
      const int32_t g = sv.isect[j];
      s_uv[tid] = reinterpret_cast<const float2*>(m2)[g];
      s_co[tid] = reinterpret_cast<const float4*>(cop)[g];
      s_col[tid] = make_float4(cols[3 * g], cols[3 * g + 1], cols[3 * g + 2], zv[g]);
      s_rows[tid] = reach_rows(s_uv[tid], s_co[tid]);
    }
    __syncthreads();
    const int cnt = min(nth, stop - b0);
    for (int k = 0; k < cnt; ++k) {
      if (!rows_meet(s_rows[k], wrows)) continue;  // uniform over the warp
      if (!inside || b0 + k >= last) continue;
      const float4 co4 = s_co[k], c4 = s_col[k];
      const float dx = s_uv[k].x - px, dy = s_uv[k].y - py;
      const float power = -0.5f * (co4.x * dx * dx + co4.z * dy * dy) - co4.y * dx * dy;
      if (power > 0.f) continue;
      const float a = fminf(gs::kAlphaMax, co4.w * __expf(power));
      if (a < gs::kAlphaMin) continue;
      const float gcz = gC[0] * c4.x + gC[1] * c4.y + gC[2] * c4.z + gD * c4.w;
      L += gcz * a * Tl;
      Tl *= 1.f - a;
    }
  }
  if (tid < slots) state[b * slots + tid] = make_float2(Tl, L);
}

// One block per (view, tile), one thread per pixel slot: (P_c, L_c) -> (T_end(c), S_end(c)). It
// also adds the tile's share of the background gradient (dL/dbg = sum over pixels of dL/dC T_N),
// since tiles with an empty list have no chunk block.
__global__ void chunk_combine_kernel(DevInputs in, DevStatic st, DevSaved sv, const int32_t* chunk_off,
                                     float2* state, float* acc_bg) {
  const int64_t vt = blockIdx.x, T = (int64_t)st.gx * st.gy;
  int64_t t, tx;
  const int64_t v = divmod(vt, T, &t), ty = divmod(t, st.gx, &tx);
  const int ts = st.tile, slots = ts * ts, p = threadIdx.x;
  const int x = (int)tx * ts + p % ts, y = (int)ty * ts + p / ts;
  float bgacc[3] = {0.f, 0.f, 0.f};
  if (p < slots && x < st.width && y < st.height) {
    float gC[3], gD, K, TN;
    int32_t last;
    pixel_cotangents(in, st, sv, v, x, y, gC, &gD, &K, &TN, &last);
    for (int ch = 0; ch < 3; ++ch) bgacc[ch] = gC[ch] * TN;
  }
  for (int ch = 0; ch < 3; ++ch) {  // one atomic per warp and channel
    const float sum = warp_sum(bgacc[ch]);
    if ((p & 31) == 0 && sum != 0.f) atomicAdd(&acc_bg[3 * v + ch], sum);
  }
  const int32_t c0 = chunk_off[vt], n = chunk_off[vt + 1] - c0;
  if (n == 0 || p >= slots) return;
  float2* s = state + (int64_t)c0 * slots + p;
  float Tp = 1.f;
  for (int c = 0; c < n; ++c) {
    Tp *= s[(int64_t)c * slots].x;
    s[(int64_t)c * slots].x = Tp;
  }
  float S = 0.f;
  for (int c = n - 1; c >= 0; --c) {
    const float2 e = s[(int64_t)c * slots];
    const float Tstart = c > 0 ? s[(int64_t)(c - 1) * slots].x : 1.f;
    s[(int64_t)c * slots] = make_float2(e.x, S);
    S += Tstart * e.y;
  }
}

// PPT pixels per thread (PPT = 2: rows y and y + 8 of the tile): each Gaussian's contributions of
// a thread's pixels are summed in registers before the warp reduction, so 2 halves the shuffles
// and atomics (the better choice with many tiles in flight); 1 halves each block's serial walk
// (better when the grid is about one wave and the densest tiles set the time: a single view).
// kSplit: one block per chunk of a tile's list (PPT = 1), starting from the chunk's T and S that
// chunk_combine_kernel left in `chunk_state`; otherwise one block per (view, tile).
template <int PPT, bool kWabe, int kRows, bool kSplit>
__global__ void __launch_bounds__(kRows / PPT) raster_bwd_kernel(DevInputs in, DevStatic st,
                                                                  DevSaved sv, float* acc,
                                                                  float* acc_bg,
                                                                  const int32_t* chunk_off,
                                                                  int64_t VT, int chunk,
                                                                  const float2* chunk_state) {
  static_assert(!kSplit || PPT == 1, "the split backward takes one pixel per thread");
  const int kBwdThreads = blockDim.x, kBatch = kBwdThreads * PPT;  // kBatch pixel slots >= tile's
  const int64_t T = (int64_t)st.gx * st.gy, N = in.N;
  int64_t vt = blockIdx.x;
  if (kSplit) {
    if ((int64_t)blockIdx.x >= chunk_off[VT]) return;
    vt = chunk_tile(chunk_off, VT, blockIdx.x);
  }
  int64_t t, tx;
  const int64_t v = divmod(vt, T, &t), ty = divmod(t, st.gx, &tx);
  const int ts = st.tile, tid = threadIdx.x, lane = tid & 31, vslot = warp_sum10_value(lane);
  // the block's part [lo, hi) of the tile's list: all of it, or its chunk
  const int32_t* rng = sv.tile_ranges + 2 * (kSplit ? vt : sv.i_tiles(v) * T + t);
  const int32_t chunk_k = kSplit ? (int32_t)(blockIdx.x - chunk_off[vt]) : 0;
  const int32_t lo = rng[0] + chunk_k * chunk;
  const int32_t hi = kSplit ? min(rng[1], lo + chunk) : rng[1];
  const int64_t rv = sv.i_gauss(v) * N;
  const float* m2 = sv.means2d + 2 * rv;
  const float* cop = sv.conic_opac + 4 * rv;
  const float* cols = sv.colors + 3 * rv;
  const float* zv = sv.zs + rv;
  bool inside[PPT];
  float px[PPT], py[PPT], gC[PPT][3], gD[PPT], K[PPT], Tk[PPT], S[PPT];
  int32_t lastp[PPT];
  float bgacc[3] = {0.f, 0.f, 0.f};
#pragma unroll
  for (int q = 0; q < PPT; ++q) {
    const int p = tid + q * kBwdThreads;  // pixel slot in the tile
    const int x = (int)tx * ts + p % ts, y = (int)ty * ts + p / ts;
    inside[q] = p < ts * ts && x < st.width && y < st.height;
    px[q] = x + 0.5f, py[q] = y + 0.5f;
    Tk[q] = 1.f, gD[q] = 0.f, K[q] = 0.f, S[q] = 0.f, lastp[q] = lo;
    gC[q][0] = gC[q][1] = gC[q][2] = 0.f;
    if (inside[q]) {
      pixel_cotangents(in, st, sv, v, x, y, gC[q], &gD[q], &K[q], &Tk[q], &lastp[q]);
      if (!kSplit)  // the background's share (chunk_combine_kernel adds it in the split backward)
        for (int ch = 0; ch < 3; ++ch) bgacc[ch] += gC[q][ch] * Tk[q];
      if (kSplit) {
        const float2 e = chunk_state[blockIdx.x * (int64_t)(ts * ts) + p];
        Tk[q] = e.x, S[q] = e.y;
      }
    }
  }
  if (!kSplit)
    for (int ch = 0; ch < 3; ++ch) {  // background gradient: one atomic per warp and channel
      const float s = warp_sum(bgacc[ch]);
      if (lane == 0 && s != 0.f) atomicAdd(&acc_bg[3 * v + ch], s);
    }
  __shared__ int32_t s_max_last;
  if (tid == 0) s_max_last = lo;
  __syncthreads();
  int32_t my_last = lastp[0];
#pragma unroll
  for (int q = 1; q < PPT; ++q) my_last = max(my_last, lastp[q]);
  atomicMax(&s_max_last, min(my_last, hi));
  __syncthreads();
  const int32_t max_last = s_max_last;
  // float4/float2 rows: one 128-bit broadcast load per Gaussian and field in the inner loop
  __shared__ int32_t s_id[kRows];
  __shared__ float2 s_uv[kRows];
  __shared__ float4 s_co[kRows];   // conic, opacity
  __shared__ float4 s_col[kRows];  // rgb, z
  __shared__ float2 s_rows[kRows];  // reach_rows
  float2 wrows[PPT];
#pragma unroll
  for (int q = 0; q < PPT; ++q) wrows[q] = warp_rows((int)ty * ts, (tid & ~31) + q * kBwdThreads, ts);
  for (int32_t b1 = max_last; b1 > lo; b1 -= kBatch) {  // batch [b0, b1), walked backwards
    const int32_t b0 = max(lo, b1 - kBatch);
    __syncthreads();
#pragma unroll
    for (int q = 0; q < PPT; ++q) {
      const int slot = tid + q * kBwdThreads;
      const int32_t j = b1 - 1 - slot;
      if (j >= b0) {
        const int32_t g = sv.isect[j];
        s_id[slot] = g;
        s_uv[slot] = reinterpret_cast<const float2*>(m2)[g];
        s_co[slot] = reinterpret_cast<const float4*>(cop)[g];
        s_col[slot] = make_float4(cols[3 * g], cols[3 * g + 1], cols[3 * g + 2], zv[g]);
        s_rows[slot] = reach_rows(s_uv[slot], s_co[slot]);
      }
    }
    __syncthreads();
    const int cnt = b1 - b0;
    for (int k = 0; k < cnt; ++k) {
      const int32_t jj = b1 - 1 - k;
      bool near = false;  // uniform over the warp
#pragma unroll
      for (int q = 0; q < PPT; ++q) near |= rows_meet(s_rows[k], wrows[q]);
      if (!near) continue;
      float val[kAcc];
#pragma unroll
      for (int i = 0; i < kAcc; ++i) val[i] = 0.f;
      bool contrib = false;
      const float4 co4 = s_co[k], c4 = s_col[k];
      const float2 uv = s_uv[k];
      const float co[3] = {co4.x, co4.y, co4.z}, c[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
      for (int q = 0; q < PPT; ++q) {
        if (!inside[q] || jj >= lastp[q]) continue;
        const float dx = uv.x - px[q], dy = uv.y - py[q];
        const float power = -0.5f * (co[0] * dx * dx + co[2] * dy * dy) - co[1] * dx * dy;
        if (power > 0.f) continue;
        const float G = __expf(power), oG = co4.w * G;
        const float a = fminf(gs::kAlphaMax, oG);
        if (a < gs::kAlphaMin) continue;
        contrib = true;
        const float om = __fdividef(1.f, 1.f - a);  // 1 - a >= 0.01
        Tk[q] *= om;
        const float s = kWabe ? __expf(-st.wabe_beta * (1.f - Tk[q])) : 1.f;
        const float wgt = a * Tk[q];
        for (int ch = 0; ch < 3; ++ch) val[6 + ch] += s * gC[q][ch] * wgt;
        val[9] += s * gD[q] * wgt;
        const float gcz = gC[q][0] * c[0] + gC[q][1] * c[1] + gC[q][2] * c[2] + gD[q] * c[3];
        const float dal = gs::dalpha_back(gcz, Tk[q], om, K[q], wgt, &S[q]);
        gs::alpha_moments(dal * s, oG, dx, dy, val, st.alpha_clamp_zero);
      }
      if (__any_sync(0xffffffffu, contrib)) {
        // warp-level reduction, then one atomic per value from the lane that holds its sum
        const float mine = warp_sum10(val, lane);
        if (vslot >= 0 && mine != 0.f) atomicAdd(acc + kAcc * (v * N + s_id[k]) + vslot, mine);
      }
    }
  }
}

// One thread per Gaussian, views in order: shared Gaussians need no atomics. Gradients are summed
// in registers while consecutive views write to the same destination (shared parameters: one
// global write per Gaussian instead of one read-modify-write per view). kStore: every destination
// is visited in one run of views (BatchIndex::runs), so each is written once with a plain store and
// the outputs need no zero fill; otherwise the flush adds to zero-filled outputs.
template <int W, bool kStore>
struct Acc {
  float v[W];
  int64_t dst = -1;
  __device__ void to(float* out, int64_t d) {  // switch destination, flushing the old one
    if (d == dst) return;
    flush(out);
    dst = d;
  }
  __device__ void flush(float* out) {
    if (dst >= 0)
#pragma unroll
      for (int i = 0; i < W; ++i) {
        if (kStore) out[W * dst + i] = v[i];
        else if (v[i] != 0.f) out[W * dst + i] += v[i];
      }
#pragma unroll
    for (int i = 0; i < W; ++i) v[i] = 0.f;
  }
};

// 64 threads: the block's SH gradients and SH coefficients both sit in static shared memory
// (2 x 12.5 KB), 8 blocks per SM at the 128 registers a thread needs.
constexpr int kProjBwdBlock = 64;

template <bool kStore>
__global__ void __launch_bounds__(kProjBwdBlock, 8) project_bwd_kernel(DevInputs in, DevStatic st,
                                                                    DevSaved sv, const float* acc,
                                                                    DevGrads gr) {
  const int64_t g0 = (int64_t)blockIdx.x * kProjBwdBlock, g = g0 + threadIdx.x;
  const int64_t N = in.N, K = in.K;
  const bool valid = g < N;  // threads past N stay for the block's barriers (staging, flush_sh)
  const int nb = (int)min((int64_t)kProjBwdBlock, N - g0);
  Acc<3, kStore> dm, ds;
  Acc<4, kStore> dq;
  Acc<1, kStore> dop;
  Acc<2, kStore> doff;
  dm.flush(nullptr), ds.flush(nullptr), dq.flush(nullptr), dop.flush(nullptr), doff.flush(nullptr);
  // The SH gradient (up to 48 values, indexed at run time by the degree) lives in shared memory,
  // column per thread: in registers it would spill to local memory.
  __shared__ float s_dsh[48][kProjBwdBlock];
  float* dsh = &s_dsh[0][threadIdx.x];
  const int nsh = 3 * gs::sh_count(st.degree);
  for (int i = 0; i < nsh; ++i) dsh[i * kProjBwdBlock] = 0.f;
  int64_t sh_view = -1;  // the SH output slice being summed into (the same for the whole block)
  auto flush_sh = [&]() {
    if (sh_view < 0) return;
    if (kStore) {
      // The block's Gaussians are contiguous in the output: the block writes its 128 x 3K values
      // together, consecutive threads to consecutive addresses (one thread writing its own 3K
      // strided values would move 8x the bytes through L2). Zeros above the active degree.
      __syncthreads();
      const int W = (int)(3 * K);
      float* o = gr.sh + (sh_view * N + g0) * W;
      int t = threadIdx.x / W, i = threadIdx.x % W;
      const int dt = blockDim.x / W, di = blockDim.x % W;
      for (int e = threadIdx.x; e < nb * W; e += blockDim.x) {
        o[e] = i < nsh ? s_dsh[i][t] : 0.f;
        t += dt, i += di;
        if (i >= W) i -= W, ++t;
      }
      __syncthreads();
    } else if (valid) {
      float* o = gr.sh + 3 * K * (sh_view * N + g);
      for (int i = 0; i < nsh; ++i) o[i] += dsh[i * kProjBwdBlock];
    }
    for (int i = 0; i < nsh; ++i) dsh[i * kProjBwdBlock] = 0.f;
  };
  // dL/dSigma is summed over the views that share one quaternion, scale and their destinations,
  // then taken through Sigma(q, s) once (cov3_vjp) instead of once per view.
  int64_t cur_q = -1, cur_s = -1;
  float sig[6], dsig[6];
  bool pending = false;  // dsig holds drawn views' sums not yet taken through cov3_vjp
  auto flush_sigma = [&]() {
    if (pending)
      gs::cov3_vjp(in.quats + 4 * cur_q, in.scales + 3 * cur_s, dsig, dq.v, ds.v);
    pending = false;
  };
  // The block's SH coefficients, staged once per input slice: each view's colour VJP reads all 3K
  // of a Gaussian's coefficients, which from global memory would cost one sector per float.
  __shared__ float s_sh[kProjBwdBlock][kShRow];
  int64_t sh_row = -1;  // the input SH slice staged in s_sh
  for (int64_t v = 0; v < in.V; ++v) {
    const int64_t osh = gr.o_sh(v), ish = in.i_sh(v);
    if (osh != sh_view) flush_sh(), sh_view = osh;  // uniform over the block
    if (ish != sh_row) {  // uniform over the block
      __syncthreads();  // the previous slice's readers are done
      stage_rows(in.sh + (ish * N + g0) * 3 * K, nb, (int)(3 * K), nsh, s_sh);
      __syncthreads();
      sh_row = ish;
    }
    if (!valid) continue;
    const int64_t iq = in.i_quats(v) * N + g, is = in.i_scales(v) * N + g;
    const int64_t oq = gr.o_quats(v) * N + g, os = gr.o_scales(v) * N + g;
    if (iq != cur_q || is != cur_s || oq != dq.dst || os != ds.dst) {
      flush_sigma();  // into the old destinations, before they switch
      if (iq != cur_q || is != cur_s) gs::cov3(in.quats + 4 * iq, in.scales + 3 * is, sig);
      cur_q = iq, cur_s = is;
      for (int i = 0; i < 6; ++i) dsig[i] = 0.f;
    }
    dm.to(gr.means, gr.o_means(v) * N + g);
    ds.to(gr.scales, os);
    dq.to(gr.quats, oq);
    dop.to(gr.opac, gr.o_opac(v) * N + g);
    doff.to(gr.offset, gr.o_offset(v) * N + g);
    if (sv.radii[sv.i_gauss(v) * N + g] <= 0) continue;
    float a[kAcc];  // 8-byte loads: the accumulators of consecutive Gaussians are 40 bytes apart
    const float2* a2 = reinterpret_cast<const float2*>(acc + kAcc * (v * N + g));
#pragma unroll
    for (int i = 0; i < kAcc / 2; ++i) {
      const float2 x = a2[i];
      a[2 * i] = x.x, a[2 * i + 1] = x.y;
    }
    {  // the raster backward summed the pixels' alpha VJPs as moments (gs::alpha_moments)
      const float4 co = reinterpret_cast<const float4*>(sv.conic_opac)[sv.i_gauss(v) * N + g];
      const float conic[3] = {co.x, co.y, co.z};
      gs::alpha_grads_of_moments(a, conic, co.w, a);
    }
    const gs::Cam cam = cam_of(in, st, v);
    const float* mean = in.means + 3 * (in.i_means(v) * N + g);
    doff.v[0] += a[0], doff.v[1] += a[1];
    dop.v[0] += a[5];
    gs::sh_color_vjp(st.degree, s_sh[threadIdx.x], mean, cam.pos, a + 6, dsh, dm.v, kProjBwdBlock);
    gs::project_vjp_view(cam, mean, sig, a[0], a[1], a + 2, a[9], dm.v, dsig);
    pending = true;
  }
  if (valid) {
    flush_sigma();
    dm.flush(gr.means), ds.flush(gr.scales), dq.flush(gr.quats), dop.flush(gr.opac);
    doff.flush(gr.offset);
  }
  flush_sh();
}

__global__ void bg_bwd_kernel(int64_t V, const float* acc_bg, float* d_bg, BatchIndex o_bg) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  for (int64_t v = 0; v < V; ++v)
    for (int ch = 0; ch < 3; ++ch) d_bg[3 * o_bg(v) + ch] += acc_bg[3 * v + ch];
}

// ------------------------------------------------------------------------------------ helpers
inline unsigned blocks(int64_t n, int b = 256) { return (unsigned)((n + b - 1) / b); }

// Threads of a compositing block for `slots` pixel slots: whole warps (the warp reductions need
// all 32 lanes), so tiles smaller than 16 x 16 do not launch idle threads beyond one warp.
inline unsigned threads_for(int slots) { return (unsigned)std::max(32, (slots + 31) / 32 * 32); }

ffi::Error cuda_error(const char* where) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string("gaedit CUDA ") + where + ": " + cudaGetErrorString(e));
}

inline size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

int bits_for(uint64_t n);
// The sort's key bits: the (view, tile) id above kDepthBits of depth; padding keys carry id VT.
inline int key_end_bit(int64_t VT) { return kDepthBits + bits_for((uint64_t)VT); }

static int env_int(const char* name) {
  const char* e = std::getenv(name);
  return e ? std::atoi(e) : -1;
}

// Pixels per thread of the raster backward for `slots` pixel slots (tiles x tile area): 1 while
// 2-pixel threads would fill fewer than two waves of the GPU (measured: single views), else 2.
// GAEDIT_BWD_PPT=1|2 forces it (benchmarks; 4 was measured slower at 16 views). Host-side queries
// only: no stream work.
static int bwd_pixels_per_thread(int64_t slots) {
  static const int forced = env_int("GAEDIT_BWD_PPT");
  if (forced == 1 || forced == 2) return forced;
  const GpuShape& g = gpu_shape();
  return slots / 2 < 2LL * g.sms * g.threads_per_sm ? 1 : 2;
}

// Whether the raster kernels split tile lists into chunks (see chunk_tile), and their length. On
// in the regime where the backward takes one pixel per thread (few pixel slots in the call: a
// single view) with at least kSplitMinN Gaussians. Measured on the H200 (one view of 550 x 802):
// the 1M-Gaussian shell of the benchmarks, whose densest tiles hold lists several times the mean,
// gains 20-26% of the whole fwd+bwd from the split backward; a 100k GaussianAvatars head in the
// edit step, whose lists are even, loses 0.16 ms, as the chunk passes cost more than the balance
// gains. The list lengths are not known on the host, so the size stands in for them.
// GAEDIT_{FWD,BWD}_SPLIT=0|1 and GAEDIT_{FWD,BWD}_CHUNK=n force them (tests, benchmarks). Host
// side only.
constexpr int64_t kSplitMinN = 500000;
static bool split_regime(int64_t VT, int64_t tile, int64_t N) {
  return N >= kSplitMinN && bwd_pixels_per_thread(VT * tile * tile) == 1;
}
static bool bwd_split(int64_t VT, int64_t tile, int64_t N) {
  static const int forced = env_int("GAEDIT_BWD_SPLIT");
  if (forced == 0 || forced == 1) return forced == 1;
  return split_regime(VT, tile, N);
}
static bool fwd_split(int64_t VT, int64_t tile, int64_t N) {
  static const int forced = env_int("GAEDIT_FWD_SPLIT");
  if (forced == 0 || forced == 1) return forced == 1;
  return split_regime(VT, tile, N);
}
static int bwd_chunk() {
  static const int forced = env_int("GAEDIT_BWD_CHUNK");
  if (forced > 0) return forced;
  return 128;  // H200, one view of 550 x 802: 64 to 512 within 5% of each other, 128 the fastest
}
static int fwd_chunk() {
  static const int forced = env_int("GAEDIT_FWD_CHUNK");
  if (forced > 0) return forced;
  return 128;
}
// Chunks the grids are launched for: every tile adds at most one partial chunk to cap / chunk.
inline int64_t max_chunks(int64_t cap, int64_t VT, int chunk) { return (cap + chunk - 1) / chunk + VT; }

// Scratch lives in an explicit workspace output allocated by XLA (the FFI ScratchAllocator refused
// every allocation on jax 0.11.2). Layout: counts, offsets (VN x i32), keys in/out (cap x u64),
// vals in (cap x i32), WABE sums (VN x u64), CUB temp storage; with the split forward, the tiles'
// chunk counts and offsets (VT + 1 each), per (chunk, pixel slot) two float4 of sums and R
// contributor records (ChunkRecs: int32 + float2 each), per pixel slot the state at its stopping
// chunk (FwdStop); each 256-byte aligned.
struct FwdLayout {
  size_t counts, offsets, keys_in, keys_out, vals_in, wsum, temp, temp_bytes, cnt, off, sum_c, sum_d,
      rec_id, rec_ta, stop_tc, stop_dl, stop_chunk, total;
  bool split;
};

FwdLayout fwd_layout(int64_t V, int64_t N, int64_t cap, int64_t VT, int64_t tile, int64_t wabe_k) {
  FwdLayout L{};
  const int64_t VN = V * N;
  size_t scan_bytes = 0, sort_bytes = 0, chunk_scan_bytes = 0;
  cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, (int32_t*)nullptr, (int32_t*)nullptr, (int)VN);
  cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, (uint64_t*)nullptr, (uint64_t*)nullptr,
                                  (int32_t*)nullptr, (int32_t*)nullptr, (int)cap, 0,
                                  key_end_bit(VT));
  L.split = fwd_split(VT, tile, N);
  if (L.split)
    cub::DeviceScan::ExclusiveSum(nullptr, chunk_scan_bytes, (int32_t*)nullptr, (int32_t*)nullptr,
                                  (int)(VT + 1));
  size_t o = 0;
  L.counts = o, o += align256(4 * std::max<int64_t>(VN, 1));
  L.offsets = o, o += align256(4 * std::max<int64_t>(VN, 1));
  L.keys_in = o, o += align256(8 * std::max<int64_t>(cap, 1));
  L.keys_out = o, o += align256(8 * std::max<int64_t>(cap, 1));
  L.vals_in = o, o += align256(4 * std::max<int64_t>(cap, 1));
  L.wsum = o, o += align256(8 * std::max<int64_t>(VN, 1));
  L.temp_bytes = std::max({scan_bytes, sort_bytes, chunk_scan_bytes});
  L.temp = o, o += align256(L.temp_bytes);
  if (L.split) {
    const size_t cells = (size_t)max_chunks(cap, VT, fwd_chunk()) * tile * tile;
    const size_t recs = cells * chunk_recs((int)wabe_k);
    L.cnt = o, o += align256(4 * (VT + 1));
    L.off = o, o += align256(4 * (VT + 1));
    L.sum_c = o, o += align256(16 * cells);
    L.sum_d = o, o += align256(16 * cells);
    L.rec_id = o, o += align256(4 * recs);
    L.rec_ta = o, o += align256(8 * recs);
    L.stop_tc = o, o += align256(16 * (size_t)VT * tile * tile);
    L.stop_dl = o, o += align256(8 * (size_t)VT * tile * tile);
    L.stop_chunk = o, o += align256(4 * (size_t)VT * tile * tile);
  }
  L.total = o + 256;  // slack for the base pointer's alignment
  return L;
}

// Backward workspace: per (view, Gaussian) kAcc float accumulators, then per view 3 background
// floats; with the split backward, the tiles' chunk counts and offsets (VT + 1 each), the scan's
// temporary storage and per (chunk, pixel slot) two floats; each 256-byte aligned.
struct BwdLayout {
  size_t acc, acc_bg, cnt, off, temp, temp_bytes, state, total;
  bool split;
};

BwdLayout bwd_layout(int64_t V, int64_t N, int64_t cap, int64_t VT, int64_t tile) {
  BwdLayout L{};
  size_t o = 0;
  L.acc = o, o += align256(4 * V * N * kAcc);
  L.acc_bg = o, o += align256(4 * V * 3);
  L.split = bwd_split(VT, tile, N);
  if (L.split) {
    cub::DeviceScan::ExclusiveSum(nullptr, L.temp_bytes, (int32_t*)nullptr, (int32_t*)nullptr,
                                  (int)(VT + 1));
    L.cnt = o, o += align256(4 * (VT + 1));
    L.off = o, o += align256(4 * (VT + 1));
    L.temp = o, o += align256(L.temp_bytes);
    L.state = o, o += align256(8 * max_chunks(cap, VT, bwd_chunk()) * tile * tile);
  }
  L.total = o + 256;  // slack for the base pointer's alignment
  return L;
}

int bits_for(uint64_t n) {
  int b = 0;
  while ((uint64_t(1) << b) <= n) ++b;
  return b;
}

}  // namespace

// ------------------------------------------------------------------------------------ FFI
static ffi::Error RasterizeFwdCudaImpl(
    cudaStream_t stream, int64_t width, int64_t height, int64_t tile,
    int64_t sh_degree, float near_plane, int64_t wabe_k, bool wabe_tile, float wabe_beta,
    ffi::Buffer<ffi::F32> means,
    ffi::Buffer<ffi::F32> quats, ffi::Buffer<ffi::F32> scales, ffi::Buffer<ffi::F32> opac,
    ffi::Buffer<ffi::F32> sh, ffi::Buffer<ffi::F32> offset, ffi::Buffer<ffi::F32> viewmat,
    ffi::Buffer<ffi::F32> intr, ffi::Buffer<ffi::F32> bg, ffi::ResultBuffer<ffi::F32> image,
    ffi::ResultBuffer<ffi::F32> alpha, ffi::ResultBuffer<ffi::F32> depth,
    ffi::ResultBuffer<ffi::S32> radii, ffi::ResultBuffer<ffi::S32> wabe_count,
    ffi::ResultBuffer<ffi::F32> wabe_weight, ffi::ResultBuffer<ffi::S32> overflow,
    ffi::ResultBuffer<ffi::F32> means2d, ffi::ResultBuffer<ffi::F32> conic_opac,
    ffi::ResultBuffer<ffi::F32> colors, ffi::ResultBuffer<ffi::F32> zs,
    ffi::ResultBuffer<ffi::F32> final_T, ffi::ResultBuffer<ffi::S32> last,
    ffi::ResultBuffer<ffi::S32> isect, ffi::ResultBuffer<ffi::S32> tile_ranges,
    ffi::ResultBuffer<ffi::U8> workspace) {
  if (auto e = gs::check_static(width, height, tile, sh_degree, near_plane, wabe_beta); e.failure()) return e;
  if (auto e = gs::check_forward(wabe_k, (int64_t)isect->element_count()); e.failure()) return e;
  auto idims = image->dimensions();
  const std::vector<int64_t> full(idims.begin(), idims.end() - 3);
  DevInputs in;
  if (auto e = gs::decode_inputs(means, quats, scales, opac, sh, offset, viewmat, intr, bg, full, &in); e.failure())
    return e;
  static_assert(gs::kMaxTile * gs::kMaxTile <= kBlock, "a tile's pixels must fit in one block");
  static_assert(3 * 16 < kShRow, "a staged SH row holds degree 3");
  if (gs::sh_count((int)sh_degree) > in.K)
    return ffi::Error::InvalidArgument("gaedit: sh_degree must be in [0, 3] and fit in K");
  DevStatic st{(int)width, (int)height, (int)tile, (int)sh_degree, (int)wabe_k,
               (int)((width + tile - 1) / tile), (int)((height + tile - 1) / tile), near_plane, wabe_beta,
               false};
  const int64_t V = in.V, N = in.N, VN = V * N, T = (int64_t)st.gx * st.gy, VT = V * T;
  const int64_t cap = (int64_t)isect->element_count();
  if (VN == 0 || VT == 0) return ffi::Error::Success();
  const FwdLayout L = fwd_layout(V, N, cap, VT, tile, wabe_k);
  char* base = reinterpret_cast<char*>(align256(reinterpret_cast<size_t>(workspace->untyped_data())));
  if ((size_t)workspace->element_count() < L.total)
    return ffi::Error::InvalidArgument("gaedit CUDA: forward workspace too small (" +
                                       std::to_string(workspace->element_count()) + " < " +
                                       std::to_string(L.total) + " bytes)");
  int32_t* counts = reinterpret_cast<int32_t*>(base + L.counts);
  int32_t* offsets = reinterpret_cast<int32_t*>(base + L.offsets);
  uint64_t* keys_in = reinterpret_cast<uint64_t*>(base + L.keys_in);
  uint64_t* keys_out = reinterpret_cast<uint64_t*>(base + L.keys_out);
  int32_t* vals_in = reinterpret_cast<int32_t*>(base + L.vals_in);
  unsigned long long* wsum = reinterpret_cast<unsigned long long*>(base + L.wsum);
  void* temp = base + L.temp;
  size_t scan_bytes = L.temp_bytes, sort_bytes = L.temp_bytes;
  const int end_bit = key_end_bit(VT);

  const int vpb = project_views_per_block(V, N);
  const unsigned pgrid = (unsigned)((N + kProjBlock - 1) / kProjBlock * ((V + vpb - 1) / vpb));
  project_kernel<<<pgrid, kProjBlock, 0, stream>>>(in, st, vpb, radii->typed_data(), means2d->typed_data(),
                                                   conic_opac->typed_data(), colors->typed_data(),
                                                   zs->typed_data(), counts);
  cub::DeviceScan::ExclusiveSum(temp, scan_bytes, counts, offsets, (int)VN, stream);
  overflow_kernel<<<blocks(V), 256, 0, stream>>>(V, N, offsets, counts, cap, overflow->typed_data());
  pad_kernel<<<blocks(cap), 256, 0, stream>>>(cap, (uint64_t)VT << kDepthBits | kDepthMask, keys_in, vals_in);
  emit_kernel<<<blocks(VN), 256, 0, stream>>>(VN, N, st, radii->typed_data(), means2d->typed_data(),
                                              conic_opac->typed_data(), zs->typed_data(), offsets,
                                              counts, cap, keys_in, vals_in);
  cub::DeviceRadixSort::SortPairs(temp, sort_bytes, keys_in, keys_out, vals_in, isect->typed_data(),
                                  (int)cap, 0, end_bit, stream);
  cudaMemsetAsync(tile_ranges->typed_data(), 0, sizeof(int32_t) * 2 * VT, stream);
  ranges_kernel<<<blocks(cap), 256, 0, stream>>>(cap, VT, keys_out, tile_ranges->typed_data());
  cudaMemsetAsync(wsum, 0, sizeof(unsigned long long) * VN, stream);
  cudaMemsetAsync(wabe_count->typed_data(), 0, sizeof(int32_t) * VN, stream);
  const bool wt = wabe_tile && wabe_k > 0;
  const unsigned nth = threads_for(tile * tile);
  const bool small = rows_for(nth) == kSmallRows;
  const FwdOut out{image->typed_data(), alpha->typed_data(), depth->typed_data(), final_T->typed_data(),
                   last->typed_data()};
  const float *m2 = means2d->typed_data(), *cop = conic_opac->typed_data(), *cols = colors->typed_data(),
              *zv = zs->typed_data();
  const int32_t *ids = isect->typed_data(), *ranges = tile_ranges->typed_data();
  if (L.split && !wt) {  // per-tile WABE slots are filled in list order by the whole tile: not split
    const int chunk = fwd_chunk();
    const int64_t G = max_chunks(cap, VT, chunk);
    int32_t* cnt = reinterpret_cast<int32_t*>(base + L.cnt);
    int32_t* off = reinterpret_cast<int32_t*>(base + L.off);
    float4* sum_c = reinterpret_cast<float4*>(base + L.sum_c);
    float4* sum_d = reinterpret_cast<float4*>(base + L.sum_d);
    size_t chunk_scan_bytes = L.temp_bytes;
    chunk_count_kernel<<<blocks(VT + 1), 256, 0, stream>>>(VT, ranges, chunk, cnt);
    cub::DeviceScan::ExclusiveSum(temp, chunk_scan_bytes, cnt, off, (int)(VT + 1), stream);
    auto local = small ? fwd_chunk_kernel<kSmallRows> : fwd_chunk_kernel<kBlock>;
    const ChunkRecs recs{reinterpret_cast<int32_t*>(base + L.rec_id), reinterpret_cast<float2*>(base + L.rec_ta),
                         chunk_recs((int)wabe_k)};
    local<<<(unsigned)G, nth, 0, stream>>>(in, st, m2, cop, cols, zv, ids, ranges, off, VT, chunk, sum_c, sum_d,
                                           recs);
    const FwdStop stop{reinterpret_cast<float4*>(base + L.stop_tc), reinterpret_cast<float2*>(base + L.stop_dl),
                       reinterpret_cast<int32_t*>(base + L.stop_chunk)};
    auto combine = small ? fwd_combine_kernel<kSmallRows> : fwd_combine_kernel<kBlock>;
    combine<<<(unsigned)VT, nth, 0, stream>>>(in, st, m2, cop, cols, zv, ids, ranges, off, chunk, sum_c,
                                              sum_d, recs, out, stop, wsum, wabe_count->typed_data());
    auto stops = small ? fwd_stop_kernel<kSmallRows> : fwd_stop_kernel<kBlock>;
    stops<<<(unsigned)G, nth, 0, stream>>>(in, st, m2, cop, cols, zv, ids, ranges, off, VT, chunk, stop, out);
  } else {
    auto raster = small ? (wt ? raster_fwd_kernel<true, kSmallRows> : raster_fwd_kernel<false, kSmallRows>)
                        : (wt ? raster_fwd_kernel<true, kBlock> : raster_fwd_kernel<false, kBlock>);
    raster<<<(unsigned)VT, nth, 0, stream>>>(in, st, m2, cop, cols, zv, ids, ranges, out, wsum,
                                             wabe_count->typed_data());
  }
  wabe_finalize_kernel<<<blocks(VN), 256, 0, stream>>>(VN, wsum, wabe_count->typed_data(),
                                                       wabe_weight->typed_data());
  return cuda_error("forward");
}

static ffi::Error RasterizeBwdCudaImpl(
    cudaStream_t stream, int64_t width, int64_t height, int64_t tile, int64_t sh_degree,
    float near_plane, bool wabe_backward, bool alpha_clamp_zero, float wabe_beta, gs::F32 means,
    gs::F32 quats,
    gs::F32 scales, gs::F32 opac, gs::F32 sh, gs::F32 offset, gs::F32 viewmat, gs::F32 intr,
    gs::F32 bg, gs::S32 radii, gs::F32 means2d, gs::F32 conic_opac, gs::F32 colors, gs::F32 zs,
    gs::F32 final_T, gs::S32 last, gs::S32 isect, gs::S32 tile_ranges, gs::F32 depth_out,
    gs::F32 d_image, gs::F32 d_alpha, gs::F32 d_depth, gs::RF32 d_means, gs::RF32 d_quats,
    gs::RF32 d_scales, gs::RF32 d_opac, gs::RF32 d_sh, gs::RF32 d_offset, gs::RF32 d_bg,
    ffi::ResultBuffer<ffi::U8> workspace) {
  DevInputs in;
  DevSaved sv;
  DevGrads gr;
  if (auto e = gs::decode_backward(width, height, tile, sh_degree, near_plane, wabe_beta, means, quats,
                                   scales, opac, sh,
                                   offset, viewmat, intr, bg, radii, means2d, conic_opac, colors, zs,
                                   final_T, last, isect, tile_ranges, depth_out, d_image, d_alpha,
                                   d_depth, d_means, d_quats, d_scales, d_opac, d_sh, d_offset, d_bg,
                                   &in, &sv, &gr);
      e.failure())
    return e;
  DevStatic st{(int)width, (int)height, (int)tile, (int)sh_degree, 0,
               (int)((width + tile - 1) / tile), (int)((height + tile - 1) / tile), near_plane, wabe_beta,
               alpha_clamp_zero};
  const int64_t V = in.V, N = in.N, T = (int64_t)st.gx * st.gy, VT = V * T;
  const int64_t cap = (int64_t)isect.element_count();
  const BwdLayout L = bwd_layout(V, N, cap, VT, tile);
  char* base = reinterpret_cast<char*>(align256(reinterpret_cast<size_t>(workspace->untyped_data())));
  if ((size_t)workspace->element_count() < L.total)
    return ffi::Error::InvalidArgument("gaedit CUDA: backward workspace too small (" +
                                       std::to_string(workspace->element_count()) + " < " +
                                       std::to_string(L.total) + " bytes)");
  float* acc = reinterpret_cast<float*>(base + L.acc);
  float* acc_bg = reinterpret_cast<float*>(base + L.acc_bg);
  cudaMemsetAsync(acc, 0, sizeof(float) * V * N * kAcc, stream);
  cudaMemsetAsync(acc_bg, 0, sizeof(float) * V * 3, stream);
  // Plain stores when every Gaussian output's views form runs (always for one view, shared
  // Gaussians, or per-view Gaussians); else zero fill + accumulate. The background is always summed.
  const bool store = gr.o_means.runs() && gr.o_quats.runs() && gr.o_scales.runs() && gr.o_opac.runs() &&
                     gr.o_sh.runs() && gr.o_offset.runs();
  float* outs[7] = {gr.means, gr.quats, gr.scales, gr.opac, gr.sh, gr.offset, gr.bg};
  for (int i = store ? 6 : 0; i < 7; ++i) cudaMemsetAsync(outs[i], 0, sizeof(float) * gr.sizes[i], stream);
  if (VT > 0 && N > 0) {
    // split only where each view has its own tile ranges (chunks are numbered over them)
    const bool split = L.split && (int64_t)tile_ranges.element_count() == 2 * VT;
    const int ppt = split ? 1 : bwd_pixels_per_thread(VT * tile * tile);
    const unsigned nth = threads_for((int)((tile * tile + ppt - 1) / ppt));
    const bool small = rows_for((int)nth * ppt) == kSmallRows;
#define GAEDIT_BWD(P, W, R, X) raster_bwd_kernel<P, W, R, X>
#define GAEDIT_BWD_ROWS(P, X) \
  (small ? (wabe_backward ? GAEDIT_BWD(P, true, kSmallRows, X) : GAEDIT_BWD(P, false, kSmallRows, X)) \
         : (wabe_backward ? GAEDIT_BWD(P, true, kBlock, X) : GAEDIT_BWD(P, false, kBlock, X)))
    if (split) {
      const int chunk = bwd_chunk();
      const int64_t G = max_chunks(cap, VT, chunk);
      int32_t* cnt = reinterpret_cast<int32_t*>(base + L.cnt);
      int32_t* off = reinterpret_cast<int32_t*>(base + L.off);
      float2* state = reinterpret_cast<float2*>(base + L.state);
      size_t temp_bytes = L.temp_bytes;
      chunk_count_kernel<<<blocks(VT + 1), 256, 0, stream>>>(VT, sv.tile_ranges, chunk, cnt);
      cub::DeviceScan::ExclusiveSum(base + L.temp, temp_bytes, cnt, off, (int)(VT + 1), stream);
      if (small)
        chunk_local_kernel<kSmallRows><<<(unsigned)G, nth, 0, stream>>>(in, st, sv, off, VT, chunk, state);
      else
        chunk_local_kernel<kBlock><<<(unsigned)G, nth, 0, stream>>>(in, st, sv, off, VT, chunk, state);
      chunk_combine_kernel<<<(unsigned)VT, nth, 0, stream>>>(in, st, sv, off, state, acc_bg);
      auto raster = GAEDIT_BWD_ROWS(1, true);
      raster<<<(unsigned)G, nth, 0, stream>>>(in, st, sv, acc, acc_bg, off, VT, chunk, state);
    } else {
      auto raster = ppt == 1 ? GAEDIT_BWD_ROWS(1, false) : GAEDIT_BWD_ROWS(2, false);
      raster<<<(unsigned)VT, nth, 0, stream>>>(in, st, sv, acc, acc_bg, nullptr, VT, 0, nullptr);
    }
#undef GAEDIT_BWD_ROWS
#undef GAEDIT_BWD
    if (store)
      project_bwd_kernel<true><<<blocks(N, kProjBwdBlock), kProjBwdBlock, 0, stream>>>(in, st, sv, acc, gr);
    else
      project_bwd_kernel<false><<<blocks(N, kProjBwdBlock), kProjBwdBlock, 0, stream>>>(in, st, sv, acc, gr);
  } else if (store) {  // nothing drawn: the Gaussian outputs still need their zeros
    for (int i = 0; i < 6; ++i) cudaMemsetAsync(outs[i], 0, sizeof(float) * gr.sizes[i], stream);
  }
  bg_bwd_kernel<<<1, 1, 0, stream>>>(V, acc_bg, gr.bg, gr.o_bg);
  return cuda_error("backward");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(GaeditRasterizeFwdCuda, RasterizeFwdCudaImpl,
                              gs::bind_forward(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()),
                              {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(GaeditRasterizeBwdCuda, RasterizeBwdCudaImpl,
                              gs::bind_backward(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()),
                              {ffi::Traits::kCmdBufferCompatible});

extern "C" const char* gaedit_build_info() { return GAEDIT_BUILD_INFO ";cuda=1"; }

// Bytes of the forward workspace for V views of N Gaussians, `cap` pooled intersections, VT
// (view, tile) pairs of `tile` x `tile` pixels and K = wabe_k WABE slots per pixel; the Python
// wrapper sizes the workspace output with it at trace time.
extern "C" int64_t gaedit_cuda_fwd_workspace_bytes(int64_t V, int64_t N, int64_t cap, int64_t VT,
                                                   int64_t tile, int64_t wabe_k) {
  return (int64_t)fwd_layout(V, N, cap, VT, tile, wabe_k).total;
}

// Bytes of the backward workspace for V views of N Gaussians, `cap` pooled intersections and VT
// (view, tile) pairs of `tile` x `tile` pixels (sized by the Python wrapper at trace time, like the
// forward's).
extern "C" int64_t gaedit_cuda_bwd_workspace_bytes(int64_t V, int64_t N, int64_t cap, int64_t VT,
                                                   int64_t tile) {
  return (int64_t)bwd_layout(V, N, cap, VT, tile).total;
}
