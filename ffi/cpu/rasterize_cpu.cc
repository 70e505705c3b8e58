// CPU kernels of the WABE Gaussian rasterizer, bound as XLA FFI handlers.
//
// Stages (the same as the CUDA kernels): project (+SH colour) -> tile intersection and depth sort
// -> per-pixel front-to-back compositing with WABE bookkeeping; backward: per-pixel back-to-front
// gradients -> per-Gaussian projection/SH VJP. The per-Gaussian and per-pixel math lives in
// gaedit/gs_math.h, shared with the CUDA kernels.
//
// Work is split over std::threads in fixed contiguous chunks, so results are deterministic for
// a given thread count (GAEDIT_NUM_THREADS, default: hardware concurrency).

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "gaedit/batch.h"
#include "gaedit/ffi_args.h"
#include "gaedit/gs_math.h"
#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;


namespace {

using gs::BatchIndex;
using gs::Inputs;

int num_threads() {
  static const int n = [] {
    if (const char* e = std::getenv("GAEDIT_NUM_THREADS")) {
      const int v = std::atoi(e);
      if (v > 0) return v;
    }
    const unsigned h = std::thread::hardware_concurrency();
    return (int)std::max(1u, std::min(h, 64u));
  }();
  return n;
}

// f(begin, end, thread_id) over [0, n) in nthreads contiguous chunks.
template <class F>
void parallel_for(int64_t n, int nthreads, F&& f) {
  nthreads = (int)std::max<int64_t>(1, std::min<int64_t>(nthreads, n));
  if (nthreads == 1) {
    f(int64_t(0), n, 0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(nthreads - 1);
  for (int t = 1; t < nthreads; ++t)
    pool.emplace_back([&, t] { f(n * t / nthreads, n * (t + 1) / nthreads, t); });
  f(0, n / nthreads, 0);
  for (auto& th : pool) th.join();
}

struct Static {
  int width, height, tile, degree, wabe_k;
  float near_plane, wabe_beta;
  bool wabe_tile;         // WABE slots per tile instead of per pixel (see `forward`)
  bool alpha_clamp_zero;  // backward: no gradient where alpha = min(0.99, o G) is clamped
  int gx() const { return (width + tile - 1) / tile; }
  int gy() const { return (height + tile - 1) / tile; }
  int64_t tiles() const { return (int64_t)gx() * gy(); }
};

// ------------------------------------------------------------------------------------ forward
ffi::Error forward(const Inputs& in, const Static& st, float* image, float* alpha_out,
                   float* depth_out, int32_t* radii, int32_t* wabe_count, float* wabe_weight,
                   int32_t* overflow, float* means2d, float* conic_opac, float* colors, float* zs,
                   float* final_T, int32_t* last, int32_t* isect, int64_t cap_total,
                   int32_t* tile_ranges) {
  const int64_t V = in.V, N = in.N, K = in.K, T = st.tiles();
  const int64_t HW = (int64_t)st.width * st.height;
  const int nth = num_threads();
  std::vector<gs::Cam> cams(V);
  for (int64_t v = 0; v < V; ++v)
    cams[v] = gs::make_cam(in.viewmat + 16 * in.i_viewmat(v), in.intr + 4 * in.i_intr(v), st.width,
                           st.height);
  // 1. projection + colour
  std::vector<int32_t> rects(V * N * 4);
  parallel_for(V * N, nth, [&](int64_t b, int64_t e, int) {
    for (int64_t vg = b; vg < e; ++vg) {
      const int64_t v = vg / N, g = vg % N;
      const float* mean = in.means + 3 * (in.i_means(v) * N + g);
      const float op = in.opac[in.i_opac(v) * N + g];
      gs::Projected p = gs::project(cams[v], mean, in.quats + 4 * (in.i_quats(v) * N + g),
                                          in.scales + 3 * (in.i_scales(v) * N + g), op,
                                          in.offset + 2 * (in.i_offset(v) * N + g), st.near_plane,
                                          st.tile);
      float rgb[3] = {0.f, 0.f, 0.f};
      if (p.radius > 0 &&
          !gs::sh_color(st.degree, in.sh + 3 * K * (in.i_sh(v) * N + g), mean, cams[v].pos, rgb, nullptr)) {
        rgb[0] = rgb[1] = rgb[2] = 0.f;  // a non-finite active SH coefficient: not drawn
        p.radius = 0;
      }
      const bool on = p.radius > 0;
      radii[vg] = p.radius;
      means2d[2 * vg] = on ? p.u : 0.f, means2d[2 * vg + 1] = on ? p.v : 0.f;
      for (int j = 0; j < 3; ++j) conic_opac[4 * vg + j] = on ? p.conic[j] : 0.f;
      conic_opac[4 * vg + 3] = on ? op : 0.f;
      for (int j = 0; j < 3; ++j) colors[3 * vg + j] = rgb[j];
      zs[vg] = on ? p.z : 0.f;
      for (int j = 0; j < 4; ++j) rects[4 * vg + j] = on ? p.rect[j] : 0;
    }
  });
  // 2. tile intersections, bucketed per tile and sorted by (depth, id); views share one pool.
  const int gx = st.gx();
  // Calls fn(tile) for each tile of (view, Gaussian) vg's 3-sigma rectangle that it can reach.
  auto for_each_tile = [&](int64_t vg, auto&& fn) {
    const int32_t* r = &rects[4 * vg];
    const float* co = conic_opac + 4 * vg;
    const float qmax = gs::alpha_reach_q(co[3]);
    for (int ty = r[1]; ty < r[3]; ++ty)
      for (int tx = r[0]; tx < r[2]; ++tx)
        if (gs::tile_reached(means2d[2 * vg], means2d[2 * vg + 1], co[0], co[1], co[2], qmax, tx, ty, st.tile))
          fn((int64_t)ty * gx + tx);
  };
  int64_t base = 0;
  std::vector<int64_t> count(T);
  for (int64_t v = 0; v < V; ++v) {
    std::fill(count.begin(), count.end(), 0);
    for (int64_t g = 0; g < N; ++g) for_each_tile(v * N + g, [&](int64_t t) { ++count[t]; });
    const int64_t total = std::accumulate(count.begin(), count.end(), int64_t(0));
    int32_t* ranges = tile_ranges + 2 * T * v;
    const bool no_room = base + total > cap_total;
    overflow[v] = gs::pack_isect(total, no_room);
    if (no_room) {  // does not fit: the view is drawn empty and flagged
      for (int64_t t = 0; t < T; ++t) ranges[2 * t] = ranges[2 * t + 1] = (int32_t)base;
      continue;
    }
    int64_t off = base;
    for (int64_t t = 0; t < T; ++t) {
      ranges[2 * t] = (int32_t)off;
      ranges[2 * t + 1] = (int32_t)off;  // advanced while filling
      off += count[t];
    }
    for (int64_t g = 0; g < N; ++g)
      for_each_tile(v * N + g, [&](int64_t t) { isect[ranges[2 * t + 1]++] = (int32_t)g; });
    base += total;
  }
  parallel_for(V * T, nth, [&](int64_t b, int64_t e, int) {
    for (int64_t vt = b; vt < e; ++vt) {
      const int64_t v = vt / T;
      const float* z = zs + v * N;
      std::sort(isect + tile_ranges[2 * vt], isect + tile_ranges[2 * vt + 1],
                [z](int32_t a, int32_t c) { return z[a] < z[c] || (z[a] == z[c] && a < c); });
    }
  });
  // 3. compositing, one tile at a time, Gaussian-major over the tile's pixels.
  // WABE slots. Per pixel (default, the paper's definition): the first K accepted contributors of
  // the pixel (alpha >= 1/255, before the pixel's termination), each with the weight
  // w = exp(-beta (1 - T)) alpha it has there. Per tile (wabe_tile): the first K Gaussians in the
  // tile's front-to-back order that are accepted contributors of at least one pixel of the tile,
  // each with the largest w it has over those pixels; every pixel of the tile then carries the
  // tile's slots. (Each of them is among the first K of every pixel it is accepted by, since the
  // Gaussians before it there are tile slots too.) Either way the slot weights are min-max
  // normalised per pixel and averaged per Gaussian over its (pixel, slot) occurrences.
  const int ts = st.tile, P = ts * ts, WK = st.wabe_k;
  const bool tile_mode = st.wabe_tile;
  std::vector<uint64_t> wabe_sum(V * N, 0);
  std::memset(wabe_count, 0, sizeof(int32_t) * V * N);
  parallel_for(V * T, nth, [&](int64_t b, int64_t e, int) {
    std::vector<float> Tr(P), C(3 * P), D(P);
    std::vector<int32_t> lastp(P), nslot(P);
    std::vector<uint8_t> done(P);
    std::vector<int32_t> sid(P * std::max(WK, 1));
    std::vector<float> sw(P * std::max(WK, 1));
    int32_t tsid[gs::kWabeMaxK];  // tile mode: the tile's slots
    float tsw[gs::kWabeMaxK];
    for (int64_t vt = b; vt < e; ++vt) {
      const int64_t v = vt / T, t = vt % T;
      const int x0 = (int)(t % gx) * ts, y0 = (int)(t / gx) * ts;
      const int32_t start = tile_ranges[2 * vt], end = tile_ranges[2 * vt + 1];
      int remaining = 0, ntile = 0, npix = 0;
      for (int p = 0; p < P; ++p) {
        const int x = x0 + p % ts, y = y0 + p / ts;
        const bool inside = x < st.width && y < st.height;
        done[p] = !inside;
        remaining += inside;
        npix += inside;
        Tr[p] = 1.f, C[3 * p] = C[3 * p + 1] = C[3 * p + 2] = 0.f, D[p] = 0.f;
        lastp[p] = start, nslot[p] = 0;
      }
      for (int32_t j = start; j < end && remaining > 0; ++j) {
        const int64_t g = isect[j], vg = v * N + g;
        const float u = means2d[2 * vg], w = means2d[2 * vg + 1];
        const float* co = conic_opac + 4 * vg;
        const float* col = colors + 3 * vg;
        const float z = zs[vg];
        const bool tile_slot = tile_mode && ntile < WK;  // could still take a tile slot
        bool hit = false;
        float wmax = 0.f;
        for (int p = 0; p < P; ++p) {
          if (done[p]) continue;
          const float power = gs::pixel_power(u, w, co, x0 + p % ts + 0.5f, y0 + p / ts + 0.5f);
          if (power > 0.f) continue;
          const float a = fminf(gs::kAlphaMax, co[3] * expf(power));
          if (a < gs::kAlphaMin) continue;
          const float nT = Tr[p] * (1.f - a);
          if (nT < gs::kTMin) {
            done[p] = 1;
            --remaining;
            continue;
          }
          const float wgt = a * Tr[p];
          C[3 * p] += col[0] * wgt, C[3 * p + 1] += col[1] * wgt, C[3 * p + 2] += col[2] * wgt;
          D[p] += z * wgt;
          if (tile_slot) {
            hit = true;
            wmax = fmaxf(wmax, gs::wabe_weight(Tr[p], a, st.wabe_beta));
          } else if (!tile_mode && nslot[p] < WK) {
            sid[p * WK + nslot[p]] = (int32_t)g;
            sw[p * WK + nslot[p]] = gs::wabe_weight(Tr[p], a, st.wabe_beta);
            ++nslot[p];
          }
          Tr[p] = nT;
          lastp[p] = j + 1;
        }
        if (hit) tsid[ntile] = (int32_t)g, tsw[ntile] = wmax, ++ntile;
      }
      const float* bg = in.bg + 3 * in.i_bg(v);
      for (int p = 0; p < P; ++p) {
        const int x = x0 + p % ts, y = y0 + p / ts;
        if (x >= st.width || y >= st.height) continue;
        const int64_t pix = v * HW + (int64_t)y * st.width + x;
        for (int ch = 0; ch < 3; ++ch) image[3 * pix + ch] = C[3 * p + ch] + Tr[p] * bg[ch];
        const float A = 1.f - Tr[p];
        alpha_out[pix] = A;
        depth_out[pix] = A > 0.f ? D[p] / A : 0.f;
        final_T[pix] = Tr[p];
        last[pix] = lastp[p];
        // WABE: min-max normalise the K slot weights (empty slots count as 0), then add each
        // occupied slot's value to its Gaussian as 2^-24 fixed point (order-independent sums).
        const int n = tile_mode ? 0 : nslot[p];
        if (n == 0) continue;
        float mn, mx;
        gs::wabe_range(&sw[p * WK], n, WK, &mn, &mx);
        for (int k = 0; k < n; ++k) {
          const int64_t vg = v * N + sid[p * WK + k];
          __atomic_fetch_add(&wabe_sum[vg], (uint64_t)gs::wabe_fixed(sw[p * WK + k], mn, mx), __ATOMIC_RELAXED);
          __atomic_fetch_add(&wabe_count[vg], 1, __ATOMIC_RELAXED);
        }
      }
      if (ntile > 0) {  // tile mode: the npix pixels of the tile all carry the tile's slots
        float mn, mx;
        gs::wabe_range(tsw, ntile, WK, &mn, &mx);
        for (int k = 0; k < ntile; ++k) {
          const int64_t vg = v * N + tsid[k];
          __atomic_fetch_add(&wabe_sum[vg], (uint64_t)(npix * gs::wabe_fixed(tsw[k], mn, mx)), __ATOMIC_RELAXED);
          __atomic_fetch_add(&wabe_count[vg], npix, __ATOMIC_RELAXED);
        }
      }
    }
  });
  for (int64_t i = 0; i < V * N; ++i)
    wabe_weight[i] = wabe_count[i] > 0 ? (float)(wabe_sum[i] / gs::kWabeScale / wabe_count[i]) : 0.f;
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------ backward
using gs::kAcc;

using gs::Grads;
using gs::Saved;

ffi::Error backward(const Inputs& in, const Static& st, bool wabe_bwd, const Saved& sv,
                    const Grads& gr) {
  const int64_t V = in.V, N = in.N, K = in.K, T = st.tiles();
  const int64_t HW = (int64_t)st.width * st.height;
  const int ts = st.tile, P = ts * ts, gx = st.gx();
  const int nth = (int)std::max<int64_t>(1, std::min<int64_t>(num_threads(), V * T));
  float* outs[7] = {gr.means, gr.quats, gr.scales, gr.opac, gr.sh, gr.offset, gr.bg};
  for (int i = 0; i < 7; ++i) std::memset(outs[i], 0, sizeof(float) * gr.sizes[i]);
  std::vector<std::vector<float>> acc(nth, std::vector<float>(V * N * kAcc, 0.f));
  std::vector<std::vector<float>> accbg(nth, std::vector<float>(V * 3, 0.f));
  // 1. per pixel, back to front
  parallel_for(V * T, nth, [&](int64_t b, int64_t e, int tid) {
    float* A = acc[tid].data();
    float* Abg = accbg[tid].data();
    for (int64_t vt = b; vt < e; ++vt) {
      const int64_t v = vt / T, t = vt % T;
      const int x0 = (int)(t % gx) * ts, y0 = (int)(t / gx) * ts;
      const int32_t start = sv.tile_ranges[2 * (sv.i_tiles(v) * T + t)];
      const float* bg = in.bg + 3 * in.i_bg(v);
      const int64_t rv = sv.i_gauss(v) * N;  // this view's per-Gaussian residuals
      const float* m2 = sv.means2d + 2 * rv;
      const float* cop = sv.conic_opac + 4 * rv;
      const float* cols = sv.colors + 3 * rv;
      const float* zv = sv.zs + rv;
      for (int p = 0; p < P; ++p) {
        const int x = x0 + p % ts, y = y0 + p / ts;
        if (x >= st.width || y >= st.height) continue;
        const int64_t pin = (int64_t)y * st.width + x;
        const int64_t pix = sv.i_pix(v) * HW + pin;
        const float TN = sv.final_T[pix], Aout = 1.f - TN;
        const float* dimg = sv.d_image + 3 * (sv.i_dimage(v) * HW + pin);
        const float gC[3] = {dimg[0], dimg[1], dimg[2]};
        const float ddep = sv.d_depth[sv.i_ddepth(v) * HW + pin];
        float gA = sv.d_alpha[sv.i_dalpha(v) * HW + pin], gD = 0.f;
        if (Aout > 0.f) {  // depth = D / A (expected depth)
          gD = ddep / Aout;
          gA -= ddep * sv.depth_out[pix] / Aout;
        }
        for (int ch = 0; ch < 3; ++ch) Abg[3 * v + ch] += gC[ch] * TN;
        const float K = TN * (gA - (gC[0] * bg[0] + gC[1] * bg[1] + gC[2] * bg[2]));
        float Tk = TN, S = 0.f;
        const float px = x + 0.5f, py = y + 0.5f;
        for (int32_t j = sv.last[pix] - 1; j >= start; --j) {
          const int64_t g = sv.isect[j], vg = v * N + g;
          const float* co = cop + 4 * g;
          const float u = m2[2 * g], w = m2[2 * g + 1];
          const float dx = u - px, dy = w - py;
          const float power = -0.5f * (co[0] * dx * dx + co[2] * dy * dy) - co[1] * dx * dy;
          if (power > 0.f) continue;
          const float G = expf(power), oG = co[3] * G;
          const float a = fminf(gs::kAlphaMax, oG);
          if (a < gs::kAlphaMin) continue;
          const float om = 1.f / (1.f - a);
          Tk *= om;  // transmittance before this contributor
          const float s = wabe_bwd ? expf(-st.wabe_beta * (1.f - Tk)) : 1.f;
          const float* c = cols + 3 * g;
          const float z = zv[g], wgt = a * Tk;
          float* Ag = A + kAcc * vg;
          for (int ch = 0; ch < 3; ++ch) Ag[6 + ch] += s * gC[ch] * wgt;
          Ag[9] += s * gD * wgt;
          const float gcz = gC[0] * c[0] + gC[1] * c[1] + gC[2] * c[2] + gD * z;
          const float dal = gs::dalpha_back(gcz, Tk, om, K, wgt, &S);
          gs::alpha_moments(dal * s, oG, dx, dy, Ag, st.alpha_clamp_zero);
        }
      }
    }
  });
  for (int t = 1; t < nth; ++t) {
    for (int64_t i = 0; i < V * N * kAcc; ++i) acc[0][i] += acc[t][i];
    for (int64_t i = 0; i < V * 3; ++i) accbg[0][i] += accbg[t][i];
  }
  const float* Acc = acc[0].data();
  for (int64_t v = 0; v < V; ++v)
    for (int ch = 0; ch < 3; ++ch) gr.bg[3 * gr.o_bg(v) + ch] += accbg[0][3 * v + ch];
  // 2. per Gaussian (parallel over Gaussians, views in order: no write conflicts)
  std::vector<gs::Cam> cams(V);
  for (int64_t v = 0; v < V; ++v)
    cams[v] = gs::make_cam(in.viewmat + 16 * in.i_viewmat(v), in.intr + 4 * in.i_intr(v), st.width,
                           st.height);
  parallel_for(N, num_threads(), [&](int64_t b, int64_t e, int) {
    for (int64_t g = b; g < e; ++g) {
      for (int64_t v = 0; v < V; ++v) {
        const int64_t vg = v * N + g;
        if (sv.radii[sv.i_gauss(v) * N + g] <= 0) continue;
        float a[kAcc];  // the pixels' alpha VJPs were summed as moments (gs::alpha_moments)
        std::copy(Acc + kAcc * vg, Acc + kAcc * (vg + 1), a);
        const float* co = sv.conic_opac + 4 * (sv.i_gauss(v) * N + g);
        gs::alpha_grads_of_moments(a, co, co[3], a);
        const float* mean = in.means + 3 * (in.i_means(v) * N + g);
        float* dm = gr.means + 3 * (gr.o_means(v) * N + g);
        gr.offset[2 * (gr.o_offset(v) * N + g)] += a[0];
        gr.offset[2 * (gr.o_offset(v) * N + g) + 1] += a[1];
        gr.opac[gr.o_opac(v) * N + g] += a[5];
        gs::sh_color_vjp(st.degree, in.sh + 3 * K * (in.i_sh(v) * N + g), mean, cams[v].pos, a + 6,
                         gr.sh + 3 * K * (gr.o_sh(v) * N + g), dm);
        gs::project_vjp(cams[v], mean, in.quats + 4 * (in.i_quats(v) * N + g),
                        in.scales + 3 * (in.i_scales(v) * N + g), a[0], a[1], a + 2, a[9], dm,
                        gr.quats + 4 * (gr.o_quats(v) * N + g),
                        gr.scales + 3 * (gr.o_scales(v) * N + g));
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// ------------------------------------------------------------------------------------ FFI
static ffi::Error RasterizeFwdImpl(int64_t width, int64_t height, int64_t tile, int64_t sh_degree,
                                   float near_plane, int64_t wabe_k, bool wabe_tile, float wabe_beta,
                                   ffi::Buffer<ffi::F32> means, ffi::Buffer<ffi::F32> quats,
                                   ffi::Buffer<ffi::F32> scales, ffi::Buffer<ffi::F32> opac,
                                   ffi::Buffer<ffi::F32> sh, ffi::Buffer<ffi::F32> offset,
                                   ffi::Buffer<ffi::F32> viewmat, ffi::Buffer<ffi::F32> intr,
                                   ffi::Buffer<ffi::F32> bg, ffi::ResultBuffer<ffi::F32> image,
                                   ffi::ResultBuffer<ffi::F32> alpha, ffi::ResultBuffer<ffi::F32> depth,
                                   ffi::ResultBuffer<ffi::S32> radii,
                                   ffi::ResultBuffer<ffi::S32> wabe_count,
                                   ffi::ResultBuffer<ffi::F32> wabe_weight,
                                   ffi::ResultBuffer<ffi::S32> overflow,
                                   ffi::ResultBuffer<ffi::F32> means2d,
                                   ffi::ResultBuffer<ffi::F32> conic_opac,
                                   ffi::ResultBuffer<ffi::F32> colors, ffi::ResultBuffer<ffi::F32> zs,
                                   ffi::ResultBuffer<ffi::F32> final_T, ffi::ResultBuffer<ffi::S32> last,
                                   ffi::ResultBuffer<ffi::S32> isect,
                                   ffi::ResultBuffer<ffi::S32> tile_ranges,
                                   ffi::ResultBuffer<ffi::U8> /*workspace: CUDA only*/) {
  if (auto err = gs::check_static(width, height, tile, sh_degree, near_plane, wabe_beta); err.failure())
    return err;
  const int64_t cap_total = (int64_t)isect->element_count();
  if (auto err = gs::check_forward(wabe_k, cap_total); err.failure()) return err;
  Inputs in;
  auto idims = image->dimensions();
  const std::vector<int64_t> full(idims.begin(), idims.end() - 3);  // outputs carry the full batch
  if (auto err = gs::decode_inputs(means, quats, scales, opac, sh, offset, viewmat, intr, bg, full, &in);
      err.failure())
    return err;
  if (gs::sh_count((int)sh_degree) > in.K)
    return ffi::Error::InvalidArgument("gaedit: sh_degree must be in [0, 3] and fit in K");
  const Static st{(int)width, (int)height, (int)tile, (int)sh_degree, (int)wabe_k, near_plane, wabe_beta,
                  wabe_tile, false};
  return forward(in, st, image->typed_data(), alpha->typed_data(), depth->typed_data(),
                 radii->typed_data(), wabe_count->typed_data(), wabe_weight->typed_data(),
                 overflow->typed_data(), means2d->typed_data(), conic_opac->typed_data(),
                 colors->typed_data(), zs->typed_data(), final_T->typed_data(), last->typed_data(),
                 isect->typed_data(), cap_total, tile_ranges->typed_data());
}

static ffi::Error RasterizeBwdImpl(
    int64_t width, int64_t height, int64_t tile, int64_t sh_degree, float near_plane,
    bool wabe_backward, bool alpha_clamp_zero, float wabe_beta, gs::F32 means, gs::F32 quats, gs::F32 scales, gs::F32 opac,
    gs::F32 sh, gs::F32 offset, gs::F32 viewmat, gs::F32 intr, gs::F32 bg, gs::S32 radii,
    gs::F32 means2d, gs::F32 conic_opac, gs::F32 colors, gs::F32 zs, gs::F32 final_T, gs::S32 last,
    gs::S32 isect, gs::S32 tile_ranges, gs::F32 depth_out, gs::F32 d_image, gs::F32 d_alpha,
    gs::F32 d_depth, gs::RF32 d_means, gs::RF32 d_quats, gs::RF32 d_scales, gs::RF32 d_opac,
    gs::RF32 d_sh, gs::RF32 d_offset, gs::RF32 d_bg, ffi::ResultBuffer<ffi::U8> /*CUDA only*/) {
  Inputs in;
  Saved sv;
  Grads gr;
  if (auto err = gs::decode_backward(width, height, tile, sh_degree, near_plane, wabe_beta, means, quats, scales, opac, sh,
                                     offset, viewmat, intr, bg, radii, means2d, conic_opac, colors,
                                     zs, final_T, last, isect, tile_ranges, depth_out, d_image,
                                     d_alpha, d_depth, d_means, d_quats, d_scales, d_opac, d_sh,
                                     d_offset, d_bg, &in, &sv, &gr);
      err.failure())
    return err;
  const Static st{(int)width, (int)height, (int)tile, (int)sh_degree, 0, near_plane, wabe_beta, false,
                  alpha_clamp_zero};
  return backward(in, st, wabe_backward, sv, gr);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(GaeditRasterizeFwd, RasterizeFwdImpl, gs::bind_forward(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(GaeditRasterizeBwd, RasterizeBwdImpl, gs::bind_backward(ffi::Ffi::Bind()));

// "jaxlib=<version>;ffi_api=<major>.<minor>": checked by the Python loader before registration.
extern "C" const char* gaedit_build_info() { return GAEDIT_BUILD_INFO; }
