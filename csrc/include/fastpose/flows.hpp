// Heat-diffusion flow targets (Cellpose, Methods "Auxiliary vector flow representation"; Cellpose3's
// centre-of-mass source) and the flow-error quality check ("Mask quality threshold").
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {

/// Heat-diffusion flow targets of a label image.
///
/// For every mask: the source is the mask pixel closest to the mask's centre of mass (ties: lowest raster
/// index); inside the mask's bounding box padded by 1, each of `niter` Jacobi iterations adds 1 at the
/// source and replaces every in-mask pixel by the mean of its 3x3 (3x3x3) neighbourhood, out-of-mask
/// pixels held at 0.  niter <= 0 means 2 * (sum of the padded box extents) per mask.  Flows are the
/// central differences of the final heat map, normalised to unit length.
///
/// Args:
///   labels: [Z, Y, X] int32, 0 = background, >= 0 (Z == 1 for 2D). Labels need not be sequential.
///   shape:  image shape (ndim 2 or 3).
///   flows:  [ndim, Z, Y, X] float32 output (components Y, X in 2D; Z, Y, X in 3D); 0 outside masks.
///   ex:     where the pointers live and the work runs.
///   niter:  iterations per mask, <= 0 for the per-mask default.
void masks_to_flows(const int32_t* labels, const Shape& shape, float* flows, const Exec& ex, int niter = 0);

/// Mean squared flow error of every mask.
///
/// errors[k - 1] = sum over components c of mean over pixels p of mask k of
///                 (masks_to_flows(labels)[c, p] - dP[c, p] / 5)^2, for k = 1..nlabels.
/// Labels absent from the image get error 0.
///
/// Args:
///   labels:  [Z, Y, X] int32, values in [0, nlabels].
///   dP:      [ndim, Z, Y, X] float32 network flows (scaled by 5, Cellpose convention).
///   nlabels: number of error slots (normally the maximum label).
///   errors:  [nlabels] float32 output.
void flow_errors(const int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels, float* errors,
                 const Exec& ex);

/// Set to 0 every mask whose flow error exceeds `threshold` (in place; labels are not renumbered).
///
/// Args:
///   labels: [Z, Y, X] int32, values in [0, nlabels], modified in place.
///   dP:     [ndim, Z, Y, X] float32 network flows (scaled by 5).
/// Returns: number of masks removed.
int64_t remove_bad_flow_masks(int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels,
                              float threshold, const Exec& ex);

}  // namespace fastpose
