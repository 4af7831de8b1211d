// Host wrapper of fill_holes_and_remove_small_masks: checks, then dispatch to the CPU or CUDA backend.
#include "fastpose/masks.hpp"

#include "common/dispatch.h"
#include "common/label_stats.h"
#include "masks/masks_backends.h"

namespace fastpose {

int64_t fill_holes_and_remove_small_masks(int32_t* labels, const Shape& shape, int64_t min_size, const Exec& ex) {
  check_shape(shape, "fill_holes_and_remove_small_masks");
  check_label_extents(shape, "fill_holes_and_remove_small_masks");
  const int64_t n = shape.numel();
  if (n == 0) return 0;
  if (!labels) throw ArgumentError("fill_holes_and_remove_small_masks: null pointer");
  const int64_t max_label = checked_max_label(labels, n, -1, "fill_holes_and_remove_small_masks", ex);
  if (max_label == 0) return 0;
  FP_DISPATCH(ex, "fill_holes_and_remove_small_masks", fill_holes_and_remove_small_masks, labels, shape,
              int32_t(max_label), min_size, ex);
}

}  // namespace fastpose
