// Per-pixel logic of the heat-diffusion flow targets and the flow-error QC, shared by the CPU (OpenMP)
// and CUDA backends.  Everything that produces a number stored in an output lives here, so both
// backends do the same arithmetic in the same order.
//
// Per mask we work in its bounding box padded by 1 on every axis ("box"; 2D: no padding along Z, box
// depth 1).  Box-local raster index i = (bz * ly + by) * lx + bx.  Mask pixels are never on the box
// border, so the neighbourhood reads below stay inside the box.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/label_stats.h"
#include "fastpose/common.hpp"

namespace fastpose {
namespace impl {

// The per-mask statistics (box, count, centre of mass) are impl::LabelStats (common/label_stats.h).

/// Padded box of one mask.
struct Box {
  int64_t oz, oy, ox;  ///< image coordinates of box element (0, 0, 0) (may be -1)
  int64_t lz, ly, lx;  ///< box extents (2D: lz == 1)
  FP_HOST_DEVICE int64_t size() const { return lz * ly * lx; }
};

FP_HOST_DEVICE Box padded_box(const LabelStats& s, int ndim) {
  Box b;
  const int64_t pz = ndim == 3 ? 1 : 0;
  b.oz = int64_t(s.lo[0]) - pz;
  b.oy = int64_t(s.lo[1]) - 1;
  b.ox = int64_t(s.lo[2]) - 1;
  b.lz = int64_t(s.hi[0]) - s.lo[0] + 1 + 2 * pz;
  b.ly = int64_t(s.hi[1]) - s.lo[1] + 3;
  b.lx = int64_t(s.hi[2]) - s.lo[2] + 3;
  return b;
}

/// Cellpose's default iteration count: 2 * (sum of the padded extents).
FP_HOST_DEVICE int64_t default_niter(const Box& b, int ndim) {
  return ndim == 3 ? 2 * (b.lz + b.ly + b.lx) : 2 * (b.ly + b.lx);
}

/// Squared distance (double) of pixel (z, y, x) to the mask's centre of mass sum / count.
FP_HOST_DEVICE double source_dist2(const LabelStats& s, int64_t z, int64_t y, int64_t x) {
  const double n = double(s.count);
  const double dz = double(z) - double(s.sum[0]) / n;
  const double dy = double(y) - double(s.sum[1]) / n;
  const double dx = double(x) - double(s.sum[2]) / n;
  double d = dz * dz;
  d = d + dy * dy;
  d = d + dx * dx;
  return d;
}

/// True when candidate (d, idx) beats the current best (bd, bidx): smaller distance, ties -> lower index.
FP_HOST_DEVICE bool source_better(double d, int64_t idx, double bd, int64_t bidx) {
  return d < bd || (d == bd && idx < bidx);
}

/// One Jacobi step at in-mask box pixel i (2D): mean of the 3x3 neighbourhood of T, fixed order
/// (dy, dx from -1 to 1).  sy = lx.
FP_HOST_DEVICE float heat_step_2d(const float* T, int64_t i, int64_t sy) {
  const float* a = T + (i - sy);
  const float* b = T + i;
  const float* c = T + (i + sy);
  float s = a[-1];
  s = s + a[0];
  s = s + a[1];
  s = s + b[-1];
  s = s + b[0];
  s = s + b[1];
  s = s + c[-1];
  s = s + c[0];
  s = s + c[1];
  return s / 9.0f;
}

/// One Jacobi step at in-mask box pixel i (3D): mean of the 3x3x3 neighbourhood, order dz, dy, dx
/// from -1 to 1.  sz = ly * lx, sy = lx.
FP_HOST_DEVICE float heat_step_3d(const float* T, int64_t i, int64_t sz, int64_t sy) {
  float s = 0.0f;  // 0 + a == a exactly, so this is the plain left-to-right sum of the 27 values
  for (int dz = -1; dz <= 1; ++dz) {
    for (int dy = -1; dy <= 1; ++dy) {
      const float* r = T + (i + dz * sz + dy * sy);
      s = s + r[-1];
      s = s + r[0];
      s = s + r[1];
    }
  }
  return s / 27.0f;
}

/// Normalised central-difference gradient of T at in-mask box pixel i.  Writes ndim components
/// (2D: y, x; 3D: z, y, x) to v; a zero gradient gives a zero vector.
FP_HOST_DEVICE void heat_flow(const float* T, int64_t i, int64_t sz, int64_t sy, int ndim, float* v) {
  if (ndim == 3) {
    const float dz = T[i + sz] - T[i - sz];
    const float dy = T[i + sy] - T[i - sy];
    const float dx = T[i + 1] - T[i - 1];
    float n2 = dz * dz;
    n2 = n2 + dy * dy;
    n2 = n2 + dx * dx;
    const float n = sqrtf(n2);
    v[0] = n > 0.0f ? dz / n : 0.0f;
    v[1] = n > 0.0f ? dy / n : 0.0f;
    v[2] = n > 0.0f ? dx / n : 0.0f;
  } else {
    const float dy = T[i + sy] - T[i - sy];
    const float dx = T[i + 1] - T[i - 1];
    float n2 = dy * dy;
    n2 = n2 + dx * dx;
    const float n = sqrtf(n2);
    v[0] = n > 0.0f ? dy / n : 0.0f;
    v[1] = n > 0.0f ? dx / n : 0.0f;
  }
}

/// Number of per-mask partial sums in the flow-error reduction (the CUDA block size of that kernel).
/// Pixel j (raster order over the unpadded bounding box) goes to lane j % kErrLanes; lanes are summed
/// in raster order, then combined by the fixed tree of err_tree_reduce.
constexpr int kErrLanes = 256;

/// Squared flow error of image pixel g whose recomputed flow components are f[0], f[stride], ...:
/// sum_c (f[c * stride] - dP[c, g] / 5)^2 in double.
FP_HOST_DEVICE double flow_err_term_at(const float* f, int64_t stride, const float* dP, int64_t g, int64_t n,
                                       int ndim) {
  double t = 0.0;
  for (int c = 0; c < ndim; ++c) {
    const double d = double(f[c * stride]) - double(dP[c * n + g]) / 5.0;
    t = t + d * d;
  }
  return t;
}

/// Squared flow error of image pixel g from whole-image flows [ndim, n]: sum_c (flows[c, g] - dP[c, g] / 5)^2.
FP_HOST_DEVICE double flow_err_term(const float* flows, const float* dP, int64_t g, int64_t n, int ndim) {
  return flow_err_term_at(flows + g, n, dP, g, n, ndim);
}

/// Final per-mask error from the reduced sum.
FP_HOST_DEVICE float flow_err_final(double sum, unsigned long long count) {
  return count > 0 ? float(sum / double(count)) : 0.0f;
}

/// Flow QC: a mask is removed when its error exceeds the threshold (NaN errors are kept).
FP_HOST_DEVICE bool flow_mask_bad(float err, float threshold) { return err > threshold; }

/// Host-side emulation of the CUDA tree reduction over kErrLanes partials (in place; result in p[0]).
inline double err_tree_reduce(double* p) {
  for (int s = kErrLanes / 2; s > 0; s >>= 1)
    for (int j = 0; j < s; ++j) p[j] = p[j] + p[j + s];
  return p[0];
}

}  // namespace impl
}  // namespace fastpose
