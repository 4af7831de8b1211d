// Host wrapper of fill_holes_and_remove_small_masks: checks, then dispatch to the CPU or CUDA backend.
#include "fastpose/masks.hpp"

#include <string>

#include "common/parallel.h"
#include "masks/masks_backends.h"

namespace fastpose {

int64_t fill_holes_and_remove_small_masks(int32_t* labels, const Shape& shape, int64_t min_size, const Exec& ex) {
  check_shape(shape, "fill_holes_and_remove_small_masks");
  const int64_t n = shape.numel();
  if (n == 0) return 0;
  if (!labels) throw ArgumentError("fill_holes_and_remove_small_masks: null pointer");
  int32_t lo = 0, hi = 0;
  if (ex.device == Device::CPU) {
    cpu::label_range(labels, n, &lo, &hi, ex);
  } else {
#ifdef FASTPOSE_WITH_CUDA
    cuda_impl::label_range(labels, n, &lo, &hi, ex);
#else
    FP_NO_CUDA_BUILD("fill_holes_and_remove_small_masks");
#endif
  }
  if (lo < 0)
    throw ArgumentError("fill_holes_and_remove_small_masks: negative label " + std::to_string(lo) +
                        " (labels must be >= 0, 0 = background)");
  if (int64_t(hi) > n)
    throw ArgumentError("fill_holes_and_remove_small_masks: max label " + std::to_string(hi) +
                        " exceeds the number of pixels " + std::to_string(n) + "; relabel sequentially first");
  if (hi == 0) return 0;
  FP_DISPATCH(ex, "fill_holes_and_remove_small_masks", fill_holes_and_remove_small_masks, labels, shape, hi, min_size, ex);
}

}  // namespace fastpose
