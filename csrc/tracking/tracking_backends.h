// Backend entry points of follow_flows (see fastpose/tracking.hpp).
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {
namespace cpu {
/// dP: [ndim, Z, Y, X] float32, mask: [Z, Y, X] uint8, positions: [ndim, Z, Y, X] float32 (host memory).
/// shape.numel() >= 1, niter >= 0.
void follow_flows(const float* dP, const uint8_t* mask, const Shape& shape, int niter, float* positions,
                  const Exec& ex);
}  // namespace cpu
#ifdef FASTPOSE_WITH_CUDA
namespace cuda_impl {
/// Same arrays in device memory; runs on ex's stream without synchronising.
void follow_flows(const float* dP, const uint8_t* mask, const Shape& shape, int niter, float* positions,
                  const Exec& ex);
}  // namespace cuda_impl
#endif
}  // namespace fastpose
