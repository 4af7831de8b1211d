// CUDA backend of the pipeline glue.
#include "common/cuda_utils.cuh"
#include "pipeline/pipeline_backends.h"
#include "pipeline/pipeline_impl.h"

namespace fastpose {
namespace cuda_impl {

namespace {

constexpr int kThreads = 256;

// prob: [n] float32; mask: [n] uint8 output.
__global__ void threshold_kernel(const float* __restrict__ prob, int64_t n, float threshold, uint8_t* __restrict__ mask) {
  FP_GRID_STRIDE(i, n) { mask[i] = impl::threshold_pixel(prob[i], threshold); }
}

}  // namespace

void threshold_mask(const float* prob, int64_t n, float threshold, uint8_t* mask, const Exec& ex) {
  if (n <= 0) return;
  threshold_kernel<<<cuda::grid_for(n, kThreads, cuda::kStrideBlocks), kThreads, 0, cuda::stream_of(ex)>>>(
      prob, n, threshold, mask);
  FP_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda_impl
}  // namespace fastpose
