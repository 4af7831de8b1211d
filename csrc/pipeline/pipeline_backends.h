// Backend entry points of the pipeline glue (see fastpose/pipeline.hpp).
#pragma once

#include <cstdint>

#include "common/dispatch.h"
#include "fastpose/common.hpp"

namespace fastpose {

FP_BACKEND_API(
    // prob: [n] float32; mask: [n] uint8 output
    void threshold_mask(const float* prob, int64_t n, float threshold, uint8_t* mask, const Exec& ex);)

}  // namespace fastpose
