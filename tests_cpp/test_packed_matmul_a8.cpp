// The int8-activation fused matmul (packed_matmul.hpp, packed_matmul_a8_cpu):
//  * against an fp64 reference with x replaced by its int8 reconstruction q * dx
//    (rebuilt here with the documented arithmetic), within fp32 rounding;
//  * against the true x within the documented quantization bound sum |W| dx / 2;
//  * AVX2 against baseline bit for bit, 1 against several threads bit for bit;
//  * layers it does not apply to (3-bit, group 32, in % 64 != 0) and x with
//    NaN run the exact kernel (bit-equal to packed_matmul_cpu);
//  * a negative control: a wrong zero point fails the bound.
// Buffers are exactly sized, so that the ASan build catches a read past the stream.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "empas/kernels/fake_quant.hpp"
#include "empas/kernels/pack.hpp"
#include "empas/kernels/packed_matmul.hpp"
#include "kernel_test_util.hpp"

using namespace empas::kernels;

namespace {

using test_util::params;

using Case = test_util::PackCase;
using test_util::make_packed;
using test_util::Packed;
using test_util::random_x;

/// x's int8 reconstruction q * dx and the per-element dx, as documented.
void reconstruct(const std::vector<float>& x, int64_t m, int64_t in, std::vector<double>& xh,
                 std::vector<double>& dx) {
  xh.assign(m * in, 0.0);
  dx.assign(m * in, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t b = 0; b < in; b += 64) {
      const float* xb = x.data() + i * in + b;
      float amax = 0.0f;
      for (int e = 0; e < 64; ++e) amax = std::max(amax, std::fabs(xb[e]));
      const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      for (int e = 0; e < 64; ++e) {
        const float t = std::clamp(std::nearbyint(xb[e] * inv), -127.0f, 127.0f);
        xh[i * in + b + e] = static_cast<double>(t) * d;
        dx[i * in + b + e] = d;
      }
    }
}

std::vector<float> run(const Packed& pk, const Case& c, const std::vector<float>& x, int64_t m,
                       const float* bias, int threads) {
  std::vector<float> y(m * c.out, std::nanf(""));
  EXPECT_EQ(packed_matmul_a8_cpu(x.data(), m, pk.q.data(), pk.s.data(), c.sym ? nullptr : pk.z.data(), bias,
                                 c.out, c.in, c.bits, c.g, y.data(), threads),
            Status::kOk);
  return y;
}

struct Err {
  double arith;  // |y - W q dx| / its fp32 bound
  double quant;  // |y - W x| / (sum |W| dx / 2 + the fp32 bound)
};

/// fp32 bound: (in + 2 groups + 8) * 2^-24 * magnitude, with the magnitude
/// sum_e (|u_e| + |z|) * s * |q_e dx| (the kernel sums u q and subtracts z sum q
/// separately) + |b|; wq = W / s per element is u - z.
Err worst(const Packed& pk, const Case& c, const std::vector<float>& x, int64_t m, const float* bias,
          const std::vector<float>& y) {
  std::vector<double> xh, dx;
  reconstruct(x, m, c.in, xh, dx);
  const double u = std::ldexp(1.0, -24);
  const int64_t gs = effective_group_size(c.g, c.in), ng = num_groups(c.in, c.g);
  Err r{0.0, 0.0};
  for (int64_t i = 0; i < m; ++i)
    for (int64_t o = 0; o < c.out; ++o) {
      double ref = bias ? bias[o] : 0.0, refx = ref, mag = bias ? std::fabs(bias[o]) : 0.0, qb = 0.0;
      for (int64_t k = 0; k < c.in; ++k) {
        const int64_t g = k / gs;
        const double s = fp16_to_float(pk.s[o * ng + g].bits);
        const double z = c.sym ? std::ldexp(1.0, c.bits - 1) : pk.z[o * ng + g];
        const double w = pk.w[o * c.in + k];
        ref += w * xh[i * c.in + k];
        refx += w * x[i * c.in + k];
        const double code = s != 0.0 ? w / s + z : 0.0;
        mag += (std::fabs(code) + z) * std::fabs(s) * std::fabs(xh[i * c.in + k]);
        qb += std::fabs(w) * dx[i * c.in + k] / 2;
      }
      const double bound = (c.in + 2 * ng + 8) * u * mag + 1e-30;
      const double yy = y[i * c.out + o];
      const double ea = std::fabs(yy - ref) / bound, eq = std::fabs(yy - refx) / (qb + bound);
      r.arith = std::isnan(ea) ? 1e30 : std::max(r.arith, ea);
      r.quant = std::isnan(eq) ? 1e30 : std::max(r.quant, eq);
    }
  return r;
}

class A8Isa : public test_util::OnIsa {};

TEST_P(A8Isa, MatchesReferenceWithinBounds) {
  const int64_t shapes[][2] = {{1, 128}, {7, 256}, {33, 384}, {5, 512}, {16, 1024}};
  const int64_t groups[] = {64, 128, 0, 256};
  int cases = 0;
  uint32_t seed = 11;
  for (const auto& sh : shapes)
    for (int bits : {2, 4, 8})
      for (int64_t g : groups)
        for (bool sym : {true, false}) {
          const Case c{sh[0], sh[1], bits, g, sym};
          if (!packed_matmul_a8_applies(bits, c.in, g)) continue;
          const Packed pk = make_packed(c, seed++);
          const auto x = random_x(9 * c.in, seed++);
          const auto bias = random_x(c.out, seed++);
          for (int64_t m : {1, 2, 3, 4, 5, 9})
            for (bool with_bias : {false, true}) {
              const float* b = with_bias ? bias.data() : nullptr;
              const auto y = run(pk, c, x, m, b, 0);
              const Err e = worst(pk, c, x, m, b, y);
              ASSERT_LE(e.arith, 1.0) << "out " << c.out << " in " << c.in << " bits " << bits << " g " << g
                                      << (sym ? " sym" : " asym") << " m " << m << " isa " << cpu_isa();
              ASSERT_LE(e.quant, 1.0) << "out " << c.out << " in " << c.in << " bits " << bits << " g " << g;
              ++cases;
            }
        }
  EXPECT_GT(cases, 300);
}

INSTANTIATE_TEST_SUITE_P(Isa, A8Isa, ::testing::Values("baseline", "avx2", "avx512"),
                         [](const auto& info) { return std::string(info.param); });

TEST(PackedMatmulA8, SimdEqualsBaselineAndThreadsBitForBit) {
  if (!set_cpu_isa("avx2")) GTEST_SKIP() << "no AVX2";
  for (int bits : {2, 4, 8})
    for (bool sym : {true, false}) {
      const Case c{67, 1024, bits, 128, sym};
      const Packed pk = make_packed(c, 200 + bits);
      const auto x = random_x(8 * c.in, 3);
      const auto bias = random_x(c.out, 4);
      for (int64_t m : {1, 4, 7}) {
        set_cpu_isa("avx2");
        const auto y = run(pk, c, x, m, bias.data(), 1);
        for (int t : {2, 3}) {
          const auto yt = run(pk, c, x, m, bias.data(), t);
          ASSERT_EQ(std::memcmp(y.data(), yt.data(), y.size() * 4), 0) << "threads " << t << " bits " << bits;
        }
        set_cpu_isa("baseline");
        const auto yb = run(pk, c, x, m, bias.data(), 2);
        ASSERT_EQ(std::memcmp(y.data(), yb.data(), y.size() * 4), 0)
            << "baseline, bits " << bits << " m " << m;
      }
    }
  set_cpu_isa("auto");
}

// Where it does not apply, and for x with NaN/Inf, the exact kernel runs.
TEST(PackedMatmulA8, FallsBackToTheExactKernel) {
  EXPECT_FALSE(packed_matmul_a8_applies(3, 256, 128));
  EXPECT_FALSE(packed_matmul_a8_applies(4, 256, 32));
  EXPECT_FALSE(packed_matmul_a8_applies(4, 100, 0));
  EXPECT_FALSE(packed_matmul_a8_applies(2, 192, 64));  // 2-bit needs 128
  EXPECT_TRUE(packed_matmul_a8_applies(4, 192, 0));    // whole row of 192
  EXPECT_TRUE(packed_matmul_a8_applies(8, 4096, 128));
  for (const Case& c : {Case{9, 256, 3, 128, true}, Case{9, 256, 4, 32, false}, Case{9, 100, 4, 0, true}}) {
    const Packed pk = make_packed(c, 5);
    auto x = random_x(2 * c.in, 6);
    std::vector<float> ye(2 * c.out);
    ASSERT_EQ(packed_matmul_cpu(x.data(), 2, pk.q.data(), pk.s.data(), c.sym ? nullptr : pk.z.data(), nullptr,
                                c.out, c.in, c.bits, c.g, ye.data(), 1),
              Status::kOk);
    const auto y = run(pk, c, x, 2, nullptr, 1);
    EXPECT_EQ(std::memcmp(y.data(), ye.data(), y.size() * 4), 0) << c.bits << " " << c.g << " " << c.in;
  }
  const Case c{5, 128, 4, 64, true};
  const Packed pk = make_packed(c, 8);
  auto x = random_x(c.in, 9);
  x[70] = std::nanf("");
  const auto y = run(pk, c, x, 1, nullptr, 1);
  for (float v : y) EXPECT_TRUE(std::isnan(v));
  x[70] = INFINITY;
  std::vector<float> ye(c.out);
  ASSERT_EQ(packed_matmul_cpu(x.data(), 1, pk.q.data(), pk.s.data(), nullptr, nullptr, c.out, c.in, 4, 64,
                              ye.data(), 1),
            Status::kOk);
  const auto yi = run(pk, c, x, 1, nullptr, 1);
  EXPECT_EQ(std::memcmp(yi.data(), ye.data(), ye.size() * 4), 0);
}

TEST(PackedMatmulA8, BoundCatchesAWrongZero) {
  const Case c{16, 256, 4, 64, false};
  Packed pk = make_packed(c, 5);
  const auto x = random_x(c.in, 6);
  for (auto& z : pk.z) z = static_cast<uint8_t>(z + 1);
  const auto y = run(pk, c, x, 1, nullptr, 1);
  for (auto& z : pk.z) z = static_cast<uint8_t>(z - 1);
  const Err e = worst(pk, c, x, 1, nullptr, y);
  EXPECT_GT(e.arith, 1.0);
  EXPECT_GT(e.quant, 1.0);
}

TEST(PackedMatmulA8, ZeroRowsAndErrorsAndDtypes) {
  const Case c{3, 64, 4, 64, true};
  const Packed pk = make_packed(c, 9);
  auto x = random_x(2 * c.in, 1);
  for (int e = 0; e < 64; ++e) x[e] = 0.0f;  // an all-zero block: dx = 0
  const auto y = run(pk, c, x, 2, nullptr, 1);
  for (int64_t o = 0; o < c.out; ++o) EXPECT_EQ(y[o], 0.0f);
  std::vector<float> yy(6);
  EXPECT_EQ(packed_matmul_a8_cpu(x.data(), 1, pk.q.data(), pk.s.data(), nullptr, nullptr, 3, 64, 9, 64,
                                 yy.data(), 0),
            Status::kBadBits);
  EXPECT_EQ(packed_matmul_a8_cpu(x.data(), -1, pk.q.data(), pk.s.data(), nullptr, nullptr, 3, 64, 4, 64,
                                 yy.data(), 0),
            Status::kBadShape);
  // typed entry point: bf16 in, fp32 out equals the fp32 entry point on widened x
  std::vector<BFloat16> xb(x.size());
  std::vector<float> xb32(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    xb[i].bits = float_to_bf16(x[i]);
    xb32[i] = bf16_to_float(xb[i].bits);
  }
  const auto y32 = run(pk, c, xb32, 2, nullptr, 1);
  ASSERT_EQ(packed_matmul_a8_cpu(xb.data(), DType::kBFloat16, 2, pk.q.data(), pk.s.data(), nullptr, nullptr,
                                 c.out, c.in, 4, 64, yy.data(), DType::kFloat32, 1),
            Status::kOk);
  EXPECT_EQ(std::memcmp(yy.data(), y32.data(), 24), 0);
  EXPECT_EQ(packed_matmul_a8_cpu(xb.data(), static_cast<DType>(7), 2, pk.q.data(), pk.s.data(), nullptr,
                                 nullptr, c.out, c.in, 4, 64, yy.data(), DType::kFloat32, 1),
            Status::kBadDType);
}

}  // namespace
