// CPU (OpenMP) backend of fill_holes_and_remove_small_masks.
#include <algorithm>
#include <vector>

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

void accumulate(int64_t* s, int64_t z, int64_t y, int64_t x) {
  s[0] += 1;
  s[1] = std::min(s[1], z);
  s[2] = std::max(s[2], z);
  s[3] = std::min(s[3], y);
  s[4] = std::max(s[4], y);
  s[5] = std::min(s[5], x);
  s[6] = std::max(s[6], x);
}

}  // namespace

void label_range(const int32_t* labels, int64_t n, int32_t* min_label, int32_t* max_label, const Exec& ex) {
  const int nt = cpu_threads(ex);
  int32_t lo = labels[0], hi = labels[0];
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : lo) reduction(max : hi)
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, labels[i]);
    hi = std::max(hi, labels[i]);
  }
  *min_label = lo;
  *max_label = hi;
}

int64_t fill_holes_and_remove_small_masks(int32_t* labels, const Shape& shape, int32_t max_label,
                                          int64_t min_size, const Exec& ex) {
  const int64_t n = shape.numel(), Y = shape.y, X = shape.x;
  const int64_t nlab = int64_t(max_label) + 1;
  const int K = impl::kStatsPerLabel;
  const int nt = cpu_threads(ex);

  // 1. statistics: thread-local tables (as many as memory comfortably allows), merged per label.
  int64_t nparts = std::max<int64_t>(1, std::min<int64_t>(nt, n / (8 * nlab)));
  std::vector<int64_t> part(size_t(nparts * nlab * K));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < nparts * nlab; ++i) impl::stats_init(&part[size_t(i * K)]);
#pragma omp parallel for num_threads(int(nparts)) schedule(static)
  for (int64_t p = 0; p < nparts; ++p) {
    int64_t* tab = &part[size_t(p * nlab * K)];
    const int64_t begin = n * p / nparts, end = n * (p + 1) / nparts;
    for (int64_t i = begin; i < end; ++i) {
      const int32_t v = labels[i];
      if (v <= 0) continue;
      int64_t z, y, x;
      impl::unravel(i, Y, X, z, y, x);
      accumulate(&tab[size_t(v) * K], z, y, x);
    }
  }
  std::vector<int64_t> stats(part.begin(), part.begin() + nlab * K);
  if (nparts > 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t l = 1; l < nlab; ++l) {
      int64_t* s = &stats[size_t(l * K)];
      for (int64_t p = 1; p < nparts; ++p) {
        const int64_t* q = &part[size_t((p * nlab + l) * K)];
        s[0] += q[0];
        for (int a = 0; a < 3; ++a) {
          s[1 + 2 * a] = std::min(s[1 + 2 * a], q[1 + 2 * a]);
          s[2 + 2 * a] = std::max(s[2 + 2 * a], q[2 + 2 * a]);
        }
      }
    }
  }
  std::vector<int64_t>().swap(part);

  // 2. kept labels, renumbered in increasing order.
  std::vector<int32_t> newlabel(size_t(nlab), 0);
  std::vector<int32_t> kept;
  for (int64_t l = 1; l < nlab; ++l) {
    if (impl::keep_label(&stats[size_t(l * K)], min_size)) {
      kept.push_back(int32_t(l));
      newlabel[size_t(l)] = int32_t(kept.size());
    }
  }
  const int64_t N = int64_t(kept.size());

  // 3./4. fill holes per kept mask and per plane of its box; claims resolved by atomic min.
  const int32_t* nl = newlabel.data();
#pragma omp parallel num_threads(nt)
  {
    std::vector<uint8_t> st;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < N; ++k) {
      const int32_t l = kept[size_t(k)];
      const int64_t* s = &stats[size_t(l) * K];
      const int64_t y0 = s[3], x0 = s[5];
      const int64_t h = s[4] - s[3] + 1, w = s[6] - s[5] + 1;
      if (h <= 2 || w <= 2) continue;  // every box pixel is on the border: no holes
      st.resize(size_t(h * w));
      uint8_t* state = st.data();
      for (int64_t z = s[1]; z <= s[2]; ++z) {
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
