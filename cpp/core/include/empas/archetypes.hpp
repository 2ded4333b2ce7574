// Deployable picks from a front: max_accuracy, balanced (knee), max_compression,
// best-under-budget.
#pragma once
#include <cstdint>
#include <vector>

namespace empas {

struct Archetypes {
  int max_accuracy = -1;     ///< lowest loss (ties: fewer bytes)
  int balanced = -1;         ///< knee: smallest normalized distance to the ideal point
  int max_compression = -1;  ///< fewest bytes (ties: lower loss)
};

/// Indices into the given front (loss[i], bytes[i]); all -1 for an empty front.
Archetypes select_archetypes(const std::vector<double>& loss, const std::vector<double>& bytes);

/// Lowest-loss point with bytes <= budget (ties: fewer bytes); -1 if none.
int best_under_budget(const std::vector<double>& loss, const std::vector<double>& bytes, double budget);

}  // namespace empas
