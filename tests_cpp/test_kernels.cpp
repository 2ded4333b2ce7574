// The torch-free fake-quant kernels (cpp/kernels): fp16/bf16 conversions,
// hand-computed groups, and bit-exact agreement with a plain scalar
// transcription of the semantics in fake_quant.hpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "empas/kernels/fake_quant.hpp"
#include "kernel_test_util.hpp"

using namespace empas::kernels;

namespace {

// ---- a scalar transcription of the semantics (no SIMD tricks) --------------

float ref_deq_sym(float w, float d, int bits) {
  const float lo = -std::ldexp(1.0f, bits - 1), hi = std::ldexp(1.0f, bits - 1) - 1.0f;
  const float q = std::min(std::max(std::nearbyint(w / d), lo), hi);
  return q * d + 0.0f;
}

float ref_deq_asym(float w, float s, float z, int bits) {
  const float qmax = static_cast<float>((1 << bits) - 1);
  const float q = std::min(std::max(std::nearbyint(w / s) + z, 0.0f), qmax);
  return (q - z) * s + 0.0f;
}

// Dequantizes group x at ratio r into y; returns the squared error (double).
double ref_group_at(const std::vector<float>& x, int bits, bool sym, float r, std::vector<float>& y) {
  const size_t n = x.size();
  y.assign(n, 0.0f);
  if (sym) {
    float m = 0.0f;
    for (float v : x)
      if (std::fabs(v) > std::fabs(m)) m = v;  // strict: the first on ties
    const float d = round_to_fp16((m * r) / -std::ldexp(1.0f, bits - 1));
    if (d != 0.0f)
      for (size_t i = 0; i < n; ++i) y[i] = ref_deq_sym(x[i], d, bits);
  } else {
    const float lo = *std::min_element(x.begin(), x.end()) * r,
                hi = *std::max_element(x.begin(), x.end()) * r;
    const float qmax = static_cast<float>((1 << bits) - 1);
    const float s = round_to_fp16((hi - lo) / qmax);
    if (s == 0.0f) {
      y = x;
    } else {
      const float z = std::min(std::max(std::nearbyint(-lo / s), 0.0f), qmax);
      for (size_t i = 0; i < n; ++i) y[i] = ref_deq_asym(x[i], s, z, bits);
    }
  }
  double err = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const float e = y[i] - x[i];
    err += static_cast<double>(e) * e;
  }
  return err;
}

std::vector<float> ref_group(const std::vector<float>& x, int bits, bool sym, bool clip,
                             int* chosen = nullptr) {
  std::vector<float> best, y;
  double best_err = ref_group_at(x, bits, sym, 1.0f, best);
  int k_best = 0;
  if (clip)
    for (int k = 1; k <= 10; ++k) {
      const double e = ref_group_at(x, bits, sym, static_cast<float>(1.0 - k / 20.0), y);
      if (e < best_err) {
        best_err = e;
        best = y;
        k_best = k;
      }
    }
  if (chosen) *chosen = k_best;
  return best;
}

// Reference for a whole matrix (fp32 values in, fp32 values out).
std::vector<float> ref_matrix(const std::vector<float>& w, int64_t rows, int64_t cols,
                              const FakeQuantParams& p) {
  const int64_t g = effective_group_size(p.group_size, cols);
  std::vector<float> out(w.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 < cols; c0 += g) {
      const int64_t n = std::min(g, cols - c0);
      std::vector<float> x(w.begin() + r * cols + c0, w.begin() + r * cols + c0 + n);
      const auto y = ref_group(x, p.bits, p.symmetric, p.clip_search);
      std::copy(y.begin(), y.end(), out.begin() + r * cols + c0);
    }
  return out;
}

uint32_t bits_of(float f) { return float_bits(f); }

std::vector<float> run(const std::vector<float>& w, int64_t rows, int64_t cols, const FakeQuantParams& p) {
  std::vector<float> out(w.size(), -123.0f);
  EXPECT_EQ(fake_quant_cpu(w.data(), out.data(), rows, cols, p), Status::kOk);
  return out;
}

using test_util::params;
using test_util::random_weights;

void expect_bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_EQ(bits_of(a[i]), bits_of(b[i])) << "at " << i << ": " << a[i] << " vs " << b[i];
}

// ---- conversions -------------------------------------------------------------

TEST(Conversions, Fp16RoundTripsAllBitPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_float(static_cast<uint16_t>(h));
    ASSERT_EQ(float_to_fp16(f), h) << std::hex << h;
    const bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    ASSERT_EQ(std::isnan(f), nan) << std::hex << h;
  }
}

TEST(Conversions, Bf16RoundTripsAllBitPatterns) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_float(static_cast<uint16_t>(b));
    ASSERT_EQ(float_to_bf16(f), b) << std::hex << b;
  }
}

TEST(Conversions, Fp16KnownValues) {
  EXPECT_EQ(fp16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_float(0xc000), -2.0f);
  EXPECT_EQ(fp16_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(fp16_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(fp16_to_float(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_TRUE(std::isinf(fp16_to_float(0xfc00)) && fp16_to_float(0xfc00) < 0);
  EXPECT_EQ(float_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even (down)
  EXPECT_EQ(float_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(float_to_fp16(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(float_to_fp16(-1e10f), 0xfc00);
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -25)), 0x0000);      // tie -> even (zero)
  EXPECT_EQ(float_to_fp16(3 * std::ldexp(1.0f, -25)), 0x0002);  // tie -> even
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(float_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_fp16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(float_to_fp16(std::numeric_limits<float>::quiet_NaN()) & 0x7e00, 0x7e00);
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie -> even (down)
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(float_to_bf16(3.4e38f), 0x7f80);                          // rounds to inf
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::quiet_NaN()) & 0x7fc0, 0x7fc0);
}

// Every midpoint between neighbouring finite values rounds to the even one,
// and values just off the midpoint to the nearer one.
template <class ToFloat, class FromFloat>
void check_midpoints(ToFloat to_f, FromFloat from_f, uint32_t max_finite) {
  for (uint32_t h = 0; h < max_finite; ++h) {
    const float a = to_f(static_cast<uint16_t>(h)), b = to_f(static_cast<uint16_t>(h + 1));
    const float mid = a + (b - a) / 2;  // exact in fp32
    ASSERT_EQ(from_f(mid), (h & 1) ? h + 1 : h) << std::hex << h;
    ASSERT_EQ(from_f(std::nextafter(mid, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(from_f(std::nextafter(mid, std::numeric_limits<float>::infinity())), h + 1) << std::hex << h;
    ASSERT_EQ(from_f(-mid), ((h & 1) ? h + 1 : h) | 0x8000u) << std::hex << h;
  }
}

TEST(Conversions, Fp16RoundsMidpointsToEven) { check_midpoints(fp16_to_float, float_to_fp16, 0x7bff); }
TEST(Conversions, Bf16RoundsMidpointsToEven) { check_midpoints(bf16_to_float, float_to_bf16, 0x7f7f); }

// ---- hand-computed groups ------------------------------------------------------

TEST(FakeQuant, SymmetricByHand) {
  // 2 bits: m = -1 -> d = -1 / -2 = 0.5; q = rint(w / d) clamped to [-2, 1].
  // 0.25 / 0.5 = 0.5 -> 0 (half to even); 0.75 / 0.5 = 1.5 -> 2 -> clamped 1.
  expect_bits_equal(run({0.25f, -1.0f, 0.75f, 0.3f}, 1, 4, params(2, 0, true)), {0.0f, -1.0f, 0.5f, 0.5f});
  // m = +1 -> d = -0.5; 0.25 / -0.5 = -0.5 -> -0 -> +0.0 out (never -0.0).
  expect_bits_equal(run({1.0f, 0.25f, -0.5f, 0.6f}, 1, 4, params(2, 0, true)), {1.0f, 0.0f, -0.5f, 0.5f});
  // Ties on |w|: the first element decides the sign of d (3 bits: [-4, 3]).
  expect_bits_equal(run({-1.0f, 1.0f, 0.5f, 0.2f}, 1, 4, params(3, 0, true)), {-1.0f, 0.75f, 0.5f, 0.25f});
  expect_bits_equal(run({1.0f, -1.0f, 0.5f, 0.2f}, 1, 4, params(3, 0, true)), {1.0f, -0.75f, 0.5f, 0.25f});
}

TEST(FakeQuant, AsymmetricByHand) {
  // 2 bits: lo = -1, hi = 2 -> s = 1, z = 1; q = clamp(rint(w) + 1, 0, 3).
  expect_bits_equal(run({-1.0f, 2.0f, 0.5f, 1.49f}, 1, 4, params(2, 0, false)), {-1.0f, 2.0f, 0.0f, 1.0f});
  // All positive: z = rint(-2) clamped to 0, so the top is clamped at 3 s.
  expect_bits_equal(run({2.0f, 5.0f}, 1, 2, params(2, 0, false)), {2.0f, 3.0f});
  // A constant group (s = 0) is left as it is.
  expect_bits_equal(run({0.7f, 0.7f, 0.7f}, 1, 3, params(4, 0, false)), {0.7f, 0.7f, 0.7f});
}

TEST(FakeQuant, ScalesAreRoundedToFp16) {
  // 8 bits, m = 0.3: d = fp16(0.3 / -128), not 0.3 / -128.
  const float d = round_to_fp16(0.3f / -128.0f);
  ASSERT_NE(d, 0.3f / -128.0f);
  const auto out = run({0.3f, 0.1f}, 1, 2, params(8, 0, true));
  EXPECT_EQ(out[0], std::nearbyint(0.3f / d) * d);
  EXPECT_EQ(out[1], std::nearbyint(0.1f / d) * d);
}

TEST(FakeQuant, ZeroAndTinyGroupsGiveZeros) {
  expect_bits_equal(run({0.0f, -0.0f, 0.0f}, 1, 3, params(4, 0, true)), {0.0f, 0.0f, 0.0f});
  // d = 2e-8 / -8 underflows fp16 -> 0 -> the group is zero.
  expect_bits_equal(run({1e-8f, -2e-8f}, 1, 2, params(4, 0, true)), {0.0f, 0.0f});
}

TEST(FakeQuant, EveryBitWidthAndGranularityMatchesTheReference) {
  const int64_t rows = 7, cols = 300;
  const auto w = random_weights(rows * cols, 1);
  for (int bits = 2; bits <= 8; ++bits)
    for (bool sym : {true, false})
      for (int64_t g :
           {int64_t{0}, int64_t{-1}, int64_t{32}, int64_t{128}, int64_t{7}, int64_t{300}, int64_t{1000}})
        for (bool clip : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << "bits " << bits << " sym " << sym << " g " << g << " clip " << clip);
          const auto p = params(bits, g, sym, clip);
          const auto out = run(w, rows, cols, p);
          expect_bits_equal(out, ref_matrix(w, rows, cols, p));
          // Levels: at most 2^bits distinct values per group.
          const int64_t gs = effective_group_size(g, cols);
          std::vector<float> grp(out.begin(), out.begin() + std::min(gs, cols));
          std::sort(grp.begin(), grp.end());
          EXPECT_LE(std::unique(grp.begin(), grp.end()) - grp.begin(), 1 << bits);
        }
}

TEST(FakeQuant, GroupNotDividingColsIsQuantizedLikeSeparateRows) {
  // cols = 10, g = 4: groups of 4, 4 and 2; each equals its own per-channel run.
  const auto w = random_weights(3 * 10, 2);
  for (bool sym : {true, false}) {
    const auto out = run(w, 3, 10, params(3, 4, sym));
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t c0 : {0, 4, 8}) {
        const int64_t n = std::min<int64_t>(4, 10 - c0);
        std::vector<float> x(w.begin() + r * 10 + c0, w.begin() + r * 10 + c0 + n);
        const auto y = run(x, 1, n, params(3, 0, sym));
        for (int64_t i = 0; i < n; ++i) EXPECT_EQ(bits_of(out[r * 10 + c0 + i]), bits_of(y[i]));
      }
  }
}

TEST(FakeQuant, ClipSearchClipsAnOutlier) {
  std::mt19937 gen(3);
  std::normal_distribution<float> nd(0.0f, 0.1f);
  std::vector<float> w(64);
  for (auto& v : w) v = nd(gen);
  w[17] = 1.0f;
  for (bool sym : {true, false}) {
    int k = -1;
    ref_group(w, 3, sym, true, &k);
    EXPECT_GT(k, 0) << "a ratio below 1 wins";
    const auto plain = run(w, 1, 64, params(3, 0, sym, false));
    const auto clipped = run(w, 1, 64, params(3, 0, sym, true));
    expect_bits_equal(clipped, ref_group(w, 3, sym, true));
    EXPECT_LT(clipped[17], 1.0f);  // the outlier is clipped
    double e_plain = 0, e_clip = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      e_plain += (plain[i] - w[i]) * (plain[i] - w[i]);
      e_clip += (clipped[i] - w[i]) * (clipped[i] - w[i]);
    }
    EXPECT_LT(e_clip, e_plain);
  }
  // Ties go to the largest ratio: with m = +1 and 4 bits, d = -1/8 and -1
  // clamps to 7 d = -0.875; no smaller ratio does better, so r = 1 stays.
  int k = -1;
  ref_group({1.0f, -1.0f, 1.0f, -1.0f}, 4, true, true, &k);
  EXPECT_EQ(k, 0);
  expect_bits_equal(run({1.0f, -1.0f, 1.0f, -1.0f}, 1, 4, params(4, 0, true, true)),
                    {1.0f, -0.875f, 1.0f, -0.875f});
  // An exact tie: a constant group is exact at r = 1 and at no other ratio
  // (asymmetric: s = 0 at every ratio, all errors 0): r = 1 is kept.
  expect_bits_equal(run({0.5f, 0.5f}, 1, 2, params(3, 0, false, true)), {0.5f, 0.5f});
}

// ---- dtypes, in place, threads ---------------------------------------------------

template <class H, class ToF, class FromF>
void check_half_type(ToF to_f, FromF from_f) {
  const int64_t rows = 5, cols = 130;
  auto w32 = random_weights(rows * cols, 4);
  std::vector<H> w(w32.size()), out(w32.size());
  for (size_t i = 0; i < w.size(); ++i) {
    w[i].bits = from_f(w32[i]);
    w32[i] = to_f(w[i].bits);  // the values the kernel sees
  }
  for (bool sym : {true, false})
    for (int64_t g : {int64_t{0}, int64_t{32}, int64_t{128}})
      for (bool clip : {false, true}) {
        const auto p = params(4, g, sym, clip);
        ASSERT_EQ(fake_quant_cpu(w.data(), out.data(), rows, cols, p), Status::kOk);
        const auto ref = ref_matrix(w32, rows, cols, p);
        for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(out[i].bits, from_f(ref[i])) << i;
        auto io = w;  // in place
        ASSERT_EQ(fake_quant_cpu(io.data(), io.data(), rows, cols, p), Status::kOk);
        for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(io[i].bits, out[i].bits) << i;
      }
}

TEST(FakeQuant, Fp16MatchesTheReference) { check_half_type<Half>(fp16_to_float, float_to_fp16); }
TEST(FakeQuant, Bf16MatchesTheReference) { check_half_type<BFloat16>(bf16_to_float, float_to_bf16); }

TEST(FakeQuant, InPlaceEqualsOutOfPlace) {
  const auto w = random_weights(9 * 257, 5);
  for (bool sym : {true, false}) {
    const auto p = params(4, 64, sym, true);
    const auto out = run(w, 9, 257, p);
    auto io = w;
    ASSERT_EQ(fake_quant_cpu(io.data(), io.data(), 9, 257, p), Status::kOk);
    expect_bits_equal(io, out);
  }
}

TEST(FakeQuant, SameResultOnAnyThreadCount) {
  const auto w = random_weights(512 * 256, 6);  // large enough to run in parallel
  auto p = params(4, 128, true);
  p.num_threads = 1;
  const auto one = run(w, 512, 256, p);
  for (int t : {2, 3, 8}) {
    p.num_threads = t;
    expect_bits_equal(run(w, 512, 256, p), one);
  }
}

TEST(FakeQuant, DTypeDispatch) {
  const auto w = random_weights(4 * 64, 7);
  std::vector<float> a(w.size()), b(w.size());
  const auto p = params(5, 16, false);
  ASSERT_EQ(fake_quant_cpu(w.data(), a.data(), 4, 64, p), Status::kOk);
  ASSERT_EQ(fake_quant_cpu(static_cast<const void*>(w.data()), b.data(), DType::kFloat32, 4, 64, p),
            Status::kOk);
  expect_bits_equal(a, b);
  EXPECT_EQ(fake_quant_cpu(static_cast<const void*>(w.data()), b.data(), static_cast<DType>(9), 4, 64, p),
            Status::kBadDType);
}

// ---- errors and edge cases ---------------------------------------------------------

TEST(FakeQuant, RejectsBadBits) {
  std::vector<float> w(4, 1.0f), out(4);
  for (int bits : {-1, 0, 1, 9, 16})
    EXPECT_EQ(fake_quant_cpu(w.data(), out.data(), 1, 4, params(bits, 0, true)), Status::kBadBits);
  EXPECT_STREQ(status_message(Status::kBadBits), "bits must be in 2..8");
}

TEST(FakeQuant, NanOrInfIsAnError) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()})
    for (bool sym : {true, false}) {
      // Two groups of 4: the second holds the bad value and is not written.
      std::vector<float> w = {0.1f, 0.2f, -0.3f, 0.4f, 0.5f, bad, 0.25f, 0.125f};
      auto io = w;
      EXPECT_EQ(fake_quant_cpu(io.data(), io.data(), 1, 8, params(4, 4, sym)), Status::kNonFinite);
      for (int i = 4; i < 8; ++i) EXPECT_EQ(bits_of(io[i]), bits_of(w[i]));
      EXPECT_EQ(fake_quant_cpu(w.data(), io.data(), 1, 8, params(4, 4, sym, true)), Status::kNonFinite);
    }
  EXPECT_STREQ(status_message(Status::kNonFinite), "weight contains NaN or Inf");
}

TEST(FakeQuant, ScaleOverflowIsAnError) {
  std::vector<float> w = {1e6f, -3.0f}, out(2);
  EXPECT_EQ(fake_quant_cpu(w.data(), out.data(), 1, 2, params(2, 0, true)), Status::kScaleOverflow);
  EXPECT_EQ(fake_quant_cpu(w.data(), out.data(), 1, 2, params(8, 0, true)), Status::kOk);  // 1e6 / 128 fits
  std::vector<float> big = {-3e38f, 3e38f};  // hi - lo overflows fp32
  EXPECT_EQ(fake_quant_cpu(big.data(), out.data(), 1, 2, params(8, 0, false)), Status::kScaleOverflow);
}

TEST(FakeQuant, EmptyAndDegenerateShapes) {
  std::vector<float> w(1, 0.5f), out(1, -1.0f);
  EXPECT_EQ(fake_quant_cpu(w.data(), out.data(), 0, 5, params(4, 128, true)), Status::kOk);
  EXPECT_EQ(fake_quant_cpu(w.data(), out.data(), 5, 0, params(4, 128, true)), Status::kOk);
  EXPECT_EQ(out[0], -1.0f);  // untouched
  EXPECT_EQ(fake_quant_cpu(w.data(), out.data(), -1, 1, params(4, 128, true)), Status::kBadShape);
  // 1 x 1: symmetric keeps the value exactly when it is a multiple of an fp16 scale.
  EXPECT_EQ(run({0.5f}, 1, 1, params(4, 128, true))[0], 0.5f);
  EXPECT_EQ(run({0.5f}, 1, 1, params(4, 128, false))[0], 0.5f);  // s = 0: unchanged
}

}  // namespace

// ---- every SIMD path ------------------------------------------------------------------

class EveryIsa : public testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (!set_cpu_isa(GetParam())) GTEST_SKIP() << GetParam() << " is not supported by this CPU";
    ASSERT_STREQ(cpu_isa(), GetParam());
  }
  void TearDown() override { set_cpu_isa("auto"); }
};

TEST_P(EveryIsa, MatchesTheReference) {
  const int64_t rows = 5, cols = 300;
  const auto w = random_weights(rows * cols, 9);
  for (int bits : {2, 3, 4, 8})
    for (bool sym : {true, false})
      for (int64_t g : {int64_t{0}, int64_t{32}, int64_t{64}, int64_t{128}, int64_t{100}})
        for (bool clip : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << "bits " << bits << " sym " << sym << " g " << g << " clip " << clip);
          const auto p = params(bits, g, sym, clip);
          expect_bits_equal(run(w, rows, cols, p), ref_matrix(w, rows, cols, p));
        }
  check_half_type<Half>(fp16_to_float, float_to_fp16);
  check_half_type<BFloat16>(bf16_to_float, float_to_bf16);
}

INSTANTIATE_TEST_SUITE_P(Isa, EveryIsa, testing::Values("baseline", "avx2", "avx512"));

TEST(FakeQuant, SetCpuIsaRejectsUnknownNames) {
  EXPECT_FALSE(set_cpu_isa("sse9"));
  EXPECT_FALSE(set_cpu_isa(nullptr));
  EXPECT_TRUE(set_cpu_isa("auto"));
}
