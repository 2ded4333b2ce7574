// Shared fixtures for the core tests: random problems of a given size.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "empas/rng.hpp"
#include "empas/space.hpp"

namespace empas::test {

/// Random problem: deltas falling with bits, bytes = params x bits / 8 (+ noise
/// so totals rarely tie), ~1 in 8 (unit, choice) pairs not allowed.
inline Problem random_problem(int n_units, const std::vector<int>& bits, uint64_t seed,
                              bool some_disallowed = true) {
  Rng r(seed, 12345);
  Problem p;
  p.n_units = n_units;
  p.n_choices = static_cast<int>(bits.size());
  p.choice_bits = bits;
  p.base_loss = 2.0;
  p.fixed_bytes = 1000;
  for (int u = 0; u < n_units; ++u) {
    const int64_t params = 1000 + static_cast<int64_t>(r.below(9000));
    p.params.push_back(params);
    const double sens = 0.01 + r.uniform();
    int allowed_here = 0;
    for (size_t c = 0; c < bits.size(); ++c) {
      const bool ok = !some_disallowed || c == 0 || r.below(8) != 0;
      p.allowed.push_back(ok ? 1 : 0);
      allowed_here += ok;
      p.delta.push_back(bits[c] >= 16 ? 0.0 : sens / (1 << bits[c]) * (0.5 + r.uniform()));
      p.bytes.push_back(params * bits[c] / 8 + static_cast<int64_t>(r.below(7)));
    }
  }
  p.finalize();
  return p;
}

/// Random problem full of ties: bytes are small multiples of 8 and deltas
/// multiples of 1/8 (exact in binary, so every summation order gives the
/// same loss); many genomes share bytes, loss or both. Choice 0 is always
/// allowed, others with probability 3/4; disallowed cells hold junk (NaN
/// delta, negative bytes) that nothing may read.
inline Problem tied_problem(int n_units, int n_choices, uint64_t seed) {
  Rng r(seed, 777);
  Problem p;
  p.n_units = n_units;
  p.n_choices = n_choices;
  for (int c = 0; c < n_choices; ++c) p.choice_bits.push_back(2 + c);
  p.base_loss = 1.0;
  p.fixed_bytes = 64;
  for (int u = 0; u < n_units; ++u) {
    p.params.push_back(8 * (1 + static_cast<int64_t>(r.below(4))));
    for (int c = 0; c < n_choices; ++c) {
      const bool ok = c == 0 || r.below(4) != 0;
      p.allowed.push_back(ok ? 1 : 0);
      p.bytes.push_back(ok ? 8 * static_cast<int64_t>(r.below(5)) : -5);
      p.delta.push_back(ok ? 0.125 * static_cast<double>(r.below(6)) : std::nan(""));
    }
  }
  p.finalize();
  return p;
}

}  // namespace empas::test
