// Backend declaration and dispatch for the host wrappers (<op>/<op>.cpp).
//
// Every operation has two backends with the same entry points: fastpose::cpu (<op>/cpu.cpp, host memory)
// and, in CUDA builds, fastpose::cuda_impl (<op>/cuda.cu, device memory, work queued on ex's stream).
// FP_BACKEND_API declares those entry points once for both namespaces, so the two backends share every
// signature by construction; FP_BACKEND_CALL / FP_DISPATCH pick one by ex.device.
#pragma once

#include <string>

#include "fastpose/common.hpp"

/// Thrown by a host wrapper when asked for Device::CUDA in a build without CUDA kernels (a throw-expression).
#define FP_NO_CUDA_BUILD(opname)                                                                    \
  throw ::fastpose::Error(std::string(opname) +                                                     \
                          ": Device::CUDA requested but fastpose was built without CUDA kernels " \
                          "(rebuild with nvcc on PATH, or use the CPU backend)")

/// `FP_BACKEND_API(declarations...)`, inside namespace fastpose: the declarations in namespace cpu and, in CUDA
/// builds, again in namespace cuda_impl.  Comments inside the argument are fine (removed before expansion).
#ifdef FASTPOSE_WITH_CUDA
#define FP_BACKEND_API(...) \
  namespace cpu {           \
  __VA_ARGS__               \
  }                         \
  namespace cuda_impl {     \
  __VA_ARGS__               \
  }
#else
#define FP_BACKEND_API(...) \
  namespace cpu {           \
  __VA_ARGS__               \
  }
#endif

/// `FP_BACKEND_CALL(ex, "name", fn, args...)`: an expression with the value of cpu::fn(args...) for Device::CPU
/// and cuda_impl::fn(args...) for Device::CUDA; without CUDA kernels a CUDA request throws (FP_NO_CUDA_BUILD)
/// instead of silently running elsewhere.
#ifdef FASTPOSE_WITH_CUDA
#define FP_BACKEND_CALL(ex, opname, fn, ...)                                                                    \
  ((ex).device == ::fastpose::Device::CPU ? ::fastpose::cpu::fn(__VA_ARGS__) : ::fastpose::cuda_impl::fn(__VA_ARGS__))
#else
#define FP_BACKEND_CALL(ex, opname, fn, ...) \
  ((ex).device == ::fastpose::Device::CPU ? ::fastpose::cpu::fn(__VA_ARGS__) : FP_NO_CUDA_BUILD(opname))
#endif

/// Host-wrapper dispatch: `FP_DISPATCH(ex, "name", fn, args...)` returns FP_BACKEND_CALL(ex, "name", fn, args...).
#define FP_DISPATCH(ex, opname, fn, ...) return FP_BACKEND_CALL(ex, opname, fn, __VA_ARGS__)
