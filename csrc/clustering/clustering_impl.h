// Per-pixel / per-bin / per-seed logic of get_masks (shared by the CPU and CUDA backends).
//
// Algorithm (Cellpose 4 get_masks_torch, made deterministic; see fastpose/clustering.hpp):
//   1. h[b] = number of tracked pixels whose end point falls in bin b = floor(position) (clamped);
//   2. seeds: bins with h > 10 that are the maximum of their 5^d window (outside the image counts as 0);
//   3. seeds ranked by (count, raster index) ascending: r = 0..S-1;
//   4. each seed grows 5 times: region = dilate3^d(region) & {h > 2}, i.e. a BFS of depth 5 with full
//      (8/26) connectivity through bins with h > 2, inside the 11^d window around the seed;
//      M[b] = max over regions containing b of (r + 1), so the highest-count seed wins overlaps;
//   5. label of a tracked pixel = M[its bin]; seeds with 0 pixels or more than max_pixels pixels are dropped;
//      surviving labels renumbered 1..N in order of their first (smallest-index) pixel.
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {
namespace impl {

constexpr int32_t kSeedMinCount = 10;    // seeds need h > 10
constexpr int32_t kGrowMinCount = 2;     // regions extend to bins with h > 2
constexpr int kSeedRadius = 2;           // 5^d max window
constexpr int kGrowSteps = 5;            // dilations
constexpr int kWin = 2 * kGrowSteps + 1; // 11
constexpr int kWinCells = kWin * kWin * kWin;
constexpr int kVisitedWords = (kWinCells + 31) / 32;

/// Bin index along one axis of extent ext >= 1: floor(v) clamped to [0, ext - 1]; NaN -> 0.
FP_HOST_DEVICE int64_t coord_bin(float v, int64_t ext) {
  if (!(v > 0.0f)) return 0;  // negative, zero or NaN
  if (v >= float(ext - 1)) return ext - 1;
  const int64_t b = int64_t(v);  // v > 0: truncation == floor
  return b < ext - 1 ? b : ext - 1;
}

/// Flat histogram bin of pixel i.  positions: [ndim, Z, Y, X] float32.
FP_HOST_DEVICE int64_t bin_of(const float* positions, const Shape& s, int64_t i) {
  const int64_t n = s.numel();
  if (s.ndim == 2) return coord_bin(positions[i], s.y) * s.x + coord_bin(positions[n + i], s.x);
  return (coord_bin(positions[i], s.z) * s.y + coord_bin(positions[n + i], s.y)) * s.x +
         coord_bin(positions[2 * n + i], s.x);
}

FP_HOST_DEVICE void unravel_bin(int64_t b, const Shape& s, int64_t& z, int64_t& y, int64_t& x) {
  x = b % s.x;
  const int64_t r = b / s.x;
  y = r % s.y;
  z = r / s.y;
}

/// True when bin b is a seed.  h: [Z, Y, X] int32 histogram.
FP_HOST_DEVICE bool is_seed(const int32_t* h, const Shape& s, int64_t b) {
  const int32_t c = h[b];
  if (c <= kSeedMinCount) return false;
  int64_t z, y, x;
  unravel_bin(b, s, z, y, x);
  const int rz = s.ndim == 3 ? kSeedRadius : 0;
  for (int dz = -rz; dz <= rz; ++dz) {
    const int64_t zz = z + dz;
    if (zz < 0 || zz >= s.z) continue;
    for (int dy = -kSeedRadius; dy <= kSeedRadius; ++dy) {
      const int64_t yy = y + dy;
      if (yy < 0 || yy >= s.y) continue;
      const int64_t row = (zz * s.y + yy) * s.x;
      for (int dx = -kSeedRadius; dx <= kSeedRadius; ++dx) {
        const int64_t xx = x + dx;
        if (xx < 0 || xx >= s.x) continue;
        if (h[row + xx] > c) return false;
      }
    }
  }
  return true;
}

/// Seed order: (count, bin) ascending.  True when seed (ca, ba) comes before seed (cb, bb).
FP_HOST_DEVICE bool seed_before(int32_t ca, int64_t ba, int32_t cb, int64_t bb) {
  return ca < cb || (ca == cb && ba < bb);
}

/// Work space of one seed's growth: `visited` marks window cells already tested, `queue` holds the
/// accepted cells (the region) as local indices (lz * 11 + ly) * 11 + lx (lz == 5 in 2D).
struct GrowScratch {
  uint32_t visited[kVisitedWords];
  int16_t queue[kWinCells];
};

/// Grow the region of the seed at bin `seed` (5 dilations through bins with h > 2).  Fills g.queue with
/// the region's cells and returns their number (>= 1: the seed itself comes first).
FP_HOST_DEVICE int grow_seed(const int32_t* h, const Shape& s, int64_t seed, GrowScratch& g) {
  for (int k = 0; k < kVisitedWords; ++k) g.visited[k] = 0u;
  int64_t sz, sy, sx;
  unravel_bin(seed, s, sz, sy, sx);
  const int c = kGrowSteps;
  const int centre = (c * kWin + c) * kWin + c;
  g.visited[centre >> 5] |= 1u << (centre & 31);
  g.queue[0] = int16_t(centre);
  int head = 0, tail = 1;
  const int rz = s.ndim == 3 ? 1 : 0;
  for (int step = 0; step < kGrowSteps; ++step) {
    const int end = tail;
    for (; head < end; ++head) {
      const int q = g.queue[head];
      const int lz = q / (kWin * kWin), ly = (q / kWin) % kWin, lx = q % kWin;
      for (int dz = -rz; dz <= rz; ++dz) {
        const int nz = lz + dz;
        const int64_t gz = sz + (nz - c);
        if (nz < 0 || nz >= kWin || gz < 0 || gz >= s.z) continue;
        for (int dy = -1; dy <= 1; ++dy) {
          const int ny = ly + dy;
          const int64_t gy = sy + (ny - c);
          if (ny < 0 || ny >= kWin || gy < 0 || gy >= s.y) continue;
          for (int dx = -1; dx <= 1; ++dx) {
            const int nx = lx + dx;
            const int64_t gx = sx + (nx - c);
            if (nx < 0 || nx >= kWin || gx < 0 || gx >= s.x) continue;
            const int nl = (nz * kWin + ny) * kWin + nx;
            const uint32_t bit = 1u << (nl & 31);
            if (g.visited[nl >> 5] & bit) continue;
            g.visited[nl >> 5] |= bit;
            if (h[(gz * s.y + gy) * s.x + gx] > kGrowMinCount) g.queue[tail++] = int16_t(nl);
          }
        }
      }
    }
  }
  return tail;
}

/// Global bin of local window cell q of the seed at bin `seed` (q from grow_seed, so inside the image).
FP_HOST_DEVICE int64_t local_to_bin(const Shape& s, int64_t seed, int q) {
  int64_t sz, sy, sx;
  unravel_bin(seed, s, sz, sy, sx);
  const int lz = q / (kWin * kWin), ly = (q / kWin) % kWin, lx = q % kWin;
  return ((sz + (lz - kGrowSteps)) * s.y + (sy + (ly - kGrowSteps))) * s.x + (sx + (lx - kGrowSteps));
}

/// Seed label (rank + 1, 0 = none) of pixel i.  M: [Z, Y, X] int32 bin -> rank + 1 map.
FP_HOST_DEVICE int32_t pixel_seed(const float* positions, const uint8_t* mask, const int32_t* M, const Shape& s,
                                  int64_t i) {
  return mask[i] ? M[bin_of(positions, s, i)] : 0;
}

/// A seed becomes a mask when it has pixels and no more than max_pixels of them.
FP_HOST_DEVICE bool keep_seed(int64_t count, int64_t max_pixels) { return count > 0 && count <= max_pixels; }

}  // namespace impl
}  // namespace fastpose
