// Host wrapper of follow_flows: checks, then dispatch to the CPU or CUDA backend.
#include "fastpose/tracking.hpp"

#include <string>

#include "common/dispatch.h"
#include "tracking/tracking_backends.h"

namespace fastpose {

void follow_flows(const float* dP, const uint8_t* mask, const Shape& shape, int niter, float* positions,
                  const Exec& ex) {
  check_shape(shape, "follow_flows");
  if (niter < 0) throw ArgumentError("follow_flows: niter must be >= 0, got " + std::to_string(niter));
  if (shape.numel() == 0) return;
  if (!dP || !mask || !positions) throw ArgumentError("follow_flows: null pointer");
  FP_DISPATCH(ex, "follow_flows", follow_flows, dP, mask, shape, niter, positions, ex);
}

}  // namespace fastpose
