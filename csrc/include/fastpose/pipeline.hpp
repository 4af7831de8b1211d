// The whole mask-recovery chain: threshold -> Euler tracking -> clustering -> flow QC -> clean-up.
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {

/// Settings of compute_masks (Cellpose's defaults).
struct MaskParams {
  int niter = 200;                  ///< Euler steps
  float cellprob_threshold = 0.0f;  ///< pixels with cellprob > threshold are tracked (cellprob is a logit)
  float flow_threshold = 0.4f;      ///< flow-error QC threshold; <= 0 disables QC
  bool flow_qc_3d = false;          ///< run flow QC on 3D images too (Cellpose skips it in 3D)
  int64_t min_size = 15;            ///< masks smaller than this are removed (<= 0 keeps all)
  double max_size_fraction = 0.4;   ///< masks larger than this fraction of the image are removed
};

/// Threshold a cell-probability map: mask[i] = prob[i] > threshold (NaN counts as background).
///
/// Args:
///   prob: [n] float32.  mask: [n] uint8 output.
void threshold_mask(const float* prob, int64_t n, float threshold, uint8_t* mask, const Exec& ex);

/// Recover masks from network outputs.
///
/// Args:
///   dP:        [ndim, Z, Y, X] float32 flows (5x unit vectors).
///   cellprob:  [Z, Y, X] float32 cell-probability logits.
///   labels:    [Z, Y, X] int32 output, 0 background, masks 1..N.
///   positions: optional [ndim, Z, Y, X] float32 output of the tracked end points (nullptr to skip).
/// Returns: number of masks N.
int64_t compute_masks(const float* dP, const float* cellprob, const Shape& shape, int32_t* labels,
                      const MaskParams& params, const Exec& ex, float* positions = nullptr);

}  // namespace fastpose
