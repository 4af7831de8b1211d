// Host steps of mean_shift shared by both backends: the merge of the converged modes into centres (a greedy,
// sequential pass over at most one mode per seed) and the grid of the centres used by the assignment.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <vector>

#include "meanshift/meanshift_backends.h"
#include "meanshift/meanshift_impl.h"

namespace fastpose {

namespace {

using Cell = std::array<int64_t, impl::kMaxDim>;

struct CellHash {
  size_t operator()(const Cell& c) const noexcept {
    unsigned long long h = 0;
    for (int64_t v : c) h = h * 0x9e3779b97f4a7c15ull + (unsigned long long)v;
    return size_t(impl::hash_slot(h, std::numeric_limits<int64_t>::max()));
  }
};

}  // namespace

std::vector<float> merge_modes(const float* modes, const int32_t* counts, int64_t S, int d, float bw, float bw2) {
  auto coords_less = [modes, d](int64_t a, int64_t b) {
    for (int k = 0; k < d; ++k) {
      const float x = modes[a * d + k], y = modes[b * d + k];
      if (x != y) return x < y;
    }
    return false;
  };
  auto coords_equal = [modes, d](int64_t a, int64_t b) {
    for (int k = 0; k < d; ++k)
      if (modes[a * d + k] != modes[b * d + k]) return false;
    return true;
  };
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < S; ++i)
    if (counts[i] > 0) idx.push_back(i);

  // 1. identical modes once (scikit-learn keys its results by the mode), with the largest window.
  std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    if (coords_less(a, b)) return true;
    if (coords_less(b, a)) return false;
    return counts[a] != counts[b] ? counts[a] > counts[b] : a < b;
  });
  idx.erase(std::unique(idx.begin(), idx.end(), coords_equal), idx.end());

  // 2. rank: window size, then the coordinates, descending.
  std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    return counts[a] != counts[b] ? counts[a] > counts[b] : coords_less(b, a);
  });

  // 3. greedy: a mode within the bandwidth of a kept one is dropped.  Kept modes are filed in cells of size bw.
  std::unordered_map<Cell, std::vector<int64_t>, CellHash> cells;
  std::vector<float> out;
  const double w = double(bw);
  for (int64_t i : idx) {
    const float* p = modes + i * d;
    Cell lo{0, 0, 0}, hi{0, 0, 0}, own{0, 0, 0};
    for (int a = 0; a < d; ++a) {
      const double t = double(p[a]) / w, e = 1.0 + impl::range_margin(t);
      lo[size_t(a)] = int64_t(std::floor(t - e));
      hi[size_t(a)] = int64_t(std::floor(t + e));
      own[size_t(a)] = int64_t(std::floor(t));
    }
    bool near = false;
    Cell c{0, 0, 0};
    for (c[0] = lo[0]; c[0] <= hi[0] && !near; ++c[0])
      for (c[1] = lo[1]; c[1] <= hi[1] && !near; ++c[1])
        for (c[2] = lo[2]; c[2] <= hi[2] && !near; ++c[2]) {
          const auto it = cells.find(c);
          if (it == cells.end()) continue;
          for (int64_t j : it->second)
            if (impl::dist2(p, &out[size_t(j * d)], d) <= bw2) {
              near = true;
              break;
            }
        }
    if (near) continue;
    cells[own].push_back(int64_t(out.size()) / d);
    out.insert(out.end(), p, p + d);
  }
  return out;
}

impl::CentreGrid plan_centre_grid(const float* centres, int64_t K, int d, float bw, std::vector<int32_t>& start,
                                  std::vector<int32_t>& items) {
  impl::CentreGrid g;
  g.d = d;
  g.k = K;
  g.bw = bw;
  double lo[impl::kMaxDim] = {0.0, 0.0, 0.0}, hi[impl::kMaxDim] = {0.0, 0.0, 0.0};
  for (int a = 0; a < d; ++a) lo[a] = hi[a] = double(centres[a]);
  for (int64_t j = 1; j < K; ++j)
    for (int a = 0; a < d; ++a) {
      lo[a] = std::min(lo[a], double(centres[j * d + a]));
      hi[a] = std::max(hi[a], double(centres[j * d + a]));
    }
  const double limit = double(std::max<int64_t>(4 * K, 4096));
  double cell = double(bw);
  for (;;) {
    double cells = 1.0;
    for (int a = 0; a < d; ++a) cells *= std::floor((hi[a] - lo[a]) / cell) + 1.0;
    if (cells <= limit) break;
    cell *= 2.0;
  }
  g.cell = cell;
  int64_t ncells = 1;
  for (int a = 0; a < d; ++a) {
    g.origin[a] = lo[a];
    g.ext[a] = int64_t(std::floor((hi[a] - lo[a]) / cell)) + 1;
    ncells *= g.ext[a];
  }
  // counting sort of the centres by cell; ascending indices within a cell
  std::vector<int64_t> cell_of(size_t(K), 0);
  start.assign(size_t(ncells) + 1, 0);
  for (int64_t j = 0; j < K; ++j) {
    int64_t lin = 0;
    for (int a = 0; a < d; ++a) {
      const double c = impl::centre_cell_coord(g, centres[j * d + a], a);
      const int64_t ci = c < 0.0 ? 0 : c > double(g.ext[a] - 1) ? g.ext[a] - 1 : int64_t(c);
      lin = lin * g.ext[a] + ci;
    }
    cell_of[size_t(j)] = lin;
    ++start[size_t(lin) + 1];
  }
  for (int64_t c = 0; c < ncells; ++c) start[size_t(c) + 1] += start[size_t(c)];
  items.assign(size_t(K), 0);
  std::vector<int32_t> cursor(start.begin(), start.end() - 1);
  for (int64_t j = 0; j < K; ++j) items[size_t(cursor[size_t(cell_of[size_t(j)])]++)] = int32_t(j);
  return g;
}

}  // namespace fastpose
