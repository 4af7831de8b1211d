// Mean-shift clustering with a flat kernel (scikit-learn's MeanShift; Cellulus clusters its embeddings with it).
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {

/// Where the hill climbs start.
enum class SeedMode : int {
  Bin = 0,    ///< one seed per occupied bin of size `bandwidth` (scikit-learn's bin_seeding=True)
  All = 1,    ///< every fitted point is a seed (scikit-learn's default)
  Given = 2,  ///< the seeds passed in
};

/// Settings of mean_shift (scikit-learn's defaults, but cluster_all = false as in Cellulus).
struct MeanShiftParams {
  double bandwidth = 1.0;           ///< radius of the flat kernel (> 0; used as float32)
  SeedMode seeds = SeedMode::Bin;   ///< seeding strategy
  int64_t min_bin_freq = 1;         ///< SeedMode::Bin: only bins with at least this many fitted points seed
  int max_iter = 300;               ///< mean updates per seed after the first (>= 0)
  bool cluster_all = false;         ///< label points farther than bandwidth from every centre too (else -1)
};

/// Mean-shift clustering of N points in D = 2 or 3 dimensions.
///
/// Fit: the points fitted on are `fit` (indices into points) or all points.  Every seed climbs: its window is
/// the fitted points p with |p - m|^2 <= bandwidth^2 (float32 differences, squares summed in axis order); m
/// becomes their mean (summed in double, rounded to float32); it stops once the shift is at most
/// 1e-3 * bandwidth or after max_iter + 1 updates.  A seed whose window is ever empty is dropped.  Bin seeds
/// are the bins b = rint(p / bandwidth) (float32) holding at least min_bin_freq fitted points, at b * bandwidth;
/// when there are as many such bins as fitted points the fitted points are the seeds (scikit-learn's rule).
/// Merge: the converged modes, each with the size of its last window, are sorted by (size, coordinates)
/// descending; a mode within bandwidth of a kept one is dropped.  Assignment: every point takes the nearest
/// centre (ties: the first); with cluster_all == false points farther than bandwidth from every centre get -1.
///
/// Args:
///   points:  [N, D] float32, finite; N <= 2^31 - 1.
///   fit:     [M] int64 indices in [0, N) of the points fitted on (repeats allowed), or nullptr for all points.
///   seeds:   [S, D] float32, finite; SeedMode::Given only (nullptr otherwise).
///   labels:  [N] int32 output: the index of each point's centre, -1 for orphans.
///   centres: [C, D] float32 output, C >= S for SeedMode::Given, else C >= M (N without fit); the first K rows
///            are written, in the merge order (the largest window first).
/// Returns: the number of centres K >= 1.  Throws ArgumentError when no seed's window holds a point.
int64_t mean_shift(const float* points, int64_t n, int d, const int64_t* fit, int64_t m, const float* seeds,
                   int64_t s, const MeanShiftParams& params, int32_t* labels, float* centres, const Exec& ex);

}  // namespace fastpose
