// The CUDA passes of label_stats.h: label range and per-label statistics with integer atomics (warp-aggregated
// where a whole warp lies inside one label), so the result is exact and independent of the schedule.
#include "common/cuda_utils.cuh"
#include "common/label_stats.h"

namespace fastpose {
namespace cuda_impl {
namespace {

using impl::LabelStats;

constexpr int kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

// labels: [n] int32; mm: [2] int32 in/out (min, max), zero on entry.
__global__ void minmax_kernel(const int32_t* __restrict__ labels, int64_t n, int* __restrict__ mm) {
  int mn = 0, mx = 0;
  FP_GRID_STRIDE(i, n) {
    const int l = labels[i];
    mn = l < mn ? l : mn;
    mx = l > mx ? l : mx;
  }
  for (int off = 16; off > 0; off >>= 1) {
    const int a = __shfl_down_sync(kFull, mn, off);
    const int b = __shfl_down_sync(kFull, mx, off);
    mn = a < mn ? a : mn;
    mx = b > mx ? b : mx;
  }
  if ((threadIdx.x & 31) == 0) {
    atomicMin(&mm[0], mn);
    atomicMax(&mm[1], mx);
  }
}

// st: [L] output, every entry set to empty_label_stats().
__global__ void stats_init_kernel(LabelStats* __restrict__ st, int64_t L) {
  FP_GRID_STRIDE(k, L) { st[k] = impl::empty_label_stats(); }
}

// The statistics of lane (lane + off) of the warp (a lane's own when that is beyond the warp).
__device__ __forceinline__ LabelStats shfl_down(const LabelStats& s, int off) {
  LabelStats r;
  for (int a = 0; a < 3; ++a) {
    r.lo[a] = __shfl_down_sync(kFull, s.lo[a], off);
    r.hi[a] = __shfl_down_sync(kFull, s.hi[a], off);
    r.sum[a] = __shfl_down_sync(kFull, s.sum[a], off);
  }
  r.count = __shfl_down_sync(kFull, s.count, off);
  return r;
}

// impl::merge(*dst, s) with integer atomics.
__device__ __forceinline__ void atomic_merge(LabelStats* dst, const LabelStats& s) {
  for (int a = 0; a < 3; ++a) {
    atomicMin(&dst->lo[a], s.lo[a]);
    atomicMax(&dst->hi[a], s.hi[a]);
    atomicAdd(&dst->sum[a], s.sum[a]);
  }
  atomicAdd(&dst->count, s.count);
}

// labels: [Z, Y, X] int32 in [0, L]; st: [L] in/out (from stats_init_kernel), label l accumulated at st[l - 1].
__global__ void stats_kernel(const int32_t* __restrict__ labels, Shape shape, LabelStats* __restrict__ st) {
  const int64_t n = shape.numel();
  const int lane = threadIdx.x & 31;
  // Whole warps iterate together (blocks and the grid stride are multiples of 32): the warp vote needs all lanes.
  const int64_t n_warps = (n + 31) / 32 * 32;
  FP_GRID_STRIDE(i, n_warps) {
    const bool valid = i < n;
    const int32_t l = valid ? labels[i] : 0;
    int32_t c[3] = {0, 0, 0};
    if (valid) {
      const int64_t r = i / shape.x;
      c[2] = int32_t(i - r * shape.x);
      c[1] = int32_t(r % shape.y);
      c[0] = int32_t(r / shape.y);
    }
    const LabelStats p = impl::pixel_stats(c[0], c[1], c[2]);
    const int32_t l0 = __shfl_sync(kFull, l, 0);
    if (__all_sync(kFull, l == l0)) {  // whole warp inside one label (or background): one set of atomics
      if (l0 <= 0) continue;
      LabelStats s = p;
      for (int off = 16; off > 0; off >>= 1) impl::merge(s, shfl_down(s, off));
      if (lane == 0) atomic_merge(&st[l0 - 1], s);
    } else if (l > 0) {
      atomic_merge(&st[l - 1], p);
    }
  }
}

}  // namespace

LabelRange label_range(const int32_t* labels, int64_t n, const Exec& ex) {
  cudaStream_t stream = cuda::stream_of(ex);
  cuda::DeviceBuffer<int> mm(2, stream);
  mm.zero();
  minmax_kernel<<<cuda::grid_for(n, kThreads, 1024), kThreads, 0, stream>>>(labels, n, mm.get());
  FP_CUDA_LAUNCH_CHECK();
  int h[2] = {0, 0};
  cuda::copy_to_host_sync(h, mm.get(), 2, stream);
  LabelRange r;
  r.min = h[0];
  r.max = h[1];
  return r;
}

void label_stats(const int32_t* labels, const Shape& shape, int64_t maxlab, LabelStats* st, const Exec& ex) {
  if (maxlab == 0) return;
  cudaStream_t stream = cuda::stream_of(ex);
  stats_init_kernel<<<cuda::grid_for(maxlab, kThreads, 4096), kThreads, 0, stream>>>(st, maxlab);
  FP_CUDA_LAUNCH_CHECK();
  if (shape.numel() == 0) return;
  stats_kernel<<<cuda::grid_for(shape.numel(), kThreads, 8192), kThreads, 0, stream>>>(labels, shape, st);
  FP_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda_impl
}  // namespace fastpose
