// Bindings of histogram-peak clustering (get_masks).
#include "fastpose/clustering.hpp"
#include "python/bindings.h"

namespace fastpose {

void bind_clustering(py::module_& m) {
  m.def(
      "get_masks",
      [](std::uintptr_t positions, std::uintptr_t mask, const PyShape& shape, std::uintptr_t labels,
         double max_size_fraction, int device, std::uintptr_t stream, int nthreads) {
        return get_masks(ptr<const float>(positions), ptr<const uint8_t>(mask), to_shape(shape), ptr<int32_t>(labels),
                         max_size_fraction, to_exec(device, stream, nthreads));
      },
      py::arg("positions"), py::arg("mask"), py::arg("shape"), py::arg("labels"), py::arg("max_size_fraction"),
      py::arg("device"), py::arg("stream"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
      "Cluster tracked end points at histogram peaks into int32 labels; returns the number of masks.");
}

}  // namespace fastpose
