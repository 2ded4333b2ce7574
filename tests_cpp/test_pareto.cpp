#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "empas/pareto.hpp"
#include "empas/rng.hpp"

using namespace empas;

namespace {

struct Points {
  int n, m;
  std::vector<double> obj, viol;
};

// Random points on a coarse grid (so ties and duplicates occur), some infeasible.
Points random_points(int n, int m, uint64_t seed, bool constrained) {
  Rng r(seed, 7);
  Points p{n, m, {}, {}};
  for (int i = 0; i < n * m; ++i) p.obj.push_back(static_cast<double>(r.below(12)));
  for (int i = 0; i < n; ++i)
    p.viol.push_back(constrained && r.below(4) == 0 ? static_cast<double>(1 + r.below(3)) : 0.0);
  return p;
}

// Reference: peel the points no remaining point constrained-dominates.
std::vector<int> brute_force_ranks(const Points& p) {
  std::vector<int> rank(p.n, -1);
  int assigned = 0;
  for (int r = 0; assigned < p.n; ++r) {
    std::vector<int> front;
    for (int i = 0; i < p.n; ++i) {
      if (rank[i] >= 0) continue;
      bool dominated = false;
      for (int j = 0; j < p.n && !dominated; ++j)
        dominated = j != i && rank[j] < 0 &&
                    constrained_dominates(&p.obj[j * p.m], p.viol[j], &p.obj[i * p.m], p.viol[i], p.m);
      if (!dominated) front.push_back(i);
    }
    for (int i : front) rank[i] = r;
    assigned += static_cast<int>(front.size());
  }
  return rank;
}

}  // namespace

TEST(Dominance, Basics) {
  const double a[] = {1, 2}, b[] = {2, 2}, c[] = {1, 2};
  EXPECT_TRUE(dominates(a, b, 2));
  EXPECT_FALSE(dominates(b, a, 2));
  EXPECT_FALSE(dominates(a, c, 2));                     // equal points do not dominate
  EXPECT_TRUE(constrained_dominates(b, 0, a, 0.5, 2));  // feasible beats infeasible
  EXPECT_TRUE(constrained_dominates(b, 0.1, a, 0.5, 2));
  EXPECT_FALSE(constrained_dominates(a, 0.5, b, 0.5, 2));
}

class SortVsBruteForce : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(SortVsBruteForce, RanksAndFrontOrderMatch) {
  const auto [m, constrained] = GetParam();
  for (uint64_t seed = 0; seed < 60; ++seed) {
    const int n = 1 + static_cast<int>(seed * 7 % 90);
    const Points p = random_points(n, m, seed, constrained);
    const auto expect = brute_force_ranks(p);
    for (int threads : {1, 2}) {
      const auto fronts =
          non_dominated_sort(p.obj.data(), n, m, constrained ? p.viol.data() : nullptr, 0, threads);
      std::vector<int> rank(n, -1);
      size_t total = 0;
      for (size_t r = 0; r < fronts.size(); ++r) {
        EXPECT_TRUE(std::is_sorted(fronts[r].begin(), fronts[r].end()));
        for (int i : fronts[r]) rank[i] = static_cast<int>(r);
        total += fronts[r].size();
      }
      ASSERT_EQ(total, static_cast<size_t>(n));
      if (!constrained) {
        const auto plain = brute_force_ranks(Points{n, m, p.obj, std::vector<double>(n, 0.0)});
        EXPECT_EQ(rank, plain) << "seed " << seed;
      } else {
        EXPECT_EQ(rank, expect) << "seed " << seed;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TwoAndThreeObjectives, SortVsBruteForce,
                         ::testing::Combine(::testing::Values(2, 3), ::testing::Bool()));

TEST(NonDominatedSort, StopsOnceEnoughAreSorted) {
  const Points p = random_points(80, 2, 3, false);
  const auto all = non_dominated_sort(p.obj.data(), 80, 2, nullptr);
  const auto some = non_dominated_sort(p.obj.data(), 80, 2, nullptr, 10);
  ASSERT_LE(some.size(), all.size());
  size_t got = 0;
  for (size_t r = 0; r < some.size(); ++r) {
    EXPECT_EQ(some[r], all[r]);
    got += some[r].size();
  }
  EXPECT_GE(got, 10u);
  EXPECT_LT(got - some.back().size(), 10u);
}

TEST(Crowding, MatchesDirectComputation) {
  for (uint64_t seed = 0; seed < 30; ++seed) {
    Rng r(seed, 99);
    const int m = 2 + static_cast<int>(seed % 2), n = 3 + static_cast<int>(r.below(20));
    std::vector<double> obj;
    for (int i = 0; i < n * m; ++i) obj.push_back(r.uniform());  // distinct values
    std::vector<int> front(n);
    std::iota(front.begin(), front.end(), 0);
    const auto cd = crowding_distance(obj.data(), m, front);
    std::vector<double> expect(n, 0.0);
    for (int k = 0; k < m; ++k) {
      double lo = 1e9, hi = -1e9;
      for (int i = 0; i < n; ++i) lo = std::min(lo, obj[i * m + k]), hi = std::max(hi, obj[i * m + k]);
      for (int i = 0; i < n; ++i) {
        const double v = obj[i * m + k];
        double below = -1, above = -1;  // nearest neighbours in objective k
        for (int j = 0; j < n; ++j) {
          const double w = obj[j * m + k];
          if (w < v && (below < 0 || w > obj[below * m + k])) below = j;
          if (w > v && (above < 0 || w < obj[above * m + k])) above = j;
        }
        if (below < 0 || above < 0)
          expect[i] = std::numeric_limits<double>::infinity();
        else if (std::isfinite(expect[i]))
          expect[i] +=
              (obj[static_cast<int>(above) * m + k] - obj[static_cast<int>(below) * m + k]) / (hi - lo);
      }
    }
    for (int i = 0; i < n; ++i) {
      if (std::isinf(expect[i]))
        EXPECT_TRUE(std::isinf(cd[i]));
      else
        EXPECT_NEAR(cd[i], expect[i], 1e-12);
    }
  }
}

TEST(Crowding, SmallFrontsAreAllBoundary) {
  const std::vector<double> obj = {1, 2, 3, 4};
  for (const auto& f : {std::vector<int>{0}, std::vector<int>{0, 1}}) {
    for (double d : crowding_distance(obj.data(), 2, f)) EXPECT_TRUE(std::isinf(d));
  }
}

TEST(ParetoFilter, KeepsOnlyNonDominated) {
  const std::vector<double> obj = {1, 5, 2, 2, 3, 3, 5, 1, 2, 2};
  EXPECT_EQ(pareto_filter(obj.data(), 5, 2), (std::vector<int>{0, 1, 3, 4}));
}
