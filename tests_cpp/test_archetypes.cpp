#include <gtest/gtest.h>

#include <vector>

#include "empas/archetypes.hpp"

using namespace empas;

TEST(Archetypes, ExtremesAndKnee) {
  // A convex front whose knee is clearly (2, 2).
  const std::vector<double> loss = {10, 4, 2, 1.5, 1.0}, bytes = {1, 1.5, 2, 6, 10};
  const Archetypes a = select_archetypes(loss, bytes);
  EXPECT_EQ(a.max_accuracy, 4);
  EXPECT_EQ(a.max_compression, 0);
  EXPECT_EQ(a.balanced, 2);
}

TEST(Archetypes, TiesPreferTheOtherObjective) {
  const std::vector<double> loss = {1, 1, 3, 3}, bytes = {5, 4, 1, 2};
  const Archetypes a = select_archetypes(loss, bytes);
  EXPECT_EQ(a.max_accuracy, 1);
  EXPECT_EQ(a.max_compression, 2);
}

TEST(Archetypes, SinglePointAndEmpty) {
  const Archetypes one = select_archetypes({3}, {7});
  EXPECT_EQ(one.max_accuracy, 0);
  EXPECT_EQ(one.balanced, 0);
  EXPECT_EQ(one.max_compression, 0);
  const Archetypes none = select_archetypes({}, {});
  EXPECT_EQ(none.balanced, -1);
}

TEST(Archetypes, BestUnderBudget) {
  const std::vector<double> loss = {10, 4, 2, 1.5, 1.0}, bytes = {1, 1.5, 2, 6, 10};
  EXPECT_EQ(best_under_budget(loss, bytes, 5.9), 2);
  EXPECT_EQ(best_under_budget(loss, bytes, 6), 3);
  EXPECT_EQ(best_under_budget(loss, bytes, 100), 4);
  EXPECT_EQ(best_under_budget(loss, bytes, 0.5), -1);
}
