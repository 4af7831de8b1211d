// Scratch memory for host-side wrappers (plain .cpp files): host memory for Device::CPU, stream-ordered
// device memory (cudaMallocAsync) for Device::CUDA.  Lets a wrapper such as compute_masks chain
// operations without knowing which backend runs them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

#include "fastpose/common.hpp"

namespace fastpose {
namespace detail {

void* device_alloc(size_t bytes, void* stream);             // throws on failure; CUDA builds only
void device_free(void* p, void* stream) noexcept;
void device_memset(void* p, int value, size_t bytes, void* stream);
void device_copy(void* dst, const void* src, size_t bytes, int kind, void* stream);  // kind: cudaMemcpyKind
void device_sync(void* stream);

}  // namespace detail

/// n elements of T (a trivial type) on the device of `ex`, zero-initialised when zero == true and left
/// uninitialised otherwise (for buffers the caller overwrites completely).
template <typename T>
class Scratch {
 public:
  Scratch(int64_t n, const Exec& ex, bool zero = true) : n_(n < 0 ? 0 : n), ex_(ex) {
    if (n_ == 0) return;
    if (ex.device == Device::CPU) {
      host_.reset(new T[size_t(n_)]);  // default-initialised: no fill
      ptr_ = host_.get();
      if (zero) std::memset(static_cast<void*>(ptr_), 0, sizeof(T) * size_t(n_));
    } else {
      ptr_ = static_cast<T*>(detail::device_alloc(sizeof(T) * size_t(n_), ex.stream));
      if (zero) detail::device_memset(ptr_, 0, sizeof(T) * size_t(n_), ex.stream);
    }
  }
  ~Scratch() { release(); }
  /// Free the memory now (before the end of the scope); get() is null afterwards.  On CUDA the free is
  /// stream-ordered, so kernels already queued on ex.stream that use the buffer are not affected.
  void release() noexcept {
    if (ex_.device == Device::CUDA && ptr_) detail::device_free(ptr_, ex_.stream);
    host_.reset();
    ptr_ = nullptr;
    n_ = 0;
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() { return ptr_; }
  const T* get() const { return ptr_; }
  int64_t size() const { return n_; }

 private:
  static_assert(std::is_trivial<T>::value, "Scratch holds trivial types (zeroed with memset)");
  int64_t n_;
  Exec ex_;
  T* ptr_ = nullptr;
  std::unique_ptr<T[]> host_;
};

}  // namespace fastpose
