// CUDA helpers shared by every operation: the one CUDA error check, launch sizes, the grid-stride loop, a
// stream-ordered buffer.  Everything but FP_GRID_STRIDE (kernel code) is plain host code, so the .cpp files
// that call the CUDA runtime (common/runtime.cpp, trt/trt_segmenter.cpp) use the same error check.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "fastpose/common.hpp"

namespace fastpose {
namespace cuda {

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* expr, const char* file, int line) {
  throw Error(std::string("CUDA error '") + cudaGetErrorString(err) + "' in " + expr + " at " + file + ":" +
              std::to_string(line));
}

}  // namespace cuda
}  // namespace fastpose

/// Check a CUDA runtime call; throws fastpose::Error on failure.
#define FP_CUDA_CHECK(expr)                                                                   \
  do {                                                                                        \
    cudaError_t fp_err_ = (expr);                                                             \
    if (fp_err_ != cudaSuccess) ::fastpose::cuda::throw_cuda(fp_err_, #expr, __FILE__, __LINE__); \
  } while (0)

/// Call after every kernel launch.
#define FP_CUDA_LAUNCH_CHECK() FP_CUDA_CHECK(cudaGetLastError())

/// Grid-stride loop over items i in [0, n) (int64 index; n is evaluated every iteration).
#define FP_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

namespace fastpose {
namespace cuda {

inline cudaStream_t stream_of(const Exec& ex) { return static_cast<cudaStream_t>(ex.stream); }

/// Most blocks a grid-stride kernel (FP_GRID_STRIDE) is usually launched with: its threads loop beyond that.
constexpr unsigned int kStrideBlocks = 65535u * 8u;

/// The launch size: blocks of `threads` threads covering n items, at least 1 (callers return early on n == 0)
/// and at most `cap`.  Kernels with one thread per item keep the default cap (the grid limit); grid-stride
/// kernels pass kStrideBlocks or a smaller cap.
inline unsigned int grid_for(int64_t n, int threads, unsigned int cap = 0x7fffffffu) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > int64_t(cap)) b = int64_t(cap);
  return static_cast<unsigned int>(b);
}

/// Stream-ordered scratch buffer (cudaMallocAsync / cudaFreeAsync on the call's stream).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(int64_t n, cudaStream_t stream) : n_(n), stream_(stream) {
    if (n > 0) FP_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), sizeof(T) * size_t(n), stream));
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_), stream_(o.stream_) { o.ptr_ = nullptr; o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (ptr_) cudaFreeAsync(ptr_, stream_);
      ptr_ = o.ptr_; n_ = o.n_; stream_ = o.stream_;
      o.ptr_ = nullptr; o.n_ = 0;
    }
    return *this;
  }
  T* get() const { return ptr_; }
  int64_t size() const { return n_; }
  void zero() {
    if (n_ > 0) FP_CUDA_CHECK(cudaMemsetAsync(ptr_, 0, sizeof(T) * size_t(n_), stream_));
  }

 private:
  T* ptr_ = nullptr;
  int64_t n_ = 0;
  cudaStream_t stream_ = nullptr;
};

/// Copy n items device -> host and wait for them (used only for small metadata such as counts).
template <typename T>
inline void copy_to_host_sync(T* host, const T* dev, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  FP_CUDA_CHECK(cudaMemcpyAsync(host, dev, sizeof(T) * size_t(n), cudaMemcpyDeviceToHost, stream));
  FP_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace cuda
}  // namespace fastpose

#ifdef __CUDACC__
namespace fastpose {
namespace cuda {

/// v: [L] in/out, exclusive prefix sum in place, by one block of `Threads` threads (launch <<<1, Threads>>>);
/// total: [1] out, the sum of the L values (nullptr: not written).  A template, so each .cu that includes this
/// header gets its own instance (one definition, no duplicate host stubs at link).
template <int Threads>
__global__ void __launch_bounds__(Threads) exclusive_scan_kernel(unsigned long long* __restrict__ v, int64_t L,
                                                                 unsigned long long* __restrict__ total) {
  __shared__ unsigned long long part[Threads];
  const int t = threadIdx.x;
  const int64_t chunk = (L + Threads - 1) / Threads;
  const int64_t b = t * chunk, e = b + chunk < L ? b + chunk : L;
  unsigned long long local = 0;
  for (int64_t k = b; k < e; ++k) local += v[k];
  part[t] = local;
  __syncthreads();
  for (int off = 1; off < Threads; off <<= 1) {  // Hillis-Steele inclusive scan
    const unsigned long long add = t >= off ? part[t - off] : 0ull;
    __syncthreads();
    part[t] += add;
    __syncthreads();
  }
  unsigned long long run = part[t] - local;
  for (int64_t k = b; k < e; ++k) {
    const unsigned long long x = v[k];
    v[k] = run;
    run += x;
  }
  if (total != nullptr && t == Threads - 1) total[0] = part[t];
}

}  // namespace cuda
}  // namespace fastpose
#endif  // __CUDACC__
