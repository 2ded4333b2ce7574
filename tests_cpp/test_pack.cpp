// The torch-free packing kernels (cpp/kernels, pack.hpp): the bit-stream
// layout on hand-computed examples and read back bit by bit, dequant(pack(w))
// == fake_quant(w) bit for bit, thread-count independence, the constant-group
// edge case, and the error statuses.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "empas/kernels/fake_quant.hpp"
#include "empas/kernels/pack.hpp"
#include "kernel_test_util.hpp"

using namespace empas::kernels;

namespace {

using test_util::params;

std::vector<float> random_weights(size_t n, uint32_t seed) {
  return test_util::random_weights(n, seed, /*mirror_last=*/true);
}

struct Packed {
  std::vector<uint8_t> q;
  std::vector<Half> s;
  std::vector<uint8_t> z;  // empty when symmetric
};

/// Packs (exactly sized buffers, so that ASan sees any overrun).
template <class T>
Status pack(const std::vector<T>& w, DType dt, int64_t rows, int64_t cols, const FakeQuantParams& p,
            Packed* out, uint8_t fill = 0xA5) {
  const int64_t ng = num_groups(cols, p.group_size);
  out->q.assign(packed_bytes(rows, cols, p.bits), fill);
  out->s.assign(rows * ng, Half{0x7e00});
  out->z.assign(p.symmetric ? 0 : rows * ng, fill);
  return quantize_pack_cpu(w.data(), dt, rows, cols, p, out->q.data(), out->s.data(),
                           p.symmetric ? nullptr : out->z.data());
}

template <class T>
std::vector<T> dequant(const Packed& pk, int64_t rows, int64_t cols, int bits, int64_t g, bool sym, DType dt,
                       int threads = 0) {
  std::vector<T> out(rows * cols);
  EXPECT_EQ(dequant_cpu(pk.q.data(), pk.s.data(), sym ? nullptr : pk.z.data(), rows, cols, bits, g, dt,
                        out.data(), threads),
            Status::kOk);
  return out;
}

/// Element e's code, read one stream bit at a time as the format says.
uint32_t code_by_bits(const std::vector<uint8_t>& q, int64_t e, int bits) {
  uint32_t u = 0;
  for (int k = 0; k < bits; ++k) {
    const int64_t bit = e * bits + k;
    u |= static_cast<uint32_t>((q[bit / 8] >> (bit % 8)) & 1u) << k;
  }
  return u;
}

template <class T>
uint32_t raw(T v) {
  if constexpr (std::is_same_v<T, float>)
    return float_bits(v);
  else
    return v.bits;
}

// ---- the layout by hand --------------------------------------------------------

TEST(Pack, ThreeBitCodesCrossByteBoundaries) {
  // 3 bits, one group: m = -1 -> d = fp16(-1 / -4) = 0.25; q = clamp(rint(w / d), -4, 3)
  // = -4, 3 (4 clamped), 2, 1 (0.8); codes q + 4 = 0, 7, 6, 5.
  // Stream: 000 111 11|0 101 -> byte 0 = 0b10111000, byte 1 = 0b0000'1011.
  const std::vector<float> w = {-1.0f, 1.0f, 0.5f, 0.2f};
  Packed pk;
  ASSERT_EQ(pack(w, DType::kFloat32, 1, 4, params(3, 0, true), &pk), Status::kOk);
  ASSERT_EQ(pk.q.size(), 2u);
  EXPECT_EQ(pk.q[0], 0xB8);
  EXPECT_EQ(pk.q[1], 0x0B);         // the 4 unused high bits are 0
  EXPECT_EQ(pk.s[0].bits, 0x3400);  // 0.25
  const auto out = dequant<float>(pk, 1, 4, 3, 0, true, DType::kFloat32);
  EXPECT_EQ(out, (std::vector<float>{-1.0f, 0.75f, 0.5f, 0.25f}));
}

TEST(Pack, AsymmetricTwoBitsByHand) {
  // lo = -1, hi = 2 -> s = 1, z = 1; q = clamp(rint(w) + 1, 0, 3) = 0, 3, 1 (0.5 -> 0), 2.
  const std::vector<float> w = {-1.0f, 2.0f, 0.5f, 1.49f};
  Packed pk;
  ASSERT_EQ(pack(w, DType::kFloat32, 1, 4, params(2, 0, false), &pk), Status::kOk);
  ASSERT_EQ(pk.q.size(), 1u);
  EXPECT_EQ(pk.q[0], 0x9C);  // 0 | 3 << 2 | 1 << 4 | 2 << 6
  EXPECT_EQ(pk.s[0].bits, 0x3C00);
  EXPECT_EQ(pk.z[0], 1);
  EXPECT_EQ(dequant<float>(pk, 1, 4, 2, 0, false, DType::kFloat32),
            (std::vector<float>{-1.0f, 2.0f, 0.0f, 1.0f}));
}

TEST(Pack, RowsShareBoundaryBytes) {
  // 3 rows x 3 cols at 3 bits: 27 bits in 4 bytes; row 1 starts at bit 9 and row
  // 2 at bit 18. Asymmetric per row: lo = 0, hi = 7 -> s = 1, z = 0, codes = w.
  const std::vector<float> w = {0, 7, 1, 2, 7, 0, 7, 3, 0};
  Packed pk;
  ASSERT_EQ(pack(w, DType::kFloat32, 3, 3, params(3, 0, false), &pk), Status::kOk);
  ASSERT_EQ(pk.q.size(), 4u);
  uint32_t stream = 0;
  for (int e = 0; e < 9; ++e) stream |= static_cast<uint32_t>(w[e]) << (3 * e);
  for (int b = 0; b < 4; ++b) EXPECT_EQ(pk.q[b], (stream >> (8 * b)) & 0xFF) << b;
  EXPECT_EQ(pk.q[3] >> 3, 0);  // unused high bits
  EXPECT_EQ(dequant<float>(pk, 3, 3, 3, 0, false, DType::kFloat32), w);
}

// ---- layout and round trip on random weights ---------------------------------

struct Case {
  int64_t rows, cols, g;
};

template <class T>
void check_round_trip(DType dt, uint32_t seed) {
  const std::vector<Case> cases = {{7, 300, 128}, {5, 256, 32}, {6, 100, 0},
                                   {9, 70, 32},   {3, 33, 7},   {1, 2, 128}};
  for (const auto& cs : cases) {
    auto w32 = random_weights(cs.rows * cs.cols, seed + static_cast<uint32_t>(cs.cols));
    std::vector<T> w(w32.size());
    for (size_t i = 0; i < w.size(); ++i) {
      if constexpr (std::is_same_v<T, float>)
        w[i] = w32[i];
      else if constexpr (std::is_same_v<T, Half>)
        w[i].bits = float_to_fp16(w32[i]);
      else
        w[i].bits = float_to_bf16(w32[i]);
    }
    for (int bits = 2; bits <= 8; ++bits)
      for (bool sym : {true, false})
        for (bool clip : {false, true}) {
          SCOPED_TRACE(testing::Message() << cs.rows << "x" << cs.cols << " g " << cs.g << " bits " << bits
                                          << " sym " << sym << " clip " << clip);
          const auto p = params(bits, cs.g, sym, clip);
          Packed pk;
          ASSERT_EQ(pack(w, dt, cs.rows, cs.cols, p, &pk), Status::kOk);
          std::vector<T> fq(w.size());
          ASSERT_EQ(fake_quant_cpu(w.data(), fq.data(), dt, cs.rows, cs.cols, p), Status::kOk);
          const auto out = dequant<T>(pk, cs.rows, cs.cols, bits, cs.g, sym, dt);
          for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(raw(out[i]), raw(fq[i])) << i;
          // Every code read bit by bit is fake_quant's level: out / scale + offset
          // (exact: |q| < 2^8 times an fp16 scale is exact in fp32).
          const int64_t gs = effective_group_size(cs.g, cs.cols), ng = num_groups(cs.cols, cs.g);
          std::vector<float> wf(w.size()), fq32(w.size());  // the values the kernel sees, in fp32
          for (size_t i = 0; i < w.size(); ++i) {
            if constexpr (std::is_same_v<T, float>)
              wf[i] = w[i];
            else if constexpr (std::is_same_v<T, Half>)
              wf[i] = fp16_to_float(w[i].bits);
            else
              wf[i] = bf16_to_float(w[i].bits);
          }
          ASSERT_EQ(fake_quant_cpu(wf.data(), fq32.data(), cs.rows, cs.cols, p), Status::kOk);
          for (int64_t r = 0; r < cs.rows; ++r)
            for (int64_t c = 0; c < cs.cols; ++c) {
              const int64_t gi = r * ng + c / gs;
              const float s = fp16_to_float(pk.s[gi].bits);
              const float off = sym ? static_cast<float>(1 << (bits - 1)) : static_cast<float>(pk.z[gi]);
              const uint32_t u = code_by_bits(pk.q, r * cs.cols + c, bits);
              ASSERT_LT(u, 1u << bits);
              const float expect = s == 0.0f ? off : fq32[r * cs.cols + c] / s + off;
              ASSERT_EQ(static_cast<float>(u), expect) << r << "," << c;
            }
          const int64_t used = cs.rows * cs.cols * bits % 8;
          if (used) {
            EXPECT_EQ(pk.q.back() >> used, 0) << "unused high bits";
          }
        }
  }
}

TEST(Pack, Fp32RoundTripEqualsFakeQuant) { check_round_trip<float>(DType::kFloat32, 10); }
TEST(Pack, Fp16RoundTripEqualsFakeQuant) { check_round_trip<Half>(DType::kFloat16, 20); }
TEST(Pack, Bf16RoundTripEqualsFakeQuant) { check_round_trip<BFloat16>(DType::kBFloat16, 30); }

TEST(Pack, DequantToAnotherDtypeRoundsTheFp32Values) {
  const int64_t rows = 4, cols = 96;
  const auto w = random_weights(rows * cols, 40);
  for (bool sym : {true, false}) {
    Packed pk;
    ASSERT_EQ(pack(w, DType::kFloat32, rows, cols, params(5, 32, sym), &pk), Status::kOk);
    const auto f = dequant<float>(pk, rows, cols, 5, 32, sym, DType::kFloat32);
    const auto h = dequant<Half>(pk, rows, cols, 5, 32, sym, DType::kFloat16);
    const auto b = dequant<BFloat16>(pk, rows, cols, 5, 32, sym, DType::kBFloat16);
    for (size_t i = 0; i < f.size(); ++i) {
      ASSERT_EQ(h[i].bits, float_to_fp16(f[i]));
      ASSERT_EQ(b[i].bits, float_to_bf16(f[i]));
    }
  }
}

TEST(Pack, SameBytesOnAnyThreadCount) {
  // cols * bits = 99 bits: rows start on a byte boundary only every 8 rows.
  const int64_t rows = 4001, cols = 33;
  const auto w = random_weights(rows * cols, 50);
  for (int bits : {3, 4, 8})
    for (bool sym : {true, false}) {
      SCOPED_TRACE(testing::Message() << "bits " << bits << " sym " << sym);
      Packed one, four;
      ASSERT_EQ(pack(w, DType::kFloat32, rows, cols, params(bits, 0, sym, false, 1), &one), Status::kOk);
      ASSERT_EQ(pack(w, DType::kFloat32, rows, cols, params(bits, 0, sym, false, 4), &four, 0x5A),
                Status::kOk);
      ASSERT_EQ(one.q, four.q);
      for (size_t i = 0; i < one.s.size(); ++i) ASSERT_EQ(one.s[i].bits, four.s[i].bits);
      ASSERT_EQ(one.z, four.z);
      const auto a = dequant<float>(one, rows, cols, bits, 0, sym, DType::kFloat32, 1);
      const auto b = dequant<float>(one, rows, cols, bits, 0, sym, DType::kFloat32, 4);
      for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(float_bits(a[i]), float_bits(b[i])) << i;
    }
}

TEST(Pack, DequantOnEverySimdPath) {
  const int64_t rows = 5, cols = 300;
  const auto w = random_weights(rows * cols, 60);
  for (int bits = 2; bits <= 8; ++bits) {
    Packed pk;
    ASSERT_EQ(pack(w, DType::kFloat32, rows, cols, params(bits, 128, false), &pk), Status::kOk);
    ASSERT_TRUE(set_cpu_isa("baseline"));
    const auto f0 = dequant<float>(pk, rows, cols, bits, 128, false, DType::kFloat32);
    const auto h0 = dequant<Half>(pk, rows, cols, bits, 128, false, DType::kFloat16);
    for (const char* isa : {"avx2", "avx512"}) {
      if (!set_cpu_isa(isa)) continue;
      const auto f = dequant<float>(pk, rows, cols, bits, 128, false, DType::kFloat32);
      const auto h = dequant<Half>(pk, rows, cols, bits, 128, false, DType::kFloat16);
      for (size_t i = 0; i < f.size(); ++i) {
        ASSERT_EQ(float_bits(f[i]), float_bits(f0[i])) << isa << " " << i;
        ASSERT_EQ(h[i].bits, h0[i].bits) << isa << " " << i;
      }
    }
    set_cpu_isa("auto");
  }
}

// ---- edge cases and errors -------------------------------------------------------

TEST(Pack, ConstantAsymmetricGroupsReadBackAsFp16Min) {
  // Group 0 constant (s == 0: fake_quant keeps it), group 1 ordinary, group 2
  // constant but too small for fp16 (stored as scale 0, codes 0).
  const std::vector<float> w = {0.7f, 0.7f, 0.7f, 0.1f, -0.2f, 0.3f, 1e-9f, 1e-9f, 1e-9f};
  for (bool clip : {false, true}) {
    Packed pk;
    ASSERT_EQ(pack(w, DType::kFloat32, 1, 9, params(4, 3, false, clip), &pk), Status::kOk);
    EXPECT_EQ(pk.s[0].bits, float_to_fp16(0.7f));
    EXPECT_EQ(pk.z[0], 0);
    for (int e = 0; e < 3; ++e) EXPECT_EQ(code_by_bits(pk.q, e, 4), 1u);
    EXPECT_EQ(pk.s[2].bits, 0);
    EXPECT_EQ(pk.z[2], 0);
    for (int e = 6; e < 9; ++e) EXPECT_EQ(code_by_bits(pk.q, e, 4), 0u);
    const auto out = dequant<float>(pk, 1, 9, 4, 3, false, DType::kFloat32);
    std::vector<float> fq(9);
    ASSERT_EQ(fake_quant_cpu(w.data(), fq.data(), 1, 9, params(4, 3, false, clip)), Status::kOk);
    for (int e = 0; e < 3; ++e) EXPECT_EQ(out[e], round_to_fp16(0.7f));  // fake_quant: 0.7f itself
    for (int e = 3; e < 6; ++e) EXPECT_EQ(float_bits(out[e]), float_bits(fq[e]));
    for (int e = 6; e < 9; ++e) EXPECT_EQ(float_bits(out[e]), 0u);  // +0.0 (fake_quant: 1e-9)
  }
  // A constant group beyond fp16 cannot be stored.
  const std::vector<float> big = {1e6f, 1e6f};
  Packed pk;
  EXPECT_EQ(pack(big, DType::kFloat32, 1, 2, params(8, 0, false), &pk), Status::kScaleOverflow);
}

TEST(Pack, SymmetricZeroGroupsArePositiveZeros) {
  const std::vector<float> w = {0.0f, -0.0f, 0.0f, 1e-8f, -2e-8f, 0.0f};  // d == 0 in both groups
  Packed pk;
  ASSERT_EQ(pack(w, DType::kFloat32, 2, 3, params(4, 0, true), &pk), Status::kOk);
  for (int e = 0; e < 6; ++e) EXPECT_EQ(code_by_bits(pk.q, e, 4), 8u);
  EXPECT_EQ(pk.s[0].bits, 0);
  EXPECT_EQ(pk.s[1].bits, 0);
  for (float v : dequant<float>(pk, 2, 3, 4, 0, true, DType::kFloat32)) EXPECT_EQ(float_bits(v), 0u);
}

TEST(Pack, Errors) {
  std::vector<float> w = {0.1f, 0.2f, -0.3f, 0.4f, 0.5f, 0.0f, 0.25f, 0.125f};
  Packed pk;
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()})
    for (bool sym : {true, false})
      for (bool clip : {false, true}) {
        auto v = w;
        v[5] = bad;
        EXPECT_EQ(pack(v, DType::kFloat32, 2, 4, params(4, 0, sym, clip), &pk), Status::kNonFinite);
      }
  const std::vector<float> huge = {1e6f, -3.0f};
  EXPECT_EQ(pack(huge, DType::kFloat32, 1, 2, params(2, 0, true), &pk), Status::kScaleOverflow);
  EXPECT_EQ(pack(huge, DType::kFloat32, 1, 2, params(8, 0, true), &pk), Status::kOk);
  for (int bits : {0, 1, 9, 16})
    EXPECT_EQ(pack(w, DType::kFloat32, 2, 4, params(bits, 0, true), &pk), Status::kBadBits);
  EXPECT_EQ(pack(w, static_cast<DType>(7), 2, 4, params(4, 0, true), &pk), Status::kBadDType);
  uint8_t q[4];
  Half s[2];
  uint8_t z[2];
  EXPECT_EQ(quantize_pack_cpu(w.data(), DType::kFloat32, -1, 4, params(4, 0, true), q, s, nullptr),
            Status::kBadShape);
  // zeros must be given exactly when asymmetric
  EXPECT_EQ(quantize_pack_cpu(w.data(), DType::kFloat32, 2, 4, params(4, 0, true), q, s, z),
            Status::kBadShape);
  EXPECT_EQ(quantize_pack_cpu(w.data(), DType::kFloat32, 2, 4, params(4, 0, false), q, s, nullptr),
            Status::kBadShape);
  // dequant
  float out[8];
  EXPECT_EQ(dequant_cpu(q, s, nullptr, 2, 4, 1, 0, DType::kFloat32, out, 0), Status::kBadBits);
  EXPECT_EQ(dequant_cpu(q, s, nullptr, 2, 4, 9, 0, DType::kFloat32, out, 0), Status::kBadBits);
  EXPECT_EQ(dequant_cpu(q, s, nullptr, 2, -4, 4, 0, DType::kFloat32, out, 0), Status::kBadShape);
  EXPECT_EQ(dequant_cpu(q, s, nullptr, 2, 4, 4, 0, static_cast<DType>(5), out, 0), Status::kBadDType);
  // empty matrices: nothing read or written
  EXPECT_EQ(quantize_pack_cpu(w.data(), DType::kFloat32, 0, 4, params(4, 0, true), nullptr, nullptr, nullptr),
            Status::kOk);
  EXPECT_EQ(dequant_cpu(nullptr, nullptr, nullptr, 3, 0, 4, 0, DType::kFloat32, nullptr, 0), Status::kOk);
}

TEST(Pack, SizesAndGroups) {
  EXPECT_EQ(packed_bytes(64, 128, 4), 4096);
  EXPECT_EQ(packed_bytes(3, 3, 3), 4);
  EXPECT_EQ(packed_bytes(1, 1, 2), 1);
  EXPECT_EQ(packed_bytes(0, 5, 3), 0);
  EXPECT_EQ(num_groups(300, 128), 3);
  EXPECT_EQ(num_groups(300, 0), 1);
  EXPECT_EQ(num_groups(300, 1000), 1);
  EXPECT_EQ(num_groups(0, 128), 0);
}

}  // namespace
