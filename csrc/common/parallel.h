// CPU-side parallel helpers (OpenMP when available, serial otherwise).
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastpose/common.hpp"

namespace fastpose {

/// Number of OpenMP threads to use for a call.
inline int cpu_threads(const Exec& ex) {
#ifdef _OPENMP
  return ex.num_threads > 0 ? ex.num_threads : omp_get_max_threads();
#else
  (void)ex;
  return 1;
#endif
}

inline int cpu_thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace fastpose

/// Thrown by a host wrapper when asked for Device::CUDA in a build without CUDA kernels.
#define FP_NO_CUDA_BUILD(opname)                                                                    \
  throw ::fastpose::Error(std::string(opname) +                                                     \
                          ": Device::CUDA requested but fastpose was built without CUDA kernels " \
                          "(rebuild with nvcc on PATH, or use the CPU backend)")

/// Host-wrapper dispatch: `FP_DISPATCH(ex, "name", fn, args...)` returns cpu::fn(args...) for Device::CPU and
/// cuda_impl::fn(args...) for Device::CUDA (both backends declare fn with the same signature); without CUDA
/// kernels a CUDA request throws (FP_NO_CUDA_BUILD) instead of silently running elsewhere.
#ifdef FASTPOSE_WITH_CUDA
#define FP_DISPATCH(ex, opname, fn, ...)                                                         \
  return (ex).device == ::fastpose::Device::CPU ? ::fastpose::cpu::fn(__VA_ARGS__)               \
                                                : ::fastpose::cuda_impl::fn(__VA_ARGS__)
#else
#define FP_DISPATCH(ex, opname, fn, ...)                                                         \
  do {                                                                                           \
    if ((ex).device == ::fastpose::Device::CPU) return ::fastpose::cpu::fn(__VA_ARGS__);         \
    FP_NO_CUDA_BUILD(opname);                                                                    \
  } while (0)
#endif
