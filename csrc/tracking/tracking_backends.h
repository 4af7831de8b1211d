// Backend entry points of follow_flows (see fastpose/tracking.hpp).
#pragma once

#include <cstdint>

#include "common/dispatch.h"
#include "fastpose/common.hpp"

namespace fastpose {

FP_BACKEND_API(
    // dP: [ndim, Z, Y, X] float32, mask: [Z, Y, X] uint8, positions: [ndim, Z, Y, X] float32 output.
    // shape.numel() >= 1, niter >= 0.  CUDA: runs on ex's stream without synchronising.
    void follow_flows(const float* dP, const uint8_t* mask, const Shape& shape, int niter, float* positions,
                      const Exec& ex);)

}  // namespace fastpose
