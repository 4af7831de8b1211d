// CUDA backend of tiling and blending.
#include "common/cuda_utils.cuh"
#include "tiles/tiles_backends.h"
#include "tiles/tiles_impl.h"

namespace fastpose {
namespace cuda_impl {

namespace {

constexpr int kThreads = 256;

// image: [B, C, Ly, Lx] float32; tiles: [B, ny * nx, C, by, bx] float32 output, n elements.
__global__ void make_tiles_kernel(const float* __restrict__ image, int64_t C, TileGrid grid, float* __restrict__ tiles,
                                  int64_t n) {
  FP_GRID_STRIDE(i, n) { tiles[i] = impl::tile_element(image, C, grid, i); }
}

// tiles: [B, ny * nx, C, by, bx] float32; wy: [by], wx: [bx] float64 (device); out: [B, C, Ly, Lx] float32
// output, n elements.
__global__ void blend_kernel(const float* __restrict__ tiles, int64_t C, TileGrid grid, int flow_y, int flow_x,
                             const double* __restrict__ wy, const double* __restrict__ wx, float* __restrict__ out,
                             int64_t n) {
  FP_GRID_STRIDE(i, n) { out[i] = impl::blend_element(tiles, C, grid, flow_y, flow_x, wy, wx, i); }
}

}  // namespace

void make_tiles(const float* image, int64_t B, int64_t C, const TileGrid& grid, float* tiles, const Exec& ex) {
  const int64_t n = B * grid.count() * C * grid.by * grid.bx;
  if (n <= 0) return;
  cudaStream_t stream = cuda::stream_of(ex);
  make_tiles_kernel<<<cuda::grid_for(n, kThreads, cuda::kStrideBlocks), kThreads, 0, stream>>>(
      image, C, grid, tiles, n);
  FP_CUDA_LAUNCH_CHECK();
}

void blend_tiles(const float* tiles, int64_t B, int64_t C, const TileGrid& grid, int flow_y_channel,
                 int flow_x_channel, const double* wy, const double* wx, float* out, const Exec& ex) {
  const int64_t n = B * C * grid.Ly * grid.Lx;
  if (n <= 0) return;
  cudaStream_t stream = cuda::stream_of(ex);
  // Taper vectors computed once on the host (bitwise identical weights on both backends).  The copy
  // from pageable memory returns once the data is staged, so the host vectors may be freed afterwards.
  cuda::DeviceBuffer<double> w(grid.by + grid.bx, stream);
  if (grid.by > 0)
    FP_CUDA_CHECK(cudaMemcpyAsync(w.get(), wy, sizeof(double) * size_t(grid.by), cudaMemcpyHostToDevice, stream));
  if (grid.bx > 0)
    FP_CUDA_CHECK(cudaMemcpyAsync(w.get() + grid.by, wx, sizeof(double) * size_t(grid.bx), cudaMemcpyHostToDevice,
                                  stream));
  blend_kernel<<<cuda::grid_for(n, kThreads, cuda::kStrideBlocks), kThreads, 0, stream>>>(
      tiles, C, grid, flow_y_channel, flow_x_channel, w.get(), w.get() + grid.by, out, n);
  FP_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda_impl
}  // namespace fastpose
