// Decoding of the rasterizer's FFI operands, shared by the CPU and CUDA handlers (host code).
//
// Every operand has the same number of leading batch dims, each 1 (shared) or the full size; the
// full batch shape is their broadcast. `Inputs` (pointers + broadcast indices) is trivially
// copyable and is passed by value to the CUDA kernels.
#pragma once

#include <initializer_list>
#include <utility>
#include <string>
#include <vector>

#include "gaedit/batch.h"
#include "xla/ffi/api/ffi.h"

namespace gs {

namespace ffi = xla::ffi;

struct Inputs {
  const float *means, *quats, *scales, *opac, *sh, *offset, *viewmat, *intr, *bg;
  BatchIndex i_means, i_quats, i_scales, i_opac, i_sh, i_offset, i_viewmat, i_intr, i_bg;
  int64_t N = 0, K = 0, V = 0;  // Gaussians, SH coefficients per channel, views
  int nb = 0;
  int64_t full[kMaxBatchDims];
};

// The static settings shared by the forward and backward calls. The Python wrapper validates them
// with clear messages; this second check keeps a bad call (e.g. a hand-made ffi_call) from
// dividing by a zero tile size or walking a negative tile grid. Called before anything is derived
// from them.
inline ffi::Error check_static(int64_t width, int64_t height, int64_t tile, int64_t sh_degree,
                               float near_plane, float wabe_beta) {
  auto bad = [](const std::string& what) { return ffi::Error::InvalidArgument("gaedit: " + what); };
  if (tile < 1 || tile > kMaxTile)
    return bad("tile_size is " + std::to_string(tile) + ", expected an integer in [1, " +
               std::to_string(kMaxTile) + "]");
  if (width < 1 || width > kMaxImageSide || height < 1 || height > kMaxImageSide)
    return bad("image size is " + std::to_string(width) + "x" + std::to_string(height) +
               ", expected width and height in [1, " + std::to_string(kMaxImageSide) + "]");
  if (sh_degree < 0 || sh_degree > 3)
    return bad("sh_degree is " + std::to_string(sh_degree) + ", expected 0, 1, 2 or 3");
  if (!(near_plane > 0.f) || !isfinite(near_plane))
    return bad("near_plane is " + std::to_string(near_plane) + ", expected a finite value > 0");
  if (!(wabe_beta >= 0.f) || !isfinite(wabe_beta))
    return bad("wabe_beta is " + std::to_string(wabe_beta) + ", expected a finite value >= 0");
  return ffi::Error::Success();
}

// Forward-only settings: the WABE slot count and the pooled intersection capacity (int32 offsets).
inline ffi::Error check_forward(int64_t wabe_k, int64_t capacity) {
  if (wabe_k < 0 || wabe_k > kWabeMaxK)
    return ffi::Error::InvalidArgument("gaedit: wabe_k is " + std::to_string(wabe_k) +
                                       ", expected an integer in [0, " + std::to_string(kWabeMaxK) + "]");
  if (capacity < 1 || capacity >= (int64_t(1) << 31))
    return ffi::Error::InvalidArgument("gaedit: the intersection capacity is " +
                                       std::to_string(capacity) + ", expected [1, 2^31)");
  return ffi::Error::Success();
}

// The full batch shape: the broadcast of the operands' first `nb` dims. Under vmap any operand
// may arrive unbatched (size 1), cotangents and residuals too.
inline ffi::Error full_batch(int nb, std::initializer_list<ffi::Span<const int64_t>> dims,
                             std::vector<int64_t>* full) {
  if (nb < 0 || nb > kMaxBatchDims) return ffi::Error::InvalidArgument("gaedit: bad batch rank");
  full->assign(nb, 1);
  for (const auto& d : dims) {
    if ((int)d.size() < nb) return ffi::Error::InvalidArgument("gaedit: operand rank too small");
    for (int i = 0; i < nb; ++i) {
      if (d[i] == 1) continue;
      if ((*full)[i] != 1 && (*full)[i] != d[i])
        return ffi::Error::InvalidArgument("gaedit: batch dims do not broadcast");
      (*full)[i] = d[i];
    }
  }
  return ffi::Error::Success();
}

struct Operand {
  const char* name;
  ffi::Span<const int64_t> dims;
  std::vector<int64_t> core;  // expected per-view dims
  BatchIndex* idx;
};

// Builds each operand's broadcast index and checks its per-view dims.
inline ffi::Error index_all(std::initializer_list<Operand> ops, const std::vector<int64_t>& full) {
  const int nb = (int)full.size();
  for (const auto& op : ops) {
    std::string err = make_batch_index(op.name, op.dims, (int)op.core.size(), full.data(), nb, op.idx);
    if (!err.empty()) return ffi::Error::InvalidArgument("gaedit: " + err);
    for (size_t k = 0; k < op.core.size(); ++k)
      if (op.dims[nb + k] != op.core[k])
        return ffi::Error::InvalidArgument(std::string("gaedit: ") + op.name + " dim " +
                                           std::to_string(nb + k) + " is " +
                                           std::to_string(op.dims[nb + k]) + ", expected " +
                                           std::to_string(op.core[k]));
  }
  return ffi::Error::Success();
}

// The nine inputs common to the forward and backward calls.
inline ffi::Error decode_inputs(ffi::Buffer<ffi::F32> means, ffi::Buffer<ffi::F32> quats,
                                ffi::Buffer<ffi::F32> scales, ffi::Buffer<ffi::F32> opac,
                                ffi::Buffer<ffi::F32> sh, ffi::Buffer<ffi::F32> offset,
                                ffi::Buffer<ffi::F32> viewmat, ffi::Buffer<ffi::F32> intr,
                                ffi::Buffer<ffi::F32> bg, const std::vector<int64_t>& full,
                                Inputs* in) {
  const int nb = (int)full.size();
  auto md = means.dimensions();
  auto sd = sh.dimensions();
  if ((int)md.size() != nb + 2 || (int)sd.size() != nb + 3)
    return ffi::Error::InvalidArgument("gaedit: means must be [..., N, 3] and sh [..., N, K, 3]");
  in->nb = nb;
  in->N = md[nb];
  in->K = sd[nb + 1];
  in->V = 1;
  for (int d = 0; d < nb; ++d) in->full[d] = full[d], in->V *= full[d];
  const int64_t N = in->N;
  if (auto e = index_all({{"means", md, {N, 3}, &in->i_means},
                          {"quats", quats.dimensions(), {N, 4}, &in->i_quats},
                          {"scales", scales.dimensions(), {N, 3}, &in->i_scales},
                          {"opacities", opac.dimensions(), {N}, &in->i_opac},
                          {"sh", sd, {N, in->K, 3}, &in->i_sh},
                          {"screen_offset", offset.dimensions(), {N, 2}, &in->i_offset},
                          {"world_to_camera", viewmat.dimensions(), {4, 4}, &in->i_viewmat},
                          {"intrinsics", intr.dimensions(), {4}, &in->i_intr},
                          {"background", bg.dimensions(), {3}, &in->i_bg}},
                         full);
      e.failure())
    return e;
  in->means = means.typed_data(), in->quats = quats.typed_data(), in->scales = scales.typed_data();
  in->opac = opac.typed_data(), in->sh = sh.typed_data(), in->offset = offset.typed_data();
  in->viewmat = viewmat.typed_data(), in->intr = intr.typed_data(), in->bg = bg.typed_data();
  return ffi::Error::Success();
}

// Forward residuals and output cotangents of the backward call, each with its own broadcast index
// (under vmap either side may be unbatched, e.g. vmap over the cotangent of a single render).
struct Saved {
  const int32_t* radii;
  const float *means2d, *conic_opac, *colors, *zs;  // per (view, Gaussian)
  const float *final_T, *depth_out;                 // per pixel
  const int32_t* last;                              // per pixel
  const int32_t* isect;                             // pooled, addressed by absolute offsets
  const int32_t* tile_ranges;                       // per (view, tile)
  BatchIndex i_gauss, i_pix, i_tiles;
  const float *d_image, *d_alpha, *d_depth;
  BatchIndex i_dimage, i_dalpha, i_ddepth;
};

struct Grads {
  float *means, *quats, *scales, *opac, *sh, *offset, *bg;
  BatchIndex o_means, o_quats, o_scales, o_opac, o_sh, o_offset, o_bg;
  size_t sizes[7];  // element counts, in the order of the pointers
};

using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;
using RF32 = ffi::ResultBuffer<ffi::F32>;

// Decodes every operand of the backward call.
inline ffi::Error decode_backward(int64_t width, int64_t height, int64_t tile, int64_t sh_degree,
                                  float near_plane, float wabe_beta, F32 means, F32 quats, F32 scales, F32 opac, F32 sh, F32 offset,
                                  F32 viewmat, F32 intr, F32 bg, S32 radii, F32 means2d,
                                  F32 conic_opac, F32 colors, F32 zs, F32 final_T, S32 last,
                                  S32 isect, S32 tile_ranges, F32 depth_out, F32 d_image,
                                  F32 d_alpha, F32 d_depth, RF32 d_means, RF32 d_quats,
                                  RF32 d_scales, RF32 d_opac, RF32 d_sh, RF32 d_offset, RF32 d_bg,
                                  Inputs* in, Saved* sv, Grads* gr) {
  if (auto e = check_static(width, height, tile, sh_degree, near_plane, wabe_beta); e.failure()) return e;
  const int nb = (int)d_image.dimensions().size() - 3;
  std::vector<int64_t> full;
  if (auto e = full_batch(nb,
                          {means.dimensions(), quats.dimensions(), scales.dimensions(),
                           opac.dimensions(), sh.dimensions(), offset.dimensions(),
                           viewmat.dimensions(), intr.dimensions(), bg.dimensions(),
                           radii.dimensions(), final_T.dimensions(), tile_ranges.dimensions(),
                           d_image.dimensions(), d_alpha.dimensions(), d_depth.dimensions(),
                           d_means->dimensions(), d_bg->dimensions()},
                          &full);
      e.failure())
    return e;
  if (auto e = decode_inputs(means, quats, scales, opac, sh, offset, viewmat, intr, bg, full, in);
      e.failure())
    return e;
  if (sh_degree < 0 || sh_degree > 3 || sh_count((int)sh_degree) > in->K)
    return ffi::Error::InvalidArgument("gaedit: sh_degree must be in [0, 3] and fit in K");
  const int64_t N = in->N, T = ((width + tile - 1) / tile) * ((height + tile - 1) / tile);
  if (auto e = index_all({{"radii", radii.dimensions(), {N}, &sv->i_gauss},
                          {"final_T", final_T.dimensions(), {height, width}, &sv->i_pix},
                          {"tile_ranges", tile_ranges.dimensions(), {T, 2}, &sv->i_tiles},
                          {"d_image", d_image.dimensions(), {height, width, 3}, &sv->i_dimage},
                          {"d_alpha", d_alpha.dimensions(), {height, width}, &sv->i_dalpha},
                          {"d_depth", d_depth.dimensions(), {height, width}, &sv->i_ddepth},
                          {"d_means", d_means->dimensions(), {N, 3}, &gr->o_means},
                          {"d_quats", d_quats->dimensions(), {N, 4}, &gr->o_quats},
                          {"d_scales", d_scales->dimensions(), {N, 3}, &gr->o_scales},
                          {"d_opacities", d_opac->dimensions(), {N}, &gr->o_opac},
                          {"d_sh", d_sh->dimensions(), {N, in->K, 3}, &gr->o_sh},
                          {"d_screen_offset", d_offset->dimensions(), {N, 2}, &gr->o_offset},
                          {"d_background", d_bg->dimensions(), {3}, &gr->o_bg}},
                         full);
      e.failure())
    return e;
  // the residuals of one forward share its batch shape
  for (auto d : {means2d.dimensions(), conic_opac.dimensions(), colors.dimensions(), zs.dimensions()})
    for (int i = 0; i < nb; ++i)
      if (d[i] != radii.dimensions()[i])
        return ffi::Error::InvalidArgument("gaedit: inconsistent residual batch dims");
  for (auto d : {last.dimensions(), depth_out.dimensions()})
    for (int i = 0; i < nb; ++i)
      if (d[i] != final_T.dimensions()[i])
        return ffi::Error::InvalidArgument("gaedit: inconsistent residual batch dims");
  sv->radii = radii.typed_data(), sv->means2d = means2d.typed_data();
  sv->conic_opac = conic_opac.typed_data(), sv->colors = colors.typed_data(), sv->zs = zs.typed_data();
  sv->final_T = final_T.typed_data(), sv->depth_out = depth_out.typed_data(), sv->last = last.typed_data();
  sv->isect = isect.typed_data(), sv->tile_ranges = tile_ranges.typed_data();
  sv->d_image = d_image.typed_data(), sv->d_alpha = d_alpha.typed_data(), sv->d_depth = d_depth.typed_data();
  gr->means = d_means->typed_data(), gr->quats = d_quats->typed_data(), gr->scales = d_scales->typed_data();
  gr->opac = d_opac->typed_data(), gr->sh = d_sh->typed_data(), gr->offset = d_offset->typed_data();
  gr->bg = d_bg->typed_data();
  gr->sizes[0] = d_means->element_count(), gr->sizes[1] = d_quats->element_count();
  gr->sizes[2] = d_scales->element_count(), gr->sizes[3] = d_opac->element_count();
  gr->sizes[4] = d_sh->element_count(), gr->sizes[5] = d_offset->element_count();
  gr->sizes[6] = d_bg->element_count();
  return ffi::Error::Success();
}

// The FFI signatures, shared by both platforms (the CUDA binder starts with the stream context).
// Forward and backward share the image geometry and the scene inputs; `mode` and `flag` are the
// attributes that differ (forward: wabe_k, wabe_tile; backward: wabe_backward, alpha_clamp_zero).
// Attributes keep the order they are declared in both.
template <class Mode, class B>
auto bind_scene(B&& b, const char* mode, const char* flag) {
  return std::move(b).template Attr<int64_t>("width")
      .template Attr<int64_t>("height")
      .template Attr<int64_t>("tile_size")
      .template Attr<int64_t>("sh_degree")
      .template Attr<float>("near_plane")
      .template Attr<Mode>(mode)
      .template Attr<bool>(flag)
      .template Attr<float>("wabe_beta")
      .template Arg<F32>()   // means
      .template Arg<F32>()   // quats
      .template Arg<F32>()   // scales
      .template Arg<F32>()   // opacities
      .template Arg<F32>()   // sh
      .template Arg<F32>()   // screen_offset
      .template Arg<F32>()   // world_to_camera
      .template Arg<F32>()   // intrinsics
      .template Arg<F32>();  // background
}

template <class B>
auto bind_forward(B b) {
  return bind_scene<int64_t>(std::move(b), "wabe_k", "wabe_tile")
      .template Ret<F32>()   // image
      .template Ret<F32>()   // alpha
      .template Ret<F32>()   // depth
      .template Ret<S32>()   // radii
      .template Ret<S32>()   // wabe_count
      .template Ret<F32>()   // wabe_weight
      .template Ret<S32>()   // overflow
      .template Ret<F32>()   // means2d
      .template Ret<F32>()   // conic + opacity
      .template Ret<F32>()   // colours
      .template Ret<F32>()   // depths
      .template Ret<F32>()   // final transmittance
      .template Ret<S32>()   // last contributor + 1
      .template Ret<S32>()   // sorted intersections
      .template Ret<S32>()   // tile ranges
      .template Ret<ffi::Buffer<ffi::U8>>();  // workspace (CUDA)
}

template <class B>
auto bind_backward(B b) {
  return bind_scene<bool>(std::move(b), "wabe_backward", "alpha_clamp_zero")
      .template Arg<S32>()   // radii
      .template Arg<F32>()   // means2d
      .template Arg<F32>()   // conic + opacity
      .template Arg<F32>()   // colours
      .template Arg<F32>()   // depths
      .template Arg<F32>()   // final transmittance
      .template Arg<S32>()   // last contributor + 1
      .template Arg<S32>()   // sorted intersections
      .template Arg<S32>()   // tile ranges
      .template Arg<F32>()   // depth output (expected depth)
      .template Arg<F32>()   // d_image
      .template Arg<F32>()   // d_alpha
      .template Arg<F32>()   // d_depth
      .template Ret<F32>()   // d_means
      .template Ret<F32>()   // d_quats
      .template Ret<F32>()   // d_scales
      .template Ret<F32>()   // d_opacities
      .template Ret<F32>()   // d_sh
      .template Ret<F32>()   // d_screen_offset
      .template Ret<F32>()   // d_background
      .template Ret<ffi::Buffer<ffi::U8>>();  // workspace (CUDA)
}

// What the Python loader checks against the installed jaxlib: "jaxlib=<version>;ffi_api=<M>.<m>".
#ifndef GAEDIT_JAXLIB_VERSION
#define GAEDIT_JAXLIB_VERSION "unknown"
#endif
#define GAEDIT_STR2(x) #x
#define GAEDIT_STR(x) GAEDIT_STR2(x)
#define GAEDIT_BUILD_INFO \
  "jaxlib=" GAEDIT_JAXLIB_VERSION ";ffi_api=" GAEDIT_STR(XLA_FFI_API_MAJOR) "." GAEDIT_STR(XLA_FFI_API_MINOR)

}  // namespace gs
