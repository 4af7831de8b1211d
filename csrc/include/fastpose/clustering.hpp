// Histogram-peak clustering of tracked end points (Cellpose, Methods "Mask recovery from vector flows").
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {

/// Cluster the end points of tracked pixels into masks.
///
/// Every tracked pixel falls in the bin floor(position) of a histogram over the image grid.  Seeds are
/// bins with more than 10 counts that are the maximum of their 5^d window; seeds are ranked by count
/// (ties: raster order) and each is extended, 5 times, to the 3^d neighbours with more than 2 counts
/// (so within its 11^d window); where the regions of two seeds overlap the higher-ranked (larger count)
/// seed wins.  Each tracked pixel takes the label of its bin; masks with more than
/// max_size_fraction * numel pixels are dropped; labels are renumbered 1..N in raster order of first
/// appearance.
///
/// Args:
///   positions: [ndim, Z, Y, X] float32 from follow_flows.
///   mask:      [Z, Y, X] uint8, non-zero for tracked pixels.
///   labels:    [Z, Y, X] int32 output, 0 for background.
/// Returns: number of masks N.
int64_t get_masks(const float* positions, const uint8_t* mask, const Shape& shape, int32_t* labels,
                  double max_size_fraction, const Exec& ex);

}  // namespace fastpose
