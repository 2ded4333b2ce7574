// Helpers shared by the kernel test binaries (test_kernels, test_pack,
// test_packed_matmul, test_packed_matmul_a8).
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "empas/kernels/fake_quant.hpp"
#include "empas/kernels/pack.hpp"

namespace empas::kernels::test_util {

inline FakeQuantParams params(int bits, int64_t g, bool sym, bool clip = false, int threads = 0) {
  FakeQuantParams p;
  p.bits = bits;
  p.group_size = g;
  p.symmetric = sym;
  p.clip_search = clip;
  p.num_threads = threads;
  return p;
}

// Weights like a linear layer's: normal, scaled, with a few outliers; with
// mirror_last, the last equals -first (equal magnitudes of both signs).
inline std::vector<float> random_weights(size_t n, uint32_t seed, bool mirror_last = false) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> w(n);
  for (auto& v : w) v = nd(gen);
  for (size_t i = 0; i < n; i += 97) w[i] *= 8.0f;
  if (mirror_last && n > 1) w[n - 1] = -w[0];
  return w;
}

/// A fixture parameterized by an ISA name: the test runs with set_cpu_isa(name)
/// (skipped where the CPU lacks it) and puts "auto" back after.
class OnIsa : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (!set_cpu_isa(GetParam())) GTEST_SKIP() << GetParam() << " is not supported by this CPU";
  }
  void TearDown() override { set_cpu_isa("auto"); }
};

/// A packed weight and what it dequantizes to.
struct PackCase {
  int64_t out, in;
  int bits;
  int64_t g;
  bool sym;
};

struct Packed {
  std::vector<uint8_t> q;
  std::vector<Half> s;
  std::vector<uint8_t> z;
  std::vector<float> w;  // dequant_cpu of the packed weight (fp32)
};

/// random_weights(out * in, seed) packed with quantize_pack_cpu, and dequantized.
inline Packed make_packed(const PackCase& c, uint32_t seed) {
  Packed pk;
  const auto w = random_weights(static_cast<size_t>(c.out * c.in), seed);
  const int64_t ng = num_groups(c.in, c.g);
  pk.q.assign(packed_bytes(c.out, c.in, c.bits), 0);
  pk.s.assign(c.out * ng, Half{0});
  pk.z.assign(c.sym ? 0 : c.out * ng, 0);
  EXPECT_EQ(quantize_pack_cpu(w.data(), DType::kFloat32, c.out, c.in, params(c.bits, c.g, c.sym), pk.q.data(),
                              pk.s.data(), c.sym ? nullptr : pk.z.data()),
            Status::kOk);
  pk.w.assign(c.out * c.in, 0.0f);
  EXPECT_EQ(dequant_cpu(pk.q.data(), pk.s.data(), c.sym ? nullptr : pk.z.data(), c.out, c.in, c.bits, c.g,
                        DType::kFloat32, pk.w.data(), 1),
            Status::kOk);
  return pk;
}

/// n values ~ N(0, 1).
inline std::vector<float> random_x(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(gen);
  return x;
}

}  // namespace empas::kernels::test_util
