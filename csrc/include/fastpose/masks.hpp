// Mask clean-up: hole filling and small-mask removal.
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {

/// Remove masks smaller than min_size pixels (voxels in 3D), fill holes of the others, renumber 1..N.
///
/// Masks are visited in increasing label order; a mask with fewer than min_size pixels is removed
/// (min_size <= 0 keeps all).  The holes of a kept mask (background pixels in its bounding box not
/// 4-connected to the box border; in 3D, per Z plane as Cellpose does) are filled with its label.  Kept
/// masks are renumbered 1..N in increasing order of their old labels.
///
/// Args:
///   labels: [Z, Y, X] int32, >= 0, modified in place. Labels need not be sequential.
/// Returns: number of masks N.
int64_t fill_holes_and_remove_small_masks(int32_t* labels, const Shape& shape, int64_t min_size, const Exec& ex);

}  // namespace fastpose
