#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#include "empas/pareto.hpp"
#include "empas/rng.hpp"

using namespace empas;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

// How objective values are drawn: a 12-value grid (ties and some duplicates),
// a 3-value grid (mostly ties and duplicates) or continuous values.
enum class Values { Grid, Coarse, Continuous };

struct Points {
  int n, m;
  std::vector<double> obj, viol;
};

// Random points; with `constrained`, about a quarter are infeasible with one
// of three violation levels (so infeasible ties occur too). About one point in
// eight is an exact copy (objectives and violation) of an earlier one.
Points random_points(int n, int m, uint64_t seed, bool constrained, Values values = Values::Grid) {
  Rng r(seed, 7, static_cast<uint64_t>(values), static_cast<uint64_t>(m));
  Points p{n, m, {}, {}};
  for (int i = 0; i < n; ++i) {
    if (i > 0 && r.below(8) == 0) {
      const int j = static_cast<int>(r.below(static_cast<uint32_t>(i)));
      for (int k = 0; k < m; ++k) p.obj.push_back(p.obj[j * m + k]);
      p.viol.push_back(p.viol[j]);
      continue;
    }
    for (int k = 0; k < m; ++k) {
      switch (values) {
        case Values::Grid:
          p.obj.push_back(static_cast<double>(r.below(12)));
          break;
        case Values::Coarse:
          p.obj.push_back(static_cast<double>(r.below(3)));
          break;
        case Values::Continuous:
          p.obj.push_back(r.uniform());
          break;
      }
    }
    p.viol.push_back(constrained && r.below(4) == 0 ? static_cast<double>(1 + r.below(3)) : 0.0);
  }
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

// Ranks from a list of fronts; -1 for unsorted points.
std::vector<int> ranks_of(const std::vector<std::vector<int>>& fronts, int n) {
  std::vector<int> rank(n, -1);
  for (size_t r = 0; r < fronts.size(); ++r)
    for (int i : fronts[r]) rank[i] = static_cast<int>(r);
  return rank;
}

// Crowding distance as Deb et al. define it, written out directly: per
// objective, order the front by value (ties keep their order in `front`),
// give both ends +inf and every interior point the normalized gap between
// its two neighbours.
std::vector<double> crowding_reference(const double* objs, int m, const std::vector<int>& front) {
  const size_t n = front.size();
  std::vector<double> d(n, 0.0);
  if (n <= 2) return std::vector<double>(n, kInf);
  for (int k = 0; k < m; ++k) {
    auto val = [&](size_t p) { return objs[static_cast<size_t>(front[p]) * m + k]; };
    std::vector<size_t> order;  // insertion sort: stable by construction
    for (size_t p = 0; p < n; ++p) {
      size_t at = order.size();
      while (at > 0 && val(order[at - 1]) > val(p)) --at;
      order.insert(order.begin() + static_cast<std::ptrdiff_t>(at), p);
    }
    const double lo = val(order[0]), hi = val(order[n - 1]);
    d[order[0]] = kInf;
    d[order[n - 1]] = kInf;
    if (hi == lo) continue;
    for (size_t t = 1; t + 1 < n; ++t) d[order[t]] += (val(order[t + 1]) - val(order[t - 1])) / (hi - lo);
  }
  return d;
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
  EXPECT_FALSE(constrained_dominates(a, 0.5, a, 0.5, 2));
  EXPECT_FALSE(constrained_dominates(a, 0.5, b, 0, 2));  // infeasible never beats feasible
}

TEST(Dominance, ThreeObjectives) {
  const double a[] = {1, 2, 3}, b[] = {1, 2, 4}, c[] = {0, 5, 3};
  EXPECT_TRUE(dominates(a, b, 3));
  EXPECT_FALSE(dominates(b, a, 3));
  EXPECT_FALSE(dominates(a, c, 3));
  EXPECT_FALSE(dominates(c, a, 3));
  EXPECT_FALSE(dominates(a, a, 3));
  // Only the first m objectives count: a and b differ in the third only.
  EXPECT_FALSE(dominates(a, b, 2));
}

// (m, constrained, value distribution)
class SortVsBruteForce : public ::testing::TestWithParam<std::tuple<int, bool, Values>> {};

TEST_P(SortVsBruteForce, RanksAndFrontOrderMatch) {
  const auto [m, constrained, values] = GetParam();
  for (uint64_t seed = 0; seed < 40; ++seed) {
    // Sizes from 1 to 220: above 128 the m = 3 sort takes its parallel path.
    const int n = 1 + static_cast<int>(seed * 37 % 220);
    Points p = random_points(n, m, seed, constrained, values);
    const auto expect = brute_force_ranks(p);
    for (int threads : {1, 2, 4}) {
      const auto fronts =
          non_dominated_sort(p.obj.data(), n, m, constrained ? p.viol.data() : nullptr, 0, threads);
      size_t total = 0;
      for (const auto& f : fronts) {
        EXPECT_FALSE(f.empty());
        EXPECT_TRUE(std::is_sorted(f.begin(), f.end()));
        total += f.size();
      }
      ASSERT_EQ(total, static_cast<size_t>(n)) << "seed " << seed;
      EXPECT_EQ(ranks_of(fronts, n), expect) << "n " << n << " seed " << seed << " threads " << threads;
    }
  }
}

TEST_P(SortVsBruteForce, StopsOnceEnoughAreSorted) {
  const auto [m, constrained, values] = GetParam();
  for (uint64_t seed = 0; seed < 10; ++seed) {
    const int n = 20 + static_cast<int>(seed * 53 % 200);
    const Points p = random_points(n, m, seed + 100, constrained, values);
    const double* v = constrained ? p.viol.data() : nullptr;
    const auto all = non_dominated_sort(p.obj.data(), n, m, v, 0, 1);
    for (int needed : {1, n / 3, n / 2, n - 1, n, n + 5}) {
      const auto some = non_dominated_sort(p.obj.data(), n, m, v, needed, 2);
      ASSERT_FALSE(some.empty());
      ASSERT_LE(some.size(), all.size());
      size_t got = 0;
      for (size_t r = 0; r < some.size(); ++r) {
        EXPECT_EQ(some[r], all[r]) << "needed " << needed << " front " << r;
        got += some[r].size();
      }
      // The prefix covers `needed` points and is the shortest that does.
      EXPECT_GE(got, static_cast<size_t>(std::min(needed, n)));
      EXPECT_LT(got - some.back().size(), static_cast<size_t>(std::min(needed, n)));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllCases, SortVsBruteForce,
                         ::testing::Combine(::testing::Values(2, 3), ::testing::Bool(),
                                            ::testing::Values(Values::Grid, Values::Coarse,
                                                              Values::Continuous)));

TEST(NonDominatedSort, EmptyAndSingle) {
  EXPECT_TRUE(non_dominated_sort(nullptr, 0, 2, nullptr).empty());
  const double one[] = {3, 4, 5};
  for (int m : {2, 3}) {
    const auto f = non_dominated_sort(one, 1, m, nullptr);
    ASSERT_EQ(f.size(), 1u);
    EXPECT_EQ(f[0], std::vector<int>{0});
  }
}

TEST(NonDominatedSort, AllDuplicatesFormOneFront) {
  const std::vector<double> obj(3 * 50, 1.5);
  for (int m : {2, 3}) {
    const auto f = non_dominated_sort(obj.data(), 50, m, nullptr, 0, 2);
    ASSERT_EQ(f.size(), 1u);
    EXPECT_EQ(f[0].size(), 50u);
  }
}

TEST(NonDominatedSort, InfeasiblePointsComeLastByViolation) {
  // Infeasible points with better objectives still rank after every feasible
  // one, one front per violation level; objectives do not order them.
  const std::vector<double> obj = {5, 5, 0, 0, 1, 9, 9, 1, 0, 1, 3, 3};
  const std::vector<double> viol = {0, 2, 0, 0, 1, 2};
  for (int threads : {1, 2}) {
    const auto f = non_dominated_sort(obj.data(), 6, 2, viol.data(), 0, threads);
    const std::vector<std::vector<int>> expect = {{0, 2, 3}, {4}, {1, 5}};
    EXPECT_EQ(f, expect);
  }
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
        int below = -1, above = -1;  // nearest neighbours in objective k
        for (int j = 0; j < n; ++j) {
          const double w = obj[j * m + k];
          if (w < v && (below < 0 || w > obj[below * m + k])) below = j;
          if (w > v && (above < 0 || w < obj[above * m + k])) above = j;
        }
        if (below < 0 || above < 0)
          expect[i] = kInf;
        else if (std::isfinite(expect[i]))
          expect[i] += (obj[above * m + k] - obj[below * m + k]) / (hi - lo);
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

TEST(Crowding, MatchesReferenceWithTiesDuplicatesAndSubsets) {
  for (Values values : {Values::Grid, Values::Coarse, Values::Continuous}) {
    for (uint64_t seed = 0; seed < 40; ++seed) {
      const int m = 2 + static_cast<int>(seed % 2);
      const int n = 1 + static_cast<int>(seed * 13 % 60);
      const Points p = random_points(n, m, seed + 500, false, values);
      // A random subset of the points, in random order.
      Rng r(seed, 31);
      std::vector<int> front;
      for (int i = 0; i < n; ++i)
        if (r.below(3) != 0) front.push_back(i);
      for (size_t i = front.size(); i > 1; --i)
        std::swap(front[i - 1], front[r.below(static_cast<uint32_t>(i))]);
      const auto got = crowding_distance(p.obj.data(), m, front);
      const auto expect = crowding_reference(p.obj.data(), m, front);
      ASSERT_EQ(got.size(), front.size());
      for (size_t i = 0; i < front.size(); ++i) {
        EXPECT_GE(got[i], 0.0);
        if (std::isinf(expect[i]))
          EXPECT_TRUE(std::isinf(got[i])) << "seed " << seed << " point " << i;
        else
          EXPECT_NEAR(got[i], expect[i], 1e-12) << "seed " << seed << " point " << i;
      }
    }
  }
}

TEST(Crowding, ConstantObjectiveAddsNothing) {
  // Objective 1 is constant: only objective 0 spreads the points.
  const std::vector<double> obj = {0, 7, 1, 7, 3, 7, 4, 7};
  const auto cd = crowding_distance(obj.data(), 2, {0, 1, 2, 3});
  EXPECT_TRUE(std::isinf(cd[0]));
  EXPECT_TRUE(std::isinf(cd[3]));
  EXPECT_DOUBLE_EQ(cd[1], 3.0 / 4.0);
  EXPECT_DOUBLE_EQ(cd[2], 3.0 / 4.0);
}

TEST(Crowding, HandComputed) {
  // (0,4) (1,2) (3,1) (4,0): ranges 4 and 4.
  const std::vector<double> obj = {0, 4, 1, 2, 3, 1, 4, 0};
  const auto cd = crowding_distance(obj.data(), 2, {0, 1, 2, 3});
  EXPECT_TRUE(std::isinf(cd[0]));
  EXPECT_DOUBLE_EQ(cd[1], (3.0 - 0.0) / 4 + (4.0 - 1.0) / 4);
  EXPECT_DOUBLE_EQ(cd[2], (4.0 - 1.0) / 4 + (2.0 - 0.0) / 4);
  EXPECT_TRUE(std::isinf(cd[3]));
}

TEST(Crowding, SmallFrontsAreAllBoundary) {
  const std::vector<double> obj = {1, 2, 3, 4};
  for (const auto& f : {std::vector<int>{0}, std::vector<int>{0, 1}}) {
    for (double d : crowding_distance(obj.data(), 2, f)) EXPECT_TRUE(std::isinf(d));
  }
  EXPECT_TRUE(crowding_distance(obj.data(), 2, {}).empty());
}

TEST(ParetoFilter, KeepsOnlyNonDominated) {
  const std::vector<double> obj = {1, 5, 2, 2, 3, 3, 5, 1, 2, 2};
  EXPECT_EQ(pareto_filter(obj.data(), 5, 2), (std::vector<int>{0, 1, 3, 4}));
}

TEST(ParetoFilter, EqualsFirstFrontOfTheSort) {
  for (int m : {2, 3}) {
    for (uint64_t seed = 0; seed < 30; ++seed) {
      const int n = 1 + static_cast<int>(seed * 11 % 120);
      const Points p = random_points(n, m, seed + 900, false, seed % 2 ? Values::Grid : Values::Continuous);
      std::vector<int> expect;
      const auto rank = brute_force_ranks(p);
      for (int i = 0; i < n; ++i)
        if (rank[i] == 0) expect.push_back(i);
      EXPECT_EQ(pareto_filter(p.obj.data(), n, m), expect) << "m " << m << " seed " << seed;
    }
  }
}
