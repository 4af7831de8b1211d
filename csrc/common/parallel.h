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
