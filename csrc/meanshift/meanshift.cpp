// Host wrapper of mean_shift: checks, then the backend steps on ex.device (bounds, gather, modes, assignment)
// around the host merge (merge.cpp).  On CUDA the converged modes come to the host ([S, D] floats and S counts)
// and the centres with their grid go back: small metadata, never the points.
#include "fastpose/meanshift.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/dispatch.h"
#include "common/scratch.h"
#include "meanshift/meanshift_backends.h"
#include "meanshift/meanshift_impl.h"

namespace fastpose {

namespace {

constexpr int kHostToDevice = 1;  // cudaMemcpyHostToDevice
constexpr int kDeviceToHost = 2;  // cudaMemcpyDeviceToHost

void copy_to_host(void* dst, const void* src, size_t bytes, const Exec& ex) {
  if (bytes == 0) return;
  if (ex.device == Device::CPU) {
    std::memcpy(dst, src, bytes);
  } else {
    detail::device_copy(dst, src, bytes, kDeviceToHost, ex.stream);
    detail::device_sync(ex.stream);
  }
}

void copy_from_host(void* dst, const void* src, size_t bytes, const Exec& ex) {
  if (bytes == 0) return;
  if (ex.device == Device::CPU)
    std::memcpy(dst, src, bytes);
  else
    detail::device_copy(dst, src, bytes, kHostToDevice, ex.stream);
}

/// The bins of points within [lo, hi] per axis, after checking that they can be indexed (|p / bw| < 2^62 and
/// fewer than 2^62 bins in the box).
impl::BinGrid bin_grid(const float* lo, const float* hi, int d, float bw) {
  impl::BinGrid g;
  g.d = d;
  g.bw = bw;
  const double lim = 4.0e18;  // < 2^62
  double bins = 1.0;
  for (int a = 0; a < d; ++a) {
    const float q0 = lo[a] / bw, q1 = hi[a] / bw;
    if (!(std::fabs(q0) < lim) || !(std::fabs(q1) < lim))
      throw ArgumentError("mean_shift: bandwidth " + std::to_string(bw) +
                          " is too small for points this far from the origin (|p / bandwidth| must be < 4e18)");
    g.lo[a] = impl::bin_coord(lo[a], bw);
    g.ext[a] = impl::bin_coord(hi[a], bw) - g.lo[a] + 1;
    bins *= double(g.ext[a]);
  }
  if (!(bins < lim))
    throw ArgumentError("mean_shift: the points span too many bandwidths (" + std::to_string(bins) +
                        " bins of size bandwidth, the limit is 4e18); use a larger bandwidth");
  return g;
}

}  // namespace

int64_t mean_shift(const float* points, int64_t n, int d, const int64_t* fit, int64_t m, const float* seeds,
                   int64_t s, const MeanShiftParams& params, int32_t* labels, float* centres, const Exec& ex) {
  const int64_t kMaxPoints = std::numeric_limits<int32_t>::max();
  if (d != 2 && d != 3)
    throw ArgumentError("mean_shift: points must have D = 2 or 3 coordinates, got " + std::to_string(d));
  if (n < 1) throw ArgumentError("mean_shift: no points");
  if (n > kMaxPoints) throw ArgumentError("mean_shift: more than 2^31 - 1 points are not supported (int32 labels)");
  if (!points || !labels || !centres) throw ArgumentError("mean_shift: null pointer");
  const float bw = float(params.bandwidth);
  if (!(params.bandwidth > 0.0) || !(bw > 0.0f) || !std::isfinite(bw))
    throw ArgumentError("mean_shift: bandwidth must be a finite number > 0 (in float32), got " +
                        std::to_string(params.bandwidth));
  if (params.max_iter < 0) throw ArgumentError("mean_shift: max_iter must be >= 0");
  if (params.min_bin_freq < 1) throw ArgumentError("mean_shift: min_bin_freq must be >= 1");
  const SeedMode mode = params.seeds;
  if (mode != SeedMode::Bin && mode != SeedMode::All && mode != SeedMode::Given)
    throw ArgumentError("mean_shift: unknown seed mode " + std::to_string(int(mode)));
  if (mode == SeedMode::Given && (s < 1 || !seeds)) throw ArgumentError("mean_shift: no seeds given");
  if (fit && (m < 1 || m > kMaxPoints))
    throw ArgumentError("mean_shift: the number of fitted points must be in [1, 2^31 - 1], got " + std::to_string(m));

  float lo[impl::kMaxDim], hi[impl::kMaxDim];
  if (!FP_BACKEND_CALL(ex, "mean_shift", mean_shift_bounds, points, n, d, lo, hi, ex))
    throw ArgumentError("mean_shift: points contain NaN or Inf");
  if (mode == SeedMode::Given) {
    float slo[impl::kMaxDim], shi[impl::kMaxDim];
    if (!FP_BACKEND_CALL(ex, "mean_shift", mean_shift_bounds, seeds, s, d, slo, shi, ex))
      throw ArgumentError("mean_shift: seeds contain NaN or Inf");
  }
  const impl::BinGrid g = bin_grid(lo, hi, d, bw);  // the box of all points holds the fitted ones

  Scratch<float> fitted(fit ? m * d : 0, ex, /*zero=*/false);
  const float* X = points;
  int64_t M = n;
  if (fit) {
    const int64_t bad = FP_BACKEND_CALL(ex, "mean_shift", mean_shift_gather, points, n, d, fit, m, fitted.get(), ex);
    if (bad > 0)
      throw ArgumentError("mean_shift: " + std::to_string(bad) + " of the fit indices are outside [0, " +
                          std::to_string(n) + ")");
    X = fitted.get();
    M = m;
  }

  // Modes of every seed.
  const double bw_d = double(bw), stop = 1e-3 * bw_d;
  const float bw2 = float(bw_d * bw_d), stop2 = float(stop * stop);
  const int64_t cap = mode == SeedMode::Given ? s : M;
  Scratch<float> modes(cap * d, ex, /*zero=*/false);
  Scratch<int32_t> counts(cap, ex, /*zero=*/false);
  const int64_t S = FP_BACKEND_CALL(ex, "mean_shift", mean_shift_modes, X, M, g, mode, seeds, s,
                                    params.min_bin_freq, bw2, stop2, params.max_iter, modes.get(), counts.get(), ex);
  fitted.release();
  if (S == 0)
    throw ArgumentError("mean_shift: no bin holds min_bin_freq = " + std::to_string(params.min_bin_freq) +
                        " fitted points; lower min_bin_freq or use other seeds");

  // Merge on the host.
  std::vector<float> hmodes(static_cast<size_t>(S * d));
  std::vector<int32_t> hcounts(static_cast<size_t>(S));
  copy_to_host(hmodes.data(), modes.get(), sizeof(float) * hmodes.size(), ex);
  copy_to_host(hcounts.data(), counts.get(), sizeof(int32_t) * hcounts.size(), ex);
  modes.release();
  counts.release();
  const std::vector<float> c = merge_modes(hmodes.data(), hcounts.data(), S, d, bw, bw2);
  const int64_t K = int64_t(c.size()) / d;
  if (K == 0)
    throw ArgumentError("mean_shift: no fitted point lies within the bandwidth of any seed; use other seeds or a "
                        "larger bandwidth");

  // Assignment: the centres and their grid on ex.device.
  std::vector<int32_t> hstart, hitems;
  impl::CentreGrid grid = plan_centre_grid(c.data(), K, d, bw, hstart, hitems);
  Scratch<int32_t> start(int64_t(hstart.size()), ex, /*zero=*/false), items(K, ex, /*zero=*/false);
  copy_from_host(centres, c.data(), sizeof(float) * c.size(), ex);
  copy_from_host(start.get(), hstart.data(), sizeof(int32_t) * hstart.size(), ex);
  copy_from_host(items.get(), hitems.data(), sizeof(int32_t) * hitems.size(), ex);
  grid.centres = centres;
  grid.start = start.get();
  grid.items = items.get();
  FP_BACKEND_CALL(ex, "mean_shift", mean_shift_assign, points, n, grid, bw2, params.cluster_all, labels, ex);
  if (ex.device == Device::CUDA) detail::device_sync(ex.stream);  // the uploads read the host vectors above
  return K;
}

}  // namespace fastpose
