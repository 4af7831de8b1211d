// Scratch memory for host-side wrappers (plain .cpp files): host memory for Device::CPU, stream-ordered
// device memory (cudaMallocAsync) for Device::CUDA.  Lets a wrapper such as compute_masks chain
// operations without knowing which backend runs them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastpose/common.hpp"

namespace fastpose {
namespace detail {

void* device_alloc(size_t bytes, void* stream);             // throws on failure; CUDA builds only
void device_free(void* p, void* stream) noexcept;
void device_memset(void* p, int value, size_t bytes, void* stream);
void device_copy(void* dst, const void* src, size_t bytes, int kind, void* stream);  // kind: cudaMemcpyKind
void device_sync(void* stream);

}  // namespace detail

/// n elements of T on the device of `ex`, zero-initialised unless zero == false.
template <typename T>
class Scratch {
 public:
  Scratch(int64_t n, const Exec& ex, bool zero = true) : n_(n < 0 ? 0 : n), ex_(ex) {
    if (ex.device == Device::CPU) {
      host_.assign(size_t(n_), T{});
      ptr_ = host_.data();
    } else if (n_ > 0) {
      ptr_ = static_cast<T*>(detail::device_alloc(sizeof(T) * size_t(n_), ex.stream));
      if (zero) detail::device_memset(ptr_, 0, sizeof(T) * size_t(n_), ex.stream);
    }
  }
  ~Scratch() {
    if (ex_.device == Device::CUDA && ptr_) detail::device_free(ptr_, ex_.stream);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() { return ptr_; }
  const T* get() const { return ptr_; }
  int64_t size() const { return n_; }

 private:
  int64_t n_;
  Exec ex_;
  T* ptr_ = nullptr;
  std::vector<T> host_;
};

}  // namespace fastpose
