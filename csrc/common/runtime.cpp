// Runtime queries and shared host-side checks.
#include "fastpose/common.hpp"
#include "common/scratch.h"

#include <string>

#ifdef FASTPOSE_WITH_CUDA
#include "common/cuda_utils.cuh"  // the CUDA error check (host code)
#endif

#ifndef FASTPOSE_VERSION
#define FASTPOSE_VERSION "0.0.0"
#endif

namespace fastpose {

bool cuda_compiled() noexcept {
#ifdef FASTPOSE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool cuda_available() noexcept {
#ifdef FASTPOSE_WITH_CUDA
  // A CUDA build on a machine without GPU or driver: cudaGetDeviceCount returns an error; fall back.
  static const bool available = [] {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky error state
      return false;
    }
    return n > 0;
  }();
  return available;
#else
  return false;
#endif
}

const char* version() noexcept { return FASTPOSE_VERSION; }

void check_shape(const Shape& s, const char* what) {
  if (s.ndim != 2 && s.ndim != 3)
    throw ArgumentError(std::string(what) + ": expected a 2D or 3D shape, got ndim=" + std::to_string(s.ndim));
  if (s.z < 0 || s.y < 0 || s.x < 0)
    throw ArgumentError(std::string(what) + ": negative extent in shape");
  if (s.ndim == 2 && s.z != 1) throw ArgumentError(std::string(what) + ": 2D shape must have z == 1");
  if (s.numel() > (int64_t(1) << 40)) throw ArgumentError(std::string(what) + ": image too large");
}

}  // namespace fastpose

namespace fastpose {
namespace detail {

#ifdef FASTPOSE_WITH_CUDA
void* device_alloc(size_t bytes, void* stream) {
  void* p = nullptr;
  FP_CUDA_CHECK(cudaMallocAsync(&p, bytes, static_cast<cudaStream_t>(stream)));
  return p;
}
void device_free(void* p, void* stream) noexcept { cudaFreeAsync(p, static_cast<cudaStream_t>(stream)); }
void device_memset(void* p, int value, size_t bytes, void* stream) {
  FP_CUDA_CHECK(cudaMemsetAsync(p, value, bytes, static_cast<cudaStream_t>(stream)));
}
void device_copy(void* dst, const void* src, size_t bytes, int kind, void* stream) {
  FP_CUDA_CHECK(
      cudaMemcpyAsync(dst, src, bytes, static_cast<cudaMemcpyKind>(kind), static_cast<cudaStream_t>(stream)));
}
void device_sync(void* stream) { FP_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream))); }
#else
[[noreturn]] static void no_cuda() { throw Error("CUDA memory requested but fastpose was built without CUDA"); }
void* device_alloc(size_t, void*) { no_cuda(); }
void device_free(void*, void*) noexcept {}
void device_memset(void*, int, size_t, void*) { no_cuda(); }
void device_copy(void*, const void*, size_t, int, void*) { no_cuda(); }
void device_sync(void*) { no_cuda(); }
#endif

}  // namespace detail
}  // namespace fastpose
