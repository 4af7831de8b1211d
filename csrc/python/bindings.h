// pybind11 glue shared by the per-operation binding files.
//
// Convention: the Python layer (python/fastpose/core/) validates arrays, allocates outputs (NumPy for
// the CPU, torch CUDA tensors for the GPU) and passes raw data pointers as integers, plus the shape and
// an execution context.  The C++ host wrappers re-check shapes and values; the GIL is released while
// they run.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <tuple>

#include "fastpose/common.hpp"

namespace fastpose {
namespace py = pybind11;

/// (ndim, z, y, x) from Python.
using PyShape = std::tuple<int, int64_t, int64_t, int64_t>;

inline Shape to_shape(const PyShape& s) {
  Shape sh;
  sh.ndim = std::get<0>(s);
  sh.z = std::get<1>(s);
  sh.y = std::get<2>(s);
  sh.x = std::get<3>(s);
  return sh;
}

/// device: 0 = CPU, 1 = CUDA; stream: cudaStream_t as an integer (0 = default stream).
inline Exec to_exec(int device, std::uintptr_t stream, int num_threads) {
  Exec ex;
  if (device != 0 && device != 1) throw ArgumentError("device must be 0 (cpu) or 1 (cuda)");
  ex.device = device == 1 ? Device::CUDA : Device::CPU;
  ex.stream = reinterpret_cast<void*>(stream);
  ex.num_threads = num_threads;
  return ex;
}

template <typename T>
inline T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void bind_flows(py::module_& m);
void bind_tracking(py::module_& m);
void bind_clustering(py::module_& m);
void bind_masks(py::module_& m);
void bind_tiles(py::module_& m);
void bind_pipeline(py::module_& m);
void bind_meanshift(py::module_& m);

}  // namespace fastpose
