// CPU backend of get_masks: OpenMP over pixels / seeds; per-item logic in clustering_impl.h.
#include <algorithm>
#include <utility>
#include <vector>

#include "clustering/clustering_backends.h"
#include "clustering/clustering_impl.h"
#include "common/parallel.h"

namespace fastpose {
namespace cpu {

int64_t get_masks(const float* positions, const uint8_t* mask, const Shape& shape, int32_t* labels,
                  int64_t max_pixels, const Exec& ex) {
  const Shape s = shape;
  const int64_t n = s.numel();
  const int nt = cpu_threads(ex);

  // 1. histogram of end points.
  std::vector<int32_t> h(size_t(n), 0);
  int32_t* hp = h.data();
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (!mask[i]) continue;
    const int64_t b = impl::bin_of(positions, s, i);
#pragma omp atomic
    hp[b] += 1;
  }

  // 2. seeds in raster order (serial scan: h > 10 is rare, the window test runs only there).
  std::vector<int64_t> seeds;
  for (int64_t b = 0; b < n; ++b)
    if (hp[b] > impl::kSeedMinCount && impl::is_seed(hp, s, b)) seeds.push_back(b);
  const int64_t S = int64_t(seeds.size());
  if (S == 0) {
    std::fill(labels, labels + n, 0);
    return 0;
  }

  // 3. rank by (count, raster index).
  std::sort(seeds.begin(), seeds.end(),
            [hp](int64_t a, int64_t b) { return impl::seed_before(hp[a], a, hp[b], b); });

  // 4. grow the regions in parallel, then write them in rank order: the highest rank wins (max rule).  The
  // regions are kept as their window-local cell indices (int16, as grow_seed's queue holds them) in one flat
  // buffer: a first pass sizes each region, a second writes it at its offset (2 bytes per region cell and
  // 8 per seed, one allocation, instead of a vector of int64 bins per seed).
  std::vector<int64_t> offset(size_t(S) + 1, 0);
#pragma omp parallel num_threads(nt)
  {
    impl::GrowScratch g;
#pragma omp for schedule(dynamic, 16)
    for (int64_t r = 0; r < S; ++r) offset[size_t(r) + 1] = impl::grow_seed(hp, s, seeds[size_t(r)], g);
  }
  for (int64_t r = 0; r < S; ++r) offset[size_t(r) + 1] += offset[size_t(r)];
  std::vector<int16_t> cells(static_cast<size_t>(offset[size_t(S)]));
#pragma omp parallel num_threads(nt)
  {
    impl::GrowScratch g;
#pragma omp for schedule(dynamic, 16)
    for (int64_t r = 0; r < S; ++r) {
      const int m = impl::grow_seed(hp, s, seeds[size_t(r)], g);
      std::copy(g.queue, g.queue + m, cells.begin() + offset[size_t(r)]);
    }
  }
  std::vector<int32_t>& M = h;  // the histogram is no longer needed: reuse it as the bin -> rank + 1 map
  std::fill(M.begin(), M.end(), 0);
  for (int64_t r = 0; r < S; ++r)
    for (int64_t k = offset[size_t(r)]; k < offset[size_t(r) + 1]; ++k)
      M[size_t(impl::local_to_bin(s, seeds[size_t(r)], cells[size_t(k)]))] = int32_t(r + 1);
  std::vector<int16_t>().swap(cells);
  std::vector<int64_t>().swap(offset);

  // 5. pixel labels (rank + 1), then per-seed pixel counts and first pixels.
  const int32_t* Mp = M.data();
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) labels[i] = impl::pixel_seed(positions, mask, Mp, s, i);
  std::vector<int64_t> count(size_t(S), 0), first(size_t(S), -1);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t l = labels[i];
    if (l == 0) continue;
    if (count[size_t(l - 1)]++ == 0) first[size_t(l - 1)] = i;
  }

  // 6. renumber surviving seeds 1..N by first appearance.
  std::vector<std::pair<int64_t, int64_t>> kept;  // (first pixel, rank)
  for (int64_t r = 0; r < S; ++r)
    if (impl::keep_seed(count[size_t(r)], max_pixels)) kept.emplace_back(first[size_t(r)], r);
  std::sort(kept.begin(), kept.end());
  std::vector<int32_t> newlab(size_t(S) + 1, 0);
  for (size_t k = 0; k < kept.size(); ++k) newlab[size_t(kept[k].second) + 1] = int32_t(k + 1);
  const int32_t* nl = newlab.data();
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) labels[i] = nl[labels[i]];
  return int64_t(kept.size());
}

}  // namespace cpu
}  // namespace fastpose
