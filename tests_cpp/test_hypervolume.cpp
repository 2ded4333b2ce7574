#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
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

// Volume of the union of the boxes [p, ref] by inclusion-exclusion over all
// subsets (the intersection of boxes is the box at their component-wise max).
// A point not below ref in some objective has an empty box and adds nothing.
double inclusion_exclusion(const std::vector<double>& pts, int m, const std::vector<double>& ref) {
  const int n = static_cast<int>(pts.size()) / m;
  double vol = 0;
  for (unsigned mask = 1; mask < (1u << n); ++mask) {
    double box = 1;
    for (int k = 0; k < m; ++k) {
      double lo = -1e300;
      for (int i = 0; i < n; ++i)
        if (mask & (1u << i)) lo = std::max(lo, pts[i * m + k]);
      box *= std::max(0.0, ref[k] - lo);
    }
    vol += (__builtin_popcount(mask) % 2 ? 1 : -1) * box;
  }
  return vol;
}

// Monte-Carlo estimate with a fixed stream: fraction of uniform samples in
// [lo, ref] that some point weakly dominates, times the box volume.
double monte_carlo(const std::vector<double>& pts, int m, const std::vector<double>& lo,
                   const std::vector<double>& ref, int samples, uint64_t seed) {
  Rng r(seed, 4242);
  int hit = 0;
  std::vector<double> s(m);
  for (int t = 0; t < samples; ++t) {
    for (int k = 0; k < m; ++k) s[k] = lo[k] + r.uniform() * (ref[k] - lo[k]);
    for (size_t i = 0; i < pts.size() / m; ++i) {
      bool in = true;
      for (int k = 0; k < m; ++k) in = in && pts[i * m + k] <= s[k];
      if (in) {
        ++hit;
        break;
      }
    }
  }
  double box = 1;
  for (int k = 0; k < m; ++k) box *= ref[k] - lo[k];
  return box * hit / samples;
}

}  // namespace

TEST(Hypervolume, HandComputed2D) {
  // Staircase (1,3), (2,2), (3,1) against (4,4): 3 + 2 + 1 = 6.
  EXPECT_DOUBLE_EQ(hypervolume({1, 3, 2, 2, 3, 1}, 2, {4, 4}), 6.0);
  // A dominated point and a point outside the box add nothing.
  EXPECT_DOUBLE_EQ(hypervolume({1, 3, 2, 2, 3, 1, 3, 3, 5, 0}, 2, {4, 4}), 6.0);
  EXPECT_DOUBLE_EQ(hypervolume({}, 2, {4, 4}), 0.0);
  // One point: a rectangle; order of the points does not matter.
  EXPECT_DOUBLE_EQ(hypervolume({0.5, 1.5}, 2, {2, 4}), 1.5 * 2.5);
  EXPECT_DOUBLE_EQ(hypervolume({3, 1, 1, 3, 2, 2}, 2, {4, 4}), 6.0);
  // Loss x bytes scale as in the search: (3.3, 5e8), (3.5, 2e8) vs (4.3, 1e9).
  EXPECT_DOUBLE_EQ(hypervolume({3.3, 5e8, 3.5, 2e8}, 2, {4.3, 1e9}), 1.0 * 5e8 + 0.8 * 3e8);
}

TEST(Hypervolume, HandComputed3D) {
  EXPECT_DOUBLE_EQ(hypervolume({0, 0, 0}, 3, {2, 3, 4}), 24.0);
  // Two boxes 2x2x1 and 1x1x2 sharing a 1x1x1 corner: 4 + 2 - 1 = 5 (against 2,2,2).
  EXPECT_DOUBLE_EQ(hypervolume({0, 0, 1, 1, 1, 0}, 3, {2, 2, 2}), 5.0);
  // Three axis-aligned slabs of a unit cube: (0,1/2,1/2) etc. give 3 x 1/4 - 3 x 1/8 + 1/8.
  EXPECT_DOUBLE_EQ(hypervolume({0, 0.5, 0.5, 0.5, 0, 0.5, 0.5, 0.5, 0}, 3, {1, 1, 1}), 0.5);
}

TEST(Hypervolume, PointsOutsideTheReferenceAddNothing) {
  const std::vector<double> base2 = {1, 3, 2, 2, 3, 1};
  const double hv2 = hypervolume(base2, 2, {4, 4});
  // On the reference in one objective, beyond it, or far better in one
  // objective but beyond in the other: none is strictly inside the box.
  for (const std::vector<double>& extra :
       {std::vector<double>{4, 0}, std::vector<double>{0, 4}, std::vector<double>{4, 4},
        std::vector<double>{-100, 4}, std::vector<double>{5, -100}, std::vector<double>{10, 10}}) {
    std::vector<double> pts = base2;
    pts.insert(pts.end(), extra.begin(), extra.end());
    EXPECT_DOUBLE_EQ(hypervolume(pts, 2, {4, 4}), hv2) << extra[0] << ", " << extra[1];
    EXPECT_DOUBLE_EQ(hypervolume(extra, 2, {4, 4}), 0.0);
  }
  const std::vector<double> base3 = {0, 0, 1, 1, 1, 0};
  const double hv3 = hypervolume(base3, 3, {2, 2, 2});
  for (const std::vector<double>& extra : {std::vector<double>{-5, -5, 2}, std::vector<double>{2, -5, -5},
                                           std::vector<double>{-1, 3, -1}, std::vector<double>{2, 2, 2}}) {
    std::vector<double> pts = base3;
    pts.insert(pts.end(), extra.begin(), extra.end());
    EXPECT_DOUBLE_EQ(hypervolume(pts, 3, {2, 2, 2}), hv3);
    EXPECT_DOUBLE_EQ(hypervolume(extra, 3, {2, 2, 2}), 0.0);
  }
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

TEST(Hypervolume, MatchesInclusionExclusionOnContinuousSets) {
  // Coordinates in [-0.2, 1.2) against ref (1, 1[, 1]): some points lie
  // outside the box, some coordinates are negative; duplicates are added.
  for (int m : {2, 3}) {
    for (uint64_t seed = 0; seed < 60; ++seed) {
      Rng r(seed, 100 + m);
      const int n = 1 + static_cast<int>(r.below(10));
      std::vector<double> pts;
      for (int i = 0; i < n; ++i) {
        if (i > 0 && r.below(6) == 0) {
          const int j = static_cast<int>(r.below(static_cast<uint32_t>(i)));
          for (int k = 0; k < m; ++k) pts.push_back(pts[j * m + k]);
          continue;
        }
        for (int k = 0; k < m; ++k) pts.push_back(-0.2 + 1.4 * r.uniform());
      }
      const std::vector<double> ref(m, 1.0);
      const double expect = inclusion_exclusion(pts, m, ref);
      const double got = hypervolume(pts, m, ref);
      EXPECT_NEAR(got, expect, 1e-9) << "m " << m << " seed " << seed;
      // Permuting the points changes nothing.
      std::vector<double> rev;
      for (int i = n - 1; i >= 0; --i) rev.insert(rev.end(), pts.begin() + i * m, pts.begin() + (i + 1) * m);
      EXPECT_NEAR(hypervolume(rev, m, ref), got, 1e-12) << "m " << m << " seed " << seed;
    }
  }
}

TEST(Hypervolume, AgreesWithMonteCarloOnLargerSets) {
  // Sets too large for inclusion-exclusion: 60 points near a curved front.
  for (int m : {2, 3}) {
    for (uint64_t seed = 0; seed < 4; ++seed) {
      Rng r(seed, 300 + m);
      std::vector<double> pts;
      for (int i = 0; i < 60; ++i) {
        std::vector<double> x(m);
        double norm = 0;
        for (int k = 0; k < m; ++k) norm += (x[k] = 0.05 + r.uniform()) * x[k];
        for (int k = 0; k < m; ++k) pts.push_back(x[k] / std::sqrt(norm) + 0.1 * r.uniform());
      }
      const std::vector<double> lo(m, 0.0), ref(m, 1.5);
      const double got = hypervolume(pts, m, ref);
      const double box = std::pow(1.5, m);
      const double mc = monte_carlo(pts, m, lo, ref, 100000, seed);
      // Binomial standard error <= box * 0.5 / sqrt(100000) ~ 0.0016 box; allow 5 sigma.
      EXPECT_NEAR(got, mc, 5 * 0.5 / std::sqrt(100000.0) * box) << "m " << m << " seed " << seed;
      EXPECT_GT(got, 0.0);
      EXPECT_LT(got, box);
    }
  }
}

TEST(Hypervolume, AddingAPointNeverDecreasesIt) {
  for (int m : {2, 3}) {
    Rng r(9, m);
    std::vector<double> pts;
    const std::vector<double> ref(m, 1.0);
    double prev = 0;
    for (int i = 0; i < 40; ++i) {
      for (int k = 0; k < m; ++k) pts.push_back(r.uniform());
      const double hv = hypervolume(pts, m, ref);
      EXPECT_GE(hv, prev - 1e-15);
      prev = hv;
    }
  }
}

TEST(Hypervolume, RejectsBadShapes) {
  EXPECT_THROW(hypervolume({1, 2, 3, 4}, 4, {1, 1, 1, 1}), ValueError);
  EXPECT_THROW(hypervolume({1}, 1, {4}), ValueError);
  EXPECT_THROW(hypervolume({1, 2, 3}, 2, {4, 4}), ValueError);
  EXPECT_THROW(hypervolume({1, 2}, 2, {4}), ValueError);
  EXPECT_THROW(hypervolume({1, 2, 3}, 3, {4, 4}), ValueError);
}
