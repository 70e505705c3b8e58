// Broadcasting over leading batch dimensions, shared by the CPU and CUDA handlers.
//
// Every operand of the rasterizer's FFI calls has the same number of leading (batch) dimensions
// (the Python wrapper inserts size-1 dims; each vmap level adds one leading dim to all operands).
// Each leading dim is either 1 (shared) or the full batch size. Views are numbered by the flat
// index of the full batch shape; BatchIndex maps a view to the offset of an operand's slice.
#pragma once

#include <cstdint>
#include <string>

#include "gaedit/gs_math.h"

namespace gs {

constexpr int kMaxBatchDims = 8;

struct BatchIndex {
  int nd = 0;
  int64_t dims[kMaxBatchDims];  // the operand's leading dims (1 or full[d])
  int64_t full[kMaxBatchDims];  // the full batch shape

  // Offset of view v's slice, in units of the operand's per-view element count, for
  // 0 <= v < prod(full) (the flat view count, far below 2^32). The kernels call this per thread and
  // view: 32-bit division (a 64-bit one is a long software routine on the GPU) and none for the
  // outermost dim, whose index is what is left of v (one batch dim, the common case: no division).
  GS_HD int64_t operator()(int64_t v) const {
    uint32_t u = (uint32_t)v;
    int64_t off = 0, stride = 1;
    for (int d = nd - 1; d > 0; --d) {
      const uint32_t f = (uint32_t)full[d], q = u / f, i = u - q * f;
      if (dims[d] != 1) off += (int64_t)i * stride;
      stride *= dims[d];
      u = q;
    }
    if (nd > 0 && dims[0] != 1) off += (int64_t)u * stride;
    return off;
  }

  // True when views visit each slice in one consecutive run (offsets never decrease with v): no
  // broadcast (size-1) dim of size > 1 in the full shape lies outside a batched one.
  bool runs() const {
    bool broadcast_seen = false;
    for (int d = 0; d < nd; ++d) {
      if (dims[d] == 1 && full[d] > 1) broadcast_seen = true;
      else if (dims[d] != 1 && broadcast_seen) return false;
    }
    return true;
  }
};

// Builds the index of an operand with dims `shape` (rank = nb + core_rank). Returns an error
// message, or an empty string.
template <class Span>
std::string make_batch_index(const char* name, const Span& shape, int core_rank, const int64_t* full,
                             int nb, BatchIndex* out) {
  const int rank = (int)shape.size();
  if (rank != nb + core_rank)
    return std::string(name) + ": expected " + std::to_string(nb) + " leading batch dims and " +
           std::to_string(core_rank) + " core dims, got rank " + std::to_string(rank);
  if (nb > kMaxBatchDims) return std::string(name) + ": too many batch dims";
  out->nd = nb;
  for (int d = 0; d < nb; ++d) {
    const int64_t s = shape[d];
    if (s != 1 && s != full[d])
      return std::string(name) + ": batch dim " + std::to_string(d) + " is " + std::to_string(s) +
             ", expected 1 or " + std::to_string(full[d]);
    out->dims[d] = s;
    out->full[d] = full[d];
  }
  return std::string();
}

}  // namespace gs
