// Host wrapper of the mask-recovery chain: threshold -> follow_flows -> get_masks -> flow QC -> clean-up.
// Every step runs on ex.device; intermediates stay there (no host round trip).
#include "fastpose/pipeline.hpp"

#include <cmath>
#include <string>

#include "clustering/clustering_backends.h"
#include "common/dispatch.h"
#include "common/scratch.h"
#include "flows/flows_backends.h"
#include "masks/masks_backends.h"
#include "pipeline/pipeline_backends.h"
#include "tracking/tracking_backends.h"

namespace fastpose {

void threshold_mask(const float* prob, int64_t n, float threshold, uint8_t* mask, const Exec& ex) {
  if (n < 0) throw ArgumentError("threshold_mask: negative length");
  if (n == 0) return;
  if (!prob || !mask) throw ArgumentError("threshold_mask: null pointer");
  FP_DISPATCH(ex, "threshold_mask", threshold_mask, prob, n, threshold, mask, ex);
}

int64_t compute_masks(const float* dP, const float* cellprob, const Shape& shape, int32_t* labels,
                      const MaskParams& params, const Exec& ex, float* positions) {
  check_shape(shape, "compute_masks");
  const int64_t n = shape.numel();
  if (n == 0) return 0;
  if (!dP || !cellprob || !labels) throw ArgumentError("compute_masks: null pointer");
  if (params.niter < 0) throw ArgumentError("compute_masks: niter must be >= 0");
  const int64_t max_pixels = checked_max_pixels(params.max_size_fraction, n, "compute_masks");
  if (std::isnan(params.flow_threshold)) throw ArgumentError("compute_masks: flow_threshold is NaN");
  if (std::isnan(params.cellprob_threshold)) throw ArgumentError("compute_masks: cellprob_threshold is NaN");

  // Only the inputs are checked (above).  The intermediates are valid by construction (mask 0/1, get_masks'
  // labels 0..count), so each step calls its backend directly: no second argument check and no label-range
  // pass (on a GPU, one device->host sync each) before the flow QC and the clean-up.
  Scratch<uint8_t> mask(n, ex, /*zero=*/false);
  FP_BACKEND_CALL(ex, "compute_masks", threshold_mask, cellprob, n, params.cellprob_threshold, mask.get(), ex);

  Scratch<float> pos_scratch(positions ? 0 : shape.ndim * n, ex, /*zero=*/false);
  float* pos = positions ? positions : pos_scratch.get();
  FP_BACKEND_CALL(ex, "compute_masks", follow_flows, dP, mask.get(), shape, params.niter, pos, ex);

  const int64_t count =
      FP_BACKEND_CALL(ex, "compute_masks", get_masks, pos, mask.get(), shape, labels, max_pixels, ex);
  // The threshold mask and the tracked positions (1 + 4 * ndim bytes per pixel) are not needed past
  // get_masks: free them before the flow QC and the clean-up, whose own buffers then replace them instead of
  // adding to them (the peak of the chain is that of tracking / clustering, not of the QC).
  mask.release();
  pos_scratch.release();
  if (count == 0) return 0;

  const bool qc = params.flow_threshold > 0.0f && (shape.ndim == 2 || params.flow_qc_3d);
  if (qc)
    FP_BACKEND_CALL(ex, "compute_masks", remove_bad_flow_masks, labels, shape, dP, count, params.flow_threshold, ex);
  return FP_BACKEND_CALL(ex, "compute_masks", fill_holes_and_remove_small_masks, labels, shape, int32_t(count),
                         params.min_size, ex);
}

}  // namespace fastpose
