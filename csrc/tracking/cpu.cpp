// CPU backend of follow_flows: OpenMP over blocks of pixels; per-pixel logic in tracking_impl.h.
//
// One pixel's steps form a serial dependency chain (load -> interpolate -> divide -> clamp), so each
// thread interleaves kLanes tracked pixels step by step to let out-of-order execution overlap them.
// Every pixel goes through exactly the same impl::step_* calls as on the GPU.
//
// On x86-64 CPUs with AVX2 the 2D case takes a SIMD path instead (chosen at run time; FASTPOSE_NO_SIMD=1
// forces the scalar path): each 8-float lane of a __m256 is one pixel, and the lanes reproduce
// impl::step_2d op for op (see track_avx2_2d), so the result is bitwise that of the scalar path / GPU.
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "common/parallel.h"
#include "tracking/tracking_backends.h"
#include "tracking/tracking_impl.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define FP_TRACK_AVX2 1
#endif

namespace fastpose {
namespace cpu {

namespace {

constexpr int kLanes = 8;
constexpr int64_t kBlock = 4096;

// Every pixel of the image, in blocks of kBlock pixels in parallel: pixels not tracked (mask == 0, or
// niter == 0) get their own coordinates; the tracked ones go to track(idx, count), Group at a time in raster
// order (the scalar path takes kLanes, the AVX2 path kGroup2d).
template <int Group, typename Track>
void for_each_tracked_group(const uint8_t* mask, const Shape& s, int niter, float* positions, int nt,
                            const Track& track) {
  const int64_t n = s.numel();
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t begin = blk * kBlock, end = begin + kBlock < n ? begin + kBlock : n;
    int64_t group[Group];
    int count = 0;
    for (int64_t i = begin; i < end; ++i) {
      if (!mask[i] || niter == 0) {
        float p[3];
        impl::start_position(s, i, p);
        impl::store_position(s, i, p, positions);
        continue;
      }
      group[count++] = i;
      if (count == Group) {
        track(group, count);
        count = 0;
      }
    }
    if (count > 0) track(group, count);
  }
}

template <int NDIM>
void track_lanes(const impl::MaskedPlanarFlow<NDIM>& flow, const Shape& s, int niter, const int64_t* idx, int count,
                 float* positions) {
  float p[kLanes][3];
  bool active[kLanes];
  for (int k = 0; k < count; ++k) {
    impl::start_position(s, idx[k], p[k]);
    active[k] = true;
  }
  const int64_t Z = s.z, Y = s.y, X = s.x;
  for (int t = 0; t < niter; ++t) {
    bool any = false;
    for (int k = 0; k < count; ++k) {
      if (!active[k]) continue;
      if constexpr (NDIM == 2)
        active[k] = impl::step_2d(flow, Y, X, p[k]);
      else
        active[k] = impl::step_3d(flow, Z, Y, X, p[k]);
      any = any || active[k];
    }
    if (!any) break;
  }
  for (int k = 0; k < count; ++k) impl::store_position(s, idx[k], p[k], positions);
}

template <int NDIM>
void follow_all(const float* dP, const uint8_t* mask, const Shape& s, int niter, float* positions, int nt) {
  const impl::MaskedPlanarFlow<NDIM> flow{dP, mask, s.numel()};
  for_each_tracked_group<kLanes>(mask, s, niter, positions, nt, [&](const int64_t* idx, int count) {
    track_lanes<NDIM>(flow, s, niter, idx, count, positions);
  });
}

#ifdef FP_TRACK_AVX2

// ---------------------------------------------------------------------------------------------------
// AVX2 path (2D).
//
// Flow table: tab[(y * (X + 1) + x) * 2 + c] = MaskedPlanarFlow<2>::corner(y * X + x)[c], i.e. the flow
// component c, or 0 where mask == 0 (the same float, bit for bit), interleaved (y, x) per pixel, with
// one padding column x = X repeating column X - 1 and one padding row y = Y repeating row Y - 1.
// step_2d reads the corners (y0, x0), (y0, x1), (y1, x0), (y1, x1) with x1 = min(x0 + 1, X - 1) and
// y1 = min(y0 + 1, Y - 1); since x0 <= X - 1 and y0 <= Y - 1, the table entries (y0, x0 + 1) and
// (y0 + 1, x*) hold exactly those corners (the padding equals the clamped neighbour), so the four
// corners of a pixel are two 16-byte loads: (y0, x0..x0+1) and (y0+1, x0..x0+1).  The table costs
// 8 bytes per pixel for the duration of the call (scalar path if it cannot be allocated).
// The semantics are those of tracking_impl.h: any change to impl::step_2d / lerp_fixed / clamp_coord
// must be mirrored in track_avx2_2d (tests/test_tracking.py compares both paths bitwise).
// ---------------------------------------------------------------------------------------------------

// Whether this CPU may take the AVX2 path: it supports AVX2 and FASTPOSE_NO_SIMD is unset, empty or "0"
// (read on every call, so the environment can switch paths at run time).
bool avx2_path_enabled() {
  const char* no_simd = std::getenv("FASTPOSE_NO_SIMD");
  if (no_simd != nullptr && no_simd[0] != '\0' && std::strcmp(no_simd, "0") != 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}

constexpr int kVecs2d = 4;             // __m256 vectors (8 pixels each) interleaved per thread
constexpr int kGroup2d = 8 * kVecs2d;  // pixels per group

void build_table_2d(const float* dP, const uint8_t* mask, int64_t Y, int64_t X, float* tab, int nt) {
  const int64_t n = Y * X, W = X + 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t y = 0; y <= Y; ++y) {
    const int64_t ys = y < Y ? y : Y - 1;
    const uint8_t* m = mask + ys * X;
    const float* f0 = dP + ys * X;
    const float* f1 = dP + n + ys * X;
    float* row = tab + y * W * 2;
    for (int64_t x = 0; x < X; ++x) {
      const bool on = m[x] != 0;
      row[2 * x] = on ? f0[x] : 0.0f;
      row[2 * x + 1] = on ? f1[x] : 0.0f;
    }
    row[2 * X] = row[2 * X - 2];
    row[2 * X + 1] = row[2 * X - 1];
  }
}

// Four corners of the 8 pixels of one vector: per table row r (0: y0, 1: y0 + 1) the 16 bytes at
// x0..x0+1 are loaded for every pixel and transposed so that lane k holds pixel k.
__attribute__((target("avx2"))) inline void load_corners_2d(const float* tab, const int32_t* off, int32_t row_stride,
                                                            __m256 (&a)[2][2][2]) {
  for (int r = 0; r < 2; ++r) {
    const int32_t d = r * row_stride;
    __m256 R[4];
    for (int k = 0; k < 4; ++k)
      R[k] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(tab + off[k] + d)),
                                  _mm_loadu_ps(tab + off[k + 4] + d), 1);
    // R[k] = [y(x0) x(x0) y(x1) x(x1)] of pixel k | same of pixel k + 4
    const __m256 t0 = _mm256_unpacklo_ps(R[0], R[1]), t1 = _mm256_unpackhi_ps(R[0], R[1]);
    const __m256 t2 = _mm256_unpacklo_ps(R[2], R[3]), t3 = _mm256_unpackhi_ps(R[2], R[3]);
    a[r][0][0] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
    a[r][0][1] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
    a[r][1][0] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
    a[r][1][1] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
    // a[r][j][c]: corner (y_r, x_j), component c
  }
}

// Tracks `count` (<= kGroup2d) pixels idx[0..count) for niter steps.  Lane for lane this is
// impl::step_2d, op for op, in IEEE single precision (no FMA: only target "avx2", and the build uses
// -ffp-contract=off):
//   y0 = int(p0), x0 = int(p1)              cvttps (truncation; p >= 0, < 2^31)
//   wy = p0 - float(y0), wx = p1 - float(x0) cvtdq2ps (exact) + subps
//   lerp_fixed(a, b, w) = (1 - w) * a + w * b   subps, mulps, mulps, addps in that order
//   v[c] = lerp(lerp(a00, a01, wx), lerp(a10, a11, wx), wy)
//   stop when v0 == 0 && v1 == 0 (ordered compares), the lane then stays frozen like `active[k]`
//   p = clamp_coord(p + v / 5, hi): divps, addps, then max(v, 0) = (v > 0 ? v : 0) (maxps returns its
//   second operand when unordered / equal, so NaN and -0 give +0) and min(., hi) = (. < hi ? . : hi),
//   which is v > 0 ? (v < hi ? v : hi) : 0 for every input.
__attribute__((target("avx2"))) void track_avx2_2d(const float* tab, const Shape& s, int niter, const int64_t* idx,
                                                   int count, float* positions) {
  const int64_t Y = s.y, X = s.x;
  const int32_t W = int32_t(X + 1);
  alignas(32) float start[2][kGroup2d];
  alignas(32) int32_t on[kGroup2d];
  for (int k = 0; k < kGroup2d; ++k) {
    float p[3];
    impl::start_position(s, idx[k < count ? k : 0], p);
    start[0][k] = p[0];
    start[1][k] = p[1];
    on[k] = k < count ? -1 : 0;  // padding lanes repeat pixel 0 and never move
  }
  __m256 py[kVecs2d], px[kVecs2d], act[kVecs2d];
  for (int v = 0; v < kVecs2d; ++v) {
    py[v] = _mm256_load_ps(start[0] + 8 * v);
    px[v] = _mm256_load_ps(start[1] + 8 * v);
    act[v] = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(on + 8 * v)));
  }
  const __m256 one = _mm256_set1_ps(1.0f), five = _mm256_set1_ps(5.0f), zero = _mm256_setzero_ps();
  const __m256 hy = _mm256_set1_ps(float(Y - 1)), hx = _mm256_set1_ps(float(X - 1));
  const __m256i vW2 = _mm256_set1_epi32(2 * W);
  for (int t = 0; t < niter; ++t) {
    __m256 any = zero;
    for (int v = 0; v < kVecs2d; ++v) {
      const __m256i iy = _mm256_cvttps_epi32(py[v]), ix = _mm256_cvttps_epi32(px[v]);
      const __m256 wy = _mm256_sub_ps(py[v], _mm256_cvtepi32_ps(iy));
      const __m256 wx = _mm256_sub_ps(px[v], _mm256_cvtepi32_ps(ix));
      alignas(32) int32_t off[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(off),
                         _mm256_add_epi32(_mm256_mullo_epi32(iy, vW2), _mm256_add_epi32(ix, ix)));
      __m256 a[2][2][2];
      load_corners_2d(tab, off, 2 * W, a);
      const __m256 omwx = _mm256_sub_ps(one, wx), omwy = _mm256_sub_ps(one, wy);
      __m256 val[2];
      for (int c = 0; c < 2; ++c) {
        const __m256 l0 = _mm256_add_ps(_mm256_mul_ps(omwx, a[0][0][c]), _mm256_mul_ps(wx, a[0][1][c]));
        const __m256 l1 = _mm256_add_ps(_mm256_mul_ps(omwx, a[1][0][c]), _mm256_mul_ps(wx, a[1][1][c]));
        val[c] = _mm256_add_ps(_mm256_mul_ps(omwy, l0), _mm256_mul_ps(wy, l1));
      }
      const __m256 still = _mm256_and_ps(_mm256_cmp_ps(val[0], zero, _CMP_EQ_OQ),
                                         _mm256_cmp_ps(val[1], zero, _CMP_EQ_OQ));
      const __m256 ny = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(py[v], _mm256_div_ps(val[0], five)), zero), hy);
      const __m256 nx = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(px[v], _mm256_div_ps(val[1], five)), zero), hx);
      act[v] = _mm256_andnot_ps(still, act[v]);
      py[v] = _mm256_blendv_ps(py[v], ny, act[v]);
      px[v] = _mm256_blendv_ps(px[v], nx, act[v]);
      any = _mm256_or_ps(any, act[v]);
    }
    if (_mm256_movemask_ps(any) == 0) break;
  }
  alignas(32) float fin[2][kGroup2d];
  for (int v = 0; v < kVecs2d; ++v) {
    _mm256_store_ps(fin[0] + 8 * v, py[v]);
    _mm256_store_ps(fin[1] + 8 * v, px[v]);
  }
  for (int k = 0; k < count; ++k) {
    const float p[3] = {fin[0][k], fin[1][k], 0.0f};
    impl::store_position(s, idx[k], p, positions);
  }
}

// False when the AVX2 2D path cannot be used (avx2_path_enabled() false, table offsets beyond int32, or no
// memory for the table); follow_flows then takes the scalar path.
bool follow_all_avx2_2d(const float* dP, const uint8_t* mask, const Shape& s, int niter, float* positions, int nt) {
  if (!avx2_path_enabled()) return false;
  const int64_t Y = s.y, X = s.x;
  if (niter == 0 || (Y + 1) * (X + 1) * 2 + 4 > int64_t(INT32_MAX)) return false;
  std::vector<float> tab;
  try {
    tab.resize(size_t((Y + 1) * (X + 1) * 2));
  } catch (const std::bad_alloc&) {
    return false;
  }
  build_table_2d(dP, mask, Y, X, tab.data(), nt);
  const float* t = tab.data();
  for_each_tracked_group<kGroup2d>(mask, s, niter, positions, nt, [&](const int64_t* idx, int count) {
    track_avx2_2d(t, s, niter, idx, count, positions);
  });
  return true;
}

#endif  // FP_TRACK_AVX2

}  // namespace

void follow_flows(const float* dP, const uint8_t* mask, const Shape& shape, int niter, float* positions,
                  const Exec& ex) {
  const int nt = cpu_threads(ex);
  if (shape.ndim == 2) {
#ifdef FP_TRACK_AVX2
    if (follow_all_avx2_2d(dP, mask, shape, niter, positions, nt)) return;
#endif
    follow_all<2>(dP, mask, shape, niter, positions, nt);
  } else {
    follow_all<3>(dP, mask, shape, niter, positions, nt);
  }
}

}  // namespace cpu

const char* tracking_simd_path() noexcept {
#ifdef FP_TRACK_AVX2
  if (cpu::avx2_path_enabled()) return "avx2";
#endif
  return "scalar";
}

}  // namespace fastpose
