// Native inference with a serialized TensorRT engine: tiles -> engine -> blend -> compute_masks, all on the
// GPU.  Built only when CMake finds TensorRT (FASTPOSE_WITH_TENSORRT); check fastpose/config.hpp's
// FASTPOSE_BUILT_WITH_TENSORRT before using it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "fastpose/common.hpp"
#include "fastpose/pipeline.hpp"

namespace fastpose {

/// Settings of TrtSegmenter::segment.
struct TrtSegmentOptions {
  double tile_overlap = 0.1;  ///< tile overlap fraction (Cellpose's default)
  int batch_size = 8;         ///< tiles per engine call (must lie in the engine's optimisation profile)
  MaskParams masks;           ///< mask recovery settings (Cellpose defaults)
};

/// A segmentation network deployed as a TensorRT engine file (written by `fastpose export --engine`, input
/// tensor "image" [B, C, T, T], output "flows_cellprob" [B, 3, T, T], float32 I/O).
class TrtSegmenter {
 public:
  /// Loads and deserialises the engine on CUDA device `device`; throws fastpose::Error on failure.
  explicit TrtSegmenter(const std::string& engine_path, int device = 0);
  ~TrtSegmenter();
  TrtSegmenter(const TrtSegmenter&) = delete;
  TrtSegmenter& operator=(const TrtSegmenter&) = delete;

  /// Segment one normalised image.
  ///
  /// Args:
  ///   image:  [C, Y, X] float32 host buffer (C = the engine's channel count), normalised like training.
  ///   labels: [Y, X] int32 host output, 0 background, 1..N.
  /// Returns: number of masks N.
  int64_t segment(const float* image, int64_t C, int64_t Y, int64_t X, int32_t* labels,
                  const TrtSegmentOptions& options = TrtSegmentOptions());

  int64_t tile() const;      ///< tile side T of the engine
  int64_t channels() const;  ///< input channels C of the engine

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fastpose
