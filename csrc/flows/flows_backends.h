// Backend entry points of the flow targets and flow-error QC (see fastpose/flows.hpp).  The host
// wrapper (flows.cpp) has checked the shape, the pointers and nlabels >= 0; the backends check the
// label values (they need a pass over the labels anyway) and throw ArgumentError on bad ones.
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {
namespace cpu {
// labels: [Z, Y, X] int32 (>= 0, max <= numel); flows: [ndim, Z, Y, X] float32 output; niter <= 0: default
void masks_to_flows(const int32_t* labels, const Shape& shape, float* flows, int niter, const Exec& ex);
// labels: [Z, Y, X] int32 in [0, nlabels]; dP: [ndim, Z, Y, X] float32; errors: [nlabels] float32 output
void flow_errors(const int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels, float* errors,
                 const Exec& ex);
// labels: [Z, Y, X] int32 in [0, nlabels], modified in place; dP: [ndim, Z, Y, X] float32. Returns masks removed.
int64_t remove_bad_flow_masks(int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels, float threshold,
                              const Exec& ex);
}  // namespace cpu
#ifdef FASTPOSE_WITH_CUDA
namespace cuda_impl {
// Same contracts as fastpose::cpu::..., all pointers in device memory.
void masks_to_flows(const int32_t* labels, const Shape& shape, float* flows, int niter, const Exec& ex);
void flow_errors(const int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels, float* errors,
                 const Exec& ex);
int64_t remove_bad_flow_masks(int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels, float threshold,
                              const Exec& ex);
}  // namespace cuda_impl
#endif
}  // namespace fastpose
