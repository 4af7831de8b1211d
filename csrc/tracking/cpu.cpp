// CPU backend of follow_flows: OpenMP over blocks of pixels; the per-pixel step is impl::step_2d / step_3d
// (tracking_impl.h), the same template the CUDA kernel runs.
//
// One pixel's steps form a serial dependency chain (load -> interpolate -> divide -> clamp), so each thread
// interleaves a group of tracked pixels step by step (track_group) to let out-of-order execution overlap them.
//
// On x86-64 CPUs with AVX2 both 2D and 3D take a SIMD path (chosen at run time; FASTPOSE_NO_SIMD=1 forces the
// scalar path): the lane type is an 8-float vector, one pixel per lane, and the step is the same template
// instantiated with it.  What is SIMD-specific is only
//   * Lanes<v8sf>: one AVX instruction per lane operation, each with the IEEE semantics of Lanes<float>;
//   * the flow tables (build_table_2d / build_table_3d) and their corner loads (TableFlow2 / TableFlow3):
//     the same floats as impl::MaskedPlanarFlow, laid out so that a pixel's corners are contiguous, and kept
//     per vector while none of its lanes changes cell (the same cell has the same corners; most steps near a
//     fixed point stay in their cell), so most steps load no corners at all.
// tests/test_tracking.py compares both paths bitwise (random, border-pushing and adversarial positions).
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

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

constexpr int64_t kBlock = 4096;
constexpr int kScalarGroup = 8;  // pixels interleaved per thread on the scalar path

// Every pixel of the image, in blocks of kBlock pixels in parallel: pixels not tracked (mask == 0, or
// niter == 0) get their own coordinates; the tracked ones go to track(idx, count), Group at a time in raster
// order.
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

// Tracks the `count` (<= V * width) pixels idx[0..count) for niter steps: V vectors of Lanes<F>::width pixels,
// interleaved, every one through impl::step<NDIM>.  Padding lanes repeat pixel idx[0] and start inactive.
template <int NDIM, int V, class F, class Flow>
inline void track_group(const Flow& flow, const Shape& s, int niter, const int64_t* idx, int count,
                        float* positions) {
  using L = impl::Lanes<F>;
  constexpr int W = L::width, G = V * W;
  alignas(64) float buf[NDIM][G];
  alignas(64) int32_t on[G];
  for (int k = 0; k < G; ++k) {
    float p[3] = {0.0f, 0.0f, 0.0f};
    impl::start_position(s, idx[k < count ? k : 0], p);
    for (int a = 0; a < NDIM; ++a) buf[a][k] = p[a];
    on[k] = k < count ? -1 : 0;
  }
  float hs[NDIM];
  impl::position_limits<NDIM>(s, hs);
  F hi[NDIM], p[V][NDIM];
  typename L::Mask act[V];
  Flow fv[V];  // one flow object per vector (a SIMD flow caches the corners of its vector's cells)
  for (int v = 0; v < V; ++v) fv[v] = flow;
  for (int a = 0; a < NDIM; ++a) hi[a] = L::splat(hs[a]);
  for (int v = 0; v < V; ++v) {
    for (int a = 0; a < NDIM; ++a) p[v][a] = L::load(buf[a] + v * W);
    act[v] = L::mask_of(on + v * W);
  }
  for (int t = 0; t < niter; ++t) {
    // Unrolled, so that the V independent steps are interleaved in registers.
FP_TRACK_UNROLL(8)
    for (int v = 0; v < V; ++v) impl::step<NDIM>(fv[v], hi, p[v], act[v]);
    typename L::Mask any = act[0];
FP_TRACK_UNROLL(8)
    for (int v = 1; v < V; ++v) any = L::either(any, act[v]);
    if (!L::any(any)) break;
  }
  for (int v = 0; v < V; ++v)
    for (int a = 0; a < NDIM; ++a) L::store(buf[a] + v * W, p[v][a]);
  for (int k = 0; k < count; ++k) {
    float q[3] = {0.0f, 0.0f, 0.0f};
    for (int a = 0; a < NDIM; ++a) q[a] = buf[a][k];
    impl::store_position(s, idx[k], q, positions);
  }
}

template <int NDIM>
void follow_all_scalar(const float* dP, const uint8_t* mask, const Shape& s, int niter, float* positions, int nt) {
  const impl::MaskedPlanarFlow<NDIM> flow{dP, mask, s.z, s.y, s.x};
  for_each_tracked_group<kScalarGroup>(mask, s, niter, positions, nt, [&](const int64_t* idx, int count) {
    track_group<NDIM, kScalarGroup, float>(flow, s, niter, idx, count, positions);
  });
}

}  // namespace
}  // namespace cpu

#ifdef FP_TRACK_AVX2

// ---------------------------------------------------------------------------------------------------
// AVX2 path: lane type v8sf (8 floats), masks v8si (0 / -1 per lane), indices v8si.
// ---------------------------------------------------------------------------------------------------
namespace cpu {
typedef float v8sf __attribute__((vector_size(32)));
typedef int32_t v8si __attribute__((vector_size(32)));
}  // namespace cpu

namespace impl {

// Each member is one AVX instruction with the semantics of the same member of Lanes<float>, lane for lane
// (Intel SDM): MAXPS dst = a > b ? a : b, MINPS dst = a < b ? a : b (both: the second operand when unordered or
// equal); BLENDVPS picks a where the mask's sign bit is set (masks are all ones or all zeros); CMPPS NEQ_UQ is
// C's != (true when unordered); CVTTPS2DQ truncates toward 0 (exact: the path is taken only for extents
// < 2^31); CVTDQ2PS of such a truncation is exact.  The arithmetic operators of v8sf are ADDPS, SUBPS, MULPS,
// DIVPS (no FMA: target "avx2" only, and the build uses -ffp-contract=off).
template <>
struct Lanes<cpu::v8sf> {
  using F = cpu::v8sf;
  using Mask = cpu::v8si;
  using Index = cpu::v8si;
  static constexpr int width = 8;
  __attribute__((target("avx2"))) static inline F max(const F& a, const F& b) {
    return F(_mm256_max_ps(__m256(a), __m256(b)));
  }
  __attribute__((target("avx2"))) static inline F min(const F& a, const F& b) {
    return F(_mm256_min_ps(__m256(a), __m256(b)));
  }
  __attribute__((target("avx2"))) static inline F select(const Mask& m, const F& a, const F& b) {
    return F(_mm256_blendv_ps(__m256(b), __m256(a), _mm256_castsi256_ps(__m256i(m))));
  }
  __attribute__((target("avx2"))) static inline Mask nonzero(const F& v) {
    return Mask(_mm256_castps_si256(_mm256_cmp_ps(__m256(v), _mm256_setzero_ps(), _CMP_NEQ_UQ)));
  }
  __attribute__((target("avx2"))) static inline Mask both(const Mask& a, const Mask& b) {
    return Mask(_mm256_and_si256(__m256i(a), __m256i(b)));
  }
  __attribute__((target("avx2"))) static inline Mask either(const Mask& a, const Mask& b) {
    return Mask(_mm256_or_si256(__m256i(a), __m256i(b)));
  }
  __attribute__((target("avx2"))) static inline Index trunc(const F& v) {
    return Index(_mm256_cvttps_epi32(__m256(v)));
  }
  __attribute__((target("avx2"))) static inline F to_float(const Index& i) {
    return F(_mm256_cvtepi32_ps(__m256i(i)));
  }
  __attribute__((target("avx2"))) static inline F splat(float v) { return F(_mm256_set1_ps(v)); }
  __attribute__((target("avx2"))) static inline F load(const float* v) { return F(_mm256_load_ps(v)); }
  __attribute__((target("avx2"))) static inline void store(float* out, const F& v) {
    _mm256_store_ps(out, __m256(v));
  }
  __attribute__((target("avx2"))) static inline Mask mask_of(const int32_t* flags) {
    return Mask(_mm256_load_si256(reinterpret_cast<const __m256i*>(flags)));
  }
  __attribute__((target("avx2"))) static inline bool any(const Mask& m) {
    return _mm256_movemask_ps(_mm256_castsi256_ps(__m256i(m))) != 0;
  }
};

}  // namespace impl

namespace cpu {
namespace {

// Whether this CPU may take the AVX2 path: it supports AVX2 and FASTPOSE_NO_SIMD is unset, empty or "0"
// (read on every call, so the environment can switch paths at run time).
bool avx2_path_enabled() {
  const char* no_simd = std::getenv("FASTPOSE_NO_SIMD");
  if (no_simd != nullptr && no_simd[0] != '\0' && std::strcmp(no_simd, "0") != 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}

// Flow tables.  Entry (z, y, x) holds MaskedPlanarFlow::corner of pixel (min(z, Z-1), min(y, Y-1),
// min(x, X-1)) (the same floats, bit for bit), components interleaved: 2D tab[(y * (X + 1) + x) * 2 + c],
// 3D tab[((z * (Y + 1) + y) * (X + 1) + x) * 4 + c] with c = 3 a zero pad.  The padding row / column / plane
// repeats the last one, i.e. it is the clamped neighbour min(c0 + 1, extent - 1) that corners_2d / corners_3d
// read: since c0 <= extent - 1, the entries at c0 + 1 are exactly the corners of the cell, with no clamping.
// A table costs 8 (2D) / 16 (3D) bytes per pixel for the duration of the call (scalar path when it cannot be
// allocated or its offsets exceed int32).

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

// dP: [3, Z, Y, X] float32, mask: [Z, Y, X] uint8, tab: [Z + 1, Y + 1, X + 1, 4] float32 output.
void build_table_3d(const float* dP, const uint8_t* mask, int64_t Z, int64_t Y, int64_t X, float* tab, int nt) {
  const int64_t n = Z * Y * X, W = X + 1, H = Y + 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < (Z + 1) * H; ++r) {
    const int64_t z = r / H, y = r % H;
    const int64_t src = ((z < Z ? z : Z - 1) * Y + (y < Y ? y : Y - 1)) * X;
    const uint8_t* m = mask + src;
    const float* f0 = dP + src;
    const float* f1 = dP + n + src;
    const float* f2 = dP + 2 * n + src;
    float* row = tab + r * W * 4;
    for (int64_t x = 0; x < X; ++x) {
      const bool on = m[x] != 0;
      row[4 * x] = on ? f0[x] : 0.0f;
      row[4 * x + 1] = on ? f1[x] : 0.0f;
      row[4 * x + 2] = on ? f2[x] : 0.0f;
      row[4 * x + 3] = 0.0f;
    }
    for (int c = 0; c < 4; ++c) row[4 * X + c] = row[4 * X - 4 + c];
  }
}

// The 16-byte entries at q[k] + d of the 8 pixels k, transposed: lane k of out[c] is float c of pixel k's
// entry (c < NCOMP).  R[k] holds pixel k in its low and pixel k + 4 in its high 128 bits.
template <int NCOMP>
__attribute__((target("avx2"))) inline void load_entries(const float* const (&q)[8], int32_t d, v8sf* out) {
  __m256 R[4];
  for (int k = 0; k < 4; ++k)
    R[k] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(q[k] + d)), _mm_loadu_ps(q[k + 4] + d), 1);
  const __m256 t0 = _mm256_unpacklo_ps(R[0], R[1]), t1 = _mm256_unpackhi_ps(R[0], R[1]);
  const __m256 t2 = _mm256_unpacklo_ps(R[2], R[3]), t3 = _mm256_unpackhi_ps(R[2], R[3]);
  out[0] = v8sf(_mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2))));
  out[1] = v8sf(_mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2))));
  out[2] = v8sf(_mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3))));
  if (NCOMP == 4) out[3] = v8sf(_mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3))));
}

// The table entries of the lowest corners of 8 pixels' cells: q[k] = tab + off[k].  (The offsets go through
// memory: 8 scalar loads are cheaper than 8 lane extractions.)
struct TableCell {
  const float* q[8];
};

__attribute__((target("avx2"))) inline void table_cell(const float* tab, const v8si& off, TableCell& c) {
  alignas(32) uint32_t o[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(o), __m256i(off));
  __asm__("" : "+m"(o));  // keep the store and the reloads (GCC would extract the lanes instead)
  for (int k = 0; k < 8; ++k) c.q[k] = tab + o[k];
}

// The cell of the 8 lanes of one vector, and whether its corners must be loaded (`fresh`) or are those of the
// previous step.  Tracked pixels mostly stay in their cell from one step to the next (near their fixed
// point: over 90% of the steps of a group of 8 on Cellpose-like flows), and the same cell has the same
// corners, so a flow object keeps the last corners it loaded and reuses them while no lane changes cell.
struct CachedCell {
  bool fresh;
  TableCell t;
};

// Whether every lane of (a, b, c) equals the same lane of `last` (the cached cell), then last = (a, b, c).
__attribute__((target("avx2"))) inline bool same_cell(v8si (&last)[3], const v8si& a, const v8si& b,
                                                      const v8si& c) {
  const v8si eq = (a == last[0]) & (b == last[1]) & (c == last[2]);
  if (_mm256_movemask_ps(_mm256_castsi256_ps(__m256i(eq))) == 0xFF) return true;
  last[0] = a;
  last[1] = b;
  last[2] = c;
  return false;
}

// The 2D corners of 8 pixels: the entries (y_r, x0) and (y_r, x0 + 1) of a table row are one 16-byte load
// [c0(x0) c1(x0) c0(x1) c1(x1)] per pixel.  One object per vector of a group (it caches that vector's corners).
struct TableFlow2 {
  const float* tab;
  int32_t row;  // floats per table row: 2 * (X + 1)
  using Cell = CachedCell;
  mutable v8si last[3] = {v8si{} - 1, v8si{} - 1, v8si{} - 1};  // cell of `cache` (-1: none yet)
  mutable v8sf cache[2][2][2] = {};                            // [row][x corner][component]
  __attribute__((target("avx2"))) Cell cell_2d(const v8si& y0, const v8si& x0) const {
    Cell c;
    c.fresh = !same_cell(last, v8si{}, y0, x0);
    if (c.fresh) table_cell(tab, y0 * row + x0 * 2, c.t);
    return c;
  }
  __attribute__((target("avx2"))) void corner_pair_2d(const Cell& c, int r, v8sf (&a0)[2], v8sf (&a1)[2]) const {
    if (c.fresh) {
      v8sf e[4];
      load_entries<4>(c.t.q, r * row, e);
      cache[r][0][0] = e[0];
      cache[r][0][1] = e[1];
      cache[r][1][0] = e[2];
      cache[r][1][1] = e[3];
    }
    for (int k = 0; k < 2; ++k) {
      a0[k] = cache[r][0][k];
      a1[k] = cache[r][1][k];
    }
  }
};

// The 3D corners of 8 pixels: one 16-byte entry per corner and pixel; cached like TableFlow2.
struct TableFlow3 {
  const float* tab;
  int32_t row, plane;  // floats per table row (4 * (X + 1)) and plane (row * (Y + 1))
  using Cell = CachedCell;
  mutable v8si last[3] = {v8si{} - 1, v8si{} - 1, v8si{} - 1};
  mutable v8sf cache[4][2][3] = {};  // [row][x corner][component]
  __attribute__((target("avx2"))) Cell cell_3d(const v8si& z0, const v8si& y0, const v8si& x0) const {
    Cell c;
    c.fresh = !same_cell(last, z0, y0, x0);
    if (c.fresh) table_cell(tab, z0 * plane + y0 * row + x0 * 4, c.t);
    return c;
  }
  __attribute__((target("avx2"))) void corner_pair_3d(const Cell& c, int r, v8sf (&a0)[3], v8sf (&a1)[3]) const {
    if (c.fresh) {
      const int32_t d = ((r >> 1) & 1) * plane + (r & 1) * row;
      load_entries<3>(c.t.q, d, cache[r][0]);
      load_entries<3>(c.t.q, d + 4, cache[r][1]);
    }
    for (int k = 0; k < 3; ++k) {
      a0[k] = cache[r][0][k];
      a1[k] = cache[r][1][k];
    }
  }
};

constexpr int kVecs2d = 4;  // v8sf vectors interleaved per thread (32 pixels)
constexpr int kVecs3d = 3;  // (16 voxels: a 3D step has 3x the work and registers of a 2D one)

__attribute__((target("avx2"), flatten)) void track_avx2_2d(const TableFlow2& flow, const Shape& s, int niter,
                                                            const int64_t* idx, int count, float* positions) {
  track_group<2, kVecs2d, v8sf>(flow, s, niter, idx, count, positions);
}

__attribute__((target("avx2"), flatten)) void track_avx2_3d(const TableFlow3& flow, const Shape& s, int niter,
                                                            const int64_t* idx, int count, float* positions) {
  track_group<3, kVecs3d, v8sf>(flow, s, niter, idx, count, positions);
}

// False when the AVX2 path cannot be used (avx2_path_enabled() false, niter == 0, table offsets beyond int32,
// or no memory for the table); follow_flows then takes the scalar path.
bool follow_all_avx2(const float* dP, const uint8_t* mask, const Shape& s, int niter, float* positions, int nt) {
  if (!avx2_path_enabled() || niter == 0) return false;
  const int64_t comps = s.ndim == 2 ? 2 : 4;
  const int64_t entries = (s.ndim == 2 ? 1 : s.z + 1) * (s.y + 1) * (s.x + 1);
  if (entries * comps + 8 > int64_t(INT32_MAX)) return false;
  // Uninitialised: build_table_* writes every entry (a zero-filled vector would write the table twice).
  std::unique_ptr<float[]> tab(new (std::nothrow) float[size_t(entries * comps)]);
  if (!tab) return false;
  if (s.ndim == 2) {
    build_table_2d(dP, mask, s.y, s.x, tab.get(), nt);
    const TableFlow2 flow{tab.get(), int32_t(2 * (s.x + 1))};
    for_each_tracked_group<8 * kVecs2d>(mask, s, niter, positions, nt, [&](const int64_t* idx, int count) {
      track_avx2_2d(flow, s, niter, idx, count, positions);
    });
  } else {
    build_table_3d(dP, mask, s.z, s.y, s.x, tab.get(), nt);
    const int32_t row = int32_t(4 * (s.x + 1));
    const TableFlow3 flow{tab.get(), row, int32_t(row * (s.y + 1))};
    for_each_tracked_group<8 * kVecs3d>(mask, s, niter, positions, nt, [&](const int64_t* idx, int count) {
      track_avx2_3d(flow, s, niter, idx, count, positions);
    });
  }
  return true;
}

}  // namespace
}  // namespace cpu

#endif  // FP_TRACK_AVX2

namespace cpu {

void follow_flows(const float* dP, const uint8_t* mask, const Shape& shape, int niter, float* positions,
                  const Exec& ex) {
  const int nt = cpu_threads(ex);
#ifdef FP_TRACK_AVX2
  if (follow_all_avx2(dP, mask, shape, niter, positions, nt)) return;
#endif
  if (shape.ndim == 2)
    follow_all_scalar<2>(dP, mask, shape, niter, positions, nt);
  else
    follow_all_scalar<3>(dP, mask, shape, niter, positions, nt);
}

}  // namespace cpu

const char* tracking_simd_path() noexcept {
#ifdef FP_TRACK_AVX2
  if (cpu::avx2_path_enabled()) return "avx2";
#endif
  return "scalar";
}

}  // namespace fastpose
