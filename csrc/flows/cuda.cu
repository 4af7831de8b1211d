// CUDA backend of the heat-diffusion flow targets and the flow-error QC.
//
// 1. label min/max (integer atomics; one small device->host copy: sizes the per-label statistics)
// 2. per-label statistics: bbox, count, coordinate sums (integer atomics, warp-aggregated)
// 3. per-mask scratch: boxes that fit go to shared memory, the others get a slice of one global
//    buffer at offsets from an exclusive scan (one small device->host copy: the total size)
// 4. one thread block per mask: source search (deterministic block argmin), Jacobi iterations with
//    __syncthreads() between steps, gradients -> flows
// 5. flow errors: one block of kErrLanes threads per mask, fixed-order lanes + fixed tree (no float
//    atomics), which the CPU backend reproduces exactly.
#include <climits>
#include <cstdint>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>

#include "common/cuda_utils.cuh"
#include "flows/flows_backends.h"
#include "flows/flows_impl.h"

namespace fastpose {
namespace cuda_impl {
namespace {

using impl::Box;
using impl::LabelStats;

constexpr int kThreads = 256;  // block size of the per-mask diffusion kernel (and of the argmin reduction)
constexpr unsigned kFull = 0xffffffffu;
static_assert(impl::kErrLanes == 256, "the error kernel's tree assumes 256 lanes");

unsigned int grid_for(int64_t n, int threads, unsigned int cap) {
  unsigned int b = cuda::blocks_for(n, threads);
  return b > cap ? cap : b;
}

// Bytes of a mask's diffusion scratch: T0, T1 (float) and the in-mask flags (uint8), 16-byte multiple.
__host__ __device__ __forceinline__ int64_t box_bytes(int64_t nbox) { return ((nbox * 9 + 15) / 16) * 16; }

// ---------------------------------------------------------------------------------------------------
// 1. label range

__global__ void minmax_kernel(const int32_t* __restrict__ labels, int64_t n, int* __restrict__ mm) {
  int mn = 0, mx = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
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

/// Maximum label after the checks of the CPU backend (negative labels, > nlabels when nlabels >= 0, > n).
int64_t checked_max_label(const int32_t* labels, int64_t n, int64_t nlabels, const char* what, cudaStream_t stream) {
  cuda::DeviceBuffer<int> mm(2, stream);
  mm.zero();
  minmax_kernel<<<grid_for(n, 256, 1024), 256, 0, stream>>>(labels, n, mm.get());
  FP_CUDA_LAUNCH_CHECK();
  int h[2] = {0, 0};
  cuda::copy_to_host_sync(h, mm.get(), 2, stream);
  if (h[0] < 0)
    throw ArgumentError(std::string(what) + ": negative label " + std::to_string(h[0]) +
                        " (labels must be >= 0, 0 = background)");
  if (nlabels >= 0 && int64_t(h[1]) > nlabels)
    throw ArgumentError(std::string(what) + ": label " + std::to_string(h[1]) + " exceeds nlabels (" +
                        std::to_string(nlabels) + ")");
  if (int64_t(h[1]) > n)
    throw ArgumentError(std::string(what) + ": label " + std::to_string(h[1]) + " exceeds the number of pixels (" +
                        std::to_string(n) + "); relabel sparse labels first");
  return h[1];
}

// ---------------------------------------------------------------------------------------------------
// 2. per-label statistics

__global__ void stats_init_kernel(LabelStats* __restrict__ st, int64_t L) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < L; k += int64_t(gridDim.x) * blockDim.x) {
    st[k] = impl::empty_label_stats();
  }
}

__global__ void stats_kernel(const int32_t* __restrict__ labels, Shape shape, LabelStats* __restrict__ st) {
  const int64_t n = shape.numel();
  const int lane = threadIdx.x & 31;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;  // multiple of 32: (i - lane) is warp-uniform
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i - lane < n; i += stride) {
    const bool valid = i < n;
    const int32_t l = valid ? labels[i] : 0;
    int c[3] = {0, 0, 0};
    if (valid) {
      const int64_t r = i / shape.x;
      c[2] = int(i - r * shape.x);
      c[1] = int(r % shape.y);
      c[0] = int(r / shape.y);
    }
    const int32_t l0 = __shfl_sync(kFull, l, 0);
    if (__all_sync(kFull, l == l0)) {  // whole warp inside one label (or background): one set of atomics
      if (l0 <= 0) continue;
      int lo[3], hi[3];
      unsigned long long sum[3];
      for (int a = 0; a < 3; ++a) {
        lo[a] = c[a];
        hi[a] = c[a];
        sum[a] = (unsigned long long)c[a];
      }
      for (int off = 16; off > 0; off >>= 1) {
        for (int a = 0; a < 3; ++a) {
          const int p = __shfl_down_sync(kFull, lo[a], off);
          const int q = __shfl_down_sync(kFull, hi[a], off);
          const unsigned long long r = __shfl_down_sync(kFull, sum[a], off);
          lo[a] = p < lo[a] ? p : lo[a];
          hi[a] = q > hi[a] ? q : hi[a];
          sum[a] += r;
        }
      }
      if (lane == 0) {
        LabelStats& s = st[l0 - 1];
        for (int a = 0; a < 3; ++a) {
          atomicMin(&s.lo[a], lo[a]);
          atomicMax(&s.hi[a], hi[a]);
          atomicAdd(&s.sum[a], sum[a]);
        }
        atomicAdd(&s.count, 32ull);
      }
    } else if (l > 0) {
      LabelStats& s = st[l - 1];
      for (int a = 0; a < 3; ++a) {
        atomicMin(&s.lo[a], c[a]);
        atomicMax(&s.hi[a], c[a]);
        atomicAdd(&s.sum[a], (unsigned long long)c[a]);
      }
      atomicAdd(&s.count, 1ull);
    }
  }
}

cuda::DeviceBuffer<LabelStats> device_stats(const int32_t* labels, const Shape& shape, int64_t maxlab,
                                            cudaStream_t stream) {
  cuda::DeviceBuffer<LabelStats> st(maxlab, stream);
  if (maxlab == 0) return st;
  stats_init_kernel<<<grid_for(maxlab, 256, 4096), 256, 0, stream>>>(st.get(), maxlab);
  FP_CUDA_LAUNCH_CHECK();
  stats_kernel<<<grid_for(shape.numel(), 256, 8192), 256, 0, stream>>>(labels, shape, st.get());
  FP_CUDA_LAUNCH_CHECK();
  return st;
}

// ---------------------------------------------------------------------------------------------------
// 3. scratch layout

// sizes[k] = global scratch bytes of mask k (0 when absent or when its box fits in shared memory);
// meta[1] = max shared-memory bytes over the masks that fit.
__global__ void scratch_sizes_kernel(const LabelStats* __restrict__ st, int64_t L, int ndim, int64_t smem_limit,
                                     unsigned long long* __restrict__ sizes, unsigned long long* __restrict__ meta) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < L; k += int64_t(gridDim.x) * blockDim.x) {
    unsigned long long sz = 0;
    if (st[k].count > 0) {
      const int64_t bytes = box_bytes(impl::padded_box(st[k], ndim).size());
      if (bytes <= smem_limit)
        atomicMax(&meta[1], (unsigned long long)bytes);
      else
        sz = (unsigned long long)bytes;
    }
    sizes[k] = sz;
  }
}

// In-place exclusive scan of sizes[0..L) by one block of 1024 threads; meta[0] = total.
constexpr int kScanThreads = 1024;
__global__ void exclusive_scan_kernel(unsigned long long* __restrict__ v, int64_t L,
                                      unsigned long long* __restrict__ meta) {
  __shared__ unsigned long long part[kScanThreads];
  const int t = threadIdx.x;
  const int64_t chunk = (L + kScanThreads - 1) / kScanThreads;
  const int64_t b = t * chunk, e = b + chunk < L ? b + chunk : L;
  unsigned long long local = 0;
  for (int64_t k = b; k < e; ++k) local += v[k];
  part[t] = local;
  __syncthreads();
  for (int off = 1; off < kScanThreads; off <<= 1) {  // Hillis-Steele inclusive scan
    const unsigned long long add = t >= off ? part[t - off] : 0ull;
    __syncthreads();
    part[t] += add;
    __syncthreads();
  }
  unsigned long long run = part[t] - local;
  for (int64_t k = b; k < e; ++k) {
    const unsigned long long x = v[k];
    v[k] = run;
    run += x;
  }
  if (t == kScanThreads - 1) meta[0] = part[t];
}

// ---------------------------------------------------------------------------------------------------
// 4. per-mask diffusion

template <int NDIM>
__global__ void __launch_bounds__(kThreads)
    mask_flows_kernel(const int32_t* __restrict__ labels, Shape shape, const LabelStats* __restrict__ st,
                      const unsigned long long* __restrict__ offs, unsigned char* __restrict__ gscratch,
                      int64_t smem_limit, int niter_user, float* __restrict__ flows) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ double rd[kThreads];
  __shared__ long long ri[kThreads];
  const int64_t k = blockIdx.x;
  const LabelStats s = st[k];
  if (s.count == 0) return;  // uniform over the block
  const int tid = threadIdx.x;
  const int64_t n = shape.numel(), Y = shape.y, X = shape.x;
  const Box b = impl::padded_box(s, NDIM);
  const int64_t nbox = b.size(), sy = b.lx, sz = b.ly * b.lx;
  unsigned char* base = box_bytes(nbox) <= smem_limit ? smem : gscratch + offs[k];
  float* T0 = reinterpret_cast<float*>(base);
  float* T1 = T0 + nbox;
  uint8_t* m = reinterpret_cast<uint8_t*>(T1 + nbox);
  for (int64_t i = tid; i < nbox; i += kThreads) {
    T0[i] = 0.0f;
    T1[i] = 0.0f;
    m[i] = 0;
  }
  __syncthreads();

  // in-mask flags and the source (block argmin, ties -> lowest box raster index)
  const int32_t lab = int32_t(k + 1);
  const int64_t nx = int64_t(s.hi[2]) - s.lo[2] + 1, ny = int64_t(s.hi[1]) - s.lo[1] + 1;
  const int64_t nbb = (int64_t(s.hi[0]) - s.lo[0] + 1) * ny * nx;
  double best = __longlong_as_double(0x7ff0000000000000LL);  // +inf
  long long bidx = LLONG_MAX;
  for (int64_t j = tid; j < nbb; j += kThreads) {
    const int64_t r = j / nx;
    const int64_t x = s.lo[2] + (j - r * nx);
    const int64_t y = s.lo[1] + r % ny;
    const int64_t z = s.lo[0] + r / ny;
    if (labels[(z * Y + y) * X + x] != lab) continue;
    const int64_t i = ((z - b.oz) * b.ly + (y - b.oy)) * b.lx + (x - b.ox);
    m[i] = 1;
    const double d = impl::source_dist2(s, z, y, x);
    if (impl::source_better(d, i, best, bidx)) {
      best = d;
      bidx = i;
    }
  }
  rd[tid] = best;
  ri[tid] = bidx;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (tid < half && impl::source_better(rd[tid + half], ri[tid + half], rd[tid], ri[tid])) {
      rd[tid] = rd[tid + half];
      ri[tid] = ri[tid + half];
    }
    __syncthreads();
  }
  const int64_t src = ri[0];
  const int64_t niter = niter_user > 0 ? int64_t(niter_user) : impl::default_niter(b, NDIM);
  if (tid == 0) T0[src] = 0.0f + 1.0f;  // the first source release (CPU: cur[src] += 1 on a zero buffer)
  __syncthreads();

  // Jacobi iterations.  The release of iteration t + 1 is folded into the write of T[src] in
  // iteration t (same float operation as the CPU's `cur[src] += 1` before its sweep).
  float* cur = T0;
  float* nxt = T1;
  for (int64_t t = 0; t < niter; ++t) {
    const bool release = t + 1 < niter;
    for (int64_t i = tid; i < nbox; i += kThreads) {
      if (!m[i]) continue;
      float v = NDIM == 3 ? impl::heat_step_3d(cur, i, sz, sy) : impl::heat_step_2d(cur, i, sy);
      if (release && i == src) v = v + 1.0f;
      nxt[i] = v;
    }
    __syncthreads();
    float* tmp = cur;
    cur = nxt;
    nxt = tmp;
  }

  float v[3];
  for (int64_t i = tid; i < nbox; i += kThreads) {
    if (!m[i]) continue;
    impl::heat_flow(cur, i, sz, sy, NDIM, v);
    const int64_t r = i / b.lx;
    const int64_t xb = i - r * b.lx, yb = r % b.ly, zb = r / b.ly;
    const int64_t g = ((zb + b.oz) * Y + (yb + b.oy)) * X + (xb + b.ox);
    for (int c = 0; c < NDIM; ++c) flows[c * n + g] = v[c];
  }
}

int64_t smem_limit_bytes() {
  int dev = 0, optin = 0;
  FP_CUDA_CHECK(cudaGetDevice(&dev));
  FP_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  int64_t lim = int64_t(optin) - 8 * 1024;  // leave room for the kernel's static shared arrays (4 KiB)
  if (lim > 64 * 1024) lim = 64 * 1024;     // bigger boxes would cost occupancy for every mask
  if (lim < 0) lim = 0;
  return lim;
}

/// Raise the kernel's dynamic shared-memory limit to `limit` bytes, once per device (process-wide, under a lock).
/// Needed whenever static + dynamic shared memory exceeds the 48 KiB default, i.e. for dynamic sizes above
/// 48 KiB minus the kernel's 4 KiB of static arrays: a launch in that window without it fails with "invalid
/// argument" (seen on an H100 with masks of ~70x70 pixels).
template <int NDIM>
void allow_dynamic_smem(int64_t limit) {
  static std::mutex mu;
  static std::set<int> done;
  int dev = 0;
  FP_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (done.count(dev)) return;
  FP_CUDA_CHECK(cudaFuncSetAttribute(mask_flows_kernel<NDIM>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)));
  cudaFuncAttributes attr{};
  FP_CUDA_CHECK(cudaFuncGetAttributes(&attr, mask_flows_kernel<NDIM>));
  if (int64_t(attr.maxDynamicSharedSizeBytes) < limit)
    throw ::fastpose::Error("fastpose: mask_flows_kernel accepts " + std::to_string(attr.maxDynamicSharedSizeBytes) +
                            " bytes of dynamic shared memory, " + std::to_string(limit) + " needed");
  done.insert(dev);
}

/// Flows of labels 1..maxlab with statistics st (flows fully overwritten).
void device_flows(const int32_t* labels, const Shape& shape, const LabelStats* st, int64_t maxlab, int niter,
                  float* flows, cudaStream_t stream) {
  const int64_t n = shape.numel();
  FP_CUDA_CHECK(cudaMemsetAsync(flows, 0, sizeof(float) * size_t(shape.ndim * n), stream));
  if (maxlab == 0) return;
  const int64_t smem_limit = smem_limit_bytes();
  cuda::DeviceBuffer<unsigned long long> offs(maxlab, stream);
  cuda::DeviceBuffer<unsigned long long> meta(2, stream);
  meta.zero();
  scratch_sizes_kernel<<<grid_for(maxlab, 256, 4096), 256, 0, stream>>>(st, maxlab, shape.ndim, smem_limit,
                                                                        offs.get(), meta.get());
  FP_CUDA_LAUNCH_CHECK();
  exclusive_scan_kernel<<<1, kScanThreads, 0, stream>>>(offs.get(), maxlab, meta.get());
  FP_CUDA_LAUNCH_CHECK();
  unsigned long long h[2] = {0, 0};
  cuda::copy_to_host_sync(h, meta.get(), 2, stream);
  cuda::DeviceBuffer<unsigned char> scratch(int64_t(h[0]), stream);
  const int smem = int(h[1]);
  if (shape.ndim == 3) {
    if (smem > 0) allow_dynamic_smem<3>(smem_limit);
    mask_flows_kernel<3><<<unsigned(maxlab), kThreads, smem, stream>>>(labels, shape, st, offs.get(), scratch.get(),
                                                                      smem_limit, niter, flows);
  } else {
    if (smem > 0) allow_dynamic_smem<2>(smem_limit);
    mask_flows_kernel<2><<<unsigned(maxlab), kThreads, smem, stream>>>(labels, shape, st, offs.get(), scratch.get(),
                                                                      smem_limit, niter, flows);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    const std::string what = "mask_flows_kernel launch (" + std::to_string(maxlab) + " blocks of " +
                             std::to_string(kThreads) + " threads, " + std::to_string(smem) +
                             " bytes of dynamic shared memory)";
    ::fastpose::cuda::throw_cuda(err, what.c_str(), __FILE__, __LINE__);
  }
}

// ---------------------------------------------------------------------------------------------------
// 5. flow errors and QC

__global__ void __launch_bounds__(impl::kErrLanes)
    mask_errors_kernel(const int32_t* __restrict__ labels, Shape shape, const float* __restrict__ flows,
                       const float* __restrict__ dP, const LabelStats* __restrict__ st, float* __restrict__ errors) {
  __shared__ double red[impl::kErrLanes];
  const int64_t k = blockIdx.x;
  const LabelStats s = st[k];
  const int tid = threadIdx.x;
  if (s.count == 0) {
    if (tid == 0) errors[k] = 0.0f;
    return;
  }
  const int64_t n = shape.numel(), Y = shape.y, X = shape.x;
  const int32_t lab = int32_t(k + 1);
  const int64_t nx = int64_t(s.hi[2]) - s.lo[2] + 1, ny = int64_t(s.hi[1]) - s.lo[1] + 1;
  const int64_t nbb = (int64_t(s.hi[0]) - s.lo[0] + 1) * ny * nx;
  double acc = 0.0;
  for (int64_t j = tid; j < nbb; j += impl::kErrLanes) {  // lane tid: raster indices j == tid mod kErrLanes
    const int64_t r = j / nx;
    const int64_t x = s.lo[2] + (j - r * nx);
    const int64_t y = s.lo[1] + r % ny;
    const int64_t z = s.lo[0] + r / ny;
    const int64_t g = (z * Y + y) * X + x;
    if (labels[g] != lab) continue;
    acc = acc + impl::flow_err_term(flows, dP, g, n, shape.ndim);
  }
  red[tid] = acc;
  __syncthreads();
  for (int half = impl::kErrLanes / 2; half > 0; half >>= 1) {  // same tree as impl::err_tree_reduce
    if (tid < half) red[tid] = red[tid] + red[tid + half];
    __syncthreads();
  }
  if (tid == 0) errors[k] = impl::flow_err_final(red[0], s.count);
}

/// Errors of labels 1..maxlab into errors[0..maxlab).
void device_errors(const int32_t* labels, const Shape& shape, const float* dP, const LabelStats* st, int64_t maxlab,
                   float* errors, cudaStream_t stream) {
  if (maxlab == 0) return;
  cuda::DeviceBuffer<float> flows(int64_t(shape.ndim) * shape.numel(), stream);
  device_flows(labels, shape, st, maxlab, 0, flows.get(), stream);
  mask_errors_kernel<<<unsigned(maxlab), impl::kErrLanes, 0, stream>>>(labels, shape, flows.get(), dP, st, errors);
  FP_CUDA_LAUNCH_CHECK();
}

__global__ void count_bad_kernel(const LabelStats* __restrict__ st, const float* __restrict__ err, int64_t L,
                                 float threshold, unsigned long long* __restrict__ count) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < L; k += int64_t(gridDim.x) * blockDim.x)
    if (st[k].count > 0 && impl::flow_mask_bad(err[k], threshold)) atomicAdd(count, 1ull);
}

__global__ void zero_bad_kernel(int32_t* __restrict__ labels, int64_t n, const float* __restrict__ err,
                                float threshold) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t l = labels[i];
    if (l > 0 && impl::flow_mask_bad(err[l - 1], threshold)) labels[i] = 0;
  }
}

}  // namespace

void masks_to_flows(const int32_t* labels, const Shape& shape, float* flows, int niter, const Exec& ex) {
  const int64_t n = shape.numel();
  if (n == 0) return;
  cudaStream_t stream = cuda::stream_of(ex);
  const int64_t maxlab = checked_max_label(labels, n, -1, "masks_to_flows", stream);
  cuda::DeviceBuffer<LabelStats> st = device_stats(labels, shape, maxlab, stream);
  device_flows(labels, shape, st.get(), maxlab, niter, flows, stream);
}

void flow_errors(const int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels, float* errors,
                 const Exec& ex) {
  cudaStream_t stream = cuda::stream_of(ex);
  if (nlabels > 0) FP_CUDA_CHECK(cudaMemsetAsync(errors, 0, sizeof(float) * size_t(nlabels), stream));
  const int64_t n = shape.numel();
  if (n == 0) return;
  const int64_t maxlab = checked_max_label(labels, n, nlabels, "flow_errors", stream);
  cuda::DeviceBuffer<LabelStats> st = device_stats(labels, shape, maxlab, stream);
  device_errors(labels, shape, dP, st.get(), maxlab, errors, stream);
}

int64_t remove_bad_flow_masks(int32_t* labels, const Shape& shape, const float* dP, int64_t nlabels, float threshold,
                              const Exec& ex) {
  const int64_t n = shape.numel();
  if (n == 0) return 0;
  cudaStream_t stream = cuda::stream_of(ex);
  const int64_t maxlab = checked_max_label(labels, n, nlabels, "remove_bad_flow_masks", stream);
  if (maxlab == 0) return 0;
  cuda::DeviceBuffer<LabelStats> st = device_stats(labels, shape, maxlab, stream);
  cuda::DeviceBuffer<float> err(maxlab, stream);
  device_errors(labels, shape, dP, st.get(), maxlab, err.get(), stream);
  cuda::DeviceBuffer<unsigned long long> count(1, stream);
  count.zero();
  count_bad_kernel<<<grid_for(maxlab, 256, 4096), 256, 0, stream>>>(st.get(), err.get(), maxlab, threshold,
                                                                    count.get());
  FP_CUDA_LAUNCH_CHECK();
  unsigned long long removed = 0;
  cuda::copy_to_host_sync(&removed, count.get(), 1, stream);
  if (removed == 0) return 0;
  zero_bad_kernel<<<grid_for(n, 256, 8192), 256, 0, stream>>>(labels, n, err.get(), threshold);
  FP_CUDA_LAUNCH_CHECK();
  return int64_t(removed);
}

}  // namespace cuda_impl
}  // namespace fastpose
