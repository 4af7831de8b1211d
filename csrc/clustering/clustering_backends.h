// Backend entry points of get_masks (see fastpose/clustering.hpp and clustering_impl.h).
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {
namespace cpu {
/// positions: [ndim, Z, Y, X] float32, mask: [Z, Y, X] uint8, labels: [Z, Y, X] int32 output (host memory).
/// shape.numel() >= 1; masks with more than max_pixels pixels are dropped.  Returns the number of masks.
int64_t get_masks(const float* positions, const uint8_t* mask, const Shape& shape, int32_t* labels,
                  int64_t max_pixels, const Exec& ex);
}  // namespace cpu
#ifdef FASTPOSE_WITH_CUDA
namespace cuda_impl {
/// Same arrays in device memory; runs on ex's stream (synchronises twice for the seed and mask counts).
int64_t get_masks(const float* positions, const uint8_t* mask, const Shape& shape, int32_t* labels,
                  int64_t max_pixels, const Exec& ex);
}  // namespace cuda_impl
#endif
}  // namespace fastpose
