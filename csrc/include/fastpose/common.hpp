// fastpose public C++ API: common types.
//
// Every operation in fastpose takes raw pointers that all live in one memory space, described by an
// `Exec` (CPU host memory or CUDA device memory), plus a `Shape`.  The per-pixel logic of each
// operation is written once in `csrc/<op>/*_impl.h` as FP_HOST_DEVICE inline functions and called by
// both the OpenMP CPU backend and the CUDA kernels.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define FP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FP_HOST_DEVICE inline
#endif

namespace fastpose {

/// Where the pointers passed to an operation live, and so where it runs.
enum class Device : int { CPU = 0, CUDA = 1 };

/// Execution context of one call.
struct Exec {
  Device device = Device::CPU;
  void* stream = nullptr;  ///< cudaStream_t when device == CUDA (nullptr: legacy default stream)
  int num_threads = 0;     ///< CPU only: OpenMP threads, 0 = OpenMP's default
};

/// Array shape of a 2D (Y, X) or 3D (Z, Y, X) image.  For 2D images `z == 1` and `ndim == 2`.
struct Shape {
  int ndim = 2;
  int64_t z = 1, y = 0, x = 0;

  FP_HOST_DEVICE int64_t numel() const { return z * y * x; }
  /// Extent along axis `a` of the ndim axes (0 = first axis: Z in 3D, Y in 2D).
  FP_HOST_DEVICE int64_t dim(int a) const { return ndim == 3 ? (a == 0 ? z : a == 1 ? y : x) : (a == 0 ? y : x); }
};

/// Error thrown for invalid arguments and backend failures (mapped to ValueError/RuntimeError in Python).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error("fastpose: " + what) {}
};

/// Bad argument (shape, dtype, value); mapped to ValueError in Python.
class ArgumentError : public Error {
 public:
  explicit ArgumentError(const std::string& what) : Error(what) {}
};

/// True when the library was compiled with CUDA kernels.
bool cuda_compiled() noexcept;
/// True when CUDA kernels are compiled in and at least one usable GPU (with driver) is present.
bool cuda_available() noexcept;
/// Library version string, e.g. "0.1.0".
const char* version() noexcept;

/// Throws ArgumentError unless shape is a valid non-negative 2D/3D shape.
void check_shape(const Shape& s, const char* what);

}  // namespace fastpose
