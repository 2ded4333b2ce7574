// The torch-free fused packed matmul (packed_matmul.hpp): y = x @ dequant(W)^T
// + bias against an fp64 reference over bits 2..8, group sizes (dividing in or
// not, whole row), odd shapes (in not a multiple of 8, out = 1, in = 1), rows
// of x 1..13, symmetric and asymmetric, with and without bias, on every SIMD
// path the CPU has; thread-count independence (bit for bit); dequant_rows_cpu
// against dequant_cpu; error statuses. Buffers are exactly sized, so that the
// ASan build catches a read past the packed stream.
#include <gtest/gtest.h>

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

std::vector<float> run(const Packed& pk, const Case& c, const std::vector<float>& x, int64_t m,
                       const float* bias, int threads) {
  std::vector<float> y(m * c.out, std::nanf(""));
  EXPECT_EQ(packed_matmul_cpu(x.data(), m, pk.q.data(), pk.s.data(), c.sym ? nullptr : pk.z.data(), bias,
                              c.out, c.in, c.bits, c.g, y.data(), threads),
            Status::kOk);
  return y;
}

/// Max over outputs of |y - ref| / bound, with ref = x @ W^T + b in fp64 and
/// bound the worst-case error of an fp32 dot product of in terms,
/// in * 2^-24 * sum |x w| (+ |b| rounding), i.e. what dequant + an fp32 matmul
/// may err by. Over 1 fails.
double worst(const Packed& pk, const Case& c, const std::vector<float>& x, int64_t m, const float* bias,
             const std::vector<float>& y) {
  double r = 0.0;
  const double u = std::ldexp(1.0, -24);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t o = 0; o < c.out; ++o) {
      double ref = bias ? bias[o] : 0.0, mag = bias ? std::fabs(bias[o]) : 0.0;
      for (int64_t k = 0; k < c.in; ++k) {
        const double p = static_cast<double>(x[i * c.in + k]) * pk.w[o * c.in + k];
        ref += p;
        mag += std::fabs(p);
      }
      const double bound = (c.in + 2) * u * mag + 1e-30;
      const double e = std::fabs(y[i * c.out + o] - ref) / bound;
      if (!(e <= r)) r = std::isnan(e) ? 1e30 : e;
    }
  return r;
}

class PackedMatmulIsa : public test_util::OnIsa {};

TEST_P(PackedMatmulIsa, MatchesFp64Reference) {
  const int64_t shapes[][2] = {{1, 1},   {3, 7},  {5, 100}, {17, 64}, {33, 256},
                               {8, 200}, {9, 48}, {4, 40},  {2, 129}, {1, 512}};
  const int64_t groups[] = {32, 128, 0, 24};
  const int64_t ms[] = {1, 2, 3, 4, 5, 8, 13};
  uint32_t seed = 1;
  int cases = 0;
  for (const auto& sh : shapes)
    for (int bits = 2; bits <= 8; ++bits)
      for (int64_t g : groups)
        for (bool sym : {true, false}) {
          const Case c{sh[0], sh[1], bits, g, sym};
          const Packed pk = make_packed(c, seed++);
          const auto x = random_x(13 * c.in, seed++);
          const auto bias = random_x(c.out, seed++);
          for (int64_t m : ms)
            for (bool with_bias : {false, true}) {
              const float* b = with_bias ? bias.data() : nullptr;
              const auto y = run(pk, c, x, m, b, 0);
              const double e = worst(pk, c, x, m, b, y);
              ASSERT_LE(e, 1.0) << "out " << c.out << " in " << c.in << " bits " << bits << " g " << g
                                << (sym ? " sym" : " asym") << " m " << m << " bias " << with_bias << " isa "
                                << cpu_isa();
              ++cases;
            }
        }
  EXPECT_GT(cases, 1000);
}

// Larger rows: the fast (stream) path of the SIMD variants, the last row's
// generic path, several threads.
TEST_P(PackedMatmulIsa, LargeShapesAndThreads) {
  for (int bits : {2, 3, 4, 8})
    for (bool sym : {true, false}) {
      const Case c{67, 1024, bits, 128, sym};
      const Packed pk = make_packed(c, 100 + bits);
      const auto x = random_x(8 * c.in, 7);
      const auto bias = random_x(c.out, 8);
      for (int64_t m : {1, 4, 8}) {
        const auto y1 = run(pk, c, x, m, bias.data(), 1);
        EXPECT_LE(worst(pk, c, x, m, bias.data(), y1), 1.0) << bits << " " << sym << " " << m;
        for (int t : {2, 3, 7}) {
          const auto yt = run(pk, c, x, m, bias.data(), t);
          ASSERT_EQ(std::memcmp(y1.data(), yt.data(), y1.size() * sizeof(float)), 0)
              << "threads " << t << " bits " << bits << " m " << m;
        }
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Isa, PackedMatmulIsa, ::testing::Values("baseline", "avx2", "avx512"),
                         [](const auto& info) { return std::string(info.param); });

// The error bound is tight enough to catch a wrong zero point or scale: an
// off-by-one zero (every weight shifted by one step) fails it.
TEST(PackedMatmul, BoundCatchesAWrongZero) {
  const Case c{16, 256, 4, 32, false};
  Packed pk = make_packed(c, 5);
  const auto x = random_x(c.in, 6);
  for (auto& z : pk.z) z = static_cast<uint8_t>(z + 1);
  const auto y = run(pk, c, x, 1, nullptr, 1);
  for (auto& z : pk.z) z = static_cast<uint8_t>(z - 1);
  EXPECT_GT(worst(pk, c, x, 1, nullptr, y), 1.0);
}

TEST(PackedMatmul, EmptyAndErrors) {
  const Case c{3, 16, 4, 8, true};
  const Packed pk = make_packed(c, 9);
  const auto x = random_x(16, 1);
  std::vector<float> y(3, 1.0f);
  const float bias[3] = {1.5f, -2.0f, 0.25f};
  // in == 0: y = bias.
  EXPECT_EQ(packed_matmul_cpu(x.data(), 1, nullptr, nullptr, nullptr, bias, 3, 0, 4, 8, y.data(), 0),
            Status::kOk);
  EXPECT_EQ(y, std::vector<float>({1.5f, -2.0f, 0.25f}));
  EXPECT_EQ(
      packed_matmul_cpu(x.data(), 0, pk.q.data(), pk.s.data(), nullptr, nullptr, 3, 16, 4, 8, y.data(), 0),
      Status::kOk);
  EXPECT_EQ(
      packed_matmul_cpu(x.data(), 1, pk.q.data(), pk.s.data(), nullptr, nullptr, 3, 16, 1, 8, y.data(), 0),
      Status::kBadBits);
  EXPECT_EQ(
      packed_matmul_cpu(x.data(), 1, pk.q.data(), pk.s.data(), nullptr, nullptr, 3, 16, 9, 8, y.data(), 0),
      Status::kBadBits);
  EXPECT_EQ(
      packed_matmul_cpu(x.data(), -1, pk.q.data(), pk.s.data(), nullptr, nullptr, 3, 16, 4, 8, y.data(), 0),
      Status::kBadShape);
  EXPECT_EQ(
      packed_matmul_cpu(x.data(), 1, pk.q.data(), pk.s.data(), nullptr, nullptr, -3, 16, 4, 8, y.data(), 0),
      Status::kBadShape);
}

// The typed entry point: x widened from fp16/bf16 exactly, y the fp32 result
// rounded once (bit for bit against the fp32 entry point on widened x).
TEST(PackedMatmul, HalfAndBFloat16InAndOut) {
  const Case c{19, 128, 4, 32, false};
  const Packed pk = make_packed(c, 77);
  const auto x32 = random_x(3 * c.in, 78);
  std::vector<Half> xh(x32.size());
  std::vector<BFloat16> xb(x32.size());
  std::vector<float> xh32(x32.size()), xb32(x32.size());
  for (size_t i = 0; i < x32.size(); ++i) {
    xh[i].bits = float_to_fp16(x32[i]);
    xb[i].bits = float_to_bf16(x32[i]);
    xh32[i] = fp16_to_float(xh[i].bits);
    xb32[i] = bf16_to_float(xb[i].bits);
  }
  const auto yh32 = run(pk, c, xh32, 3, nullptr, 1), yb32 = run(pk, c, xb32, 3, nullptr, 1);
  std::vector<Half> yh(3 * c.out);
  std::vector<BFloat16> yb(3 * c.out);
  std::vector<float> yf(3 * c.out);
  ASSERT_EQ(packed_matmul_cpu(xh.data(), DType::kFloat16, 3, pk.q.data(), pk.s.data(), pk.z.data(), nullptr,
                              c.out, c.in, 4, 32, yh.data(), DType::kFloat16, 2),
            Status::kOk);
  ASSERT_EQ(packed_matmul_cpu(xb.data(), DType::kBFloat16, 3, pk.q.data(), pk.s.data(), pk.z.data(), nullptr,
                              c.out, c.in, 4, 32, yb.data(), DType::kBFloat16, 2),
            Status::kOk);
  ASSERT_EQ(packed_matmul_cpu(xh.data(), DType::kFloat16, 3, pk.q.data(), pk.s.data(), pk.z.data(), nullptr,
                              c.out, c.in, 4, 32, yf.data(), DType::kFloat32, 2),
            Status::kOk);
  for (size_t i = 0; i < yh.size(); ++i) {
    EXPECT_EQ(yh[i].bits, float_to_fp16(yh32[i])) << i;
    EXPECT_EQ(yb[i].bits, float_to_bf16(yb32[i])) << i;
    EXPECT_EQ(yf[i], yh32[i]) << i;
  }
  EXPECT_EQ(packed_matmul_cpu(xh.data(), static_cast<DType>(7), 3, pk.q.data(), pk.s.data(), pk.z.data(),
                              nullptr, c.out, c.in, 4, 32, yf.data(), DType::kFloat32, 2),
            Status::kBadDType);
}

TEST(DequantRows, MatchesDequantBitForBit) {
  for (int bits : {2, 3, 5, 8})
    for (bool sym : {true, false}) {
      const Case c{13, 37, bits, 16, sym};
      const Packed pk = make_packed(c, 40 + bits);
      for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, 13}, {1, 4}, {5, 13}, {7, 8}, {3, 3}})
        for (DType dt : {DType::kFloat32, DType::kFloat16}) {
          const size_t es = dt == DType::kFloat32 ? 4 : 2;
          std::vector<uint8_t> full(c.out * c.in * es), part((r1 - r0) * c.in * es + 1, 0xEE);
          ASSERT_EQ(dequant_cpu(pk.q.data(), pk.s.data(), sym ? nullptr : pk.z.data(), c.out, c.in, bits, c.g,
                                dt, full.data(), 2),
                    Status::kOk);
          ASSERT_EQ(dequant_rows_cpu(pk.q.data(), pk.s.data(), sym ? nullptr : pk.z.data(), c.out, c.in, bits,
                                     c.g, r0, r1, dt, part.data(), 2),
                    Status::kOk);
          EXPECT_EQ(std::memcmp(part.data(), full.data() + r0 * c.in * es, (r1 - r0) * c.in * es), 0)
              << bits << " " << r0 << ".." << r1;
          EXPECT_EQ(part.back(), 0xEE) << "wrote past the range";
        }
    }
  const Case c{4, 8, 4, 8, true};
  const Packed pk = make_packed(c, 1);
  std::vector<float> out(32);
  EXPECT_EQ(
      dequant_rows_cpu(pk.q.data(), pk.s.data(), nullptr, 4, 8, 4, 8, 2, 5, DType::kFloat32, out.data(), 0),
      Status::kBadShape);
  EXPECT_EQ(
      dequant_rows_cpu(pk.q.data(), pk.s.data(), nullptr, 4, 8, 4, 8, 3, 2, DType::kFloat32, out.data(), 0),
      Status::kBadShape);
  EXPECT_EQ(
      dequant_rows_cpu(pk.q.data(), pk.s.data(), nullptr, 4, 8, 4, 8, -1, 2, DType::kFloat32, out.data(), 0),
      Status::kBadShape);
}

}  // namespace
