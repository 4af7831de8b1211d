// Backend entry points of fill_holes_and_remove_small_masks (see fastpose/masks.hpp).
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {
namespace cpu {
/// labels: [n] int32.  Writes the minimum and maximum label (n >= 1).
void label_range(const int32_t* labels, int64_t n, int32_t* min_label, int32_t* max_label, const Exec& ex);
/// labels: [Z, Y, X] int32 with 0 <= labels <= max_label (max_label >= 1), modified in place.
/// Returns the number of kept masks.
int64_t fill_holes_and_remove_small_masks(int32_t* labels, const Shape& shape, int32_t max_label,
                                          int64_t min_size, const Exec& ex);
}  // namespace cpu
#ifdef FASTPOSE_WITH_CUDA
namespace cuda_impl {
/// labels: [n] int32 (device).  Writes the minimum and maximum label (host values; synchronises).
void label_range(const int32_t* labels, int64_t n, int32_t* min_label, int32_t* max_label, const Exec& ex);
/// labels: [Z, Y, X] int32 (device) with 0 <= labels <= max_label, modified in place.
/// Returns the number of kept masks (synchronises for it).
int64_t fill_holes_and_remove_small_masks(int32_t* labels, const Shape& shape, int32_t max_label,
                                          int64_t min_size, const Exec& ex);
}  // namespace cuda_impl
#endif
}  // namespace fastpose
