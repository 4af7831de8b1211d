// CPU backend of mean_shift: OpenMP over points and seeds; per-seed / per-point logic in meanshift_impl.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/parallel.h"
#include "meanshift/meanshift_backends.h"
#include "meanshift/meanshift_impl.h"

namespace fastpose {
namespace cpu {

namespace {

/// Slots of the bin table of m points: a power of two >= 2 m (at most half of them used).
int64_t table_slots(int64_t m) {
  int64_t c = 16;
  while (c < 2 * m) c <<= 1;
  return c;
}

}  // namespace

bool mean_shift_bounds(const float* points, int64_t n, int d, float* lo, float* hi, const Exec& ex) {
  (void)ex;  // one serial pass (a few ns per point): cheaper than waking threads on a busy machine
  bool finite = true;
  for (int a = 0; a < d; ++a) lo[a] = hi[a] = points[a];
  for (int64_t i = 0; i < n; ++i) {
    for (int a = 0; a < d; ++a) {
      const float v = points[i * d + a];
      finite = finite && std::isfinite(v);
      lo[a] = v < lo[a] ? v : lo[a];
      hi[a] = v > hi[a] ? v : hi[a];
    }
  }
  return finite;  // (with a NaN the bounds are meaningless, but then they are not used)
}

int64_t mean_shift_gather(const float* points, int64_t n, int d, const int64_t* fit, int64_t m, float* out,
                          const Exec& ex) {
  (void)ex;  // serial: a copy of the fitted rows only
  int64_t bad = 0;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t j = fit[i];
    if (j < 0 || j >= n) {
      ++bad;
      continue;
    }
    for (int a = 0; a < d; ++a) out[i * d + a] = points[j * d + a];
  }
  return bad;
}

int64_t mean_shift_modes(const float* X, int64_t m, const impl::BinGrid& g, SeedMode mode, const float* seeds,
                         int64_t s, int64_t min_bin_freq, float bw2, float stop2, int max_iter, float* modes,
                         int32_t* counts, const Exec& ex) {
  const int nt = cpu_threads(ex);
  const int d = g.d;

  // 1. the bin table: keys of the occupied bins, points per slot, the points sorted (stably) by slot.  Serial:
  // linear in the fitted points, a small part of the climbs' work.
  const int64_t slots = table_slots(m), mask = slots - 1;
  std::vector<unsigned long long> keys(static_cast<size_t>(slots), impl::kEmptyKey);
  std::vector<int64_t> slot_of(static_cast<size_t>(m)), start(static_cast<size_t>(slots) + 1, 0);
  for (int64_t i = 0; i < m; ++i) {
    const unsigned long long k = impl::point_key(g, X + i * d);
    int64_t q = impl::hash_slot(k, mask);
    while (keys[size_t(q)] != impl::kEmptyKey && keys[size_t(q)] != k) q = (q + 1) & mask;
    keys[size_t(q)] = k;
    slot_of[size_t(i)] = q;
    ++start[size_t(q) + 1];
  }
  for (int64_t q = 0; q < slots; ++q) start[size_t(q) + 1] += start[size_t(q)];
  std::vector<float> pts(static_cast<size_t>(m * d));
  {
    std::vector<int64_t> cursor(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t pos = cursor[size_t(slot_of[size_t(i)])]++;
      std::memcpy(&pts[size_t(pos * d)], X + i * d, sizeof(float) * size_t(d));
    }
  }
  std::vector<int64_t>().swap(slot_of);
  impl::BinTable t;
  t.g = g;
  t.mask = mask;
  t.keys = keys.data();
  t.start = start.data();
  t.pts = pts.data();

  // 2. seeds.
  const float* sp = seeds;
  int64_t S = s;
  std::vector<float> bins;
  if (mode == SeedMode::All) {
    sp = X;
    S = m;
  } else if (mode == SeedMode::Bin) {
    for (int64_t q = 0; q < slots; ++q) {
      if (keys[size_t(q)] == impl::kEmptyKey || start[size_t(q) + 1] - start[size_t(q)] < min_bin_freq) continue;
      float seed[impl::kMaxDim];
      impl::bin_seed(g, keys[size_t(q)], seed);
      bins.insert(bins.end(), seed, seed + d);
    }
    S = int64_t(bins.size()) / d;
    sp = S == m ? X : bins.data();  // one bin per point: the points themselves (scikit-learn's get_bin_seeds)
  }

  // 3. hill climbs.
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
  for (int64_t i = 0; i < S; ++i)
    counts[i] = int32_t(impl::climb(t, sp + i * d, bw2, stop2, max_iter, modes + i * d));
  return S;
}

void mean_shift_assign(const float* points, int64_t n, const impl::CentreGrid& grid, float bw2, bool cluster_all,
                       int32_t* labels, const Exec& ex) {
  const int nt = cpu_threads(ex);
  const int d = grid.d;
  // dynamic chunks: on a busy machine a thread that runs late does not hold the others back
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4096)
  for (int64_t i = 0; i < n; ++i) labels[i] = impl::nearest_centre(grid, points + i * d, bw2, cluster_all);
}

}  // namespace cpu
}  // namespace fastpose
