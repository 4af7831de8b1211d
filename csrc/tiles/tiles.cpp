// Host wrappers of tiling: plan_tiles (host only), argument checks, taper vectors, backend dispatch.
#include "fastpose/tiles.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/dispatch.h"
#include "tiles/tiles_backends.h"
#include "tiles/tiles_impl.h"

namespace fastpose {

namespace {

constexpr int64_t kMaxElems = int64_t(1) << 40;

// Product of non-negative extents, throwing when it gets absurdly large (no overflow).
int64_t checked_product(std::initializer_list<int64_t> xs, const char* what) {
  int64_t p = 1;
  for (int64_t v : xs) {
    if (v < 0) throw ArgumentError(std::string(what) + ": negative extent");
    if (v == 0) return 0;
    if (p > kMaxElems / v) throw ArgumentError(std::string(what) + ": arrays too large");
    p *= v;
  }
  return p;
}

void check_grid(const TileGrid& g, const char* what) {
  const std::string w(what);
  if (g.Ly < 0 || g.Lx < 0 || g.by < 0 || g.bx < 0)
    throw ArgumentError(w + ": tile grid has negative extents");
  if (g.ny < 1 || g.nx < 1) throw ArgumentError(w + ": tile grid needs at least one tile per axis");
  checked_product({g.ny, g.nx, g.by, g.bx}, what);
  checked_product({g.Ly, g.Lx}, what);
  const int64_t Ey = impl::tiled_extent(g.Ly, g.by, g.augment), Ex = impl::tiled_extent(g.Lx, g.bx, g.augment);
  if (g.by > Ey || g.bx > Ex) throw ArgumentError(w + ": tiles larger than the image (tile grid inconsistent)");
  // Every pixel must be covered: one tile spans the axis, or the tile spacing is at most the tile size.
  const bool cov_y = g.ny == 1 ? g.by == Ey : (Ey - g.by) <= g.by * (g.ny - 1);
  const bool cov_x = g.nx == 1 ? g.bx == Ex : (Ex - g.bx) <= g.bx * (g.nx - 1);
  if (!cov_y || !cov_x) throw ArgumentError(w + ": tiles do not cover the image (tile grid inconsistent)");
}

void taper_vectors(const TileGrid& g, std::vector<double>& wy, std::vector<double>& wx) {
  const int64_t bs = impl::taper_size(g.by, g.bx);
  wy.resize(size_t(g.by));
  wx.resize(size_t(g.bx));
  for (int64_t t = 0; t < g.by; ++t) wy[size_t(t)] = impl::taper_1d(t, g.by, bs);
  for (int64_t t = 0; t < g.bx; ++t) wx[size_t(t)] = impl::taper_1d(t, g.bx, bs);
}

}  // namespace

TileGrid plan_tiles(int64_t Ly, int64_t Lx, int64_t bsize, double overlap, bool augment) {
  if (Ly < 0 || Lx < 0) throw ArgumentError("plan_tiles: negative image extent");
  if (bsize < 1) throw ArgumentError("plan_tiles: bsize must be >= 1, got " + std::to_string(bsize));
  if (Ly > kMaxElems || Lx > kMaxElems || bsize > kMaxElems) throw ArgumentError("plan_tiles: extents too large");
  TileGrid g;
  g.Ly = Ly;
  g.Lx = Lx;
  g.augment = augment;
  if (augment) {
    g.by = g.bx = bsize;
    const int64_t Ey = std::max(Ly, bsize), Ex = std::max(Lx, bsize);
    g.ny = std::max<int64_t>(2, int64_t(std::ceil(2.0 * double(Ey) / double(bsize))));
    g.nx = std::max<int64_t>(2, int64_t(std::ceil(2.0 * double(Ex) / double(bsize))));
  } else {
    if (std::isnan(overlap)) throw ArgumentError("plan_tiles: overlap is NaN");
    const double ov = std::min(0.5, std::max(0.05, overlap));
    g.by = std::min(bsize, Ly);
    g.bx = std::min(bsize, Lx);
    g.ny = Ly <= bsize ? 1 : int64_t(std::ceil((1.0 + 2.0 * ov) * double(Ly) / double(bsize)));
    g.nx = Lx <= bsize ? 1 : int64_t(std::ceil((1.0 + 2.0 * ov) * double(Lx) / double(bsize)));
  }
  return g;
}

void make_tiles(const float* image, int64_t B, int64_t C, const TileGrid& grid, float* tiles, const Exec& ex) {
  check_grid(grid, "make_tiles");
  if (B < 0 || C < 0) throw ArgumentError("make_tiles: negative batch or channel count");
  const int64_t ntile = checked_product({B, grid.count(), C, grid.by, grid.bx}, "make_tiles");
  checked_product({B, C, grid.Ly, grid.Lx}, "make_tiles");
  if (ntile == 0) return;
  if (!tiles || (!image && B * C * grid.Ly * grid.Lx > 0)) throw ArgumentError("make_tiles: null pointer");
  FP_DISPATCH(ex, "make_tiles", make_tiles, image, B, C, grid, tiles, ex);
}

void blend_tiles(const float* tiles, int64_t B, int64_t C, const TileGrid& grid, int flow_y_channel,
                 int flow_x_channel, float* out, const Exec& ex) {
  check_grid(grid, "blend_tiles");
  if (B < 0 || C < 0) throw ArgumentError("blend_tiles: negative batch or channel count");
  if (flow_y_channel < -1 || flow_y_channel >= C || flow_x_channel < -1 || flow_x_channel >= C)
    throw ArgumentError("blend_tiles: flow channels must be -1 (none) or in [0, C), got (" +
                        std::to_string(flow_y_channel) + ", " + std::to_string(flow_x_channel) +
                        ") with C=" + std::to_string(C));
  checked_product({B, grid.count(), C, grid.by, grid.bx}, "blend_tiles");
  const int64_t nout = checked_product({B, C, grid.Ly, grid.Lx}, "blend_tiles");
  if (nout == 0) return;
  if (!tiles || !out) throw ArgumentError("blend_tiles: null pointer");
  std::vector<double> wy, wx;
  taper_vectors(grid, wy, wx);
  FP_DISPATCH(ex, "blend_tiles", blend_tiles, tiles, B, C, grid, flow_y_channel, flow_x_channel, wy.data(), wx.data(),
              out, ex);
}

}  // namespace fastpose
