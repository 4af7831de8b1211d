// CPU backend of the heat-diffusion flow targets and the flow-error QC: OpenMP over masks, each mask
// worked in its padded bounding box with thread-local buffers.
#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <vector>

#include "common/label_stats.h"
#include "common/parallel.h"
#include "flows/flows_backends.h"
#include "flows/flows_impl.h"

namespace fastpose {
namespace cpu {
namespace {

using impl::Box;
using impl::LabelStats;

/// Statistics of labels 1..maxlab (the shared pass of common/label_stats.h).
std::vector<LabelStats> stats_of(const int32_t* labels, const Shape& shape, int64_t maxlab, const Exec& ex) {
  std::vector<LabelStats> st(static_cast<size_t>(maxlab));
  label_stats(labels, shape, maxlab, st.data(), ex);
  return st;
}

// The sweeps are compiled twice on x86-64 (the AVX2 clone is chosen at load time on CPUs that have it): the
// same IEEE operations per pixel, 8 pixels per instruction instead of 4 (no FMA: -ffp-contract=off), so the
// results are bitwise those of the default clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FP_SWEEP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FP_SWEEP_CLONES
#endif

/// One Jacobi sweep over the interior of a box row: nxt = mean(neighbourhood of cur) * inmask.
FP_SWEEP_CLONES void sweep_row_2d(const float* __restrict__ cur, float* __restrict__ nxt, const float* __restrict__ m,
                                  int64_t base, int64_t lx, int64_t x0, int64_t x1) {
  for (int64_t xb = x0; xb < x1; ++xb) {
    const int64_t i = base + xb;
    nxt[i] = impl::heat_step_2d(cur, i, lx) * m[i];
  }
}

FP_SWEEP_CLONES void sweep_row_3d(const float* __restrict__ cur, float* __restrict__ nxt, const float* __restrict__ m,
                                  int64_t base, int64_t sz, int64_t lx, int64_t x0, int64_t x1) {
  for (int64_t xb = x0; xb < x1; ++xb) {
    const int64_t i = base + xb;
    nxt[i] = impl::heat_step_3d(cur, i, sz, lx) * m[i];
  }
}

struct MaskBuffers {
  std::vector<float> a, b, m;
  std::vector<int64_t> span;  // per box row (zb * ly + yb): first and one-past-last in-mask xb (0, 0: none)
};

/// The diffused heat of mask `lab` in its padded box b (returned; the heat is in the buffer returned through
/// `heat`, box-local raster order).  The flow of a mask pixel at box index i is impl::heat_flow(heat, i, ...).
Box mask_heat(const int32_t* labels, const Shape& shape, const LabelStats& s, int32_t lab, int niter_user,
              MaskBuffers& buf, const float*& heat) {
  const int ndim = shape.ndim;
  const int64_t Y = shape.y, X = shape.x;
  const Box b = impl::padded_box(s, ndim);
  const int64_t nbox = b.size(), sy = b.lx, sz = b.ly * b.lx;
  buf.a.assign(size_t(nbox), 0.0f);
  buf.b.assign(size_t(nbox), 0.0f);
  buf.m.assign(size_t(nbox), 0.0f);
  float* m = buf.m.data();

  // in-mask flags and the source: mask pixel closest to the centre of mass, ties -> lowest raster index
  double best = std::numeric_limits<double>::infinity();
  int64_t src = INT64_MAX;
  for (int64_t z = s.lo[0]; z <= s.hi[0]; ++z) {
    for (int64_t y = s.lo[1]; y <= s.hi[1]; ++y) {
      const int32_t* row = labels + (z * Y + y) * X;
      const int64_t ib = ((z - b.oz) * b.ly + (y - b.oy)) * b.lx - b.ox;
      for (int64_t x = s.lo[2]; x <= s.hi[2]; ++x) {
        if (row[x] != lab) continue;
        const int64_t i = ib + x;
        m[i] = 1.0f;
        const double d = impl::source_dist2(s, z, y, x);
        if (impl::source_better(d, i, best, src)) {
          best = d;
          src = i;
        }
      }
    }
  }

  const int64_t niter = niter_user > 0 ? int64_t(niter_user) : impl::default_niter(b, ndim);
  const int64_t zb0 = ndim == 3 ? 1 : 0, zb1 = ndim == 3 ? b.lz - 1 : 1;
  float* cur = buf.a.data();
  float* nxt = buf.b.data();
  // Only the in-mask span of each row is swept: outside the mask a sweep writes mean * 0 = +0 (T >= 0 and
  // finite), which is what both buffers hold from the start, so skipping those pixels changes no bit.
  buf.span.assign(size_t(2 * b.lz * b.ly), 0);
  for (int64_t zb = zb0; zb < zb1; ++zb)
    for (int64_t yb = 1; yb < b.ly - 1; ++yb) {
      const float* mr = m + zb * sz + yb * sy;
      int64_t x0 = 1, x1 = b.lx - 1;
      while (x0 < x1 && mr[x0] == 0.0f) ++x0;
      while (x1 > x0 && mr[x1 - 1] == 0.0f) --x1;
      buf.span[size_t(2 * (zb * b.ly + yb))] = x0;
      buf.span[size_t(2 * (zb * b.ly + yb) + 1)] = x1;
    }
  const int64_t* span = buf.span.data();
  for (int64_t t = 0; t < niter; ++t) {
    cur[src] += 1.0f;
    for (int64_t zb = zb0; zb < zb1; ++zb) {
      for (int64_t yb = 1; yb < b.ly - 1; ++yb) {
        const int64_t r = zb * b.ly + yb, x0 = span[2 * r], x1 = span[2 * r + 1];
        if (x0 >= x1) continue;
        const int64_t base = zb * sz + yb * sy;
        if (ndim == 3)
          sweep_row_3d(cur, nxt, m, base, sz, b.lx, x0, x1);
        else
          sweep_row_2d(cur, nxt, m, base, b.lx, x0, x1);
      }
    }
    std::swap(cur, nxt);
  }
  heat = cur;
  return b;
}

/// Flows of mask `lab` written into `flows` at its pixels.
void mask_flows(const int32_t* labels, const Shape& shape, const LabelStats& s, int32_t lab, int niter_user,
                float* flows, MaskBuffers& buf) {
  const int ndim = shape.ndim;
  const int64_t n = shape.numel(), Y = shape.y, X = shape.x;
  const float* cur = nullptr;
  const Box b = mask_heat(labels, shape, s, lab, niter_user, buf, cur);
  const float* m = buf.m.data();
  const int64_t sy = b.lx, sz = b.ly * b.lx;
  const int64_t zb0 = ndim == 3 ? 1 : 0, zb1 = ndim == 3 ? b.lz - 1 : 1;
  float v[3];
  for (int64_t zb = zb0; zb < zb1; ++zb) {
    for (int64_t yb = 1; yb < b.ly - 1; ++yb) {
      const int64_t base = zb * sz + yb * sy;
      const int64_t gbase = ((zb + b.oz) * Y + (yb + b.oy)) * X + b.ox;
      for (int64_t xb = 1; xb < b.lx - 1; ++xb) {
        const int64_t i = base + xb;
        if (m[i] == 0.0f) continue;
        impl::heat_flow(cur, i, sz, sy, ndim, v);
        const int64_t g = gbase + xb;
        for (int c = 0; c < ndim; ++c) flows[c * n + g] = v[c];
      }
    }
  }
}

/// Indices k of the present labels (count > 0), largest padded boxes first for load balance (no result
/// depends on the order).
std::vector<int64_t> largest_first(const std::vector<LabelStats>& st, int ndim) {
  std::vector<int64_t> order;
  order.reserve(st.size());
  for (size_t k = 0; k < st.size(); ++k)
    if (st[k].count > 0) order.push_back(int64_t(k));
  std::vector<int64_t> size(st.size(), 0);
  for (int64_t k : order) size[size_t(k)] = impl::padded_box(st[size_t(k)], ndim).size();
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return size[size_t(a)] > size[size_t(b)]; });
  return order;
}

/// fn(k, buf) for every label k with pixels, largest padded box first (dynamic schedule: the big masks start
/// early), each thread with its own box buffers.  Results do not depend on the order: each k writes its own box
/// (flows) or its own slot (errors).
template <typename Fn>
void for_each_mask_largest_first(const std::vector<LabelStats>& st, int ndim, int nt, Fn&& fn) {
  const std::vector<int64_t> order = largest_first(st, ndim);
  const int64_t nmasks = int64_t(order.size());
#pragma omp parallel num_threads(nt)
  {
    MaskBuffers buf;
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < nmasks; ++j) fn(order[size_t(j)], buf);
  }
}

/// Flows of all labels with statistics `st` (flows fully overwritten).
void flows_from_stats(const int32_t* labels, const Shape& shape, const std::vector<LabelStats>& st, int niter,
                      float* flows, int nt) {
  const int64_t total = int64_t(shape.ndim) * shape.numel();
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < total; ++i) flows[i] = 0.0f;

  for_each_mask_largest_first(st, shape.ndim, nt, [&](int64_t k, MaskBuffers& buf) {
    mask_flows(labels, shape, st[size_t(k)], int32_t(k + 1), niter, flows, buf);
  });
}

/// Flow error of mask `lab` (statistics s, count > 0): its flows are recomputed in its padded box only (the
/// thread's buffers) and compared with dP at its pixels, with the lanes and the reduction order of the CUDA
/// kernel (impl::kErrLanes).  Box-local flows are those masks_to_flows writes at the same pixels, bit for bit.
float mask_error(const int32_t* labels, const Shape& shape, const float* dP, const LabelStats& s, int32_t lab,
                 MaskBuffers& buf) {
  const int ndim = shape.ndim;
  const int64_t n = shape.numel(), Y = shape.y, X = shape.x;
  const float* heat = nullptr;
  const Box b = mask_heat(labels, shape, s, lab, 0, buf, heat);
  const int64_t sy = b.lx, sz = b.ly * b.lx;
  double lanes[impl::kErrLanes] = {0.0};
  float v[3];
  int64_t j = 0;  // raster index in the unpadded bounding box
  for (int64_t z = s.lo[0]; z <= s.hi[0]; ++z)
    for (int64_t y = s.lo[1]; y <= s.hi[1]; ++y) {
      const int64_t gb = (z * Y + y) * X;
      const int64_t ib = ((z - b.oz) * b.ly + (y - b.oy)) * b.lx - b.ox;
      for (int64_t x = s.lo[2]; x <= s.hi[2]; ++x, ++j) {
        const int64_t g = gb + x;
        if (labels[g] != lab) continue;
        impl::heat_flow(heat, ib + x, sz, sy, ndim, v);
        double& acc = lanes[j % impl::kErrLanes];
        acc = acc + impl::flow_err_term_at(v, 1, dP, g, n, ndim);
      }
    }
  return impl::flow_err_final(impl::err_tree_reduce(lanes), s.count);
}

/// Per-mask flow errors for labels 1..st.size(); errors[st.size()..nlabels) = 0.  No whole-image flow array:
/// each mask's flows live in its thread's box buffers only while its error is summed.
void errors_from_stats(const int32_t* labels, const Shape& shape, const float* dP, const std::vector<LabelStats>& st,
                       int64_t nlabels, float* errors, int nt) {
  const int64_t L = int64_t(st.size());
  for (int64_t k = 0; k < nlabels; ++k) errors[k] = 0.0f;
  if (shape.numel() == 0) return;
  for_each_mask_largest_first(st, shape.ndim, nt, [&](int64_t k, MaskBuffers& buf) {
    if (k < L) errors[k] = mask_error(labels, shape, dP, st[size_t(k)], int32_t(k + 1), buf);
  });
}

}  // namespace

void masks_to_flows(const int32_t* labels, const Shape& shape, int64_t maxlab, float* flows, int niter,
                    const Exec& ex) {
  flows_from_stats(labels, shape, stats_of(labels, shape, maxlab, ex), niter, flows, cpu_threads(ex));
}

void flow_errors(const int32_t* labels, const Shape& shape, const float* dP, int64_t maxlab, int64_t nlabels,
                 float* errors, const Exec& ex) {
  if (shape.numel() == 0) {
    for (int64_t k = 0; k < nlabels; ++k) errors[k] = 0.0f;
    return;
  }
  errors_from_stats(labels, shape, dP, stats_of(labels, shape, maxlab, ex), nlabels, errors, cpu_threads(ex));
}

int64_t remove_bad_flow_masks(int32_t* labels, const Shape& shape, const float* dP, int64_t maxlab, float threshold,
                              const Exec& ex) {
  const int nt = cpu_threads(ex);
  const int64_t n = shape.numel();
  const std::vector<LabelStats> st = stats_of(labels, shape, maxlab, ex);
  std::vector<float> err(static_cast<size_t>(maxlab));
  errors_from_stats(labels, shape, dP, st, maxlab, err.data(), nt);
  std::vector<uint8_t> bad(static_cast<size_t>(maxlab), 0);
  int64_t removed = 0;
  for (int64_t k = 0; k < maxlab; ++k) {
    if (st[size_t(k)].count > 0 && impl::flow_mask_bad(err[size_t(k)], threshold)) {
      bad[size_t(k)] = 1;
      ++removed;
    }
  }
  if (removed == 0) return 0;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int32_t l = labels[i];
    if (l > 0 && bad[size_t(l - 1)]) labels[i] = 0;
  }
  return removed;
}

}  // namespace cpu
}  // namespace fastpose
