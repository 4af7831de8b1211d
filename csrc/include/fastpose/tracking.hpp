// Euler tracking of pixels along the flows (Cellpose, Methods "Mask recovery from vector flows").
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {

/// Follow the flows from every foreground pixel.
///
/// Each pixel p where mask[p] != 0 starts at its own integer coordinates and takes `niter` Euler steps
/// pos += interp(dP, pos) / 5 with bilinear (trilinear in 3D) interpolation in pixel coordinates (pixel
/// centres at integers), where the flow of a pixel with mask == 0 counts as 0; after every step each
/// coordinate is clamped to [0, extent - 1].
///
/// Args:
///   dP:        [ndim, Z, Y, X] float32 flows (network scale, i.e. 5x unit vectors).
///   mask:      [Z, Y, X] uint8, non-zero where pixels are tracked.
///   niter:     number of Euler steps (>= 0).
///   positions: [ndim, Z, Y, X] float32 output: final coordinates of tracked pixels; untracked pixels hold
///              their own coordinates.
void follow_flows(const float* dP, const uint8_t* mask, const Shape& shape, int niter, float* positions,
                  const Exec& ex);

/// The code path follow_flows takes on the CPU now (2D and 3D): "avx2" (x86-64 CPUs with AVX2, unless the
/// environment sets FASTPOSE_NO_SIMD to anything but "" or "0") or "scalar".  niter == 0 and images too large
/// for the AVX2 path's int32 table offsets (or its memory: 8 bytes per pixel in 2D, 16 per voxel in 3D) take
/// the scalar path.  Both paths run the same step template and give bitwise the same positions.
const char* tracking_simd_path() noexcept;

}  // namespace fastpose
