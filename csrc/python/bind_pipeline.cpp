// Bindings of the mask-recovery chain.
#include "fastpose/pipeline.hpp"
#include "python/bindings.h"

namespace fastpose {

void bind_pipeline(py::module_& m) {
  m.def(
      "threshold_mask",
      [](std::uintptr_t prob, int64_t n, float threshold, std::uintptr_t mask, int device, std::uintptr_t stream,
         int nthreads) {
        threshold_mask(ptr<const float>(prob), n, threshold, ptr<uint8_t>(mask), to_exec(device, stream, nthreads));
      },
      py::arg("prob"), py::arg("n"), py::arg("threshold"), py::arg("mask"), py::arg("device"), py::arg("stream"),
      py::arg("num_threads"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "compute_masks",
      [](std::uintptr_t dP, std::uintptr_t cellprob, const PyShape& shape, std::uintptr_t labels, int niter,
         float cellprob_threshold, float flow_threshold, bool flow_qc_3d, int64_t min_size, double max_size_fraction,
         std::uintptr_t positions, int device, std::uintptr_t stream, int nthreads) {
        MaskParams p;
        p.niter = niter;
        p.cellprob_threshold = cellprob_threshold;
        p.flow_threshold = flow_threshold;
        p.flow_qc_3d = flow_qc_3d;
        p.min_size = min_size;
        p.max_size_fraction = max_size_fraction;
        return compute_masks(ptr<const float>(dP), ptr<const float>(cellprob), to_shape(shape), ptr<int32_t>(labels),
                             p, to_exec(device, stream, nthreads), ptr<float>(positions));
      },
      py::arg("dP"), py::arg("cellprob"), py::arg("shape"), py::arg("labels"), py::arg("niter"),
      py::arg("cellprob_threshold"), py::arg("flow_threshold"), py::arg("flow_qc_3d"), py::arg("min_size"),
      py::arg("max_size_fraction"), py::arg("positions"), py::arg("device"), py::arg("stream"),
      py::arg("num_threads"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace fastpose
