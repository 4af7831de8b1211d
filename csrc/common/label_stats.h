// Per-label statistics of a label image: bounding box, pixel count and coordinate sums.  Used by the flow
// targets (flows/: box and centre of mass of every mask) and the mask clean-up (masks/: box and size).
// Written once: the type with its accumulate / merge rule (FP_HOST_DEVICE, both backends), one pass per
// backend (label_stats.cpp: OpenMP, label_stats.cu: CUDA), and the label-range check with its messages.
//
// Label l >= 1 has its statistics at index l - 1.  Coordinates are absolute image coordinates, axis order
// (z, y, x), stored as int32 (check_label_extents); 2D images have z == 0 everywhere.
#pragma once

#include <cstdint>

#include "common/dispatch.h"
#include "fastpose/common.hpp"

namespace fastpose {
namespace impl {

/// Statistics of the pixels of one label.  All integer, so merging is exact and order-independent.
struct LabelStats {
  int32_t lo[3];              ///< bounding-box minimum per axis (INT32_MAX when the label is absent)
  int32_t hi[3];              ///< bounding-box maximum per axis, inclusive (-1 when absent)
  unsigned long long count;   ///< number of pixels
  unsigned long long sum[3];  ///< coordinate sums per axis
};

/// Statistics of a label with no pixels (the starting value of every accumulation).
FP_HOST_DEVICE LabelStats empty_label_stats() {
  LabelStats s;
  for (int a = 0; a < 3; ++a) {
    s.lo[a] = 2147483647;
    s.hi[a] = -1;
    s.sum[a] = 0;
  }
  s.count = 0;
  return s;
}

/// Statistics of the single pixel (z, y, x).
FP_HOST_DEVICE LabelStats pixel_stats(int32_t z, int32_t y, int32_t x) {
  const int32_t c[3] = {z, y, x};
  LabelStats s;
  for (int a = 0; a < 3; ++a) {
    s.lo[a] = c[a];
    s.hi[a] = c[a];
    s.sum[a] = (unsigned long long)c[a];
  }
  s.count = 1;
  return s;
}

/// a = statistics of the pixels of a and of b together.
FP_HOST_DEVICE void merge(LabelStats& a, const LabelStats& b) {
  for (int ax = 0; ax < 3; ++ax) {
    a.lo[ax] = b.lo[ax] < a.lo[ax] ? b.lo[ax] : a.lo[ax];
    a.hi[ax] = b.hi[ax] > a.hi[ax] ? b.hi[ax] : a.hi[ax];
    a.sum[ax] += b.sum[ax];
  }
  a.count += b.count;
}

/// Add pixel (z, y, x) to s.
FP_HOST_DEVICE void accumulate(LabelStats& s, int32_t z, int32_t y, int32_t x) { merge(s, pixel_stats(z, y, x)); }

/// Bounding-box extent along axis a (0: z, 1: y, 2: x) of a present label.
FP_HOST_DEVICE int64_t box_extent(const LabelStats& s, int a) { return int64_t(s.hi[a]) - s.lo[a] + 1; }

}  // namespace impl

/// min(0, smallest value) and max(0, largest value) of a label image.
struct LabelRange {
  int32_t min = 0;
  int32_t max = 0;
};

FP_BACKEND_API(
    // labels: [n] int32, n >= 1.  CUDA: device memory, synchronises for the two values.
    LabelRange label_range(const int32_t* labels, int64_t n, const Exec& ex);
    // labels: [Z, Y, X] int32 in [0, maxlab]; st: [maxlab] output, the statistics of label l at st[l - 1].
    void label_stats(const int32_t* labels, const Shape& shape, int64_t maxlab, impl::LabelStats* st,
                     const Exec& ex);)

/// Throws ArgumentError unless every image extent is < 2^31 (LabelStats stores int32 coordinates).
void check_label_extents(const Shape& s, const char* what);

/// The largest label of labels[0..n) (0 when n == 0), after checking that no label is negative, that the maximum
/// is at most `nlabels` (pass -1 for no such bound) and at most n (the statistics are sized by it).  Throws
/// ArgumentError naming `what` otherwise.  One label_range pass on ex.device (on CUDA a device->host sync).
int64_t checked_max_label(const int32_t* labels, int64_t n, int64_t nlabels, const char* what, const Exec& ex);

}  // namespace fastpose
