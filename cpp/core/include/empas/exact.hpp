// Exact loss-vs-bytes Pareto front of the additive proxy, by merging Pareto
// sets unit by unit (dynamic programming over (bytes, loss) states).
#pragma once
#include <cstdint>
#include <vector>

#include "empas/space.hpp"

namespace empas {

struct ExactConfig {
  int64_t max_points = 2'000'000;  ///< largest intermediate front allowed
  /// 0: exact. > 0: an epsilon-grid that keeps the lowest loss per bytes bucket
  /// of this width at every step, so each returned point is within
  /// n_units x eps_bytes bytes of a true front point of no greater loss.
  int64_t eps_bytes = 0;
};

struct ExactFront {
  int n_units = 0;
  std::vector<Gene> genomes;   ///< n_points x n_units, ascending bytes
  std::vector<double> loss;    ///< strictly decreasing
  std::vector<int64_t> bytes;  ///< strictly increasing
  bool exact = true;
  int64_t eps_bytes = 0;
  int64_t peak_states = 0;  ///< largest intermediate front
  size_t size() const { return loss.size(); }
};

/// Throws ValueError for a 3-objective problem or an avg-bits constraint,
/// and when an intermediate front exceeds max_points (suggesting eps_bytes).
/// Respects constraints.max_bytes.
ExactFront exact_front(const Problem& problem, const ExactConfig& config = {});

}  // namespace empas
