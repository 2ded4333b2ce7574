// Helpers shared by the kernel test binaries (test_kernels, test_pack).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "empas/kernels/fake_quant.hpp"

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

}  // namespace empas::kernels::test_util
