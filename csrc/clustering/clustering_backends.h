// Backend entry points of get_masks (see fastpose/clustering.hpp and clustering_impl.h), and get_masks' size
// rule shared by its host wrapper and compute_masks.
#pragma once

#include <cstdint>

#include "common/dispatch.h"
#include "fastpose/common.hpp"

namespace fastpose {

FP_BACKEND_API(
    // positions: [ndim, Z, Y, X] float32, mask: [Z, Y, X] uint8, labels: [Z, Y, X] int32 output.
    // 1 <= shape.numel() <= 2^31 - 1; masks with more than max_pixels pixels are dropped.  Returns the number of
    // masks (CUDA: synchronises twice, for the seed and mask counts).
    int64_t get_masks(const float* positions, const uint8_t* mask, const Shape& shape, int32_t* labels,
                      int64_t max_pixels, const Exec& ex);)

/// max_pixels of get_masks for an image of n pixels: floor(max_size_fraction * n), at most n, after checking
/// max_size_fraction >= 0 and n <= 2^31 - 1 (int32 counts).  Throws ArgumentError naming `what`.
int64_t checked_max_pixels(double max_size_fraction, int64_t n, const char* what);

}  // namespace fastpose
