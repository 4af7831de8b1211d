// CUDA backend of the pipeline glue.
#include "common/cuda_utils.cuh"
#include "pipeline/pipeline_backends.h"
#include "pipeline/pipeline_impl.h"

namespace fastpose {
namespace cuda_impl {

__global__ void threshold_kernel(const float* __restrict__ prob, int64_t n, float threshold, uint8_t* __restrict__ mask) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    mask[i] = impl::threshold_pixel(prob[i], threshold);
}

void threshold_mask(const float* prob, int64_t n, float threshold, uint8_t* mask, const Exec& ex) {
  if (n <= 0) return;
  const int threads = 256;
  unsigned int blocks = cuda::blocks_for(n, threads);
  if (blocks > 65535u * 8u) blocks = 65535u * 8u;
  threshold_kernel<<<blocks, threads, 0, cuda::stream_of(ex)>>>(prob, n, threshold, mask);
  FP_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda_impl
}  // namespace fastpose
