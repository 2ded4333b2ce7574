#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
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

// Full enumeration of every allowed genome, Pareto-filtered (and budget-filtered).
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

}  // namespace

TEST(ExactFront, EqualsFullEnumeration) {
  for (uint64_t seed = 0; seed < 12; ++seed) {
    for (bool budget : {false, true}) {
      Problem p = test::random_problem(8, {2, 3, 4, 8}, seed);
      if (budget) {
        p.constraints.max_bytes = (p.min_bytes() + p.max_total_bytes()) / 2;
        p.finalize();
      }
      const auto expect = enumerate_front(p);
      const ExactFront f = exact_front(p);
      ASSERT_EQ(f.size(), expect.size()) << "seed " << seed;
      for (size_t i = 0; i < f.size(); ++i) {
        EXPECT_EQ(f.bytes[i], expect[i].bytes);
        EXPECT_NEAR(f.loss[i], expect[i].loss, 1e-12 * std::abs(expect[i].loss));
        // The returned genome really has the reported objectives.
        const Evaluation e = p.evaluate(&f.genomes[i * p.n_units]);
        EXPECT_EQ(e.bytes, f.bytes[i]);
        EXPECT_DOUBLE_EQ(e.loss, f.loss[i]);
      }
      EXPECT_TRUE(f.exact);
    }
  }
}

TEST(ExactFront, EpsilonGridCoversTheTrueFront) {
  Problem p = test::random_problem(8, {2, 3, 4, 8}, 42);
  const auto truth = enumerate_front(p);
  const int64_t eps = 2000;
  const ExactFront f = exact_front(p, ExactConfig{2'000'000, eps});
  EXPECT_FALSE(f.exact);
  EXPECT_LT(f.size(), truth.size());
  for (const Pt& t : truth) {
    bool covered = false;
    for (size_t i = 0; i < f.size() && !covered; ++i)
      covered = f.loss[i] <= t.loss + 1e-12 && f.bytes[i] <= t.bytes + p.n_units * eps;
    EXPECT_TRUE(covered) << "bytes " << t.bytes << " loss " << t.loss;
  }
}

TEST(ExactFront, ClearErrorsForUnsupportedOrHugeProblems) {
  Problem p = test::random_problem(8, {2, 3, 4, 8}, 5);
  EXPECT_THROW(exact_front(p, ExactConfig{3, 0}), ValueError);
  try {
    exact_front(p, ExactConfig{3, 0});
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("max_points"), std::string::npos);
  }
  Problem lat = p;
  lat.latency.assign(lat.delta.size(), 1.0);
  lat.finalize();
  EXPECT_THROW(exact_front(lat), ValueError);
  Problem bits = p;
  bits.constraints.max_avg_bits = 6;
  bits.finalize();
  EXPECT_THROW(exact_front(bits), ValueError);
}
