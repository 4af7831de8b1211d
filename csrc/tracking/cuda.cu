// CUDA backend of follow_flows: one thread per pixel, per-pixel logic in tracking_impl.h.
#include "common/cuda_utils.cuh"
#include "tracking/tracking_backends.h"
#include "tracking/tracking_impl.h"

namespace fastpose {
namespace cuda_impl {

namespace {

constexpr int kThreads = 128;

// dP: [ndim, Z, Y, X] float32; mask: [Z, Y, X] uint8; positions: [ndim, Z, Y, X] float32 output.
__global__ void follow_kernel(const float* __restrict__ dP, const uint8_t* __restrict__ mask, Shape s, int niter,
                              float* __restrict__ positions) {
  const int64_t n = s.numel();
  FP_GRID_STRIDE(i, n) {
    if (s.ndim == 2)
      impl::follow_pixel<2>(impl::MaskedPlanarFlow<2>{dP, mask, s.z, s.y, s.x}, mask, s, niter, i, positions);
    else
      impl::follow_pixel<3>(impl::MaskedPlanarFlow<3>{dP, mask, s.z, s.y, s.x}, mask, s, niter, i, positions);
  }
}

}  // namespace

void follow_flows(const float* dP, const uint8_t* mask, const Shape& shape, int niter, float* positions,
                  const Exec& ex) {
  const int64_t n = shape.numel();
  if (n == 0) return;
  follow_kernel<<<cuda::grid_for(n, kThreads), kThreads, 0, cuda::stream_of(ex)>>>(dP, mask, shape, niter,
                                                                                  positions);
  FP_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda_impl
}  // namespace fastpose
