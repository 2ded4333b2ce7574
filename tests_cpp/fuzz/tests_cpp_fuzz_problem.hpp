// A fixed small search problem for the fuzzers (4 units, 4 choices).
#pragma once
#include "empas/space.hpp"

namespace fuzz {

inline empas::Problem small_problem() {
  empas::Problem p;
  p.n_units = 4;
  p.n_choices = 4;
  p.choice_bits = {2, 4, 8, 16};
  p.base_loss = 2.0;
  p.fixed_bytes = 100;
  for (int u = 0; u < 4; ++u) {
    p.params.push_back(1000 * (u + 1));
    for (int c = 0; c < 4; ++c) {
      p.delta.push_back(p.choice_bits[c] == 16 ? 0.0 : 0.1 / (u + 1) / p.choice_bits[c]);
      p.bytes.push_back(p.params[u] * p.choice_bits[c] / 8);
      p.allowed.push_back(1);
    }
  }
  p.finalize();
  return p;
}

}  // namespace fuzz
