// Backend entry points of mean_shift (see fastpose/meanshift.hpp and meanshift_impl.h), and the host steps shared
// by both backends (merge.cpp): the merge of the converged modes into centres and the centre grid.  The host
// wrapper (meanshift.cpp) has checked the sizes, the pointers and the parameters.
#pragma once

#include <cstdint>
#include <vector>

#include "common/dispatch.h"
#include "fastpose/common.hpp"
#include "fastpose/meanshift.hpp"
#include "meanshift/meanshift_impl.h"

namespace fastpose {

FP_BACKEND_API(
    // points: [n, d] float32, n >= 1; lo, hi: [d] float32 host outputs, the smallest and largest coordinate per
    // axis.  Returns false when a coordinate is NaN or infinite (lo, hi then undefined).  CUDA: synchronises.
    bool mean_shift_bounds(const float* points, int64_t n, int d, float* lo, float* hi, const Exec& ex);
    // points: [n, d] float32; fit: [m] int64; out: [m, d] float32 output, out[i] = points[fit[i]].  Returns the
    // number of indices outside [0, n) (their rows are left undefined).  CUDA: synchronises.
    int64_t mean_shift_gather(const float* points, int64_t n, int d, const int64_t* fit, int64_t m, float* out,
                              const Exec& ex);
    // X: [m, d] float32 fitted points, all inside g's box, m >= 1; seeds: [s, d] float32 (SeedMode::Given only);
    // modes: [cap, d] float32 output, counts: [cap] int32 output, the mode and last window size of every seed
    // (0: dropped), cap = s for SeedMode::Given, else m.  Returns the number of seeds.  CUDA: synchronises (the
    // number of bin seeds).
    int64_t mean_shift_modes(const float* X, int64_t m, const impl::BinGrid& g, SeedMode mode, const float* seeds,
                             int64_t s, int64_t min_bin_freq, float bw2, float stop2, int max_iter, float* modes,
                             int32_t* counts, const Exec& ex);
    // points: [n, d] float32; grid: the centres and their cells (arrays on ex.device); labels: [n] int32 output.
    void mean_shift_assign(const float* points, int64_t n, const impl::CentreGrid& grid, float bw2, bool cluster_all,
                           int32_t* labels, const Exec& ex);)

/// The centres from the converged modes of S seeds (host memory): modes with a non-empty last window, identical
/// ones once, sorted by (window size, coordinates) descending; a mode within the bandwidth (dist2 <= bw2) of a
/// kept one is dropped.  modes: [S, d] float32; counts: [S] int32.  Returns the centres, [K, d] float32.
std::vector<float> merge_modes(const float* modes, const int32_t* counts, int64_t S, int d, float bw, float bw2);

/// Host arrays of a CentreGrid over centres: [K, d] float32 (K >= 1) with cells of at least the bandwidth bw,
/// coarsened (doubled) until there are at most max(4 K, 4096) cells.  start: [cells + 1], items: [K] outputs.
impl::CentreGrid plan_centre_grid(const float* centres, int64_t K, int d, float bw, std::vector<int32_t>& start,
                                  std::vector<int32_t>& items);

}  // namespace fastpose
