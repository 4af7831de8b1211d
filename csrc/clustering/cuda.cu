// CUDA backend of get_masks; per-item logic in clustering_impl.h.  No thrust/cub: seeds are compacted
// with an integer atomic counter (order irrelevant: they are ranked next by an O(S^2) counting kernel).
#include <climits>

#include "clustering/clustering_backends.h"
#include "clustering/clustering_impl.h"
#include "common/cuda_utils.cuh"

namespace fastpose {
namespace cuda_impl {

namespace {

constexpr int kThreads = 256;
constexpr int kTile = 256;       // block size of the O(S^2) ranking kernels
constexpr int kGrowThreads = 64;  // one thread per seed, ~4 KB of local scratch each

// positions: [ndim, Z, Y, X] float32; mask: [Z, Y, X] uint8; h: [Z, Y, X] int32 histogram of end-point bins, += .
__global__ void hist_kernel(const float* __restrict__ positions, const uint8_t* __restrict__ mask, Shape s,
                            int32_t* __restrict__ h) {
  const int64_t n = s.numel();
  FP_GRID_STRIDE(i, n) {
    if (mask[i]) atomicAdd(&h[impl::bin_of(positions, s, i)], 1);
  }
}

// h: [Z, Y, X] int32 histogram; seeds: [capacity] int64 output, bins of the seeds (any order);
// num_seeds: [1] int32 in/out, += seeds found (may exceed capacity; only the first capacity are stored).
__global__ void seed_kernel(const int32_t* __restrict__ h, Shape s, int64_t* __restrict__ seeds, int64_t capacity,
                            int* __restrict__ num_seeds) {
  const int64_t n = s.numel();
  FP_GRID_STRIDE(b, n) {
    if (impl::is_seed(h, s, b)) {
      const int k = atomicAdd(num_seeds, 1);
      if (k < capacity) seeds[k] = b;
    }
  }
}

// One thread per seed, blockDim.x == kTile.  h: [Z, Y, X] int32 histogram; seeds: [S] int64 bins;
// sorted: [S] int64 output, sorted[rank of seed r by (count, bin)] = bin of seed r.
__global__ void __launch_bounds__(kTile) rank_kernel(const int32_t* __restrict__ h, const int64_t* __restrict__ seeds,
                                                     int S, int64_t* __restrict__ sorted) {
  __shared__ int64_t tb[kTile];
  __shared__ int32_t tc[kTile];
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  int64_t b = 0;
  int32_t c = 0;
  if (r < S) {
    b = seeds[r];
    c = h[b];
  }
  int rank = 0;
  for (int base = 0; base < S; base += kTile) {
    const int j = base + threadIdx.x;
    if (j < S) {
      tb[threadIdx.x] = seeds[j];
      tc[threadIdx.x] = h[seeds[j]];
    }
    __syncthreads();
    const int m = min(kTile, S - base);
    if (r < S)
      for (int k = 0; k < m; ++k) rank += impl::seed_before(tc[k], tb[k], c, b) ? 1 : 0;
    __syncthreads();
  }
  if (r < S) sorted[rank] = b;
}

// One thread per seed.  h: [Z, Y, X] int32 histogram; sorted: [S] int64 seed bins in rank order;
// M: [Z, Y, X] int32 in/out (zero on entry), bin -> highest rank + 1 of the regions covering it (atomic max).
__global__ void __launch_bounds__(kGrowThreads) grow_kernel(const int32_t* __restrict__ h, Shape s,
                                                            const int64_t* __restrict__ sorted, int S,
                                                            int32_t* __restrict__ M) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= S) return;
  impl::GrowScratch g;
  const int64_t seed = sorted[r];
  const int m = impl::grow_seed(h, s, seed, g);
  for (int k = 0; k < m; ++k) atomicMax(&M[impl::local_to_bin(s, seed, g.queue[k])], r + 1);
}

// count: [S] uint64 output (0); first: [S] int64 output (LLONG_MAX).
__global__ void stats_init_kernel(unsigned long long* count, long long* first, int S) {
  FP_GRID_STRIDE(r, S) {
    count[r] = 0ull;
    first[r] = LLONG_MAX;
  }
}

// positions: [ndim, Z, Y, X] float32; mask: [Z, Y, X] uint8; M: [Z, Y, X] int32 bin -> rank + 1;
// labels: [Z, Y, X] int32 output (rank + 1 of the pixel's seed, 0 for none); count: [S] uint64 in/out, pixels
// per seed; first: [S] int64 in/out, first pixel of each seed (atomic min).
__global__ void label_kernel(const float* __restrict__ positions, const uint8_t* __restrict__ mask,
                             const int32_t* __restrict__ M, Shape s, int32_t* __restrict__ labels,
                             unsigned long long* __restrict__ count, long long* __restrict__ first) {
  const int64_t n = s.numel();
  FP_GRID_STRIDE(i, n) {
    const int32_t l = impl::pixel_seed(positions, mask, M, s, i);
    labels[i] = l;
    if (l > 0) {
      atomicAdd(&count[l - 1], 1ull);
      atomicMin(&first[l - 1], (long long)i);
    }
  }
}

// One thread per seed, blockDim.x == kTile.  count: [S] uint64; first: [S] int64; newlab: [S + 1] int32
// output, newlab[r + 1] = 1 + number of kept seeds whose first pixel precedes that of seed r (0 if r is
// dropped); num_kept: [1] int32 in/out, += kept seeds.
__global__ void __launch_bounds__(kTile) renumber_kernel(const unsigned long long* __restrict__ count,
                                                         const long long* __restrict__ first, int S,
                                                         int64_t max_pixels, int32_t* __restrict__ newlab,
                                                         int* __restrict__ num_kept) {
  __shared__ long long tk[kTile];
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  bool keep = false;
  long long key = LLONG_MAX;
  if (r < S) {
    keep = impl::keep_seed(int64_t(count[r]), max_pixels);
    if (keep) key = first[r];
  }
  int rank = 0;
  for (int base = 0; base < S; base += kTile) {
    const int j = base + threadIdx.x;
    if (j < S) tk[threadIdx.x] = impl::keep_seed(int64_t(count[j]), max_pixels) ? first[j] : LLONG_MAX;
    __syncthreads();
    const int m = min(kTile, S - base);
    if (keep)
      for (int k = 0; k < m; ++k) rank += tk[k] < key ? 1 : 0;
    __syncthreads();
  }
  if (r < S) {
    newlab[r + 1] = keep ? rank + 1 : 0;
    if (keep) atomicAdd(num_kept, 1);
  }
  if (r == 0) newlab[0] = 0;
}

// labels: [n] int32 in [0, S], modified in place; newlab: [S + 1] int32.
__global__ void relabel_kernel(int32_t* __restrict__ labels, int64_t n, const int32_t* __restrict__ newlab) {
  FP_GRID_STRIDE(i, n) { labels[i] = newlab[labels[i]]; }
}

}  // namespace

int64_t get_masks(const float* positions, const uint8_t* mask, const Shape& shape, int32_t* labels,
                  int64_t max_pixels, const Exec& ex) {
  const Shape s = shape;
  const int64_t n = s.numel();
  if (n == 0) return 0;
  cudaStream_t stream = cuda::stream_of(ex);
  const unsigned int pixel_blocks = cuda::grid_for(n, kThreads, cuda::kStrideBlocks);  // grid-stride over pixels

  cuda::DeviceBuffer<int32_t> h(n, stream);
  h.zero();
  hist_kernel<<<pixel_blocks, kThreads, 0, stream>>>(positions, mask, s, h.get());
  FP_CUDA_LAUNCH_CHECK();

  // Every seed holds more than 10 of the <= n end points: at most n / 11 seeds.
  const int64_t capacity = n / (impl::kSeedMinCount + 1) + 1;
  cuda::DeviceBuffer<int64_t> seeds(capacity, stream);
  cuda::DeviceBuffer<int> counters(2, stream);  // [number of seeds, number of kept masks]
  counters.zero();
  seed_kernel<<<pixel_blocks, kThreads, 0, stream>>>(h.get(), s, seeds.get(), capacity, counters.get());
  FP_CUDA_LAUNCH_CHECK();
  int S = 0;
  cuda::copy_to_host_sync(&S, counters.get(), 1, stream);
  if (S > capacity) S = int(capacity);  // cannot happen (see above); keeps every access in bounds
  if (S == 0) {
    FP_CUDA_CHECK(cudaMemsetAsync(labels, 0, sizeof(int32_t) * size_t(n), stream));
    return 0;
  }

  cuda::DeviceBuffer<int64_t> sorted(S, stream);
  rank_kernel<<<cuda::grid_for(S, kTile), kTile, 0, stream>>>(h.get(), seeds.get(), S, sorted.get());
  FP_CUDA_LAUNCH_CHECK();

  cuda::DeviceBuffer<int32_t> M(n, stream);
  M.zero();
  grow_kernel<<<cuda::grid_for(S, kGrowThreads), kGrowThreads, 0, stream>>>(h.get(), s, sorted.get(), S, M.get());
  FP_CUDA_LAUNCH_CHECK();

  cuda::DeviceBuffer<unsigned long long> count(S, stream);
  cuda::DeviceBuffer<long long> first(S, stream);
  stats_init_kernel<<<cuda::grid_for(S, kThreads, cuda::kStrideBlocks), kThreads, 0, stream>>>(count.get(),
                                                                                              first.get(), S);
  FP_CUDA_LAUNCH_CHECK();
  label_kernel<<<pixel_blocks, kThreads, 0, stream>>>(positions, mask, M.get(), s, labels, count.get(), first.get());
  FP_CUDA_LAUNCH_CHECK();

  cuda::DeviceBuffer<int32_t> newlab(int64_t(S) + 1, stream);
  renumber_kernel<<<cuda::grid_for(S, kTile), kTile, 0, stream>>>(count.get(), first.get(), S, max_pixels,
                                                                    newlab.get(), counters.get() + 1);
  FP_CUDA_LAUNCH_CHECK();
  relabel_kernel<<<pixel_blocks, kThreads, 0, stream>>>(labels, n, newlab.get());
  FP_CUDA_LAUNCH_CHECK();

  int N = 0;
  cuda::copy_to_host_sync(&N, counters.get() + 1, 1, stream);
  return N;
}

}  // namespace cuda_impl
}  // namespace fastpose
