#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "empas/archetypes.hpp"
#include "empas/error.hpp"
#include "empas/rng.hpp"

using namespace empas;

namespace {

// Random front: bytes strictly increasing, loss strictly decreasing, convex
// or not, shuffled.
void random_front(uint64_t seed, int n, std::vector<double>& loss, std::vector<double>& bytes) {
  Rng r(seed, 55);
  std::vector<double> b, l;
  double x = 1e6 * (1 + r.uniform()), y = 5 + r.uniform();
  for (int i = 0; i < n; ++i) {
    b.push_back(x);
    l.push_back(y);
    x += 1e5 * (0.01 + r.uniform());
    y -= 0.2 * (0.01 + r.uniform()) * (seed % 2 ? 1.0 / (1 + i) : 1.0);
  }
  std::vector<int> perm(n);
  for (int i = 0; i < n; ++i) perm[i] = i;
  for (int i = n; i > 1; --i) std::swap(perm[i - 1], perm[r.below(static_cast<uint32_t>(i))]);
  loss.clear();
  bytes.clear();
  for (int i : perm) {
    loss.push_back(l[i]);
    bytes.push_back(b[i]);
  }
}

}  // namespace

TEST(Archetypes, ExtremesAndKnee) {
  // A convex front whose knee is clearly (2, 2).
  const std::vector<double> loss = {10, 4, 2, 1.5, 1.0}, bytes = {1, 1.5, 2, 6, 10};
  const Archetypes a = select_archetypes(loss, bytes);
  EXPECT_EQ(a.max_accuracy, 4);
  EXPECT_EQ(a.max_compression, 0);
  EXPECT_EQ(a.balanced, 2);
}

TEST(Archetypes, KneeIsTheNearestToTheIdealPointAfterNormalization) {
  for (uint64_t seed = 0; seed < 40; ++seed) {
    std::vector<double> loss, bytes;
    random_front(seed, 2 + static_cast<int>(seed % 30), loss, bytes);
    const int n = static_cast<int>(loss.size());
    const Archetypes a = select_archetypes(loss, bytes);
    const int ma = static_cast<int>(std::min_element(loss.begin(), loss.end()) - loss.begin());
    const int mc = static_cast<int>(std::min_element(bytes.begin(), bytes.end()) - bytes.begin());
    EXPECT_EQ(a.max_accuracy, ma);
    EXPECT_EQ(a.max_compression, mc);
    // Ideal point (min loss, min bytes); each axis scaled to the front's range.
    const double l0 = loss[ma], b0 = bytes[mc], lr = loss[mc] - l0, br = bytes[ma] - b0;
    std::vector<double> d(n);
    for (int i = 0; i < n; ++i) d[i] = std::hypot((loss[i] - l0) / lr, (bytes[i] - b0) / br);
    const double best = *std::min_element(d.begin(), d.end());
    ASSERT_GE(a.balanced, 0);
    EXPECT_LE(d[a.balanced], best + 1e-12) << "seed " << seed;
    // Scaling an objective by a power of two changes nothing.
    std::vector<double> scaled = bytes;
    for (double& b : scaled) b *= 1024;
    const Archetypes s = select_archetypes(loss, scaled);
    EXPECT_EQ(s.balanced, a.balanced);
    EXPECT_EQ(s.max_accuracy, a.max_accuracy);
    EXPECT_EQ(s.max_compression, a.max_compression);
  }
}

TEST(Archetypes, TiesPreferTheOtherObjective) {
  const std::vector<double> loss = {1, 1, 3, 3}, bytes = {5, 4, 1, 2};
  const Archetypes a = select_archetypes(loss, bytes);
  EXPECT_EQ(a.max_accuracy, 1);
  EXPECT_EQ(a.max_compression, 2);
}

TEST(Archetypes, ExactTiesKeepTheFirstIndex) {
  // Two knee candidates at the same normalized distance: the first one wins,
  // whatever the order of the front.
  const Archetypes a = select_archetypes({10, 6, 4, 0}, {0, 4, 6, 10});
  EXPECT_EQ(a.balanced, 1);
  EXPECT_EQ(a.max_accuracy, 3);
  EXPECT_EQ(a.max_compression, 0);
  const Archetypes b = select_archetypes({0, 4, 6, 10}, {10, 6, 4, 0});
  EXPECT_EQ(b.balanced, 1);
  EXPECT_EQ(b.max_accuracy, 0);
  EXPECT_EQ(b.max_compression, 3);
  // Duplicated points: every archetype is the first copy.
  const Archetypes d = select_archetypes({2, 2, 2}, {7, 7, 7});
  EXPECT_EQ(d.max_accuracy, 0);
  EXPECT_EQ(d.balanced, 0);
  EXPECT_EQ(d.max_compression, 0);
}

TEST(Archetypes, SinglePointAndEmpty) {
  const Archetypes one = select_archetypes({3}, {7});
  EXPECT_EQ(one.max_accuracy, 0);
  EXPECT_EQ(one.balanced, 0);
  EXPECT_EQ(one.max_compression, 0);
  const Archetypes none = select_archetypes({}, {});
  EXPECT_EQ(none.balanced, -1);
  EXPECT_EQ(none.max_accuracy, -1);
  EXPECT_EQ(none.max_compression, -1);
}

TEST(Archetypes, TwoPointsAreBothExtremes) {
  const Archetypes a = select_archetypes({1, 2}, {9, 3});
  EXPECT_EQ(a.max_accuracy, 0);
  EXPECT_EQ(a.max_compression, 1);
  EXPECT_TRUE(a.balanced == 0 || a.balanced == 1);
}

TEST(Archetypes, LengthMismatchIsAnError) {
  EXPECT_THROW(select_archetypes({1, 2}, {1}), ValueError);
  EXPECT_THROW(best_under_budget({1}, {1, 2}, 5), ValueError);
}

TEST(Archetypes, BestUnderBudget) {
  const std::vector<double> loss = {10, 4, 2, 1.5, 1.0}, bytes = {1, 1.5, 2, 6, 10};
  EXPECT_EQ(best_under_budget(loss, bytes, 5.9), 2);
  EXPECT_EQ(best_under_budget(loss, bytes, 6), 3);  // budget is inclusive
  EXPECT_EQ(best_under_budget(loss, bytes, 100), 4);
  EXPECT_EQ(best_under_budget(loss, bytes, 0.5), -1);
  EXPECT_EQ(best_under_budget({}, {}, 100), -1);
}

TEST(Archetypes, BestUnderBudgetTiesAndBruteForce) {
  // Equal loss: fewer bytes wins; identical points: the first.
  EXPECT_EQ(best_under_budget({1, 1, 1}, {5, 3, 3}, 10), 1);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::vector<double> loss, bytes;
    random_front(seed + 100, 25, loss, bytes);
    Rng r(seed, 8);
    for (int t = 0; t < 10; ++t) {
      const double budget = 9e5 + 4e6 * r.uniform();
      int expect = -1;
      for (size_t i = 0; i < loss.size(); ++i)
        if (bytes[i] <= budget && (expect < 0 || loss[i] < loss[expect])) expect = static_cast<int>(i);
      EXPECT_EQ(best_under_budget(loss, bytes, budget), expect);
    }
  }
}
