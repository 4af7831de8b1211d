// Host wrappers of the heat-diffusion flow targets and the flow-error QC: argument checks, zero-size
// early returns, dispatch to the CPU or CUDA backend.
#include "fastpose/flows.hpp"

#include <cmath>
#include <string>

#include "common/parallel.h"
#include "flows/flows_backends.h"

namespace fastpose {
namespace {

// Per-label statistics store coordinates as int32.
void check_extents(const Shape& s, const char* what) {
  const int64_t lim = int64_t(1) << 31;
  if (s.z >= lim || s.y >= lim || s.x >= lim)
    throw ArgumentError(std::string(what) + ": image extents must be < 2**31");
}

}  // namespace

void masks_to_flows(const int32_t* labels, const Shape& shape, float* flows, const Exec& ex, int niter) {
  check_shape(shape, "masks_to_flows");
  check_extents(shape, "masks_to_flows");
  if (shape.numel() == 0) return;
  if (!labels || !flows) throw ArgumentError("masks_to_flows: null pointer");
  FP_DISPATCH(ex, "masks_to_flows", masks_to_flows, labels, shape, flows, niter, ex);
}

void flow_errors(const int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels, float* errors,
                 const Exec& ex) {
  check_shape(shape, "flow_errors");
  check_extents(shape, "flow_errors");
  if (nlabels < 0) throw ArgumentError("flow_errors: nlabels must be >= 0");
  if (nlabels > 0 && !errors) throw ArgumentError("flow_errors: null pointer (errors)");
  if (shape.numel() > 0 && (!labels || !dP)) throw ArgumentError("flow_errors: null pointer");
  if (shape.numel() == 0 && nlabels == 0) return;
  FP_DISPATCH(ex, "flow_errors", flow_errors, labels, shape, dP, nlabels, errors, ex);
}

int64_t remove_bad_flow_masks(int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels,
                              float threshold, const Exec& ex) {
  check_shape(shape, "remove_bad_flow_masks");
  check_extents(shape, "remove_bad_flow_masks");
  if (nlabels < 0) throw ArgumentError("remove_bad_flow_masks: nlabels must be >= 0");
  if (std::isnan(threshold)) throw ArgumentError("remove_bad_flow_masks: threshold is NaN");
  if (shape.numel() == 0) return 0;
  if (!labels || !dP) throw ArgumentError("remove_bad_flow_masks: null pointer");
  FP_DISPATCH(ex, "remove_bad_flow_masks", remove_bad_flow_masks, labels, shape, dP, nlabels, threshold, ex);
}

}  // namespace fastpose
