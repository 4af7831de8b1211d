// CPU (OpenMP) backend of fill_holes_and_remove_small_masks.
#include <vector>

#include "common/label_stats.h"
#include "common/parallel.h"
#include "masks/masks_backends.h"
#include "masks/masks_impl.h"

namespace fastpose {
namespace cpu {

namespace {

inline int32_t load_relaxed(const int32_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/// labels[i] = min(labels[i], v) atomically.
inline void atomic_min_i32(int32_t* p, int32_t v) {
  int32_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (v < cur && !__atomic_compare_exchange_n(p, &cur, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
}

}  // namespace

int64_t fill_holes_and_remove_small_masks(int32_t* labels, const Shape& shape, int32_t max_label,
                                          int64_t min_size, const Exec& ex) {
  const int64_t n = shape.numel(), Y = shape.y, X = shape.x;
  const int64_t nlab = int64_t(max_label) + 1;
  const int nt = cpu_threads(ex);

  // 1. statistics of labels 1..max_label (label l at stats[l - 1]).
  std::vector<impl::LabelStats> stats(static_cast<size_t>(max_label));
  label_stats(labels, shape, max_label, stats.data(), ex);

  // 2. kept labels, renumbered in increasing order.
  std::vector<int32_t> newlabel(size_t(nlab), 0);
  std::vector<int32_t> kept;
  for (int64_t l = 1; l < nlab; ++l) {
    if (impl::keep_label(stats[size_t(l - 1)], min_size)) {
      kept.push_back(int32_t(l));
      newlabel[size_t(l)] = int32_t(kept.size());
    }
  }
  const int64_t N = int64_t(kept.size());

  // 3./4. fill holes per kept mask and per plane of its box; claims resolved by atomic min.
  const int32_t* nl = newlabel.data();
#pragma omp parallel num_threads(nt)
  {
    std::vector<uint8_t> buf;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < N; ++k) {
      const int32_t l = kept[size_t(k)];
      const impl::LabelStats& s = stats[size_t(l - 1)];
      const int64_t y0 = s.lo[1], x0 = s.lo[2];
      const int64_t h = impl::box_extent(s, 1), w = impl::box_extent(s, 2);
      if (h <= 2 || w <= 2) continue;  // every box pixel is on the border: no holes
      buf.resize(size_t(h * w));
      uint8_t* state = buf.data();
      for (int64_t z = s.lo[0]; z <= s.hi[0]; ++z) {
        int32_t* plane = labels + z * Y * X;
        for (int64_t y = 0; y < h; ++y)
          for (int64_t x = 0; x < w; ++x)
            state[y * w + x] = impl::init_state(load_relaxed(&plane[(y0 + y) * X + x0 + x]), l);
        bool changed = true;
        while (changed) {
          changed = false;
          for (int64_t y = 0; y < h; ++y) changed |= impl::relax_row(state, h, w, y);
          for (int64_t y = h - 1; y >= 0; --y) changed |= impl::relax_row(state, h, w, y);
        }
        for (int64_t y = 1; y < h - 1; ++y)
          for (int64_t x = 1; x < w - 1; ++x) {
            if (state[y * w + x] != impl::kHole) continue;
            int32_t* p = &plane[(y0 + y) * X + x0 + x];
            if (impl::fillable(load_relaxed(p), nl)) atomic_min_i32(p, impl::claim_of(l));
          }
      }
    }
  }

  // 5. final labels.
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) labels[i] = impl::final_label(labels[i], nl);
  return N;
}

}  // namespace cpu
}  // namespace fastpose
