#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "empas/error.hpp"
#include "empas/space.hpp"
#include "helpers.hpp"

using namespace empas;

namespace {

// Expects an exception of type E whose message contains `what`.
template <class E, class F>
void expect_error(F&& f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning '" << what << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

// Visits every allowed genome of a small problem.
template <class F>
void for_each_genome(const Problem& p, F&& f) {
  std::vector<size_t> idx(p.n_units, 0);
  std::vector<Gene> g(p.n_units);
  while (true) {
    for (int u = 0; u < p.n_units; ++u) g[u] = p.allowed_choices(u)[idx[u]];
    f(g);
    int u = 0;
    while (u < p.n_units && ++idx[u] == p.allowed_choices(u).size()) idx[u++] = 0;
    if (u == p.n_units) break;
  }
}

}  // namespace

TEST(UnitBytes, PackedGroupwiseWithFp16Scales) {
  Unit u;
  u.name = "q_proj";
  u.params = 4096 * 4096;
  u.shapes = {{4096, 4096}};
  Quantizer q;  // symmetric, group 128, fp16 scales
  EXPECT_EQ(unit_bytes(u, 4, q), 8388608 + 4096LL * 32 * 2);
  EXPECT_EQ(unit_bytes(u, 3, q), (4096LL * 4096 * 3 + 7) / 8 + 4096LL * 32 * 2);
  EXPECT_EQ(unit_bytes(u, 8, q), 16777216 + 4096LL * 32 * 2);
  q.zero_bytes = 2;  // asymmetric with fp16 zero-points
  q.scheme = "asymmetric";
  EXPECT_EQ(unit_bytes(u, 2, q), 4096LL * 4096 / 4 + 4096LL * 32 * 4);
  q.group_size = 64;  // twice the groups
  EXPECT_EQ(unit_bytes(u, 2, q), 4096LL * 4096 / 4 + 4096LL * 64 * 4);
}

TEST(UnitBytes, GroupNotDividingRowRoundsGroupsUp) {
  Unit u;
  u.name = "odd";
  u.params = 10 * 300;
  u.shapes = {{10, 300}};
  Quantizer q;
  q.group_size = 128;  // 300 = 128 + 128 + 44 -> 3 groups per row
  EXPECT_EQ(unit_bytes(u, 8, q), 3000 + 10 * 3 * 2);
  // 3 bits x 3000 = 9000 bits = 1125 bytes exactly; 5 bits x 3000 / 8 = 1875.
  EXPECT_EQ(unit_bytes(u, 3, q), 1125 + 60);
  EXPECT_EQ(unit_bytes(u, 5, q), 1875 + 60);
}

TEST(UnitBytes, SeveralShapesAddUp) {
  // A Llama MLP block: gate/up [11008, 4096], down [4096, 11008].
  Unit u;
  u.name = "mlp";
  u.shapes = {{11008, 4096}, {11008, 4096}, {4096, 11008}};
  u.params = 3LL * 11008 * 4096;
  Quantizer q;
  const int64_t groups = 2LL * 11008 * (4096 / 128) + 4096LL * 86;  // ceil(11008 / 128) = 86
  EXPECT_EQ(unit_bytes(u, 4, q), u.params / 2 + groups * 2);
  q.scale_bytes = 4;  // fp32 scales
  q.zero_bytes = 1;   // int8 zero-points
  q.scheme = "asymmetric";
  EXPECT_EQ(unit_bytes(u, 4, q), u.params / 2 + groups * 5);
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

TEST(UnitBytes, WithoutShapesTheParamsFormOneTensor) {
  Unit u;
  u.name = "noshape";
  u.params = 1000;
  Quantizer q;
  EXPECT_EQ(unit_bytes(u, 4, q), 500 + 8 * 2);  // ceil(1000 / 128) = 8 groups
  EXPECT_EQ(unit_bytes(u, 3, q), 375 + 8 * 2);
  q.granularity = "tensor";
  EXPECT_EQ(unit_bytes(u, 4, q), 500 + 2);
  q.granularity = "channel";  // needs the rows
  EXPECT_THROW(unit_bytes(u, 4, q), ValueError);
  EXPECT_EQ(unit_bytes(u, 16, q), 2000);  // 16 and 0 bits need no scales at all
  EXPECT_EQ(unit_bytes(u, 0, q), 0);
}

TEST(UnitBytes, ParamsBitsModelMatchesOriginalEmpas) {
  Unit u;
  u.name = "layer_0";
  u.params = 44040192;
  Quantizer q;
  q.bytes_model = "params_bits";
  EXPECT_EQ(unit_bytes(u, 4, q), 44040192LL / 2);
  EXPECT_EQ(unit_bytes(u, 2, q), 44040192LL / 4);
  EXPECT_EQ(unit_bytes(u, 8, q), 44040192LL);
  EXPECT_EQ(unit_bytes(u, 16, q), 2 * 44040192LL);
  EXPECT_EQ(unit_bytes(u, 0, q), 0);
  u.params = 1001;  // 3003 bits round up to 376 bytes; no scales even with shapes
  EXPECT_EQ(unit_bytes(u, 3, q), 376);
  u.shapes = {{7, 143}};
  EXPECT_EQ(unit_bytes(u, 3, q), 376);
  EXPECT_THROW(unit_bytes(u, 9, q), ValueError);
}

TEST(UnitBytes, InvalidBitsNameTheUnit) {
  Unit u;
  u.name = "model.layers.3.mlp";
  u.params = 64;
  for (int bits : {-1, 1, 9, 12, 15, 17, 32}) {
    EXPECT_FALSE(valid_bits(bits)) << bits;
    expect_error<ValueError>([&] { unit_bytes(u, bits, Quantizer{}); }, "model.layers.3.mlp");
  }
  for (int bits : {0, 2, 3, 4, 5, 6, 7, 8, 16}) EXPECT_TRUE(valid_bits(bits)) << bits;
}

TEST(Quantizer, ValidateNamesTheField) {
  Quantizer q;
  EXPECT_NO_THROW(q.validate());
  q.scheme = "nf4";
  expect_error<ValueError>([&] { q.validate(); }, "scheme");
  q = Quantizer{};
  q.granularity = "block";
  expect_error<ValueError>([&] { q.validate(); }, "granularity");
  q = Quantizer{};
  q.group_size = 0;
  expect_error<ValueError>([&] { q.validate(); }, "group_size");
  q = Quantizer{};
  q.scale_bytes = -1;
  expect_error<ValueError>([&] { q.validate(); }, "scale_bytes");
  q = Quantizer{};
  q.zero_bytes = 9;
  expect_error<ValueError>([&] { q.validate(); }, "zero_bytes");
  q = Quantizer{};
  q.bytes_model = "bits";
  expect_error<ValueError>([&] { q.validate(); }, "bytes_model");
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
  EXPECT_EQ(e.loss, loss);  // same summation order: bit-identical
  EXPECT_EQ(e.bytes, bytes);
  EXPECT_DOUBLE_EQ(e.avg_bits, pb / tp);
  EXPECT_EQ(e.violation, 0.0);
  EXPECT_EQ(e.latency, 0.0);
  double obj[3] = {-1, -1, -1}, viol = -1;
  p.objectives(g.data(), obj, &viol);
  EXPECT_EQ(obj[0], e.loss);
  EXPECT_EQ(obj[1], static_cast<double>(e.bytes));
  EXPECT_EQ(obj[2], -1);  // two objectives: nothing written past them
  EXPECT_EQ(viol, 0.0);
}

TEST(Problem, LatencyIsTheThirdObjective) {
  Problem p = test::random_problem(4, {2, 4, 8}, 21, false);
  p.latency.resize(p.delta.size());
  for (size_t k = 0; k < p.latency.size(); ++k) p.latency[k] = 0.5 + static_cast<double>(k % 5);
  p.finalize();
  EXPECT_EQ(p.n_objectives(), 3);
  const std::vector<Gene> g = {2, 0, 1, 1};
  double lat = 0;
  for (int u = 0; u < 4; ++u) lat += p.latency[u * 3 + g[u]];
  double obj[3], viol;
  p.objectives(g.data(), obj, &viol);
  EXPECT_EQ(obj[2], lat);
  EXPECT_EQ(p.evaluate(g.data()).latency, lat);
  ASSERT_EQ(p.reference_point().size(), 3u);
  EXPECT_EQ(p.reference_point()[2], p.max_latency());
}

TEST(Problem, DerivedBoundsEqualEnumeration) {
  for (uint64_t seed = 0; seed < 6; ++seed) {
    const Problem p = test::tied_problem(6, 4, seed);
    int64_t bmin = std::numeric_limits<int64_t>::max(), bmax = 0;
    double lmin = 1e300, lmax = -1e300, abmin = 1e300;
    for_each_genome(p, [&](const std::vector<Gene>& g) {
      const Evaluation e = p.evaluate(g.data());
      bmin = std::min(bmin, e.bytes);
      bmax = std::max(bmax, e.bytes);
      lmin = std::min(lmin, e.loss);
      lmax = std::max(lmax, e.loss);
      abmin = std::min(abmin, e.avg_bits);
    });
    EXPECT_EQ(p.min_bytes(), bmin);
    EXPECT_EQ(p.max_total_bytes(), bmax);
    EXPECT_EQ(p.best_loss(), lmin);
    EXPECT_EQ(p.worst_loss(), lmax);
    EXPECT_NEAR(p.min_avg_bits(), abmin, 1e-12);
    EXPECT_EQ(p.reference_point(), (std::vector<double>{lmax, static_cast<double>(bmax)}));
    const auto small = p.extreme_genome(true), big = p.extreme_genome(false);
    EXPECT_NO_THROW(p.check_genome(small));
    EXPECT_NO_THROW(p.check_genome(big));
    EXPECT_EQ(p.evaluate(small.data()).bytes, bmin);
    EXPECT_EQ(p.evaluate(big.data()).bytes, bmax);
  }
}

TEST(Problem, ExtremeGenomesBreakByteTiesByLowerDelta) {
  Problem p;
  p.n_units = 1;
  p.n_choices = 4;
  p.choice_bits = {2, 3, 4, 8};
  p.delta = {0.5, 0.3, 0.1, 0.2};
  p.bytes = {10, 10, 40, 40};
  p.allowed = {1, 1, 1, 1};
  p.params = {80};
  p.finalize();
  EXPECT_EQ(p.extreme_genome(true), std::vector<Gene>{1});
  EXPECT_EQ(p.extreme_genome(false), std::vector<Gene>{2});
}

TEST(Problem, BudgetBelowSmallestReachableNamesTheSmallest) {
  Problem p = test::random_problem(5, {2, 4, 8}, 2, false);
  const int64_t smallest = p.min_bytes();
  p.constraints.max_bytes = smallest - 1;
  expect_error<InfeasibleError>([&] { p.finalize(); }, std::to_string(smallest));
  expect_error<InfeasibleError>([&] { p.finalize(); }, std::to_string(smallest - 1));
  p.constraints.max_bytes = smallest;
  EXPECT_NO_THROW(p.finalize());
  p.constraints.max_bytes = -1;
  p.constraints.max_avg_bits = 1.5;
  expect_error<InfeasibleError>([&] { p.finalize(); }, "smallest reachable average of 2 bits");
  p.constraints.max_avg_bits = 2;
  EXPECT_NO_THROW(p.finalize());
  // InfeasibleError is a ValueError (Python: a ValueError subclass).
  p.constraints.max_avg_bits = 1;
  EXPECT_THROW(p.finalize(), ValueError);
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
  // Relative excess over the budget.
  const double excess = static_cast<double>(p.max_total_bytes() - p.min_bytes()) / p.min_bytes();
  EXPECT_DOUBLE_EQ(p.evaluate(big.data()).violation, excess);
}

TEST(Problem, AverageBitsBudget) {
  Problem p = test::random_problem(4, {2, 4, 8}, 22, false);
  p.constraints.max_avg_bits = 4;
  p.finalize();
  const std::vector<Gene> four(4, 1), eight(4, 2), two(4, 0);
  EXPECT_DOUBLE_EQ(p.evaluate(four.data()).avg_bits, 4.0);
  EXPECT_EQ(p.evaluate(four.data()).violation, 0.0);  // on the budget: feasible
  EXPECT_EQ(p.evaluate(two.data()).violation, 0.0);
  EXPECT_DOUBLE_EQ(p.evaluate(eight.data()).violation, (8.0 - 4.0) / 4.0);
  // Both budgets violated: the violations add up.
  p.constraints.max_bytes = p.min_bytes();
  p.finalize();
  const Evaluation e = p.evaluate(eight.data());
  EXPECT_DOUBLE_EQ(e.violation, 1.0 + static_cast<double>(e.bytes - p.min_bytes()) / p.min_bytes());
}

TEST(Problem, RejectsBadTables) {
  Problem p = test::random_problem(3, {2, 4}, 4, false);
  Problem bad = p;
  bad.delta[1] = std::numeric_limits<double>::quiet_NaN();
  expect_error<ValueError>([&] { bad.finalize(); }, "not finite");
  bad = p;
  bad.bytes.pop_back();
  expect_error<ValueError>([&] { bad.finalize(); }, "n_units x n_choices");
  bad = p;
  bad.allowed[0] = bad.allowed[1] = 0;  // unit 0 allows nothing
  expect_error<ValueError>([&] { bad.finalize(); }, "allows no choice");
  bad = p;
  bad.choice_bits.push_back(8);
  expect_error<ValueError>([&] { bad.finalize(); }, "choice_bits");
  bad = p;
  bad.n_units = 0;
  expect_error<ValueError>([&] { bad.finalize(); }, "no units");
  bad = p;
  bad.params[2] = -1;
  expect_error<ValueError>([&] { bad.finalize(); }, "negative params");
  bad = p;
  bad.params.pop_back();
  expect_error<ValueError>([&] { bad.finalize(); }, "params");
  bad = p;
  bad.bytes[3] = -1;
  expect_error<ValueError>([&] { bad.finalize(); }, "negative bytes");
  bad = p;
  bad.base_loss = std::numeric_limits<double>::infinity();
  expect_error<ValueError>([&] { bad.finalize(); }, "baseline");
  bad = p;
  bad.fixed_bytes = -1;
  expect_error<ValueError>([&] { bad.finalize(); }, "fixed");
  bad = p;
  bad.latency.assign(5, 1.0);
  expect_error<ValueError>([&] { bad.finalize(); }, "latency");
  bad = p;
  bad.latency.assign(6, 1.0);
  bad.latency[2] = std::numeric_limits<double>::quiet_NaN();
  expect_error<ValueError>([&] { bad.finalize(); }, "latency");
  bad = p;
  EXPECT_THROW(bad.check_genome({0, 1}), ValueError);
  EXPECT_THROW(bad.check_genome({0, 1, 7}), ValueError);
}

TEST(Problem, DisallowedCellsAreIgnored) {
  // NaN deltas and negative bytes in cells a unit does not allow are neither
  // errors nor read.
  const Problem p = test::tied_problem(5, 4, 3);
  for (int u = 0; u < p.n_units; ++u)
    for (Gene c : p.allowed_choices(u)) {
      EXPECT_TRUE(std::isfinite(p.delta_at(u, c)));
      EXPECT_GE(p.bytes_at(u, c), 0);
    }
  EXPECT_TRUE(std::isfinite(p.worst_loss()));
  EXPECT_GE(p.min_bytes(), p.fixed_bytes);
  for (int u = 0; u < p.n_units; ++u)
    for (int c = 0; c < p.n_choices; ++c) {
      std::vector<Gene> g = p.extreme_genome(true);
      g[u] = static_cast<Gene>(c);
      if (p.allowed[u * p.n_choices + c])
        EXPECT_NO_THROW(p.check_genome(g));
      else
        EXPECT_THROW(p.check_genome(g), ValueError);
    }
}

// Issue 15: byte counts past int64 are errors naming the unit, never wrapped.
TEST(UnitBytes, OverflowIsAnErrorNamingTheUnit) {
  Quantizer q;
  Unit u;
  u.name = "huge";
  u.params = int64_t{1} << 62;
  expect_error<ValueError>([&] { unit_bytes(u, 2, q); }, "unit 'huge'");
  expect_error<ValueError>([&] { unit_bytes(u, 16, q); }, "overflows a 64-bit byte count");
  EXPECT_EQ(unit_bytes(u, 0, q), 0);
  u.params = int64_t{1} << 62;
  u.shapes = {{int64_t{1} << 31, int64_t{1} << 31}};
  expect_error<ValueError>([&] { unit_bytes(u, 4, q); }, "unit 'huge'");
  u.params = INT64_MAX;
  u.shapes.clear();
  q.bytes_model = "params_bits";
  expect_error<ValueError>([&] { unit_bytes(u, 8, q); }, "overflows");
}

TEST(Problem, TotalsPastInt64AndNonFiniteLossSumsAreErrors) {
  Problem p = test::random_problem(4, {2, 4, 8}, 3);
  p.fixed_bytes = INT64_MAX - 10;
  expect_error<ValueError>([&] { p.finalize(); }, "overflows a 64-bit byte count");
  p = test::random_problem(4, {2, 4, 8}, 3);
  p.bytes[0] = -5;
  expect_error<ValueError>([&] { p.finalize(); }, "unit 0 has negative bytes (-5) at 2 bits");
  p = test::random_problem(4, {2, 4, 8}, 3, false);
  for (int c = 0; c < 3; ++c) p.delta[c] = p.delta[3 + c] = 1e308;
  expect_error<ValueError>([&] { p.finalize(); }, "not a finite number");
  p = test::random_problem(4, {2, 4, 8}, 3, false);
  p.base_loss = 1.7e308;
  expect_error<ValueError>([&] { p.finalize(); }, "vanish");
}
