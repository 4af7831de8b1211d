// Bindings of mask clean-up (hole filling, small-mask removal).
#include "fastpose/masks.hpp"
#include "python/bindings.h"

namespace fastpose {

void bind_masks(py::module_& m) {
  m.def(
      "fill_holes_and_remove_small_masks",
      [](std::uintptr_t labels, const PyShape& shape, int64_t min_size, int device, std::uintptr_t stream,
         int nthreads) {
        return fill_holes_and_remove_small_masks(ptr<int32_t>(labels), to_shape(shape), min_size,
                                                 to_exec(device, stream, nthreads));
      },
      py::arg("labels"), py::arg("shape"), py::arg("min_size"), py::arg("device"), py::arg("stream"),
      py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
      "Remove masks under min_size pixels, fill holes (per Z plane in 3D), renumber 1..N in place; returns N.");
}

}  // namespace fastpose
