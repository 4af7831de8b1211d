// C++ tests of the public API, built against an installed fastpose (find_package) and run from pytest
// (tests/test_cpp_api.py). Exit code 0 = all passed; prints "N passed, M failed".
#include <fastpose/fastpose.hpp>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

using namespace fastpose;

static int g_pass = 0, g_fail = 0;
#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
      ++g_fail;                                                             \
      return;                                                               \
    }                                                                       \
  } while (0)

static void run(const char* name, const std::function<void()>& f) {
  int before = g_fail;
  try {
    f();
  } catch (const std::exception& e) {
    std::printf("FAIL %s: unexpected exception: %s\n", name, e.what());
    ++g_fail;
  }
  if (g_fail == before) {
    ++g_pass;
    std::printf("ok   %s\n", name);
  }
}

template <typename F>
static bool throws_argument_error(F&& f) {
  try {
    f();
  } catch (const ArgumentError&) {
    return true;
  } catch (...) {
    return false;
  }
  return false;
}

// Two discs of radius 9 in a 64x64 image.
static std::vector<int32_t> two_discs(Shape& s) {
  s.ndim = 2; s.z = 1; s.y = 64; s.x = 64;
  std::vector<int32_t> lab(size_t(s.numel()), 0);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x) {
      if ((y - 20) * (y - 20) + (x - 20) * (x - 20) <= 81) lab[size_t(y * 64 + x)] = 1;
      if ((y - 42) * (y - 42) + (x - 44) * (x - 44) <= 81) lab[size_t(y * 64 + x)] = 2;
    }
  return lab;
}

int main() {
  Exec cpu;
  std::printf("fastpose %s, cuda compiled: %d, cuda available: %d\n", version(), int(cuda_compiled()),
              int(cuda_available()));

  run("masks_to_flows unit length inside, zero outside", [&] {
    Shape s;
    auto lab = two_discs(s);
    std::vector<float> flows(size_t(2 * s.numel()));
    masks_to_flows(lab.data(), s, flows.data(), cpu);
    for (int64_t i = 0; i < s.numel(); ++i) {
      float n = std::sqrt(flows[i] * flows[i] + flows[s.numel() + i] * flows[s.numel() + i]);
      if (lab[size_t(i)] == 0) CHECK(n == 0.0f);
    }
    // pixel left of the first centre flows right (+x), above it flows down (+y)
    CHECK(flows[s.numel() + 20 * 64 + 14] > 0.5f);
    CHECK(flows[14 * 64 + 20] > 0.5f);
  });

  run("compute_masks recovers two discs", [&] {
    Shape s;
    auto lab = two_discs(s);
    const int64_t n = s.numel();
    std::vector<float> dP(static_cast<size_t>(2 * n));
    std::vector<float> prob(static_cast<size_t>(n));
    masks_to_flows(lab.data(), s, dP.data(), cpu);
    for (auto& v : dP) v *= 5.0f;
    for (int64_t i = 0; i < n; ++i) prob[size_t(i)] = lab[size_t(i)] ? 5.0f : -5.0f;
    std::vector<int32_t> out(size_t(n), -1);
    MaskParams p;
    int64_t count = compute_masks(dP.data(), prob.data(), s, out.data(), p, cpu);
    CHECK(count == 2);
    int64_t agree = 0;
    for (int64_t i = 0; i < n; ++i) agree += (out[size_t(i)] == lab[size_t(i)]);
    CHECK(agree == n);
  });

  run("compute_masks on empty foreground gives zeros", [&] {
    Shape s; s.ndim = 2; s.y = 17; s.x = 5;
    std::vector<float> dP(size_t(2 * s.numel()), 0.0f), prob(size_t(s.numel()), -1.0f);
    std::vector<int32_t> out(size_t(s.numel()), 7);
    CHECK(compute_masks(dP.data(), prob.data(), s, out.data(), MaskParams{}, cpu) == 0);
    for (auto v : out) CHECK(v == 0);
  });

  run("tiles round trip", [&] {
    TileGrid g = plan_tiles(300, 250, 224, 0.1, false);
    CHECK(g.count() >= 4);
    std::vector<float> img(size_t(2 * 300 * 250));
    for (size_t i = 0; i < img.size(); ++i) img[i] = float(i % 97) * 0.01f;
    std::vector<float> tiles(size_t(g.count() * 2 * g.by * g.bx));
    make_tiles(img.data(), 1, 2, g, tiles.data(), cpu);
    std::vector<float> back(img.size());
    blend_tiles(tiles.data(), 1, 2, g, -1, -1, back.data(), cpu);
    for (size_t i = 0; i < img.size(); ++i) CHECK(std::fabs(back[i] - img[i]) < 1e-5f);
  });

  run("bad arguments throw ArgumentError", [&] {
    Shape bad; bad.ndim = 4; bad.y = 3; bad.x = 3;
    std::vector<int32_t> lab(9, 0);
    std::vector<float> f(18);
    CHECK(throws_argument_error([&] { masks_to_flows(lab.data(), bad, f.data(), cpu); }));
    Shape s; s.ndim = 2; s.y = 3; s.x = 3;
    CHECK(throws_argument_error([&] { masks_to_flows(nullptr, s, f.data(), cpu); }));
    lab[4] = -3;
    CHECK(throws_argument_error([&] { fill_holes_and_remove_small_masks(lab.data(), s, 1, cpu); }));
  });

  run("sparse or negative labels are refused by flows and clean-up alike", [&] {
    Shape s; s.ndim = 2; s.y = 3; s.x = 3;
    std::vector<int32_t> lab(9, 0);
    std::vector<float> f(18), err(4);
    lab[4] = 10;  // > number of pixels
    CHECK(throws_argument_error([&] { masks_to_flows(lab.data(), s, f.data(), cpu); }));
    CHECK(throws_argument_error([&] { fill_holes_and_remove_small_masks(lab.data(), s, 1, cpu); }));
    lab[4] = 5;  // > nlabels
    CHECK(throws_argument_error([&] { flow_errors(lab.data(), s, f.data(), 4, err.data(), cpu); }));
    lab[4] = -1;
    CHECK(throws_argument_error([&] { remove_bad_flow_masks(lab.data(), s, f.data(), 4, 0.4f, cpu); }));
  });

  run("tracking_simd_path names a CPU path", [&] {
    const std::string p = tracking_simd_path();
    CHECK(p == "avx2" || p == "scalar");
  });

  run("CUDA request without a GPU path fails loudly", [&] {
    if (cuda_available()) return;  // covered by the GPU parity tests instead
    Exec gpu; gpu.device = Device::CUDA;
    Shape s; s.ndim = 2; s.y = 4; s.x = 4;
    std::vector<float> p(16, 0.0f);
    std::vector<uint8_t> m(16, 0);
    bool threw = false;
    try {
      threshold_mask(p.data(), 16, 0.0f, m.data(), gpu);
    } catch (const Error&) {
      threw = true;
    }
    CHECK(threw);
  });

  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
