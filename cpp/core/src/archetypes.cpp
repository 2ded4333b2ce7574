#include "empas/archetypes.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "empas/error.hpp"

namespace empas {

Archetypes select_archetypes(const std::vector<double>& loss, const std::vector<double>& bytes) {
  if (loss.size() != bytes.size()) throw ValueError("loss and bytes differ in length");
  Archetypes a;
  const int n = static_cast<int>(loss.size());
  if (n == 0) return a;
  a.max_accuracy = a.max_compression = 0;
  for (int i = 1; i < n; ++i) {
    const int ma = a.max_accuracy, mc = a.max_compression;
    if (loss[i] < loss[ma] || (loss[i] == loss[ma] && bytes[i] < bytes[ma])) a.max_accuracy = i;
    if (bytes[i] < bytes[mc] || (bytes[i] == bytes[mc] && loss[i] < loss[mc])) a.max_compression = i;
  }
  const double l0 = loss[a.max_accuracy], b0 = bytes[a.max_compression];
  const double lr = loss[a.max_compression] - l0, br = bytes[a.max_accuracy] - b0;
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < n; ++i) {
    const double dl = lr > 0 ? (loss[i] - l0) / lr : 0.0;
    const double db = br > 0 ? (bytes[i] - b0) / br : 0.0;
    const double d = std::sqrt(dl * dl + db * db);
    if (d < best - 1e-15) {
      best = d;
      a.balanced = i;
    }
  }
  return a;
}

int best_under_budget(const std::vector<double>& loss, const std::vector<double>& bytes, double budget) {
  if (loss.size() != bytes.size()) throw ValueError("loss and bytes differ in length");
  int best = -1;
  for (size_t i = 0; i < loss.size(); ++i) {
    if (bytes[i] > budget) continue;
    if (best < 0 || loss[i] < loss[best] || (loss[i] == loss[best] && bytes[i] < bytes[best]))
      best = static_cast<int>(i);
  }
  return best;
}

}  // namespace empas
