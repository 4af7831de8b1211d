// CUDA backend of fill_holes_and_remove_small_masks.
#include <algorithm>

#include "common/cuda_utils.cuh"
#include "masks/masks_backends.h"
#include "masks/masks_impl.h"

namespace fastpose {
namespace cuda_impl {

namespace {

constexpr int kThreads = 256;
constexpr int kScanThreads = 1024;

unsigned int grid_for(int64_t n) { return std::min(cuda::blocks_for(n, kThreads), 65535u * 8u); }

__global__ void range_kernel(const int32_t* __restrict__ labels, int64_t n, int* __restrict__ range) {
  int lo = 0, hi = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int v = labels[i];
    lo = min(lo, v);
    hi = max(hi, v);
  }
  if (lo < 0) atomicMin(&range[0], lo);
  if (hi > 0) atomicMax(&range[1], hi);
}

__global__ void stats_init_kernel(int64_t* stats, int64_t nlab) {
  for (int64_t l = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; l < nlab; l += int64_t(gridDim.x) * blockDim.x)
    impl::stats_init(stats + l * impl::kStatsPerLabel);
}

__global__ void stats_kernel(const int32_t* __restrict__ labels, int64_t n, int64_t Y, int64_t X, int64_t* stats) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t v = labels[i];
    if (v <= 0) continue;
    int64_t z, y, x;
    impl::unravel(i, Y, X, z, y, x);
    long long* s = reinterpret_cast<long long*>(stats + int64_t(v) * impl::kStatsPerLabel);
    atomicAdd(reinterpret_cast<unsigned long long*>(s), 1ull);
    atomicMin(s + 1, (long long)z);
    atomicMax(s + 2, (long long)z);
    atomicMin(s + 3, (long long)y);
    atomicMax(s + 4, (long long)y);
    atomicMin(s + 5, (long long)x);
    atomicMax(s + 6, (long long)x);
  }
}

// One block of kScanThreads: newlabel[l] = rank of l among kept labels (0 if removed), kept[rank-1] = l,
// meta = [N, max box plane area of kept masks].
__global__ void __launch_bounds__(kScanThreads) renumber_kernel(const int64_t* __restrict__ stats, int64_t nlab,
                                                                int64_t min_size, int32_t* __restrict__ newlabel,
                                                                int32_t* __restrict__ kept, int64_t* __restrict__ meta) {
  __shared__ int64_t part[kScanThreads];
  __shared__ int64_t amax[kScanThreads];
  const int t = threadIdx.x;
  const int64_t chunk = (nlab + kScanThreads - 1) / kScanThreads;
  const int64_t begin = min(nlab, t * chunk), end = min(nlab, begin + chunk);
  int64_t cnt = 0, am = 0;
  for (int64_t l = begin; l < end; ++l) {
    const int64_t* s = stats + l * impl::kStatsPerLabel;
    if (l > 0 && impl::keep_label(s, min_size)) {
      ++cnt;
      am = max(am, impl::box_plane_area(s));
    }
  }
  part[t] = cnt;
  amax[t] = am;
  __syncthreads();
  if (t == 0) {
    int64_t run = 0, m = 0;
    for (int k = 0; k < kScanThreads; ++k) {
      const int64_t c = part[k];
      part[k] = run;
      run += c;
      m = max(m, amax[k]);
    }
    meta[0] = run;
    meta[1] = m;
  }
  __syncthreads();
  int64_t rank = part[t];
  for (int64_t l = begin; l < end; ++l) {
    if (l > 0 && impl::keep_label(stats + l * impl::kStatsPerLabel, min_size)) {
      ++rank;
      newlabel[l] = int32_t(rank);
      kept[rank - 1] = int32_t(l);
    } else {
      newlabel[l] = 0;
    }
  }
}

// Blocks loop over kept masks; each owns a scratch box plane of `slot` bytes.
__global__ void fill_kernel(int32_t* labels, int64_t Y, int64_t X, const int64_t* __restrict__ stats,
                            const int32_t* __restrict__ kept, int64_t N, const int32_t* __restrict__ newlabel,
                            uint8_t* scratch, int64_t slot) {
  __shared__ int changed;
  volatile uint8_t* state = scratch + int64_t(blockIdx.x) * slot;
  const int tid = threadIdx.x, nthr = blockDim.x;
  for (int64_t k = blockIdx.x; k < N; k += gridDim.x) {
    const int32_t l = kept[k];
    const int64_t* s = stats + int64_t(l) * impl::kStatsPerLabel;
    const int64_t y0 = s[3], x0 = s[5];
    const int64_t h = s[4] - s[3] + 1, w = s[6] - s[5] + 1;
    if (h <= 2 || w <= 2) continue;  // every box pixel is on the border: no holes (uniform per block)
    const int64_t area = h * w;
    for (int64_t z = s[1]; z <= s[2]; ++z) {
      int32_t* plane = labels + z * Y * X;
      for (int64_t i = tid; i < area; i += nthr) {
        const int64_t y = i / w, x = i % w;
        state[i] = impl::init_state(*(volatile int32_t*)&plane[(y0 + y) * X + x0 + x], l);
      }
      __syncthreads();
      while (true) {
        if (tid == 0) changed = 0;
        __syncthreads();
        bool c = false;
        for (int64_t y = tid; y < h; y += nthr) c |= impl::relax_row(state, h, w, y);
        __syncthreads();
        for (int64_t x = tid; x < w; x += nthr) c |= impl::relax_col(state, h, w, x);
        if (c) changed = 1;
        __syncthreads();
        const bool again = changed != 0;
        __syncthreads();
        if (!again) break;
      }
      for (int64_t i = tid; i < area; i += nthr) {
        if (state[i] != impl::kHole) continue;
        const int64_t y = i / w, x = i % w;
        int32_t* p = &plane[(y0 + y) * X + x0 + x];
        if (impl::fillable(*(volatile int32_t*)p, newlabel)) atomicMin(p, impl::claim_of(l));
      }
      __syncthreads();  // the scratch plane is reused for the next plane / mask
    }
  }
}

__global__ void relabel_kernel(int32_t* labels, int64_t n, const int32_t* __restrict__ newlabel) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    labels[i] = impl::final_label(labels[i], newlabel);
}

}  // namespace

void label_range(const int32_t* labels, int64_t n, int32_t* min_label, int32_t* max_label, const Exec& ex) {
  *min_label = 0;
  *max_label = 0;
  if (n <= 0) return;
  cudaStream_t stream = cuda::stream_of(ex);
  cuda::DeviceBuffer<int> range(2, stream);
  range.zero();
  range_kernel<<<grid_for(n), kThreads, 0, stream>>>(labels, n, range.get());
  FP_CUDA_LAUNCH_CHECK();
  int host[2] = {0, 0};
  cuda::copy_to_host_sync(host, range.get(), 2, stream);
  *min_label = host[0];
  *max_label = host[1];
}

int64_t fill_holes_and_remove_small_masks(int32_t* labels, const Shape& shape, int32_t max_label,
                                          int64_t min_size, const Exec& ex) {
  const int64_t n = shape.numel();
  if (n <= 0 || max_label <= 0) return 0;
  cudaStream_t stream = cuda::stream_of(ex);
  const int64_t nlab = int64_t(max_label) + 1;

  cuda::DeviceBuffer<int64_t> stats(nlab * impl::kStatsPerLabel, stream);
  stats_init_kernel<<<grid_for(nlab), kThreads, 0, stream>>>(stats.get(), nlab);
  FP_CUDA_LAUNCH_CHECK();
  stats_kernel<<<grid_for(n), kThreads, 0, stream>>>(labels, n, shape.y, shape.x, stats.get());
  FP_CUDA_LAUNCH_CHECK();

  cuda::DeviceBuffer<int32_t> newlabel(nlab, stream);
  cuda::DeviceBuffer<int32_t> kept(nlab, stream);
  cuda::DeviceBuffer<int64_t> meta(2, stream);
  renumber_kernel<<<1, kScanThreads, 0, stream>>>(stats.get(), nlab, min_size, newlabel.get(), kept.get(),
                                                  meta.get());
  FP_CUDA_LAUNCH_CHECK();
  int64_t host_meta[2] = {0, 0};
  cuda::copy_to_host_sync(host_meta, meta.get(), 2, stream);
  const int64_t N = host_meta[0], max_area = host_meta[1];

  if (N > 0 && max_area > 0) {
    // Scratch: one box plane per resident block, within a memory budget.
    const int64_t budget = std::max<int64_t>(int64_t(64) << 20, n);
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>({N, int64_t(4096), budget / max_area}));
    cuda::DeviceBuffer<uint8_t> scratch(blocks * max_area, stream);
    fill_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(labels, shape.y, shape.x, stats.get(), kept.get(), N,
                                                          newlabel.get(), scratch.get(), max_area);
    FP_CUDA_LAUNCH_CHECK();
  }
  relabel_kernel<<<grid_for(n), kThreads, 0, stream>>>(labels, n, newlabel.get());
  FP_CUDA_LAUNCH_CHECK();
  return N;
}

}  // namespace cuda_impl
}  // namespace fastpose
