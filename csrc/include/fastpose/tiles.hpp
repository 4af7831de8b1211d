// Overlapping tiles and sigmoid-taper blending (Cellpose, Methods "Tiling and test augmentations").
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {

/// Geometry of the tiles of an Ly x Lx image.
struct TileGrid {
  int64_t Ly = 0, Lx = 0;    ///< image extents
  int64_t by = 0, bx = 0;    ///< tile extents (bsize, or the image extent when smaller and not augmenting)
  int64_t ny = 0, nx = 0;    ///< number of tile rows / columns; tile (j, i) has index j * nx + i
  bool augment = false;      ///< tiles flipped in Cellpose's pattern (see tile_flip)
  int64_t count() const { return ny * nx; }
};

/// Plan tiles.  Without augment: overlap clamped to [0.05, 0.5], n = ceil((1 + 2 overlap) L / bsize)
/// tiles per axis (1 if L <= bsize), starts spread evenly from 0 to L - b (edge tiles shifted inward).
/// With augment: 50% overlap, at least 2 tiles per axis, tiles of exactly bsize (images smaller than a
/// tile are zero-padded); tile (j, i) is flipped in Y when j is even and i odd, in X when j is odd and i
/// even, and in both when both are odd (Cellpose's pattern; tile_flip() in csrc/tiles/tiles_impl.h).
TileGrid plan_tiles(int64_t Ly, int64_t Lx, int64_t bsize, double overlap, bool augment);

/// Cut tiles.
///
/// Args:
///   image: [B, C, Ly, Lx] float32.
///   tiles: [B, ny * nx, C, by, bx] float32 output (flipped per tile_flip when grid.augment).
void make_tiles(const float* image, int64_t B, int64_t C, const TileGrid& grid, float* tiles, const Exec& ex);

/// Blend tile outputs back into images: un-flip (negating channel flow_y_channel when a tile was flipped
/// in Y and flow_x_channel when flipped in X; -1 for none), weight by the sigmoid taper (bandwidth 7.5 px)
/// and average.
///
/// Args:
///   tiles: [B, ny * nx, C, by, bx] float32 network outputs.
///   out:   [B, C, Ly, Lx] float32 output.
void blend_tiles(const float* tiles, int64_t B, int64_t C, const TileGrid& grid, int flow_y_channel,
                 int flow_x_channel, float* out, const Exec& ex);

}  // namespace fastpose
