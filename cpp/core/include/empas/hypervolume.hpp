// Hypervolume indicator (minimization) for 2 or 3 objectives.
#pragma once
#include <vector>

namespace empas {

/// Volume dominated by the points (n x m row-major, m = 2 or 3) and bounded
/// by `ref`; points not strictly better than ref in every objective add nothing.
double hypervolume(const std::vector<double>& points, int m, const std::vector<double>& ref);

}  // namespace empas
