// Bindings of mean-shift clustering (mean_shift).
#include "fastpose/meanshift.hpp"
#include "python/bindings.h"

namespace fastpose {

void bind_meanshift(py::module_& m) {
  m.def(
      "mean_shift",
      [](std::uintptr_t points, int64_t n, int d, std::uintptr_t fit, int64_t nfit, std::uintptr_t seeds, int64_t s,
         double bandwidth, int seed_mode, int64_t min_bin_freq, int max_iter, bool cluster_all, std::uintptr_t labels,
         std::uintptr_t centres, int device, std::uintptr_t stream, int nthreads) {
        if (seed_mode < 0 || seed_mode > 2) throw ArgumentError("mean_shift: seed_mode must be 0 (bin), 1 (all) or 2");
        MeanShiftParams p;
        p.bandwidth = bandwidth;
        p.seeds = static_cast<SeedMode>(seed_mode);
        p.min_bin_freq = min_bin_freq;
        p.max_iter = max_iter;
        p.cluster_all = cluster_all;
        return mean_shift(ptr<const float>(points), n, d, ptr<const int64_t>(fit), nfit, ptr<const float>(seeds), s, p,
                          ptr<int32_t>(labels), ptr<float>(centres), to_exec(device, stream, nthreads));
      },
      py::arg("points"), py::arg("n"), py::arg("d"), py::arg("fit"), py::arg("nfit"), py::arg("seeds"), py::arg("s"),
      py::arg("bandwidth"), py::arg("seed_mode"), py::arg("min_bin_freq"), py::arg("max_iter"), py::arg("cluster_all"),
      py::arg("labels"), py::arg("centres"), py::arg("device"), py::arg("stream"), py::arg("num_threads"),
      py::call_guard<py::gil_scoped_release>(),
      "Flat-kernel mean-shift clustering of [n, d] points; writes int32 labels and [K, d] centres, returns K.");
}

}  // namespace fastpose
