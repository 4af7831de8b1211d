// Per-label / per-pixel logic of fill_holes_and_remove_small_masks (shared by the CPU and CUDA backends).
//
// Algorithm (see fastpose/masks.hpp):
//   1. per-label statistics: pixel count and bounding box (impl::LabelStats, common/label_stats.h);
//   2. keep labels with count >= min_size, new label = rank among kept labels (1..N);
//   3. per kept mask and per Z plane of its bounding box, a uint8 state image of the box plane:
//      kInMask / kHole / kOutside.  Background starts as kHole and becomes kOutside when it lies on the
//      box border or has a 4-neighbour that is kOutside (relax_pixel), iterated to its unique fixpoint;
//   4. box pixels still kHole whose current label is fillable (0, removed, or a claim of another mask)
//      receive the claim value kClaimBase + label through an atomic min (lowest label wins);
//   5. final relabel: kept labels and claims -> new labels, removed labels -> 0.
#pragma once

#include <cstdint>

#include "common/label_stats.h"
#include "fastpose/common.hpp"

namespace fastpose {
namespace impl {

/// Hole-filling states of a box pixel.
constexpr uint8_t kHole = 0;     // not in the mask, not (yet) known to reach the box border
constexpr uint8_t kInMask = 1;   // pixel of the mask
constexpr uint8_t kOutside = 2;  // not in the mask and 4-connected to the box border

/// Claim of a fill by label l (1 <= l <= INT32_MAX): negative, so below every real label.
constexpr int32_t kClaimBase = INT32_MIN;

/// Whether a label with these stats survives: present and count >= min_size (min_size <= 0 keeps all).
FP_HOST_DEVICE bool keep_label(const LabelStats& s, int64_t min_size) {
  return s.count > 0 && int64_t(s.count) >= min_size;
}

/// Area of one Z plane of the bounding box (0 for absent labels).
FP_HOST_DEVICE int64_t box_plane_area(const LabelStats& s) {
  if (s.count == 0) return 0;
  return box_extent(s, 1) * box_extent(s, 2);
}

/// Initial state of a box pixel whose current label is v, for mask l.
FP_HOST_DEVICE uint8_t init_state(int32_t v, int32_t l) { return v == l ? kInMask : kHole; }

/// The relaxation step: a kHole pixel (y, x) of the h x w box becomes kOutside when it is on the box
/// border or has a 4-neighbour that is kOutside.  Returns true when the pixel changed.
/// P is uint8_t* (CPU) or volatile uint8_t* (CUDA, neighbours written concurrently by other threads).
template <typename P>
FP_HOST_DEVICE bool relax_pixel(P state, int64_t h, int64_t w, int64_t y, int64_t x) {
  const int64_t i = y * w + x;
  if (state[i] != kHole) return false;
  const bool out = y == 0 || x == 0 || y == h - 1 || x == w - 1 || state[i - w] == kOutside ||
                   state[i + w] == kOutside || state[i - 1] == kOutside || state[i + 1] == kOutside;
  if (out) state[i] = kOutside;
  return out;
}

/// relax_pixel along the line of n pixels (y + k * dy, x + k * dx), k = 0..n-1, forwards then backwards.
/// Returns true when anything changed.
template <typename P>
FP_HOST_DEVICE bool relax_line(P state, int64_t h, int64_t w, int64_t y, int64_t x, int64_t dy, int64_t dx,
                               int64_t n) {
  bool changed = false;
  for (int64_t k = 0; k < n; ++k) changed |= relax_pixel(state, h, w, y + k * dy, x + k * dx);
  for (int64_t k = n - 1; k >= 0; --k) changed |= relax_pixel(state, h, w, y + k * dy, x + k * dx);
  return changed;
}

/// relax_pixel along row y, left to right then right to left.
template <typename P>
FP_HOST_DEVICE bool relax_row(P state, int64_t h, int64_t w, int64_t y) {
  return relax_line(state, h, w, y, 0, 0, 1, w);
}

/// relax_pixel along column x, top to bottom then bottom to top.
template <typename P>
FP_HOST_DEVICE bool relax_col(P state, int64_t h, int64_t w, int64_t x) {
  return relax_line(state, h, w, 0, x, 1, 0, h);
}

/// Whether a hole pixel whose current value is v may be filled: background, a removed mask
/// (newlabel 0), or already claimed by another mask's hole (the lower label wins by atomic min).
/// newlabel: [max_label + 1] int32.
FP_HOST_DEVICE bool fillable(int32_t v, const int32_t* newlabel) { return v <= 0 || newlabel[v] == 0; }

/// Claim value written into a hole of mask l.
FP_HOST_DEVICE int32_t claim_of(int32_t l) { return kClaimBase + l; }

/// Final label of a pixel with current value v (label, claim, or 0).
FP_HOST_DEVICE int32_t final_label(int32_t v, const int32_t* newlabel) {
  if (v == 0) return 0;
  const int32_t l = v < 0 ? int32_t(v - kClaimBase) : v;
  return newlabel[l];
}

}  // namespace impl
}  // namespace fastpose
