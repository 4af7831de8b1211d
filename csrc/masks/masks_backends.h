// Backend entry points of fill_holes_and_remove_small_masks (see fastpose/masks.hpp).  The host wrapper
// (masks.cpp) has checked the shape and the label values (checked_max_label); compute_masks calls the
// backend directly with get_masks' mask count as max_label.
#pragma once

#include <cstdint>

#include "common/dispatch.h"
#include "fastpose/common.hpp"

namespace fastpose {

FP_BACKEND_API(
    // labels: [Z, Y, X] int32 with 0 <= labels <= max_label (max_label >= 1), modified in place.
    // Returns the number of kept masks (CUDA: synchronises for it).
    int64_t fill_holes_and_remove_small_masks(int32_t* labels, const Shape& shape, int32_t max_label,
                                              int64_t min_size, const Exec& ex);)

}  // namespace fastpose
