// Per-element logic of tiling and taper blending (shared by the CPU and CUDA backends).
#pragma once

#include <cmath>
#include <cstdint>

#include "fastpose/common.hpp"
#include "fastpose/tiles.hpp"

namespace fastpose {
namespace impl {

/// Taper bandwidth (pixels) of Cellpose's _taper_mask.
constexpr double kTaperSigma = 7.5;

/// Extent of the (zero-padded, when augmenting) image the tiles are spread over along one axis.
FP_HOST_DEVICE int64_t tiled_extent(int64_t L, int64_t b, bool augment) { return augment && L < b ? b : L; }

/// Start of tile j of n along an axis of extent L (padded extent when augmenting) with tiles of b:
/// np.linspace(0, L - b, n).astype(int), i.e. j * ((L - b) / (n - 1)) in double, last = L - b.
FP_HOST_DEVICE int64_t tile_start(int64_t j, int64_t n, int64_t L, int64_t b) {
  if (n <= 1 || j <= 0) return 0;
  const int64_t delta = L - b;
  if (j >= n - 1) return delta;
  const double step = double(delta) / double(n - 1);
  return int64_t(floor(double(j) * step));
}

/// Cellpose's flip pattern of tile (j, i) when augmenting: bit 0 = flipped in Y, bit 1 = flipped in X.
/// j even & i odd -> Y; j odd & i even -> X; both odd -> Y and X.
FP_HOST_DEVICE int tile_flip(int64_t j, int64_t i) {
  const bool jo = (j & 1) != 0, io = (i & 1) != 0;
  if (!jo && io) return 1;
  if (jo && !io) return 2;
  if (jo && io) return 3;
  return 0;
}

/// Side of the square sigmoid taper Cellpose builds before cropping: max(224, max(ly, lx)).
FP_HOST_DEVICE int64_t taper_size(int64_t ly, int64_t lx) {
  const int64_t m = ly > lx ? ly : lx;
  return m > 224 ? m : 224;
}

/// 1D taper value at position t (0 <= t < l) of a tile axis of length l, for a taper of side bs:
/// m[bs//2 - l//2 + t] with m[k] = 1 / (1 + exp((|k - (bs-1)/2| - (bs/2 - 20)) / 7.5)), in double.
/// (The host precomputes these vectors once and passes them to both backends, so they agree bitwise.)
inline double taper_1d(int64_t t, int64_t l, int64_t bs) {
  const int64_t k = bs / 2 - l / 2 + t;
  const double xm = std::fabs(double(k) - double(bs - 1) / 2.0);
  return 1.0 / (1.0 + std::exp((xm - (double(bs) / 2.0 - 20.0)) / kTaperSigma));
}

/// make_tiles element `idx` of tiles [B, ny * nx, C, by, bx]: the source image [B, C, Ly, Lx] value.
/// Flipped tiles read mirrored; pixels outside the original image (padding) read 0.
FP_HOST_DEVICE float tile_element(const float* image, int64_t C, const TileGrid& g, int64_t idx) {
  const int64_t tx = idx % g.bx;
  int64_t r = idx / g.bx;
  const int64_t ty = r % g.by;
  r /= g.by;
  const int64_t c = r % C;
  r /= C;
  const int64_t t = r % (g.ny * g.nx);
  const int64_t b = r / (g.ny * g.nx);
  const int64_t j = t / g.nx, i = t % g.nx;
  const int flip = g.augment ? tile_flip(j, i) : 0;
  const int64_t sy = tile_start(j, g.ny, tiled_extent(g.Ly, g.by, g.augment), g.by) + ((flip & 1) ? g.by - 1 - ty : ty);
  const int64_t sx = tile_start(i, g.nx, tiled_extent(g.Lx, g.bx, g.augment), g.bx) + ((flip & 2) ? g.bx - 1 - tx : tx);
  if (sy < 0 || sy >= g.Ly || sx < 0 || sx >= g.Lx) return 0.0f;
  return image[((b * C + c) * g.Ly + sy) * g.Lx + sx];
}

/// blend_tiles output element `idx` of out [B, C, Ly, Lx]: the taper-weighted mean over the tiles
/// covering the pixel (tile index ascending) of the un-flipped tile values, with channel flow_y (flow_x)
/// negated for tiles flipped in Y (X).  wy: [by] float64, wx: [bx] float64 taper vectors.
FP_HOST_DEVICE float blend_element(const float* tiles, int64_t C, const TileGrid& g, int flow_y, int flow_x,
                                   const double* wy, const double* wx, int64_t idx) {
  const int64_t x = idx % g.Lx;
  int64_t r = idx / g.Lx;
  const int64_t y = r % g.Ly;
  r /= g.Ly;
  const int64_t c = r % C;
  const int64_t b = r / C;
  const int64_t Ey = tiled_extent(g.Ly, g.by, g.augment), Ex = tiled_extent(g.Lx, g.bx, g.augment);
  const int64_t T = g.ny * g.nx;
  double num = 0.0, den = 0.0;
  for (int64_t j = 0; j < g.ny; ++j) {
    const int64_t ty = y - tile_start(j, g.ny, Ey, g.by);
    if (ty < 0 || ty >= g.by) continue;
    for (int64_t i = 0; i < g.nx; ++i) {
      const int64_t tx = x - tile_start(i, g.nx, Ex, g.bx);
      if (tx < 0 || tx >= g.bx) continue;
      const int flip = g.augment ? tile_flip(j, i) : 0;
      const int64_t sy = (flip & 1) ? g.by - 1 - ty : ty;
      const int64_t sx = (flip & 2) ? g.bx - 1 - tx : tx;
      double v = double(tiles[(((b * T + j * g.nx + i) * C + c) * g.by + sy) * g.bx + sx]);
      const int negations = int((flip & 1) != 0 && c == flow_y) + int((flip & 2) != 0 && c == flow_x);
      if (negations & 1) v = -v;
      const double w = wy[ty] * wx[tx];
      num += w * v;
      den += w;
    }
  }
  return den > 0.0 ? float(num / den) : 0.0f;
}

}  // namespace impl
}  // namespace fastpose
