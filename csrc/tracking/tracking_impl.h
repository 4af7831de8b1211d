// Per-pixel logic of follow_flows (shared by the CPU and CUDA backends).
//
// A tracked pixel starts at its integer coordinates and takes `niter` Euler steps
//   pos = clamp(pos + interp(dP, pos) / 5, 0, extent - 1)
// where interp is bilinear (2D) / trilinear (3D) in pixel coordinates and the flow of a corner pixel with
// mask == 0 counts as 0.  The arithmetic below is the single definition used by both backends; its
// operation order is fixed (contraction into FMA is disabled by the build flags).
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

namespace fastpose {
namespace impl {

/// Clamp a coordinate to [0, hi]; NaN maps to 0 and +Inf to hi, so the result is always a valid position.
FP_HOST_DEVICE float clamp_coord(float v, float hi) { return v > 0.0f ? (v < hi ? v : hi) : 0.0f; }

/// Linear interpolation between a (weight 1 - w) and b (weight w).
FP_HOST_DEVICE float lerp_fixed(float a, float b, float w) { return (1.0f - w) * a + w * b; }

/// Flow source of the stepping functions: corner(i, v) writes the NDIM flow components of pixel i into v,
/// 0 where mask == 0 (the stepping is templated on it so that a backend could read another layout of
/// the same values).  dP: [NDIM, Z, Y, X] float32, mask: [Z, Y, X] uint8.
template <int NDIM>
struct MaskedPlanarFlow {
  const float* dP;
  const uint8_t* mask;
  int64_t n;  // Z * Y * X
  FP_HOST_DEVICE void corner(int64_t i, float* v) const {
    const bool m = mask[i] != 0;
    for (int c = 0; c < NDIM; ++c) v[c] = m ? dP[c * n + i] : 0.0f;
  }
};

/// One Euler step of the 2D position p = (y, x), which must lie in [0, Y-1] x [0, X-1] (it stays there).
/// Returns false when the interpolated flow is exactly 0: the position is then a fixed point, and
/// stopping is exact.
template <class Flow>
FP_HOST_DEVICE bool step_2d(const Flow& flow, int64_t Y, int64_t X, float* p) {
  // Positions are >= 0 (clamped), so truncation is floor.
  const int64_t y0 = int64_t(p[0]), x0 = int64_t(p[1]);
  const int64_t y1 = y0 + 1 < Y ? y0 + 1 : Y - 1;
  const int64_t x1 = x0 + 1 < X ? x0 + 1 : X - 1;
  const float wy = p[0] - float(y0), wx = p[1] - float(x0);
  float a00[2], a01[2], a10[2], a11[2];
  flow.corner(y0 * X + x0, a00);
  flow.corner(y0 * X + x1, a01);
  flow.corner(y1 * X + x0, a10);
  flow.corner(y1 * X + x1, a11);
  float v[2];
  for (int c = 0; c < 2; ++c)
    v[c] = lerp_fixed(lerp_fixed(a00[c], a01[c], wx), lerp_fixed(a10[c], a11[c], wx), wy);
  if (v[0] == 0.0f && v[1] == 0.0f) return false;
  p[0] = clamp_coord(p[0] + v[0] / 5.0f, float(Y - 1));
  p[1] = clamp_coord(p[1] + v[1] / 5.0f, float(X - 1));
  return true;
}

/// One Euler step of the 3D position p = (z, y, x), inside the volume.  Returns false when the flow is
/// exactly 0 (fixed point).
template <class Flow>
FP_HOST_DEVICE bool step_3d(const Flow& flow, int64_t Z, int64_t Y, int64_t X, float* p) {
  const int64_t z0 = int64_t(p[0]), y0 = int64_t(p[1]), x0 = int64_t(p[2]);
  const int64_t z1 = z0 + 1 < Z ? z0 + 1 : Z - 1;
  const int64_t y1 = y0 + 1 < Y ? y0 + 1 : Y - 1;
  const int64_t x1 = x0 + 1 < X ? x0 + 1 : X - 1;
  const float wz = p[0] - float(z0), wy = p[1] - float(y0), wx = p[2] - float(x0);
  float a[8][3];
  flow.corner((z0 * Y + y0) * X + x0, a[0]);
  flow.corner((z0 * Y + y0) * X + x1, a[1]);
  flow.corner((z0 * Y + y1) * X + x0, a[2]);
  flow.corner((z0 * Y + y1) * X + x1, a[3]);
  flow.corner((z1 * Y + y0) * X + x0, a[4]);
  flow.corner((z1 * Y + y0) * X + x1, a[5]);
  flow.corner((z1 * Y + y1) * X + x0, a[6]);
  flow.corner((z1 * Y + y1) * X + x1, a[7]);
  float v[3];
  for (int c = 0; c < 3; ++c)
    v[c] = lerp_fixed(lerp_fixed(lerp_fixed(a[0][c], a[1][c], wx), lerp_fixed(a[2][c], a[3][c], wx), wy),
                      lerp_fixed(lerp_fixed(a[4][c], a[5][c], wx), lerp_fixed(a[6][c], a[7][c], wx), wy), wz);
  if (v[0] == 0.0f && v[1] == 0.0f && v[2] == 0.0f) return false;
  p[0] = clamp_coord(p[0] + v[0] / 5.0f, float(Z - 1));
  p[1] = clamp_coord(p[1] + v[1] / 5.0f, float(Y - 1));
  p[2] = clamp_coord(p[2] + v[2] / 5.0f, float(X - 1));
  return true;
}

/// Integer coordinates of pixel i as the start position p[0..ndim-1] ((y, x) in 2D, (z, y, x) in 3D).
FP_HOST_DEVICE void start_position(const Shape& s, int64_t i, float* p) {
  const int64_t x = i % s.x, r = i / s.x, y = r % s.y, z = r / s.y;
  if (s.ndim == 2) {
    p[0] = float(y);
    p[1] = float(x);
  } else {
    p[0] = float(z);
    p[1] = float(y);
    p[2] = float(x);
  }
}

/// positions[:, i] = p.  positions: [ndim, Z, Y, X] float32.
FP_HOST_DEVICE void store_position(const Shape& s, int64_t i, const float* p, float* positions) {
  const int64_t n = s.numel();
  for (int a = 0; a < s.ndim; ++a) positions[a * n + i] = p[a];
}

/// Final position of pixel i (flat index into [Z, Y, X]) of an image of shape s (s.ndim == NDIM):
/// niter steps when mask[i] != 0, else its own coordinates.  mask: [Z, Y, X] uint8,
/// positions: [NDIM, Z, Y, X] float32.  (The CPU backend interleaves several pixels through the same
/// start_position / step / store_position calls.)
template <int NDIM, class Flow>
FP_HOST_DEVICE void follow_pixel(const Flow& flow, const uint8_t* mask, const Shape& s, int niter, int64_t i,
                                 float* positions) {
  float p[3];
  start_position(s, i, p);
  if (mask[i]) {
    for (int t = 0; t < niter; ++t) {
      bool moved;
      if constexpr (NDIM == 2)
        moved = step_2d(flow, s.y, s.x, p);
      else
        moved = step_3d(flow, s.z, s.y, s.x, p);
      if (!moved) break;
    }
  }
  store_position(s, i, p, positions);
}

}  // namespace impl
}  // namespace fastpose
