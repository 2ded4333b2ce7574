#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "empas/error.hpp"
#include "empas/exact.hpp"
#include "helpers.hpp"

using namespace empas;

namespace {

struct Pt {
  int64_t bytes;
  double loss;
};

// Full enumeration of every allowed genome, budget-filtered, then the (bytes,
// loss) Pareto set: for each bytes value the lowest loss, kept if it beats
// every smaller bytes value.
std::vector<Pt> enumerate_front(const Problem& p) {
  std::vector<Pt> all;
  std::vector<size_t> idx(p.n_units, 0);
  std::vector<Gene> g(p.n_units);
  while (true) {
    for (int u = 0; u < p.n_units; ++u) g[u] = p.allowed_choices(u)[idx[u]];
    const Evaluation e = p.evaluate(g.data());
    if (p.constraints.max_bytes < 0 || e.bytes <= p.constraints.max_bytes) all.push_back({e.bytes, e.loss});
    int u = 0;
    while (u < p.n_units && ++idx[u] == p.allowed_choices(u).size()) idx[u++] = 0;
    if (u == p.n_units) break;
  }
  std::sort(all.begin(), all.end(), [](const Pt& a, const Pt& b) {
    return a.bytes != b.bytes ? a.bytes < b.bytes : a.loss < b.loss;
  });
  std::vector<Pt> front;
  for (const Pt& q : all)
    if (front.empty() || q.loss < front.back().loss) {
      if (!front.empty() && front.back().bytes == q.bytes) continue;
      front.push_back(q);
    }
  return front;
}

// Checks `f` against the enumerated front and its own genomes.
void expect_equal_fronts(const Problem& p, const ExactFront& f, const std::vector<Pt>& expect,
                         const std::string& what) {
  ASSERT_EQ(f.size(), expect.size()) << what;
  ASSERT_EQ(f.bytes.size(), f.size());
  ASSERT_EQ(f.genomes.size(), f.size() * p.n_units);
  EXPECT_EQ(f.n_units, p.n_units);
  for (size_t i = 0; i < f.size(); ++i) {
    EXPECT_EQ(f.bytes[i], expect[i].bytes) << what << " point " << i;
    EXPECT_NEAR(f.loss[i], expect[i].loss, 1e-12 * std::abs(expect[i].loss)) << what << " point " << i;
    // The returned genome is valid and really has the reported objectives.
    const std::vector<Gene> g(f.genomes.begin() + i * p.n_units, f.genomes.begin() + (i + 1) * p.n_units);
    EXPECT_NO_THROW(p.check_genome(g));
    const Evaluation e = p.evaluate(g.data());
    EXPECT_EQ(e.bytes, f.bytes[i]);
    EXPECT_DOUBLE_EQ(e.loss, f.loss[i]);
    EXPECT_EQ(e.violation, 0.0);
  }
}

}  // namespace

TEST(ExactFront, EqualsFullEnumeration) {
  // 8 units x 4 choices (up to 65,536 genomes), ~1 in 8 choices not allowed.
  for (uint64_t seed = 0; seed < 12; ++seed) {
    for (bool budget : {false, true}) {
      Problem p = test::random_problem(8, {2, 3, 4, 8}, seed);
      if (budget) {
        p.constraints.max_bytes = (p.min_bytes() + p.max_total_bytes()) / 2;
        p.finalize();
      }
      const auto expect = enumerate_front(p);
      const ExactFront f = exact_front(p);
      expect_equal_fronts(p, f, expect, "seed " + std::to_string(seed) + (budget ? " budget" : ""));
      EXPECT_TRUE(f.exact);
      EXPECT_EQ(f.eps_bytes, 0);
      EXPECT_GE(f.peak_states, static_cast<int64_t>(f.size()));
    }
  }
}

TEST(ExactFront, EqualsFullEnumerationWithTies) {
  // Bytes and losses tie all the time; losses are exact binary fractions, so
  // the comparison is exact. Several budgets, down to the smallest size.
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Problem p = test::tied_problem(7, 4, seed);
    const int64_t lo = p.min_bytes(), hi = p.max_total_bytes();
    for (int64_t budget : {int64_t{-1}, hi, (lo + hi) / 2, lo + (hi - lo) / 5, lo}) {
      p.constraints.max_bytes = budget;
      p.finalize();
      const auto expect = enumerate_front(p);
      const ExactFront f = exact_front(p);
      expect_equal_fronts(p, f, expect, "seed " + std::to_string(seed) + " budget " + std::to_string(budget));
      for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(f.loss[i], expect[i].loss);
      if (budget >= 0) {
        ASSERT_FALSE(f.bytes.empty());
        EXPECT_LE(f.bytes.back(), budget);
      }
    }
  }
}

TEST(ExactFront, StrictlyMonotoneAndSpansTheExtremes) {
  for (uint64_t seed = 0; seed < 8; ++seed) {
    const Problem p = test::random_problem(30, {2, 3, 4, 8, 16}, seed + 40);
    const ExactFront f = exact_front(p);
    ASSERT_GE(f.size(), 2u);
    for (size_t i = 1; i < f.size(); ++i) {
      EXPECT_LT(f.bytes[i - 1], f.bytes[i]);
      EXPECT_GT(f.loss[i - 1], f.loss[i]);
    }
    // The first point is the smallest plan, the last reaches the best loss.
    EXPECT_EQ(f.bytes.front(), p.min_bytes());
    const auto small = p.extreme_genome(true);
    EXPECT_LE(f.loss.front(), p.evaluate(small.data()).loss);
    EXPECT_NEAR(f.loss.back(), p.best_loss(), 1e-12);
  }
}

TEST(ExactFront, SingleUnitAndSingleChoice) {
  Problem p;
  p.n_units = 1;
  p.n_choices = 3;
  p.choice_bits = {2, 4, 8};
  p.delta = {0.5, 0.5, 0.1};  // 4 bits is dominated by 2 bits (same loss, more bytes)
  p.bytes = {10, 20, 40};
  p.allowed = {1, 1, 1};
  p.params = {40};
  p.base_loss = 1;
  p.fixed_bytes = 7;
  p.finalize();
  const ExactFront f = exact_front(p);
  EXPECT_EQ(f.bytes, (std::vector<int64_t>{17, 47}));
  EXPECT_EQ(f.loss, (std::vector<double>{1.5, 1.1}));
  EXPECT_EQ(f.genomes, (std::vector<Gene>{0, 2}));
  p.allowed = {0, 1, 0};
  p.finalize();
  const ExactFront g = exact_front(p);
  EXPECT_EQ(g.bytes, std::vector<int64_t>{27});
  EXPECT_EQ(g.genomes, std::vector<Gene>{1});
}

TEST(ExactFront, EpsilonGridCoversTheTrueFront) {
  for (uint64_t seed = 0; seed < 6; ++seed) {
    for (int64_t eps : {int64_t{1}, int64_t{500}, int64_t{16000}, int64_t{160000}}) {
      for (bool budget : {false, true}) {
        Problem p = test::random_problem(8, {2, 3, 4, 8}, seed + 42);
        if (budget) {
          p.constraints.max_bytes = (2 * p.min_bytes() + p.max_total_bytes()) / 3;
          p.finalize();
        }
        const auto truth = enumerate_front(p);
        const ExactFront f = exact_front(p, ExactConfig{2'000'000, eps});
        const std::string what = "seed " + std::to_string(seed) + " eps " + std::to_string(eps);
        EXPECT_FALSE(f.exact);
        EXPECT_EQ(f.eps_bytes, eps);
        ASSERT_GE(f.size(), 1u);
        EXPECT_LE(f.size(), truth.size());
        if (eps >= 16000) {
          EXPECT_LT(f.size(), truth.size()) << what;
        }
        // The stated bound is at most what was asked for.
        EXPECT_LE(f.error_bound_bytes, eps) << what;
        EXPECT_GE(f.error_bound_bytes, 0) << what;
        // The extremes survive the grid: the smallest plan always, the
        // lowest-loss plan when no budget can cut off its cover.
        EXPECT_EQ(f.bytes.front(), truth.front().bytes) << what;
        EXPECT_NEAR(f.loss.front(), truth.front().loss, 1e-12) << what;
        if (!budget) {
          EXPECT_NEAR(f.loss.back(), truth.back().loss, 1e-12) << what;
        }
        for (size_t i = 0; i < f.size(); ++i) {
          if (i > 0) {
            EXPECT_LT(f.bytes[i - 1], f.bytes[i]) << what;
            EXPECT_GT(f.loss[i - 1], f.loss[i]) << what;
          }
          const Evaluation e = p.evaluate(&f.genomes[i * p.n_units]);
          EXPECT_EQ(e.bytes, f.bytes[i]) << what;
          EXPECT_DOUBLE_EQ(e.loss, f.loss[i]) << what;
          if (budget) {
            EXPECT_LE(f.bytes[i], p.constraints.max_bytes) << what;
          }
        }
        // Every true front point is covered by a returned point of no greater
        // loss and at most error_bound_bytes more bytes. With a budget, points
        // whose cover could exceed the budget are exempt.
        const int64_t slack = f.error_bound_bytes;
        for (const Pt& t : truth) {
          if (budget && t.bytes + slack > p.constraints.max_bytes) continue;
          bool covered = false;
          for (size_t i = 0; i < f.size() && !covered; ++i)
            covered = f.loss[i] <= t.loss + 1e-12 && f.bytes[i] <= t.bytes + slack;
          EXPECT_TRUE(covered) << what << ": bytes " << t.bytes << " loss " << t.loss;
        }
      }
    }
  }
}

// A grid far coarser than the model (the old semantics collapsed this to one
// all-fp16 plan): the front still spans from the smallest to the lowest-loss plan.
TEST(ExactFront, CoarseEpsilonGridKeepsBothExtremes) {
  const Problem p = test::random_problem(40, {2, 4, 8, 16}, 11);
  const ExactFront truth = exact_front(p);
  const ExactFront f = exact_front(p, ExactConfig{2'000'000, p.max_total_bytes()});
  ASSERT_GE(f.size(), 2u);
  EXPECT_EQ(f.bytes.front(), p.min_bytes());
  EXPECT_EQ(f.bytes.front(), truth.bytes.front());
  EXPECT_NEAR(f.loss.back(), p.best_loss(), 1e-9);
  EXPECT_LE(f.error_bound_bytes, p.max_total_bytes());
}

TEST(ExactFront, MaxPointsIsAHardLimitWithAClearError) {
  const Problem p = test::random_problem(8, {2, 3, 4, 8}, 5);
  const ExactFront f = exact_front(p);
  ASSERT_GT(f.peak_states, 1);
  // The peak fits; one state fewer does not.
  EXPECT_NO_THROW(exact_front(p, ExactConfig{f.peak_states, 0}));
  try {
    exact_front(p, ExactConfig{f.peak_states - 1, 0});
    ADD_FAILURE() << "expected ValueError";
  } catch (const ValueError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("max_points=" + std::to_string(f.peak_states - 1)), std::string::npos) << msg;
    EXPECT_NE(msg.find("eps_bytes"), std::string::npos) << msg;
  }
  EXPECT_THROW(exact_front(p, ExactConfig{3, 0}), ValueError);
  EXPECT_THROW(exact_front(p, ExactConfig{0, 0}), ValueError);
  EXPECT_THROW(exact_front(p, ExactConfig{100, -1}), ValueError);
  // An epsilon grid keeps the states few enough for a small limit.
  EXPECT_NO_THROW(exact_front(p, ExactConfig{f.peak_states / 4, 20000}));
}

TEST(ExactFront, ClearErrorsForUnsupportedProblems) {
  Problem p = test::random_problem(8, {2, 3, 4, 8}, 5);
  Problem lat = p;
  lat.latency.assign(lat.delta.size(), 1.0);
  lat.finalize();
  try {
    exact_front(lat);
    ADD_FAILURE() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("latency"), std::string::npos) << e.what();
  }
  Problem bits = p;
  bits.constraints.max_avg_bits = 6;
  bits.finalize();
  try {
    exact_front(bits);
    ADD_FAILURE() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("average-bits"), std::string::npos) << e.what();
  }
}
