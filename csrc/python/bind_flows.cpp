// Bindings of the heat-diffusion flow targets and the flow-error QC (fastpose/flows.hpp).
#include "fastpose/flows.hpp"
#include "python/bindings.h"

namespace fastpose {

void bind_flows(py::module_& m) {
  m.def(
      "masks_to_flows",
      [](std::uintptr_t labels, const PyShape& shape, std::uintptr_t flows, int niter, int device,
         std::uintptr_t stream, int nthreads) {
        masks_to_flows(ptr<const int32_t>(labels), to_shape(shape), ptr<float>(flows),
                       to_exec(device, stream, nthreads), niter);
      },
      py::arg("labels"), py::arg("shape"), py::arg("flows"), py::arg("niter"), py::arg("device"), py::arg("stream"),
      py::arg("num_threads"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "flow_errors",
      [](std::uintptr_t labels, const PyShape& shape, std::uintptr_t dP, int64_t nlabels, std::uintptr_t errors,
         int device, std::uintptr_t stream, int nthreads) {
        flow_errors(ptr<const int32_t>(labels), to_shape(shape), ptr<const float>(dP), nlabels, ptr<float>(errors),
                    to_exec(device, stream, nthreads));
      },
      py::arg("labels"), py::arg("shape"), py::arg("dP"), py::arg("nlabels"), py::arg("errors"), py::arg("device"),
      py::arg("stream"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "remove_bad_flow_masks",
      [](std::uintptr_t labels, const PyShape& shape, std::uintptr_t dP, int64_t nlabels, float threshold,
         int device, std::uintptr_t stream, int nthreads) {
        return remove_bad_flow_masks(ptr<int32_t>(labels), to_shape(shape), ptr<const float>(dP), nlabels,
                                     threshold, to_exec(device, stream, nthreads));
      },
      py::arg("labels"), py::arg("shape"), py::arg("dP"), py::arg("nlabels"), py::arg("threshold"),
      py::arg("device"), py::arg("stream"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace fastpose
