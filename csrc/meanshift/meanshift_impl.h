// Per-seed / per-point logic of mean_shift (shared by the CPU and CUDA backends).
//
// Algorithm (scikit-learn's MeanShift with a flat kernel; see fastpose/meanshift.hpp):
//   1. the fitted points are binned, b = rint(p / bw) per axis (float32, as NumPy's round), into an open-addressing
//      table of the occupied bins (BinTable) with the points sorted by slot: a uniform grid of cell size bw, so the
//      window of a mean m is found in the (up to 3-4)^D bins around it instead of among all points;
//   2. seeds: the occupied bins with >= min_bin_freq points (at b * bw), every fitted point, or given seeds;
//   3. every seed climbs (climb: repeated flat-kernel steps, window + mean) until its shift is <= 1e-3 bw or
//      after max_iter + 1 steps; the size of its last window ranks its mode;
//   4. (host, merge.cpp) modes sorted by (window size, coordinates) descending, near duplicates (within bw of a
//      kept mode) dropped: the centres;
//   5. each point takes its nearest centre (nearest_centre), searched in a grid of the centres (CentreGrid).
//
// Arithmetic, the same on both backends and in the NumPy reference: squared distances in float32, summed in axis
// order (no fused multiply-add); window sums in double (exact for float32 inputs of moderate dynamic range, so
// the order in which a backend visits the points does not matter), the mean rounded once to float32.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {
namespace impl {

constexpr int kMaxDim = 3;
constexpr unsigned long long kEmptyKey = ~0ull;  // a free slot of the bin table

/// The bins of the fitted points: bin b = rint(p / bw) per axis, all inside the box [lo, lo + ext).
struct BinGrid {
  int d = 2;                            ///< dimensions, 2 or 3
  float bw = 1.0f;                      ///< bin size: the bandwidth
  int64_t lo[kMaxDim] = {0, 0, 0};      ///< smallest bin per axis
  int64_t ext[kMaxDim] = {1, 1, 1};     ///< bins per axis (their product < 2^62: packed keys fit in 64 bits)
};

/// The bin of coordinate v: rint(v / bw) in float32 (round half to even, as np.round).
FP_HOST_DEVICE int64_t bin_coord(float v, float bw) { return int64_t(rintf(v / bw)); }

/// The packed key of bins b (D of them, inside the box): ((b0 - lo0) * ext1 + (b1 - lo1)) * ext2 + ...
FP_HOST_DEVICE unsigned long long pack_bins(const BinGrid& g, const int64_t* b) {
  unsigned long long k = 0;
  for (int a = 0; a < g.d; ++a) k = k * (unsigned long long)g.ext[a] + (unsigned long long)(b[a] - g.lo[a]);
  return k;
}

/// The packed key of the bin of point p: [D] float32.
FP_HOST_DEVICE unsigned long long point_key(const BinGrid& g, const float* p) {
  int64_t b[kMaxDim] = {0, 0, 0};
  for (int a = 0; a < g.d; ++a) b[a] = bin_coord(p[a], g.bw);
  return pack_bins(g, b);
}

/// The bins b: [D] of a packed key.
FP_HOST_DEVICE void unpack_key(const BinGrid& g, unsigned long long k, int64_t* b) {
  for (int a = g.d - 1; a >= 0; --a) {
    const unsigned long long e = (unsigned long long)g.ext[a];
    b[a] = g.lo[a] + int64_t(k % e);
    k /= e;
  }
}

/// The seed of bin key k: b * bw per axis in float32 (scikit-learn's bin seeds).  seed: [D] output.
FP_HOST_DEVICE void bin_seed(const BinGrid& g, unsigned long long k, float* seed) {
  int64_t b[kMaxDim] = {0, 0, 0};
  unpack_key(g, k, b);
  for (int a = 0; a < g.d; ++a) seed[a] = float(b[a]) * g.bw;
}

/// First probe of key k in a table of mask + 1 slots (a power of two): the splitmix64 finaliser.
FP_HOST_DEVICE int64_t hash_slot(unsigned long long k, int64_t mask) {
  k ^= k >> 30;
  k *= 0xbf58476d1ce4e5b9ull;
  k ^= k >> 27;
  k *= 0x94d049bb133111ebull;
  k ^= k >> 31;
  return int64_t(k & (unsigned long long)mask);
}

/// Open-addressing table (linear probing) of the occupied bins, with the fitted points sorted by slot.  At most
/// half of the slots are used, so every probe sequence reaches a free slot.
struct BinTable {
  BinGrid g;
  int64_t mask = 0;                          ///< slots - 1 (slots: a power of two)
  const unsigned long long* keys = nullptr;  ///< [slots] bin keys, kEmptyKey for free slots
  const int64_t* start = nullptr;            ///< [slots + 1] first sorted point of each slot (exclusive prefix sum)
  const float* pts = nullptr;                ///< [M, D] float32 fitted points in slot order
};

/// The slot of key k, -1 when its bin holds no point.
FP_HOST_DEVICE int64_t find_slot(const BinTable& t, unsigned long long k) {
  int64_t s = hash_slot(k, t.mask);
  for (;;) {
    const unsigned long long key = t.keys[s];
    if (key == k) return s;
    if (key == kEmptyKey) return -1;
    s = (s + 1) & t.mask;
  }
}

/// Safety margin (in bins or cells) of a search range at position t, against the rounding of the bin of a point
/// (float32 division) and of the distance test: every point within the bandwidth falls inside the range.
FP_HOST_DEVICE double range_margin(double t) { return 1e-4 + 1e-6 * fabs(t); }

/// The integers k in [lo, lo + ext) with floor(x0) <= k <= floor(x1), as [k0, k1]; false when there are none.
FP_HOST_DEVICE bool clamp_range(double x0, double x1, int64_t lo, int64_t ext, int64_t& k0, int64_t& k1) {
  const double f0 = floor(x0), f1 = floor(x1), dlo = double(lo), dhi = double(lo + ext - 1);
  if (!(f1 >= dlo) || !(f0 <= dhi)) return false;
  k0 = f0 < dlo ? lo : int64_t(f0);
  k1 = f1 > dhi ? lo + ext - 1 : int64_t(f1);
  return true;
}

/// Squared distance of a and b: [D] float32, in float32, summed in axis order.
FP_HOST_DEVICE float dist2(const float* a, const float* b, int d) {
  float s = 0.0f;
  for (int k = 0; k < d; ++k) {
    const float t = a[k] - b[k];
    s = s + t * t;
  }
  return s;
}

/// The window of one flat-kernel step at m: [D] float32: the fitted points p with dist2(p, m) <= bw2.  sum: [D]
/// output, their coordinate sums (double).  Returns their number.
FP_HOST_DEVICE int64_t window(const BinTable& t, const float* m, float bw2, double* sum) {
  const BinGrid& g = t.g;
  int64_t b0[kMaxDim] = {0, 0, 0}, b1[kMaxDim] = {0, 0, 0};
  for (int a = 0; a < g.d; ++a) {
    // bins rint(p / bw) of the coordinates p in [m - bw, m + bw]: floor(x + 1/2) for x in [c - 1, c + 1]
    const double c = double(m[a]) / double(g.bw), e = 1.0 + range_margin(c);
    if (!clamp_range(c - e + 0.5, c + e + 0.5, g.lo[a], g.ext[a], b0[a], b1[a])) return 0;
  }
  for (int a = 0; a < kMaxDim; ++a) sum[a] = 0.0;
  const int d = g.d, ay = d - 2, ax = d - 1;
  const int64_t z0 = d == 3 ? b0[0] : 0, z1 = d == 3 ? b1[0] : 0;
  const unsigned long long plane = (unsigned long long)g.ext[ay] * (unsigned long long)g.ext[ax];
  int64_t count = 0;
  for (int64_t bz = z0; bz <= z1; ++bz) {
    const unsigned long long kz = d == 3 ? (unsigned long long)(bz - g.lo[0]) * plane : 0ull;
    for (int64_t by = b0[ay]; by <= b1[ay]; ++by) {
      const unsigned long long ky = kz + (unsigned long long)(by - g.lo[ay]) * (unsigned long long)g.ext[ax];
      for (int64_t bx = b0[ax]; bx <= b1[ax]; ++bx) {
        const int64_t s = find_slot(t, ky + (unsigned long long)(bx - g.lo[ax]));
        if (s < 0) continue;
        for (int64_t k = t.start[s], e = t.start[s + 1]; k < e; ++k) {
          const float* p = t.pts + k * d;
          if (dist2(p, m, d) <= bw2) {
            for (int a = 0; a < d; ++a) sum[a] += double(p[a]);
            ++count;
          }
        }
      }
    }
  }
  return count;
}

/// Hill climb of one seed (scikit-learn's _mean_shift_single_seed): m <- mean of its window until the shift
/// |m' - m|^2 <= stop2 or max_iter + 1 steps.  seed: [D] float32; mode: [D] float32 output, the last mean.
/// Returns the size of the last window (the mode's rank), 0 when a window was empty (the seed is dropped).
FP_HOST_DEVICE int64_t climb(const BinTable& t, const float* seed, float bw2, float stop2, int max_iter, float* mode) {
  const int d = t.g.d;
  float m[kMaxDim] = {0.0f, 0.0f, 0.0f};
  for (int a = 0; a < d; ++a) m[a] = seed[a];
  int64_t count = 0;
  for (int it = 0;; ++it) {
    double sum[kMaxDim];
    count = window(t, m, bw2, sum);
    if (count == 0) break;
    float next[kMaxDim] = {0.0f, 0.0f, 0.0f};
    for (int a = 0; a < d; ++a) next[a] = float(sum[a] / double(count));
    const float shift2 = dist2(next, m, d);
    for (int a = 0; a < d; ++a) m[a] = next[a];
    if (shift2 <= stop2 || it >= max_iter) break;
  }
  for (int a = 0; a < d; ++a) mode[a] = m[a];
  return count;
}

/// The centres in a uniform grid: cell (c0, .., cD-1) with c = floor((x - origin) / cell) holds the centres whose
/// coordinates fall in it, in ascending index order.  Built on the host (merge.cpp); cell >= bandwidth.
struct CentreGrid {
  int d = 2;                                  ///< dimensions, 2 or 3
  int64_t k = 0;                              ///< number of centres (>= 1)
  float bw = 1.0f;                            ///< bandwidth
  double cell = 1.0;                          ///< cell size
  double origin[kMaxDim] = {0.0, 0.0, 0.0};   ///< lower corner of cell 0
  int64_t ext[kMaxDim] = {1, 1, 1};           ///< cells per axis
  const float* centres = nullptr;             ///< [K, D] float32
  const int32_t* start = nullptr;             ///< [cells + 1] int32, first item of each cell
  const int32_t* items = nullptr;             ///< [K] int32 centre indices in cell order
};

/// Cell coordinate of v along axis a (unclamped).
FP_HOST_DEVICE double centre_cell_coord(const CentreGrid& g, float v, int a) {
  return floor((double(v) - g.origin[a]) / g.cell);
}

/// The centre nearest to p: [D] float32 (squared float32 distance; ties: the lowest index) among those with
/// dist2 <= bw2, searched in the cells around p; when there is none, -1, or with cluster_all the nearest of all.
FP_HOST_DEVICE int32_t nearest_centre(const CentreGrid& g, const float* p, float bw2, bool cluster_all) {
  const int d = g.d;
  int64_t c0[kMaxDim] = {0, 0, 0}, c1[kMaxDim] = {0, 0, 0};
  bool inside = true;
  for (int a = 0; a < d && inside; ++a) {
    const double t0 = (double(p[a]) - double(g.bw) - g.origin[a]) / g.cell;
    const double t1 = (double(p[a]) + double(g.bw) - g.origin[a]) / g.cell;
    const double e = range_margin(fabs(t0) > fabs(t1) ? t0 : t1);
    inside = clamp_range(t0 - e, t1 + e, 0, g.ext[a], c0[a], c1[a]);
  }
  int32_t best = -1;
  float bd = 0.0f;
  if (inside) {
    const int ay = d - 2, ax = d - 1;
    const int64_t z0 = d == 3 ? c0[0] : 0, z1 = d == 3 ? c1[0] : 0;
    for (int64_t cz = z0; cz <= z1; ++cz)
      for (int64_t cy = c0[ay]; cy <= c1[ay]; ++cy) {
        const int64_t row = (cz * g.ext[ay] + cy) * g.ext[ax];
        for (int64_t cx = c0[ax]; cx <= c1[ax]; ++cx) {
          for (int32_t q = g.start[row + cx], e = g.start[row + cx + 1]; q < e; ++q) {
            const int32_t j = g.items[q];
            const float d2 = dist2(p, g.centres + int64_t(j) * d, d);
            if (d2 <= bw2 && (best < 0 || d2 < bd || (d2 == bd && j < best))) {
              best = j;
              bd = d2;
            }
          }
        }
      }
  }
  if (best >= 0 || !cluster_all) return best;
  for (int64_t j = 0; j < g.k; ++j) {  // an orphan: the nearest of all (ascending, so ties keep the first)
    const float d2 = dist2(p, g.centres + j * d, d);
    if (best < 0 || d2 < bd) {
      best = int32_t(j);
      bd = d2;
    }
  }
  return best;
}

}  // namespace impl
}  // namespace fastpose
