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

  // 4. grow the regions in parallel, then write them in rank order: the highest rank wins (max rule).
  std::vector<std::vector<int64_t>> regions(static_cast<size_t>(S));
#pragma omp parallel num_threads(nt)
  {
    impl::GrowScratch g;
#pragma omp for schedule(dynamic, 16)
    for (int64_t r = 0; r < S; ++r) {
      const int m = impl::grow_seed(hp, s, seeds[size_t(r)], g);
      std::vector<int64_t>& reg = regions[size_t(r)];
      reg.resize(size_t(m));
      for (int k = 0; k < m; ++k) reg[size_t(k)] = impl::local_to_bin(s, seeds[size_t(r)], g.queue[k]);
    }
  }
  std::vector<int32_t>& M = h;  // the histogram is no longer needed: reuse it as the bin -> rank + 1 map
  std::fill(M.begin(), M.end(), 0);
  for (int64_t r = 0; r < S; ++r)
    for (int64_t b : regions[size_t(r)]) M[size_t(b)] = int32_t(r + 1);
  regions.clear();
  regions.shrink_to_fit();

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
