// CUDA backend of mean_shift; per-seed / per-point logic in meanshift_impl.h.  No thrust/cub: the bin table is
// filled with atomicCAS, its slot offsets come from a one-block exclusive scan, bin seeds are compacted with an
// atomic counter (their order does not matter: the host merge sorts the modes).  The points of a bin are
// scattered in any order; window sums are exact in double (meanshift_impl.h), so results do not depend on it.
#include <cuda_runtime.h>

#include <cstring>

#include "common/cuda_utils.cuh"
#include "meanshift/meanshift_backends.h"
#include "meanshift/meanshift_impl.h"

namespace fastpose {
namespace cuda_impl {

namespace {

constexpr int kThreads = 256;
constexpr int kClimbThreads = 128;   // one thread per seed
constexpr int kScanThreads = 1024;   // one block
constexpr unsigned int kBoundsBlocks = 1024u;

/// float -> unsigned int with the same order (for atomicMin / atomicMax on finite floats).
__device__ __forceinline__ unsigned int ordered_bits(float f) {
  const unsigned int u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

float from_ordered_bits(unsigned int u) {
  const unsigned int b = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

// points: [n, d] float32; mm: [2 * kMaxDim] uint32 in/out, ordered bits of the minimum (0..2) and maximum (3..5)
// per axis (initially 0xffffffff and 0); bad: [1] int in/out, set to 1 when a coordinate is NaN or infinite.
__global__ void bounds_kernel(const float* __restrict__ points, int64_t n, int d, unsigned int* __restrict__ mm,
                              int* __restrict__ bad) {
  unsigned int lo[impl::kMaxDim] = {0xffffffffu, 0xffffffffu, 0xffffffffu}, hi[impl::kMaxDim] = {0u, 0u, 0u};
  int nonfinite = 0;
  FP_GRID_STRIDE(i, n) {
    for (int a = 0; a < d; ++a) {
      const float v = points[i * d + a];
      if (!isfinite(v)) {
        nonfinite = 1;
      } else {
        const unsigned int o = ordered_bits(v);
        lo[a] = o < lo[a] ? o : lo[a];
        hi[a] = o > hi[a] ? o : hi[a];
      }
    }
  }
  for (int off = 16; off > 0; off >>= 1) {  // warp reduction (blockDim.x is a multiple of 32)
    for (int a = 0; a < impl::kMaxDim; ++a) {
      const unsigned int l = __shfl_down_sync(0xffffffffu, lo[a], off);
      const unsigned int h = __shfl_down_sync(0xffffffffu, hi[a], off);
      lo[a] = l < lo[a] ? l : lo[a];
      hi[a] = h > hi[a] ? h : hi[a];
    }
    nonfinite |= __shfl_down_sync(0xffffffffu, nonfinite, off);
  }
  if ((threadIdx.x & 31) == 0) {
    for (int a = 0; a < d; ++a) {
      atomicMin(&mm[a], lo[a]);
      atomicMax(&mm[impl::kMaxDim + a], hi[a]);
    }
    if (nonfinite) atomicOr(bad, 1);
  }
}

// points: [n, d]; fit: [m] int64; out: [m, d] output; bad: [1] uint64 in/out, += indices outside [0, n).
__global__ void gather_kernel(const float* __restrict__ points, int64_t n, int d, const int64_t* __restrict__ fit,
                              int64_t m, float* __restrict__ out, unsigned long long* __restrict__ bad) {
  FP_GRID_STRIDE(i, m) {
    const int64_t j = fit[i];
    if (j < 0 || j >= n) {
      atomicAdd(bad, 1ull);
      continue;
    }
    for (int a = 0; a < d; ++a) out[i * d + a] = points[j * d + a];
  }
}

// X: [m, d] fitted points; keys: [mask + 1] in/out (kEmptyKey initially), the bin keys by slot; slot_of: [m]
// int64 output, each point's slot; count: [mask + 2] uint64 in/out (0 initially), += points per slot.
__global__ void insert_kernel(const float* __restrict__ X, int64_t m, impl::BinGrid g, int64_t mask,
                              unsigned long long* __restrict__ keys, int64_t* __restrict__ slot_of,
                              unsigned long long* __restrict__ count) {
  FP_GRID_STRIDE(i, m) {
    const unsigned long long k = impl::point_key(g, X + i * g.d);
    int64_t q = impl::hash_slot(k, mask);
    for (;;) {
      const unsigned long long prev = atomicCAS(&keys[q], impl::kEmptyKey, k);
      if (prev == impl::kEmptyKey || prev == k) break;
      q = (q + 1) & mask;
    }
    slot_of[i] = q;
    atomicAdd(&count[q], 1ull);
  }
}

// X: [m, d]; slot_of: [m]; start: [slots + 1] slot offsets; cursor: [slots] uint64 in/out (0 initially);
// pts: [m, d] output, the points grouped by slot.
__global__ void scatter_kernel(const float* __restrict__ X, int64_t m, int d, const int64_t* __restrict__ slot_of,
                               const unsigned long long* __restrict__ start, unsigned long long* __restrict__ cursor,
                               float* __restrict__ pts) {
  FP_GRID_STRIDE(i, m) {
    const int64_t q = slot_of[i];
    const unsigned long long pos = start[q] + atomicAdd(&cursor[q], 1ull);
    for (int a = 0; a < d; ++a) pts[pos * d + a] = X[i * d + a];
  }
}

// t: the bin table; seeds: [m, d] output, the bins with >= min_bin_freq points at b * bw (any order);
// num: [1] uint64 in/out, += seeds written.
__global__ void bin_seeds_kernel(impl::BinTable t, int64_t slots, int64_t min_bin_freq, float* __restrict__ seeds,
                                 unsigned long long* __restrict__ num) {
  FP_GRID_STRIDE(q, slots) {
    const unsigned long long k = t.keys[q];
    if (k == impl::kEmptyKey || t.start[q + 1] - t.start[q] < min_bin_freq) continue;
    const unsigned long long j = atomicAdd(num, 1ull);
    impl::bin_seed(t.g, k, seeds + j * t.g.d);
  }
}

// One thread per seed.  seeds: [S, d]; modes: [S, d] output; counts: [S] int32 output (last window size, 0: dropped).
__global__ void __launch_bounds__(kClimbThreads) climb_kernel(impl::BinTable t, const float* __restrict__ seeds,
                                                               int64_t S, float bw2, float stop2, int max_iter,
                                                               float* __restrict__ modes,
                                                               int32_t* __restrict__ counts) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= S) return;
  const int d = t.g.d;
  counts[i] = int32_t(impl::climb(t, seeds + i * d, bw2, stop2, max_iter, modes + i * d));
}

// points: [n, d]; grid: the centres and their cells; labels: [n] int32 output.
__global__ void assign_kernel(const float* __restrict__ points, int64_t n, impl::CentreGrid grid, float bw2,
                              bool cluster_all, int32_t* __restrict__ labels) {
  FP_GRID_STRIDE(i, n) { labels[i] = impl::nearest_centre(grid, points + i * grid.d, bw2, cluster_all); }
}

int64_t table_slots(int64_t m) {
  int64_t c = 16;
  while (c < 2 * m) c <<= 1;
  return c;
}

}  // namespace

bool mean_shift_bounds(const float* points, int64_t n, int d, float* lo, float* hi, const Exec& ex) {
  cudaStream_t stream = cuda::stream_of(ex);
  cuda::DeviceBuffer<unsigned int> mm(2 * impl::kMaxDim, stream);
  cuda::DeviceBuffer<int> bad(1, stream);
  FP_CUDA_CHECK(cudaMemsetAsync(mm.get(), 0xff, sizeof(unsigned int) * impl::kMaxDim, stream));
  FP_CUDA_CHECK(cudaMemsetAsync(mm.get() + impl::kMaxDim, 0, sizeof(unsigned int) * impl::kMaxDim, stream));
  bad.zero();
  bounds_kernel<<<cuda::grid_for(n, kThreads, kBoundsBlocks), kThreads, 0, stream>>>(points, n, d, mm.get(),
                                                                                     bad.get());
  FP_CUDA_LAUNCH_CHECK();
  unsigned int h[2 * impl::kMaxDim];
  int hbad = 0;
  cuda::copy_to_host_sync(h, mm.get(), 2 * impl::kMaxDim, stream);
  cuda::copy_to_host_sync(&hbad, bad.get(), 1, stream);
  for (int a = 0; a < d; ++a) {
    lo[a] = from_ordered_bits(h[a]);
    hi[a] = from_ordered_bits(h[impl::kMaxDim + a]);
  }
  return hbad == 0;
}

int64_t mean_shift_gather(const float* points, int64_t n, int d, const int64_t* fit, int64_t m, float* out,
                          const Exec& ex) {
  cudaStream_t stream = cuda::stream_of(ex);
  cuda::DeviceBuffer<unsigned long long> bad(1, stream);
  bad.zero();
  gather_kernel<<<cuda::grid_for(m, kThreads, cuda::kStrideBlocks), kThreads, 0, stream>>>(points, n, d, fit, m,
                                                                                          out, bad.get());
  FP_CUDA_LAUNCH_CHECK();
  unsigned long long hbad = 0;
  cuda::copy_to_host_sync(&hbad, bad.get(), 1, stream);
  return int64_t(hbad);
}

int64_t mean_shift_modes(const float* X, int64_t m, const impl::BinGrid& g, SeedMode mode, const float* seeds,
                         int64_t s, int64_t min_bin_freq, float bw2, float stop2, int max_iter, float* modes,
                         int32_t* counts, const Exec& ex) {
  cudaStream_t stream = cuda::stream_of(ex);
  const int d = g.d;
  const unsigned int point_blocks = cuda::grid_for(m, kThreads, cuda::kStrideBlocks);

  // 1. the bin table.
  const int64_t slots = table_slots(m), mask = slots - 1;
  cuda::DeviceBuffer<unsigned long long> keys(slots, stream), start(slots + 1, stream), cursor(slots, stream);
  cuda::DeviceBuffer<int64_t> slot_of(m, stream);
  cuda::DeviceBuffer<float> pts(m * d, stream);
  FP_CUDA_CHECK(cudaMemsetAsync(keys.get(), 0xff, sizeof(unsigned long long) * size_t(slots), stream));
  start.zero();
  cursor.zero();
  insert_kernel<<<point_blocks, kThreads, 0, stream>>>(X, m, g, mask, keys.get(), slot_of.get(), start.get());
  FP_CUDA_LAUNCH_CHECK();
  cuda::exclusive_scan_kernel<kScanThreads><<<1, kScanThreads, 0, stream>>>(start.get(), slots + 1, nullptr);
  FP_CUDA_LAUNCH_CHECK();
  scatter_kernel<<<point_blocks, kThreads, 0, stream>>>(X, m, d, slot_of.get(), start.get(), cursor.get(), pts.get());
  FP_CUDA_LAUNCH_CHECK();
  impl::BinTable t;
  t.g = g;
  t.mask = mask;
  t.keys = keys.get();
  t.start = reinterpret_cast<const int64_t*>(start.get());
  t.pts = pts.get();

  // 2. seeds.
  const float* sp = seeds;
  int64_t S = s;
  cuda::DeviceBuffer<float> bins;
  if (mode == SeedMode::All) {
    sp = X;
    S = m;
  } else if (mode == SeedMode::Bin) {
    bins = cuda::DeviceBuffer<float>(m * d, stream);  // at most one bin per point
    cuda::DeviceBuffer<unsigned long long> num(1, stream);
    num.zero();
    bin_seeds_kernel<<<cuda::grid_for(slots, kThreads, cuda::kStrideBlocks), kThreads, 0, stream>>>(
        t, slots, min_bin_freq, bins.get(), num.get());
    FP_CUDA_LAUNCH_CHECK();
    unsigned long long hnum = 0;
    cuda::copy_to_host_sync(&hnum, num.get(), 1, stream);
    S = int64_t(hnum);
    sp = S == m ? X : bins.get();  // one bin per point: the points themselves (scikit-learn's get_bin_seeds)
  }
  if (S == 0) return 0;

  // 3. hill climbs.
  climb_kernel<<<cuda::grid_for(S, kClimbThreads), kClimbThreads, 0, stream>>>(t, sp, S, bw2, stop2, max_iter,
                                                                                modes, counts);
  FP_CUDA_LAUNCH_CHECK();
  return S;
}

void mean_shift_assign(const float* points, int64_t n, const impl::CentreGrid& grid, float bw2, bool cluster_all,
                       int32_t* labels, const Exec& ex) {
  cudaStream_t stream = cuda::stream_of(ex);
  assign_kernel<<<cuda::grid_for(n, kThreads, cuda::kStrideBlocks), kThreads, 0, stream>>>(points, n, grid, bw2,
                                                                                          cluster_all, labels);
  FP_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda_impl
}  // namespace fastpose
