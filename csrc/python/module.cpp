// fastpose._core: the pybind11 extension over the public C++ API.
#include "python/bindings.h"

namespace py = pybind11;
using namespace fastpose;

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastpose native core (use fastpose.core, not this module, from Python)";
  static py::exception<Error> runtime_error(m, "CoreError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ArgumentError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const Error& e) {
      PyErr_SetString(runtime_error.ptr(), e.what());
    }
  });
  m.def("cuda_compiled", &cuda_compiled, "True when built with CUDA kernels");
  m.def("cuda_available", &cuda_available, "True when CUDA kernels are built and a GPU is usable");
  m.def("version", &version);
  bind_flows(m);
  bind_tracking(m);
  bind_clustering(m);
  bind_masks(m);
  bind_tiles(m);
  bind_pipeline(m);
  bind_meanshift(m);
}
