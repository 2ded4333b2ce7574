#include <gtest/gtest.h>

#include <string>

#include "empas/error.hpp"
#include "empas/space.hpp"
#include "helpers.hpp"

using namespace empas;

TEST(UnitBytes, PackedGroupwiseWithFp16Scales) {
  Unit u;
  u.name = "q_proj";
  u.params = 4096 * 4096;
  u.shapes = {{4096, 4096}};
  Quantizer q;  // symmetric, group 128, fp16 scales
  EXPECT_EQ(unit_bytes(u, 4, q), 4096LL * 4096 / 2 + 4096LL * 32 * 2);
  EXPECT_EQ(unit_bytes(u, 3, q), (4096LL * 4096 * 3 + 7) / 8 + 4096LL * 32 * 2);
  q.zero_bytes = 2;  // asymmetric with fp16 zero-points
  EXPECT_EQ(unit_bytes(u, 2, q), 4096LL * 4096 / 4 + 4096LL * 32 * 4);
}

TEST(UnitBytes, GroupNotDividingRowRoundsGroupsUp) {
  Unit u;
  u.name = "odd";
  u.params = 10 * 300;
  u.shapes = {{10, 300}};
  Quantizer q;
  q.group_size = 128;  // 300 = 128 + 128 + 44 -> 3 groups per row
  EXPECT_EQ(unit_bytes(u, 8, q), 3000 + 10 * 3 * 2);
}

TEST(UnitBytes, ChannelTensorAndSpecialBits) {
  Unit u;
  u.name = "mlp";
  u.params = 2 * 512 * 256;
  u.shapes = {{512, 256}, {256, 512}};
  Quantizer q;
  q.granularity = "channel";
  EXPECT_EQ(unit_bytes(u, 4, q), u.params / 2 + (512 + 256) * 2);
  q.granularity = "tensor";
  EXPECT_EQ(unit_bytes(u, 4, q), u.params / 2 + 2 * 2);
  EXPECT_EQ(unit_bytes(u, 16, q), u.params * 2);  // fp16, no scales
  EXPECT_EQ(unit_bytes(u, 0, q), 0);              // dropped
  EXPECT_THROW(unit_bytes(u, 5 + 12, q), ValueError);
  EXPECT_THROW(unit_bytes(u, 1, q), ValueError);
}

TEST(UnitBytes, ParamsBitsModelMatchesOriginalEmpas) {
  Unit u;
  u.name = "layer_0";
  u.params = 44040192;
  Quantizer q;
  q.bytes_model = "params_bits";
  EXPECT_EQ(unit_bytes(u, 4, q), 44040192LL / 2);
  EXPECT_EQ(unit_bytes(u, 2, q), 44040192LL / 4);
}

TEST(UnitBytes, ChannelWithoutShapesIsAnError) {
  Unit u;
  u.name = "noshape";
  u.params = 1000;
  Quantizer q;
  q.granularity = "channel";
  EXPECT_THROW(unit_bytes(u, 4, q), ValueError);
  q.granularity = "group";
  EXPECT_EQ(unit_bytes(u, 4, q), 500 + 8 * 2);  // ceil(1000 / 128) = 8 groups
}

TEST(Problem, EvaluateSumsTables) {
  Problem p = test::random_problem(6, {2, 4, 8}, 1, false);
  std::vector<Gene> g = {0, 1, 2, 0, 1, 2};
  const Evaluation e = p.evaluate(g.data());
  double loss = p.base_loss;
  int64_t bytes = p.fixed_bytes;
  double pb = 0, tp = 0;
  for (int u = 0; u < 6; ++u) {
    loss += p.delta_at(u, g[u]);
    bytes += p.bytes_at(u, g[u]);
    pb += static_cast<double>(p.params[u]) * p.choice_bits[g[u]];
    tp += static_cast<double>(p.params[u]);
  }
  EXPECT_DOUBLE_EQ(e.loss, loss);
  EXPECT_EQ(e.bytes, bytes);
  EXPECT_DOUBLE_EQ(e.avg_bits, pb / tp);
  EXPECT_EQ(e.violation, 0.0);
}

TEST(Problem, BudgetBelowSmallestReachableNamesTheSmallest) {
  Problem p = test::random_problem(5, {2, 4, 8}, 2, false);
  const int64_t smallest = p.min_bytes();
  p.constraints.max_bytes = smallest - 1;
  try {
    p.finalize();
    FAIL() << "expected InfeasibleError";
  } catch (const InfeasibleError& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(smallest)), std::string::npos) << e.what();
  }
  p.constraints.max_bytes = smallest;
  EXPECT_NO_THROW(p.finalize());
  p.constraints.max_bytes = -1;
  p.constraints.max_avg_bits = 1.5;
  EXPECT_THROW(p.finalize(), InfeasibleError);
}

TEST(Problem, ViolationIsPositiveOverBudget) {
  Problem p = test::random_problem(4, {2, 8}, 3, false);
  p.constraints.max_bytes = p.min_bytes();
  p.finalize();
  const auto big = p.extreme_genome(false);
  const auto small = p.extreme_genome(true);
  EXPECT_GT(p.evaluate(big.data()).violation, 0.0);
  EXPECT_EQ(p.evaluate(small.data()).violation, 0.0);
  EXPECT_EQ(p.evaluate(small.data()).bytes, p.min_bytes());
  EXPECT_EQ(p.evaluate(big.data()).bytes, p.max_total_bytes());
}

TEST(Problem, RejectsBadTables) {
  Problem p = test::random_problem(3, {2, 4}, 4, false);
  Problem bad = p;
  bad.delta[1] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(bad.finalize(), ValueError);
  bad = p;
  bad.bytes.pop_back();
  EXPECT_THROW(bad.finalize(), ValueError);
  bad = p;
  bad.allowed[0] = bad.allowed[1] = 0;  // unit 0 allows nothing
  EXPECT_THROW(bad.finalize(), ValueError);
  bad = p;
  EXPECT_THROW(bad.check_genome({0, 1}), ValueError);
  EXPECT_THROW(bad.check_genome({0, 1, 7}), ValueError);
}
