// Per-pixel logic of follow_flows, written once for every lane width (CPU scalar, CPU SIMD, CUDA).
//
// A tracked pixel starts at its integer coordinates and takes `niter` Euler steps
//   pos = clamp(pos + interp(dP, pos) / 5, 0, extent - 1)
// where interp is bilinear (2D) / trilinear (3D) in pixel coordinates and the flow of a corner pixel with
// mask == 0 counts as 0.  A pixel whose interpolated flow is exactly 0 is a fixed point and stops.
//
// step_2d / step_3d are templates over a lane type F: `float` (one pixel: the CPU scalar path and the CUDA
// kernels) or a SIMD vector of floats (one pixel per lane: the CPU SIMD path, tracking/cpu.cpp).  The
// arithmetic is the same C++ expression text for every F (+ - * / on F, in a fixed order; contraction into FMA
// is disabled by the build flags); the few operations that are not operators go through Lanes<F>, whose
// members are each one IEEE operation with the same definition for every lane type (Lanes<float> below is that
// definition; a SIMD Lanes<> must give the same bits lane for lane, see tracking/cpu.cpp).  The flow values at
// the corners come from a Flow object (MaskedPlanarFlow here; a SIMD layout of the same floats in cpu.cpp).
#pragma once

#include <cstdint>

#include "fastpose/common.hpp"

// Full unrolling of the small fixed loops of a step (corner rows, vectors of a group), so that their values
// stay in registers.
#define FP_TRACK_PRAGMA(x) _Pragma(#x)
#if defined(__CUDACC__)
#define FP_TRACK_UNROLL(n) FP_TRACK_PRAGMA(unroll n)
#elif defined(__clang__)
#define FP_TRACK_UNROLL(n) FP_TRACK_PRAGMA(clang loop unroll(full))
#elif defined(__GNUC__)
#define FP_TRACK_UNROLL(n) FP_TRACK_PRAGMA(GCC unroll n)
#else
#define FP_TRACK_UNROLL(n)
#endif

namespace fastpose {
namespace impl {

/// Lane operations of the stepping functions.  Lanes<float> is the definition; a SIMD specialisation has the
/// same members (Mask: a lane mask, Index: integer lanes) and gives bitwise the same result in every lane.
template <class F>
struct Lanes;

template <>
struct Lanes<float> {
  using Mask = bool;
  using Index = int64_t;
  static constexpr int width = 1;
  /// a > b ? a : b (so max(NaN, b) = b and max(-0, +0) = +0: the x86 MAXPS rule).
  static FP_HOST_DEVICE float max(float a, float b) { return a > b ? a : b; }
  /// a < b ? a : b (the x86 MINPS rule).
  static FP_HOST_DEVICE float min(float a, float b) { return a < b ? a : b; }
  /// m ? a : b.
  static FP_HOST_DEVICE float select(bool m, float a, float b) { return m ? a : b; }
  /// v != 0 (true for NaN).
  static FP_HOST_DEVICE bool nonzero(float v) { return v != 0.0f; }
  static FP_HOST_DEVICE bool both(bool a, bool b) { return a && b; }
  static FP_HOST_DEVICE bool either(bool a, bool b) { return a || b; }
  /// Truncation toward 0 (floor for the v >= 0 it is used on).
  static FP_HOST_DEVICE int64_t trunc(float v) { return int64_t(v); }
  /// Exact for the indices it is used on (the truncation of a float).
  static FP_HOST_DEVICE float to_float(int64_t i) { return float(i); }
  static FP_HOST_DEVICE float splat(float v) { return v; }
  // Moving lanes between memory and registers (the drivers of the stepping functions).
  static FP_HOST_DEVICE float load(const float* v) { return *v; }
  static FP_HOST_DEVICE void store(float* out, float v) { *out = v; }
  /// The mask of the lanes whose int32 flag (0 or -1) is non-zero.
  static FP_HOST_DEVICE bool mask_of(const int32_t* flags) { return *flags != 0; }
  static FP_HOST_DEVICE bool any(bool m) { return m; }
};

/// Clamp a coordinate to [0, hi] (hi >= 0): v > 0 ? (v < hi ? v : hi) : 0; NaN maps to 0 and +Inf to hi, so
/// the result is always a valid position.
template <class F, class L = Lanes<F>>
FP_HOST_DEVICE F clamp_coord(const F& v, const F& hi) {
  return L::min(L::max(v, L::splat(0.0f)), hi);
}

/// Linear interpolation between a (weight 1 - w) and b (weight w).
template <class F>
FP_HOST_DEVICE F lerp_fixed(const F& a, const F& b, const F& w) {
  return (1.0f - w) * a + w * b;
}

/// The scalar flow source: dP: [NDIM, Z, Y, X] float32, mask: [Z, Y, X] uint8; the flow of a pixel with
/// mask == 0 is 0.
///
/// The interface the stepping functions use (a SIMD flow in tracking/cpu.cpp has the same one):
///   cell_2d(y0, x0) / cell_3d(z0, y0, x0): the interpolation cell whose lowest corner is (z0, y0, x0) (inside
///     the image); the other corner along each axis is min(c0 + 1, extent - 1);
///   corner_pair_2d(cell, r, a0, a1) / corner_pair_3d(...): the flow at the two corners x0 (a0) and x1 (a1) of
///     row r of the cell: r = y-bit in 2D, r = 2 * z-bit + y-bit in 3D (bit 0: c0, bit 1: c1 along that axis);
///     a0[c] = component c.
template <int NDIM>
struct MaskedPlanarFlow {
  const float* dP;
  const uint8_t* mask;
  int64_t Z, Y, X;
  /// Flat index of the lowest corner and the offsets to the next corner along z, y, x (0 at the last one).
  struct Cell {
    int64_t i, dz, dy, dx;
  };
  FP_HOST_DEVICE int64_t n() const { return Z * Y * X; }
  /// v = the NDIM components of pixel i, or 0 where mask[i] == 0.
  FP_HOST_DEVICE void corner(int64_t i, float* v) const {
    const bool m = mask[i] != 0;
    for (int c = 0; c < NDIM; ++c) v[c] = m ? dP[c * n() + i] : 0.0f;
  }
  FP_HOST_DEVICE Cell cell_3d(int64_t z0, int64_t y0, int64_t x0) const {
    Cell c;
    c.i = (z0 * Y + y0) * X + x0;
    c.dz = z0 + 1 < Z ? Y * X : 0;
    c.dy = y0 + 1 < Y ? X : 0;
    c.dx = x0 + 1 < X ? 1 : 0;
    return c;
  }
  FP_HOST_DEVICE Cell cell_2d(int64_t y0, int64_t x0) const { return cell_3d(0, y0, x0); }
  FP_HOST_DEVICE void corner_pair_3d(const Cell& c, int r, float (&a0)[3], float (&a1)[3]) const {
    const int64_t i = c.i + ((r >> 1) & 1) * c.dz + (r & 1) * c.dy;
    corner(i, a0);
    corner(i + c.dx, a1);
  }
  FP_HOST_DEVICE void corner_pair_2d(const Cell& c, int r, float (&a0)[2], float (&a1)[2]) const {
    const int64_t i = c.i + (r & 1) * c.dy;
    corner(i, a0);
    corner(i + c.dx, a1);
  }
};

/// One Euler step of the 2D positions p = (y, x) in the lanes where `active` is set; p must lie in
/// [0, hi[0]] x [0, hi[1]] (hi = extents - 1) and stays there.  A lane whose interpolated flow is exactly 0 is
/// a fixed point: it keeps its position and leaves `active` (stopping is exact).  Inactive lanes keep theirs.
template <class Flow, class F, class L = Lanes<F>>
FP_HOST_DEVICE void step_2d(const Flow& flow, const F (&hi)[2], F (&p)[2], typename L::Mask& active) {
  using I = typename L::Index;
  // Positions are >= 0 (clamped), so truncation is floor.
  const I y0 = L::trunc(p[0]), x0 = L::trunc(p[1]);
  const F wy = p[0] - L::to_float(y0), wx = p[1] - L::to_float(x0);
  const auto cell = flow.cell_2d(y0, x0);
  F lx[2][2];  // lx[r][c] = lerp along x of row r (y0, y1), component c
FP_TRACK_UNROLL(2)
  for (int r = 0; r < 2; ++r) {
    F a0[2], a1[2];
    flow.corner_pair_2d(cell, r, a0, a1);
    for (int c = 0; c < 2; ++c) lx[r][c] = lerp_fixed<F>(a0[c], a1[c], wx);
  }
  F v[2];
  for (int c = 0; c < 2; ++c) v[c] = lerp_fixed<F>(lx[0][c], lx[1][c], wy);
  active = L::both(active, L::either(L::nonzero(v[0]), L::nonzero(v[1])));
  for (int c = 0; c < 2; ++c) p[c] = L::select(active, clamp_coord<F, L>(p[c] + v[c] / 5.0f, hi[c]), p[c]);
}

/// One Euler step of the 3D positions p = (z, y, x), as step_2d.
template <class Flow, class F, class L = Lanes<F>>
FP_HOST_DEVICE void step_3d(const Flow& flow, const F (&hi)[3], F (&p)[3], typename L::Mask& active) {
  using I = typename L::Index;
  const I z0 = L::trunc(p[0]), y0 = L::trunc(p[1]), x0 = L::trunc(p[2]);
  const F wz = p[0] - L::to_float(z0), wy = p[1] - L::to_float(y0), wx = p[2] - L::to_float(x0);
  const auto cell = flow.cell_3d(z0, y0, x0);
  F lx[4][3];  // lx[r][c] = lerp along x of row r ((z0, y0), (z0, y1), (z1, y0), (z1, y1)), component c
FP_TRACK_UNROLL(4)
  for (int r = 0; r < 4; ++r) {
    F a0[3], a1[3];
    flow.corner_pair_3d(cell, r, a0, a1);
    for (int c = 0; c < 3; ++c) lx[r][c] = lerp_fixed<F>(a0[c], a1[c], wx);
  }
  F v[3];
  for (int c = 0; c < 3; ++c)
    v[c] = lerp_fixed<F>(lerp_fixed<F>(lx[0][c], lx[1][c], wy), lerp_fixed<F>(lx[2][c], lx[3][c], wy), wz);
  active = L::both(active, L::either(L::either(L::nonzero(v[0]), L::nonzero(v[1])), L::nonzero(v[2])));
  for (int c = 0; c < 3; ++c) p[c] = L::select(active, clamp_coord<F, L>(p[c] + v[c] / 5.0f, hi[c]), p[c]);
}

/// The NDIM-dimensional step (step_2d or step_3d).
template <int NDIM, class Flow, class F, class L = Lanes<F>>
FP_HOST_DEVICE void step(const Flow& flow, const F (&hi)[NDIM], F (&p)[NDIM], typename L::Mask& active) {
  if constexpr (NDIM == 2)
    step_2d<Flow, F, L>(flow, hi, p, active);
  else
    step_3d<Flow, F, L>(flow, hi, p, active);
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

/// hi[a] = extent - 1 along axis a of the NDIM axes.
template <int NDIM>
FP_HOST_DEVICE void position_limits(const Shape& s, float (&hi)[NDIM]) {
  for (int a = 0; a < NDIM; ++a) hi[a] = float(s.dim(a) - 1);
}

/// Final position of pixel i (flat index into [Z, Y, X]) of an image of shape s (s.ndim == NDIM): niter
/// steps when mask[i] != 0, else its own coordinates.  mask: [Z, Y, X] uint8, positions: [NDIM, Z, Y, X]
/// float32.  (The CUDA kernel's per-thread work; the CPU backend runs the same steps on several pixels at a
/// time, tracking/cpu.cpp.)
template <int NDIM>
FP_HOST_DEVICE void follow_pixel(const MaskedPlanarFlow<NDIM>& flow, const uint8_t* mask, const Shape& s, int niter,
                                 int64_t i, float* positions) {
  float p[3];
  start_position(s, i, p);
  if (mask[i]) {
    float hi[NDIM], q[NDIM];
    position_limits<NDIM>(s, hi);
    for (int a = 0; a < NDIM; ++a) q[a] = p[a];
    bool active = true;
    for (int t = 0; t < niter && active; ++t) step<NDIM>(flow, hi, q, active);
    for (int a = 0; a < NDIM; ++a) p[a] = q[a];
  }
  store_position(s, i, p, positions);
}

}  // namespace impl
}  // namespace fastpose
