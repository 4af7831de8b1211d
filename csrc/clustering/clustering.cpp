// Host wrapper of get_masks: checks, then dispatch to the CPU or CUDA backend.
#include "fastpose/clustering.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "clustering/clustering_backends.h"
#include "common/dispatch.h"

namespace fastpose {

int64_t checked_max_pixels(double max_size_fraction, int64_t n, const char* what) {
  if (!(max_size_fraction >= 0.0))
    throw ArgumentError(std::string(what) + ": max_size_fraction must be >= 0, got " +
                        std::to_string(max_size_fraction));
  if (n > int64_t(std::numeric_limits<int32_t>::max()))
    throw ArgumentError(std::string(what) +
                        ": images of more than 2^31 - 1 pixels are not supported (int32 counts)");
  // count > fraction * numel  <=>  count > floor(fraction * numel) for integer counts.
  const double lim = std::floor(max_size_fraction * double(n));
  return lim >= double(n) ? n : int64_t(lim);
}

int64_t get_masks(const float* positions, const uint8_t* mask, const Shape& shape, int32_t* labels,
                  double max_size_fraction, const Exec& ex) {
  check_shape(shape, "get_masks");
  const int64_t n = shape.numel();
  const int64_t max_pixels = checked_max_pixels(max_size_fraction, n, "get_masks");
  if (n == 0) return 0;
  if (!positions || !mask || !labels) throw ArgumentError("get_masks: null pointer");
  FP_DISPATCH(ex, "get_masks", get_masks, positions, mask, shape, labels, max_pixels, ex);
}

}  // namespace fastpose
