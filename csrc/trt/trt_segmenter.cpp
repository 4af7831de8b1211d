// TrtSegmenter: TensorRT engine + fastpose core on one CUDA stream.  Compiled only with TensorRT.
#ifdef FASTPOSE_WITH_TENSORRT

#include "fastpose/trt_segmenter.hpp"

#include <NvInfer.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <vector>

#include "common/cuda_utils.cuh"  // the CUDA error check (host code)
#include "common/scratch.h"
#include "fastpose/tiles.hpp"

namespace fastpose {
namespace {

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) last = msg;
  }
  std::string last;
};

}  // namespace

struct TrtSegmenter::Impl {
  Logger logger;
  std::unique_ptr<nvinfer1::IRuntime> runtime;
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  cudaStream_t stream = nullptr;
  int device = 0;
  int64_t C = 0, T = 0, S = 0;  // input channels, tile side, style width
};

TrtSegmenter::TrtSegmenter(const std::string& engine_path, int device) : impl_(new Impl) {
  std::ifstream f(engine_path, std::ios::binary);
  if (!f) throw ArgumentError("TrtSegmenter: cannot open engine file " + engine_path);
  std::vector<char> blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  impl_->device = device;
  FP_CUDA_CHECK(cudaSetDevice(device));
  impl_->runtime.reset(nvinfer1::createInferRuntime(impl_->logger));
  if (!impl_->runtime) throw Error("TrtSegmenter: createInferRuntime failed");
  impl_->engine.reset(impl_->runtime->deserializeCudaEngine(blob.data(), blob.size()));
  if (!impl_->engine)
    throw Error("TrtSegmenter: cannot deserialise " + engine_path + " (" + impl_->logger.last +
                "); engines only run with the TensorRT version and GPU they were built for");
  impl_->context.reset(impl_->engine->createExecutionContext());
  if (!impl_->context) throw Error("TrtSegmenter: createExecutionContext failed");
  nvinfer1::Dims d = impl_->engine->getTensorShape("image");
  if (d.nbDims != 4 || d.d[2] != d.d[3] || d.d[1] <= 0)
    throw ArgumentError("TrtSegmenter: engine input 'image' must be [B, C, T, T] with fixed C and T");
  impl_->C = d.d[1];
  impl_->T = d.d[2];
  nvinfer1::Dims sd = impl_->engine->getTensorShape("style");
  impl_->S = sd.nbDims == 2 && sd.d[1] > 0 ? sd.d[1] : 256;
  FP_CUDA_CHECK(cudaStreamCreate(&impl_->stream));
}

TrtSegmenter::~TrtSegmenter() {
  if (impl_ && impl_->stream) cudaStreamDestroy(impl_->stream);
}

int64_t TrtSegmenter::tile() const { return impl_->T; }
int64_t TrtSegmenter::channels() const { return impl_->C; }

int64_t TrtSegmenter::segment(const float* image, int64_t C, int64_t Y, int64_t X, int32_t* labels,
                              const TrtSegmentOptions& opt) {
  if (!image || !labels) throw ArgumentError("TrtSegmenter::segment: null pointer");
  if (C != impl_->C) throw ArgumentError("TrtSegmenter::segment: the engine takes " + std::to_string(impl_->C) +
                                         " channels, got " + std::to_string(C));
  if (Y <= 0 || X <= 0) throw ArgumentError("TrtSegmenter::segment: empty image");
  if (opt.batch_size < 1) throw ArgumentError("TrtSegmenter::segment: batch_size must be >= 1");
  FP_CUDA_CHECK(cudaSetDevice(impl_->device));
  Exec ex;
  ex.device = Device::CUDA;
  ex.stream = impl_->stream;
  const int64_t T = impl_->T;
  // the engine has a fixed tile: pad images smaller than a tile with zeros (bottom/right)
  const int64_t Yp = std::max(Y, T), Xp = std::max(X, T);
  std::vector<float> padded;
  const float* src = image;
  if (Yp != Y || Xp != X) {
    padded.assign(size_t(C * Yp * Xp), 0.0f);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t y = 0; y < Y; ++y)
        std::copy(image + (c * Y + y) * X, image + (c * Y + y + 1) * X, padded.data() + (c * Yp + y) * Xp);
    src = padded.data();
  }
  Scratch<float> img(C * Yp * Xp, ex, false);
  FP_CUDA_CHECK(
      cudaMemcpyAsync(img.get(), src, sizeof(float) * size_t(C * Yp * Xp), cudaMemcpyHostToDevice, impl_->stream));
  TileGrid grid = plan_tiles(Yp, Xp, T, opt.tile_overlap, false);
  const int64_t n = grid.count();
  Scratch<float> tiles(n * C * T * T, ex, false);
  make_tiles(img.get(), 1, C, grid, tiles.get(), ex);
  Scratch<float> out(n * 3 * T * T, ex, false);
  for (int64_t b0 = 0; b0 < n; b0 += opt.batch_size) {
    const int64_t b = std::min<int64_t>(opt.batch_size, n - b0);
    if (!impl_->context->setInputShape("image", nvinfer1::Dims4(b, C, T, T)))
      throw Error("TrtSegmenter: batch " + std::to_string(b) + " is outside the engine's optimisation profile");
    impl_->context->setTensorAddress("image", tiles.get() + b0 * C * T * T);
    impl_->context->setTensorAddress("flows_cellprob", out.get() + b0 * 3 * T * T);
    Scratch<float> style(b * impl_->S, ex, false);  // the style output is bound but unused here
    impl_->context->setTensorAddress("style", style.get());
    if (!impl_->context->enqueueV3(impl_->stream)) throw Error("TrtSegmenter: enqueueV3 failed: " + impl_->logger.last);
  }
  Scratch<float> blended(3 * Yp * Xp, ex, false);
  blend_tiles(out.get(), 1, 3, grid, 0, 1, blended.get(), ex);
  // crop the padding: dP [2, Y, X] and cellprob [Y, X] contiguous on the device
  Scratch<float> dP(2 * Y * X, ex, false), prob(Y * X, ex, false);
  for (int64_t c = 0; c < 3; ++c) {
    float* dst = c < 2 ? dP.get() + c * Y * X : prob.get();
    FP_CUDA_CHECK(cudaMemcpy2DAsync(dst, sizeof(float) * size_t(X), blended.get() + c * Yp * Xp,
                                    sizeof(float) * size_t(Xp), sizeof(float) * size_t(X), size_t(Y),
                                    cudaMemcpyDeviceToDevice, impl_->stream));
  }
  Shape s;
  s.ndim = 2;
  s.y = Y;
  s.x = X;
  Scratch<int32_t> lab(Y * X, ex, true);
  const int64_t count = compute_masks(dP.get(), prob.get(), s, lab.get(), opt.masks, ex);
  FP_CUDA_CHECK(
      cudaMemcpyAsync(labels, lab.get(), sizeof(int32_t) * size_t(Y * X), cudaMemcpyDeviceToHost, impl_->stream));
  FP_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  return count;
}

}  // namespace fastpose

#endif  // FASTPOSE_WITH_TENSORRT
