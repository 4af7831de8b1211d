// Host wrappers of the heat-diffusion flow targets and the flow-error QC: argument checks, the label-range
// check, zero-size early returns, dispatch to the CPU or CUDA backend.
#include "fastpose/flows.hpp"

#include <cmath>
#include <string>

#include "common/dispatch.h"
#include "common/label_stats.h"
#include "flows/flows_backends.h"

namespace fastpose {

void masks_to_flows(const int32_t* labels, const Shape& shape, float* flows, const Exec& ex, int niter) {
  check_shape(shape, "masks_to_flows");
  check_label_extents(shape, "masks_to_flows");
  const int64_t n = shape.numel();
  if (n == 0) return;
  if (!labels || !flows) throw ArgumentError("masks_to_flows: null pointer");
  const int64_t maxlab = checked_max_label(labels, n, -1, "masks_to_flows", ex);
  FP_DISPATCH(ex, "masks_to_flows", masks_to_flows, labels, shape, maxlab, flows, niter, ex);
}

void flow_errors(const int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels, float* errors,
                 const Exec& ex) {
  check_shape(shape, "flow_errors");
  check_label_extents(shape, "flow_errors");
  if (nlabels < 0) throw ArgumentError("flow_errors: nlabels must be >= 0");
  if (nlabels > 0 && !errors) throw ArgumentError("flow_errors: null pointer (errors)");
  const int64_t n = shape.numel();
  if (n > 0 && (!labels || !dP)) throw ArgumentError("flow_errors: null pointer");
  if (n == 0 && nlabels == 0) return;
  const int64_t maxlab = checked_max_label(labels, n, nlabels, "flow_errors", ex);
  FP_DISPATCH(ex, "flow_errors", flow_errors, labels, shape, dP, maxlab, nlabels, errors, ex);
}

int64_t remove_bad_flow_masks(int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels,
                              float threshold, const Exec& ex) {
  check_shape(shape, "remove_bad_flow_masks");
  check_label_extents(shape, "remove_bad_flow_masks");
  if (nlabels < 0) throw ArgumentError("remove_bad_flow_masks: nlabels must be >= 0");
  if (std::isnan(threshold)) throw ArgumentError("remove_bad_flow_masks: threshold is NaN");
  const int64_t n = shape.numel();
  if (n == 0) return 0;
  if (!labels || !dP) throw ArgumentError("remove_bad_flow_masks: null pointer");
  const int64_t maxlab = checked_max_label(labels, n, nlabels, "remove_bad_flow_masks", ex);
  if (maxlab == 0) return 0;
  FP_DISPATCH(ex, "remove_bad_flow_masks", remove_bad_flow_masks, labels, shape, dP, maxlab, threshold, ex);
}

}  // namespace fastpose
