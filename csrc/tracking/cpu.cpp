// CPU backend of follow_flows: OpenMP over blocks of pixels; per-pixel logic in tracking_impl.h.
//
// One pixel's steps form a serial dependency chain (load -> interpolate -> divide -> clamp), so each
// thread interleaves kLanes tracked pixels step by step to let out-of-order execution overlap them.
// Every pixel goes through exactly the same impl::step_* calls as on the GPU.
#include "common/parallel.h"
#include "tracking/tracking_backends.h"
#include "tracking/tracking_impl.h"

namespace fastpose {
namespace cpu {

namespace {

constexpr int kLanes = 8;
constexpr int64_t kBlock = 4096;

template <int NDIM>
void track_lanes(const impl::MaskedPlanarFlow<NDIM>& flow, const Shape& s, int niter, const int64_t* idx, int count,
                 float* positions) {
  float p[kLanes][3];
  bool active[kLanes];
  for (int k = 0; k < count; ++k) {
    impl::start_position(s, idx[k], p[k]);
    active[k] = true;
  }
  const int64_t Z = s.z, Y = s.y, X = s.x;
  for (int t = 0; t < niter; ++t) {
    bool any = false;
    for (int k = 0; k < count; ++k) {
      if (!active[k]) continue;
      if constexpr (NDIM == 2)
        active[k] = impl::step_2d(flow, Y, X, p[k]);
      else
        active[k] = impl::step_3d(flow, Z, Y, X, p[k]);
      any = any || active[k];
    }
    if (!any) break;
  }
  for (int k = 0; k < count; ++k) impl::store_position(s, idx[k], p[k], positions);
}

template <int NDIM>
void follow_all(const float* dP, const uint8_t* mask, const Shape& s, int niter, float* positions, int nt) {
  const int64_t n = s.numel();
  const impl::MaskedPlanarFlow<NDIM> flow{dP, mask, n};
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t begin = blk * kBlock, end = begin + kBlock < n ? begin + kBlock : n;
    int64_t lanes[kLanes];
    int count = 0;
    for (int64_t i = begin; i < end; ++i) {
      if (!mask[i] || niter == 0) {
        float p[3];
        impl::start_position(s, i, p);
        impl::store_position(s, i, p, positions);
        continue;
      }
      lanes[count++] = i;
      if (count == kLanes) {
        track_lanes<NDIM>(flow, s, niter, lanes, count, positions);
        count = 0;
      }
    }
    if (count > 0) track_lanes<NDIM>(flow, s, niter, lanes, count, positions);
  }
}

}  // namespace

void follow_flows(const float* dP, const uint8_t* mask, const Shape& shape, int niter, float* positions,
                  const Exec& ex) {
  const int nt = cpu_threads(ex);
  if (shape.ndim == 2)
    follow_all<2>(dP, mask, shape, niter, positions, nt);
  else
    follow_all<3>(dP, mask, shape, niter, positions, nt);
}

}  // namespace cpu
}  // namespace fastpose
