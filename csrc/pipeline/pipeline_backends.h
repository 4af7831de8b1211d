// Backend entry points of the pipeline glue (see fastpose/pipeline.hpp).
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {
namespace cpu {
// prob: [n] float32; mask: [n] uint8 output
void threshold_mask(const float* prob, int64_t n, float threshold, uint8_t* mask, const Exec& ex);
}  // namespace cpu
#ifdef FASTPOSE_WITH_CUDA
namespace cuda_impl {
// prob: [n] float32 (device); mask: [n] uint8 output (device)
void threshold_mask(const float* prob, int64_t n, float threshold, uint8_t* mask, const Exec& ex);
}  // namespace cuda_impl
#endif
}  // namespace fastpose
