// Backend entry points of tiling and blending (see fastpose/tiles.hpp).
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"
#include "fastpose/tiles.hpp"

namespace fastpose {
namespace cpu {
// image: [B, C, Ly, Lx] float32; tiles: [B, ny * nx, C, by, bx] float32 output
void make_tiles(const float* image, int64_t B, int64_t C, const TileGrid& grid, float* tiles, const Exec& ex);
// tiles: [B, ny * nx, C, by, bx] float32; wy: [by], wx: [bx] float64 host taper vectors;
// out: [B, C, Ly, Lx] float32 output
void blend_tiles(const float* tiles, int64_t B, int64_t C, const TileGrid& grid, int flow_y_channel,
                 int flow_x_channel, const double* wy, const double* wx, float* out, const Exec& ex);
}  // namespace cpu
#ifdef FASTPOSE_WITH_CUDA
namespace cuda_impl {
// Same as the CPU versions, arrays on the device; wy, wx stay HOST vectors (copied to the device here).
void make_tiles(const float* image, int64_t B, int64_t C, const TileGrid& grid, float* tiles, const Exec& ex);
void blend_tiles(const float* tiles, int64_t B, int64_t C, const TileGrid& grid, int flow_y_channel,
                 int flow_x_channel, const double* wy, const double* wx, float* out, const Exec& ex);
}  // namespace cuda_impl
#endif
}  // namespace fastpose
