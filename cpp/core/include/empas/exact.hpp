// Exact loss-vs-bytes Pareto front of the additive proxy, by merging Pareto
// sets unit by unit (dynamic programming over (bytes, loss) states).
#pragma once
#include <cstdint>
#include <vector>

#include "empas/space.hpp"

namespace empas {

struct ExactConfig {
  int64_t max_points = 2'000'000;  ///< largest intermediate front allowed
  /// 0: exact. > 0: an epsilon-grid: at each of the n_units merge steps, states
  /// in the same bytes bucket of width max(1, eps_bytes / n_units) keep only the
  /// lowest-loss one (the smallest state of a step is always kept). Every true
  /// front point (B, L) then has a returned point of loss <= L and bytes <=
  /// B + error_bound_bytes <= B + eps_bytes (without a byte budget; with one,
  /// points within error_bound_bytes of the budget may lack a cover), and the
  /// front keeps both extremes: the smallest plan and (without a budget) the
  /// lowest-loss plan.
  int64_t eps_bytes = 0;
};

struct ExactFront {
  int n_units = 0;
  std::vector<Gene> genomes;   ///< n_points x n_units, ascending bytes
  std::vector<double> loss;    ///< strictly decreasing
  std::vector<int64_t> bytes;  ///< strictly increasing
  bool exact = true;
  int64_t eps_bytes = 0;
  int64_t error_bound_bytes = 0;  ///< stated bytes error of an epsilon-grid front (<= eps_bytes)
  int64_t peak_states = 0;        ///< largest intermediate front
  size_t size() const { return loss.size(); }
};

/// Throws ValueError for a 3-objective problem or an avg-bits constraint,
/// and when an intermediate front exceeds max_points (suggesting eps_bytes).
/// Respects constraints.max_bytes.
ExactFront exact_front(const Problem& problem, const ExactConfig& config = {});

}  // namespace empas
