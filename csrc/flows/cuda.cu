// CUDA backend of the heat-diffusion flow targets and the flow-error QC.
//
// 1.-2. label range and per-label statistics (bbox, count, coordinate sums): the shared passes of
//    common/label_stats.h (the range check runs in the host wrapper)
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
#include <string>

#include "common/cuda_utils.cuh"
#include "common/label_stats.h"
#include "flows/flows_backends.h"
#include "flows/flows_impl.h"

namespace fastpose {
namespace cuda_impl {
namespace {

using impl::Box;
using impl::LabelStats;

constexpr int kThreads = 256;  // block size of the per-mask diffusion kernel (and of the argmin reduction)
static_assert(impl::kErrLanes == 256, "the error kernel's tree assumes 256 lanes");

// Bytes of a mask's diffusion scratch: T0, T1 (float) and the in-mask flags (uint8), 16-byte multiple.
__host__ __device__ __forceinline__ int64_t box_bytes(int64_t nbox) { return ((nbox * 9 + 15) / 16) * 16; }

/// Statistics of labels 1..maxlab (the shared pass of common/label_stats.h).
cuda::DeviceBuffer<LabelStats> stats_of(const int32_t* labels, const Shape& shape, int64_t maxlab, const Exec& ex) {
  cuda::DeviceBuffer<LabelStats> st(maxlab, cuda::stream_of(ex));
  label_stats(labels, shape, maxlab, st.get(), ex);
  return st;
}

// ---------------------------------------------------------------------------------------------------
// 3. scratch layout

// st: [L] label statistics; sizes: [L] output, global scratch bytes of mask k (0 when absent or when its box
// fits in shared memory); meta: [2] in/out, meta[1] = max shared-memory bytes over the masks that fit.
__global__ void scratch_sizes_kernel(const LabelStats* __restrict__ st, int64_t L, int ndim, int64_t smem_limit,
                                     unsigned long long* __restrict__ sizes, unsigned long long* __restrict__ meta) {
  FP_GRID_STRIDE(k, L) {
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

constexpr int kScanThreads = 1024;  // the one-block exclusive scan (cuda::exclusive_scan_kernel)

// ---------------------------------------------------------------------------------------------------
// 4. per-mask diffusion

// One block per label k + 1.  labels: [Z, Y, X] int32; st: [gridDim.x] label statistics; offs: [gridDim.x] byte
// offsets into gscratch of the masks whose box does not fit in shared memory; gscratch: [total] bytes;
// flows: [NDIM, Z, Y, X] float32 output, written at the pixels of each mask (zero elsewhere beforehand).
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
/// argument" (seen on an H100 with masks of ~70x70 pixels).  `limit` is fixed per device (smem_limit_bytes).
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

/// One block per label, `smem` bytes of dynamic shared memory (0: every box is in global scratch).
template <int NDIM>
void launch_mask_flows(const int32_t* labels, const Shape& shape, const LabelStats* st, int64_t maxlab,
                       const unsigned long long* offs, unsigned char* scratch, int smem, int64_t smem_limit, int niter,
                       float* flows, cudaStream_t stream) {
  if (smem > 0) allow_dynamic_smem<NDIM>(smem_limit);
  mask_flows_kernel<NDIM><<<unsigned(maxlab), kThreads, smem, stream>>>(labels, shape, st, offs, scratch, smem_limit,
                                                                       niter, flows);
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
  scratch_sizes_kernel<<<cuda::grid_for(maxlab, 256, 4096), 256, 0, stream>>>(st, maxlab, shape.ndim, smem_limit,
                                                                              offs.get(), meta.get());
  FP_CUDA_LAUNCH_CHECK();
  cuda::exclusive_scan_kernel<kScanThreads><<<1, kScanThreads, 0, stream>>>(offs.get(), maxlab, meta.get());  // total
  FP_CUDA_LAUNCH_CHECK();
  unsigned long long h[2] = {0, 0};
  cuda::copy_to_host_sync(h, meta.get(), 2, stream);
  cuda::DeviceBuffer<unsigned char> scratch(int64_t(h[0]), stream);
  const int smem = int(h[1]);
  if (shape.ndim == 3)
    launch_mask_flows<3>(labels, shape, st, maxlab, offs.get(), scratch.get(), smem, smem_limit, niter, flows, stream);
  else
    launch_mask_flows<2>(labels, shape, st, maxlab, offs.get(), scratch.get(), smem, smem_limit, niter, flows, stream);
  const cudaError_t err = cudaGetLastError();  // covers both branches, and names the launch configuration
  if (err != cudaSuccess) {
    const std::string what = "mask_flows_kernel launch (" + std::to_string(maxlab) + " blocks of " +
                             std::to_string(kThreads) + " threads, " + std::to_string(smem) +
                             " bytes of dynamic shared memory)";
    ::fastpose::cuda::throw_cuda(err, what.c_str(), __FILE__, __LINE__);
  }
}

// ---------------------------------------------------------------------------------------------------
// 5. flow errors and QC

// One block of kErrLanes threads per label k + 1.  labels: [Z, Y, X] int32; flows: [ndim, Z, Y, X] float32
// (masks_to_flows of labels); dP: [ndim, Z, Y, X] float32; st: [gridDim.x] label statistics;
// errors: [gridDim.x] float32 output.
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

// st: [L] label statistics; err: [L] float32 flow errors; count: [1] in/out, += masks to remove.
__global__ void count_bad_kernel(const LabelStats* __restrict__ st, const float* __restrict__ err, int64_t L,
                                 float threshold, unsigned long long* __restrict__ count) {
  FP_GRID_STRIDE(k, L) {
    if (st[k].count > 0 && impl::flow_mask_bad(err[k], threshold)) atomicAdd(count, 1ull);
  }
}

// labels: [n] int32 in [0, L], modified in place; err: [L] float32 flow errors of labels 1..L.
__global__ void zero_bad_kernel(int32_t* __restrict__ labels, int64_t n, const float* __restrict__ err,
                                float threshold) {
  FP_GRID_STRIDE(i, n) {
    const int32_t l = labels[i];
    if (l > 0 && impl::flow_mask_bad(err[l - 1], threshold)) labels[i] = 0;
  }
}

}  // namespace

void masks_to_flows(const int32_t* labels, const Shape& shape, int64_t maxlab, float* flows, int niter,
                    const Exec& ex) {
  cuda::DeviceBuffer<LabelStats> st = stats_of(labels, shape, maxlab, ex);
  device_flows(labels, shape, st.get(), maxlab, niter, flows, cuda::stream_of(ex));
}

void flow_errors(const int32_t* labels, const Shape& shape, const float* dP, int64_t maxlab, int64_t nlabels,
                 float* errors, const Exec& ex) {
  cudaStream_t stream = cuda::stream_of(ex);
  if (nlabels > 0) FP_CUDA_CHECK(cudaMemsetAsync(errors, 0, sizeof(float) * size_t(nlabels), stream));
  if (shape.numel() == 0) return;
  cuda::DeviceBuffer<LabelStats> st = stats_of(labels, shape, maxlab, ex);
  device_errors(labels, shape, dP, st.get(), maxlab, errors, stream);
}

int64_t remove_bad_flow_masks(int32_t* labels, const Shape& shape, const float* dP, int64_t maxlab, float threshold,
                              const Exec& ex) {
  const int64_t n = shape.numel();
  cudaStream_t stream = cuda::stream_of(ex);
  cuda::DeviceBuffer<LabelStats> st = stats_of(labels, shape, maxlab, ex);
  cuda::DeviceBuffer<float> err(maxlab, stream);
  device_errors(labels, shape, dP, st.get(), maxlab, err.get(), stream);
  cuda::DeviceBuffer<unsigned long long> count(1, stream);
  count.zero();
  count_bad_kernel<<<cuda::grid_for(maxlab, 256, 4096), 256, 0, stream>>>(st.get(), err.get(), maxlab, threshold,
                                                                          count.get());
  FP_CUDA_LAUNCH_CHECK();
  unsigned long long removed = 0;
  cuda::copy_to_host_sync(&removed, count.get(), 1, stream);
  if (removed == 0) return 0;
  zero_bad_kernel<<<cuda::grid_for(n, 256, 8192), 256, 0, stream>>>(labels, n, err.get(), threshold);
  FP_CUDA_LAUNCH_CHECK();
  return int64_t(removed);
}

}  // namespace cuda_impl
}  // namespace fastpose
