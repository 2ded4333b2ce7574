#include <gtest/gtest.h>

#include <vector>

#include "empas/error.hpp"
#include "empas/hypervolume.hpp"
#include "empas/rng.hpp"

using namespace empas;

namespace {

// Counts unit cells of an integer grid dominated by at least one point.
double grid_volume(const std::vector<double>& pts, int m, const std::vector<double>& ref) {
  const int R0 = static_cast<int>(ref[0]), R1 = static_cast<int>(ref[1]);
  const int R2 = m == 3 ? static_cast<int>(ref[2]) : 1;
  double vol = 0;
  for (int x = 0; x < R0; ++x)
    for (int y = 0; y < R1; ++y)
      for (int z = 0; z < R2; ++z) {
        for (size_t i = 0; i < pts.size() / m; ++i) {
          const double* p = &pts[i * m];
          if (p[0] <= x && p[1] <= y && (m == 2 || p[2] <= z)) {
            vol += 1;
            break;
          }
        }
      }
  return vol;
}

}  // namespace

TEST(Hypervolume, HandComputed2D) {
  // Staircase (1,3), (2,2), (3,1) against (4,4): 3 + 2 + 1 = 6.
  EXPECT_DOUBLE_EQ(hypervolume({1, 3, 2, 2, 3, 1}, 2, {4, 4}), 6.0);
  // A dominated point and a point outside the box add nothing.
  EXPECT_DOUBLE_EQ(hypervolume({1, 3, 2, 2, 3, 1, 3, 3, 5, 0}, 2, {4, 4}), 6.0);
  EXPECT_DOUBLE_EQ(hypervolume({}, 2, {4, 4}), 0.0);
}

TEST(Hypervolume, HandComputed3D) {
  EXPECT_DOUBLE_EQ(hypervolume({0, 0, 0}, 3, {2, 3, 4}), 24.0);
  // Two boxes 2x2x1 and 1x1x2 sharing a 1x1x1 corner: 4 + 2 - 1 = 5 (against 2,2,2).
  EXPECT_DOUBLE_EQ(hypervolume({0, 0, 1, 1, 1, 0}, 3, {2, 2, 2}), 5.0);
}

TEST(Hypervolume, MatchesGridCountOnRandomSets) {
  for (int m : {2, 3}) {
    for (uint64_t seed = 0; seed < 25; ++seed) {
      Rng r(seed, m);
      const int n = 1 + static_cast<int>(r.below(12));
      std::vector<double> pts;
      for (int i = 0; i < n * m; ++i) pts.push_back(static_cast<double>(r.below(11)));
      const std::vector<double> ref(m, 10.0);
      EXPECT_DOUBLE_EQ(hypervolume(pts, m, ref), grid_volume(pts, m, ref)) << "m " << m << " seed " << seed;
    }
  }
}

TEST(Hypervolume, RejectsBadShapes) {
  EXPECT_THROW(hypervolume({1, 2, 3, 4}, 4, {1, 1, 1, 1}), ValueError);
  EXPECT_THROW(hypervolume({1, 2, 3}, 2, {4, 4}), ValueError);
  EXPECT_THROW(hypervolume({1, 2}, 2, {4}), ValueError);
}
