// The label-range check and the CPU (OpenMP) passes of label_stats.h.
#include "common/label_stats.h"

#include <algorithm>
#include <string>
#include <vector>

#include "common/parallel.h"

namespace fastpose {

void check_label_extents(const Shape& s, const char* what) {
  const int64_t lim = int64_t(1) << 31;
  if (s.z >= lim || s.y >= lim || s.x >= lim)
    throw ArgumentError(std::string(what) + ": image extents must be < 2**31");
}

int64_t checked_max_label(const int32_t* labels, int64_t n, int64_t nlabels, const char* what, const Exec& ex) {
  if (n <= 0) return 0;
  const LabelRange r = FP_BACKEND_CALL(ex, what, label_range, labels, n, ex);
  if (r.min < 0)
    throw ArgumentError(std::string(what) + ": negative label " + std::to_string(r.min) +
                        " (labels must be >= 0, 0 = background)");
  if (nlabels >= 0 && int64_t(r.max) > nlabels)
    throw ArgumentError(std::string(what) + ": label " + std::to_string(r.max) + " exceeds nlabels (" +
                        std::to_string(nlabels) + ")");
  if (int64_t(r.max) > n)
    throw ArgumentError(std::string(what) + ": label " + std::to_string(r.max) + " exceeds the number of pixels (" +
                        std::to_string(n) + "); relabel sparse labels first");
  return r.max;
}

namespace cpu {

LabelRange label_range(const int32_t* labels, int64_t n, const Exec& ex) {
  const int nt = cpu_threads(ex);
  int32_t mn = 0, mx = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : mn) reduction(max : mx)
  for (int64_t i = 0; i < n; ++i) {
    const int32_t l = labels[i];
    mn = l < mn ? l : mn;
    mx = l > mx ? l : mx;
  }
  LabelRange r;
  r.min = mn;
  r.max = mx;
  return r;
}

void label_stats(const int32_t* labels, const Shape& shape, int64_t maxlab, impl::LabelStats* st, const Exec& ex) {
  const int nt = cpu_threads(ex);
  std::fill(st, st + maxlab, impl::empty_label_stats());
  const int64_t n = shape.numel(), Y = shape.y, X = shape.x, rows = shape.z * shape.y;
  if (maxlab == 0 || n == 0) return;
  // Rows split into parts with a table each (part 0 writes st), as many as memory comfortably allows, then merged.
  const int64_t nparts = std::max<int64_t>(1, std::min<int64_t>(nt, n / (8 * (maxlab + 1))));
  std::vector<impl::LabelStats> extra(size_t((nparts - 1) * maxlab), impl::empty_label_stats());
#pragma omp parallel for num_threads(int(nparts)) schedule(static)
  for (int64_t p = 0; p < nparts; ++p) {
    impl::LabelStats* tab = p == 0 ? st : extra.data() + (p - 1) * maxlab;
    for (int64_t r = rows * p / nparts; r < rows * (p + 1) / nparts; ++r) {
      const int32_t* row = labels + r * X;
      const int32_t z = int32_t(r / Y), y = int32_t(r % Y);
      for (int64_t x = 0; x < X; ++x) {
        const int32_t l = row[x];
        if (l > 0) impl::accumulate(tab[l - 1], z, y, int32_t(x));
      }
    }
  }
  if (nparts == 1) return;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t k = 0; k < maxlab; ++k)
    for (int64_t p = 1; p < nparts; ++p) impl::merge(st[k], extra[size_t((p - 1) * maxlab + k)]);
}

}  // namespace cpu
}  // namespace fastpose
