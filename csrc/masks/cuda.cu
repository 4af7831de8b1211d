// CUDA backend of fill_holes_and_remove_small_masks.
#include <algorithm>

#include "common/cuda_utils.cuh"
#include "common/label_stats.h"
#include "masks/masks_backends.h"
#include "masks/masks_impl.h"

namespace fastpose {
namespace cuda_impl {

namespace {

constexpr int kThreads = 256;
constexpr int kScanThreads = 1024;

using impl::LabelStats;

// One block of kScanThreads.  stats: [nlab - 1] label statistics (label l at l - 1); newlabel: [nlab] int32
// output, rank of l among kept labels (0 if removed); kept: [nlab] int32 output, kept[rank - 1] = l;
// meta: [2] int64 output, [N, max box plane area of kept masks].
__global__ void __launch_bounds__(kScanThreads) renumber_kernel(const LabelStats* __restrict__ stats, int64_t nlab,
                                                                int64_t min_size, int32_t* __restrict__ newlabel,
                                                                int32_t* __restrict__ kept, int64_t* __restrict__ meta) {
  __shared__ int64_t part[kScanThreads];
  __shared__ int64_t amax[kScanThreads];
  const int t = threadIdx.x;
  const int64_t chunk = (nlab + kScanThreads - 1) / kScanThreads;
  const int64_t begin = min(nlab, t * chunk), end = min(nlab, begin + chunk);
  int64_t cnt = 0, am = 0;
  for (int64_t l = begin; l < end; ++l) {
    if (l > 0 && impl::keep_label(stats[l - 1], min_size)) {
      ++cnt;
      am = max(am, impl::box_plane_area(stats[l - 1]));
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
    if (l > 0 && impl::keep_label(stats[l - 1], min_size)) {
      ++rank;
      newlabel[l] = int32_t(rank);
      kept[rank - 1] = int32_t(l);
    } else {
      newlabel[l] = 0;
    }
  }
}

// Blocks loop over the N kept masks; each owns a scratch box plane of `slot` bytes.  labels: [Z, Y, X] int32,
// modified in place (claims); stats: [max_label] label statistics (label l at l - 1); kept: [N] int32 labels;
// newlabel: [max_label + 1] int32; scratch: [gridDim.x * slot] uint8.
__global__ void fill_kernel(int32_t* labels, int64_t Y, int64_t X, const LabelStats* __restrict__ stats,
                            const int32_t* __restrict__ kept, int64_t N, const int32_t* __restrict__ newlabel,
                            uint8_t* scratch, int64_t slot) {
  __shared__ int changed;
  volatile uint8_t* state = scratch + int64_t(blockIdx.x) * slot;
  const int tid = threadIdx.x, nthr = blockDim.x;
  for (int64_t k = blockIdx.x; k < N; k += gridDim.x) {
    const int32_t l = kept[k];
    const LabelStats s = stats[l - 1];
    const int64_t y0 = s.lo[1], x0 = s.lo[2];
    const int64_t h = impl::box_extent(s, 1), w = impl::box_extent(s, 2);
    if (h <= 2 || w <= 2) continue;  // every box pixel is on the border: no holes (uniform per block)
    const int64_t area = h * w;
    for (int64_t z = s.lo[0]; z <= s.hi[0]; ++z) {
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

// labels: [n] int32 (labels and claims), modified in place; newlabel: [max_label + 1] int32.
__global__ void relabel_kernel(int32_t* labels, int64_t n, const int32_t* __restrict__ newlabel) {
  FP_GRID_STRIDE(i, n) { labels[i] = impl::final_label(labels[i], newlabel); }
}

}  // namespace

int64_t fill_holes_and_remove_small_masks(int32_t* labels, const Shape& shape, int32_t max_label,
                                          int64_t min_size, const Exec& ex) {
  const int64_t n = shape.numel();
  if (n <= 0 || max_label <= 0) return 0;
  cudaStream_t stream = cuda::stream_of(ex);
  const int64_t nlab = int64_t(max_label) + 1;

  cuda::DeviceBuffer<LabelStats> stats(max_label, stream);
  label_stats(labels, shape, max_label, stats.get(), ex);

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
  relabel_kernel<<<cuda::grid_for(n, kThreads, cuda::kStrideBlocks), kThreads, 0, stream>>>(labels, n, newlabel.get());
  FP_CUDA_LAUNCH_CHECK();
  return N;
}

}  // namespace cuda_impl
}  // namespace fastpose
