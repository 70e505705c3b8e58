// Decoding of the rasterizer's FFI operands, shared by the CPU and CUDA handlers (host code).
//
// Every operand has the same number of leading batch dims, each 1 (shared) or the full size; the
// full batch shape is their broadcast. `Inputs` (pointers + broadcast indices) is trivially
// copyable and is passed by value to the CUDA kernels.
#pragma once

#include <initializer_list>
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

}  // namespace gs
