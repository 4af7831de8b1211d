// Per-pixel logic of the pipeline glue (shared by the CPU and CUDA backends).
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {
namespace impl {

/// 1 where the cell-probability logit exceeds the threshold; NaN compares false -> background.
FP_HOST_DEVICE uint8_t threshold_pixel(float prob, float threshold) { return prob > threshold ? 1 : 0; }

}  // namespace impl
}  // namespace fastpose
