// Bindings of Euler tracking (follow_flows).
#include "fastpose/tracking.hpp"
#include "python/bindings.h"

namespace fastpose {

void bind_tracking(py::module_& m) {
  m.def(
      "follow_flows",
      [](std::uintptr_t dP, std::uintptr_t mask, const PyShape& shape, int niter, std::uintptr_t positions,
         int device, std::uintptr_t stream, int nthreads) {
        follow_flows(ptr<const float>(dP), ptr<const uint8_t>(mask), to_shape(shape), niter, ptr<float>(positions),
                     to_exec(device, stream, nthreads));
      },
      py::arg("dP"), py::arg("mask"), py::arg("shape"), py::arg("niter"), py::arg("positions"), py::arg("device"),
      py::arg("stream"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
      "Euler-track every pixel with mask != 0 for niter steps along dP / 5; writes [ndim, Z, Y, X] positions.");
  m.def("tracking_simd_path", &tracking_simd_path,
        "The CPU path of follow_flows (2D and 3D) now: 'avx2' or 'scalar' (FASTPOSE_NO_SIMD=1 forces 'scalar').");
}

}  // namespace fastpose
