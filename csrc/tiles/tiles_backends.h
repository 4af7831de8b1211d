// Backend entry points of tiling and blending (see fastpose/tiles.hpp).
#pragma once

#include <cstdint>

#include "common/dispatch.h"
#include "fastpose/common.hpp"
#include "fastpose/tiles.hpp"

namespace fastpose {

FP_BACKEND_API(
    // image: [B, C, Ly, Lx] float32; tiles: [B, ny * nx, C, by, bx] float32 output
    void make_tiles(const float* image, int64_t B, int64_t C, const TileGrid& grid, float* tiles, const Exec& ex);
    // tiles: [B, ny * nx, C, by, bx] float32; wy: [by], wx: [bx] float64 taper vectors in HOST memory on both
    // backends (CUDA copies them to the device); out: [B, C, Ly, Lx] float32 output
    void blend_tiles(const float* tiles, int64_t B, int64_t C, const TileGrid& grid, int flow_y_channel,
                     int flow_x_channel, const double* wy, const double* wx, float* out, const Exec& ex);)

}  // namespace fastpose
