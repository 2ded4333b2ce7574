// Shared fixtures for the core tests: random problems of a given size.
#pragma once
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

}  // namespace empas::test
