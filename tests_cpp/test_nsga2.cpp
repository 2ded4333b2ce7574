#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "empas/error.hpp"
#include "empas/exact.hpp"
#include "empas/formats.hpp"
#include "empas/hypervolume.hpp"
#include "empas/nsga2.hpp"
#include "empas/parallel.hpp"
#include "empas/pareto.hpp"
#include "empas/version.hpp"
#include "helpers.hpp"

using namespace empas;
namespace fs = std::filesystem;

namespace {

// A fresh path in a directory private to this test process.
std::string temp_path(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::temp_directory_path() / ("empas_gtest_" + std::to_string(::getpid()) + "_" +
                                                    info->test_suite_name() + "_" + info->name());
  fs::create_directories(dir);
  const fs::path p = dir / name;
  fs::remove(p);
  return p.string();
}

struct TempDirCleanup {
  std::string dir;
  ~TempDirCleanup() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

NSGA2Config config(int pop, int gens, uint64_t seed, int threads = 1) {
  NSGA2Config c;
  c.pop_size = pop;
  c.generations = gens;
  c.seed = seed;
  c.threads = threads;
  return c;
}

void expect_same_history(const std::vector<GenerationStats>& a, const std::vector<GenerationStats>& b) {
  ASSERT_EQ(a.size(), b.size());
  auto same = [](double x, double y) { return (std::isnan(x) && std::isnan(y)) || x == y; };
  for (size_t g = 0; g < a.size(); ++g) {
    EXPECT_EQ(a[g].generation, b[g].generation);
    EXPECT_EQ(a[g].evaluations, b[g].evaluations);
    EXPECT_EQ(a[g].front_size, b[g].front_size);
    EXPECT_EQ(a[g].n_feasible, b[g].n_feasible);
    EXPECT_TRUE(same(a[g].best_loss, b[g].best_loss)) << "generation " << g;
    EXPECT_TRUE(same(a[g].min_bytes, b[g].min_bytes)) << "generation " << g;
    EXPECT_EQ(a[g].hypervolume, b[g].hypervolume) << "generation " << g;
  }
}

// Everything but wall times is identical.
void expect_same_result(const NSGA2Result& a, const NSGA2Result& b) {
  EXPECT_EQ(a.genomes, b.genomes);
  EXPECT_EQ(a.objectives, b.objectives);
  EXPECT_EQ(a.violation, b.violation);
  EXPECT_EQ(a.rank, b.rank);
  EXPECT_EQ(a.front, b.front);
  EXPECT_EQ(a.evaluations, b.evaluations);
  EXPECT_EQ(a.generations_run, b.generations_run);
  expect_same_history(a.history, b.history);
}

std::vector<Gene> member(const NSGA2Result& r, int i) {
  return {r.genomes.begin() + static_cast<size_t>(i) * r.n_units,
          r.genomes.begin() + static_cast<size_t>(i + 1) * r.n_units};
}

// Structural checks every result must pass.
void expect_consistent(const Problem& p, const NSGA2Config& c, const NSGA2Result& r) {
  const int N = c.pop_size, m = r.n_objectives;
  ASSERT_EQ(r.n_units, p.n_units);
  ASSERT_EQ(m, p.n_objectives());
  ASSERT_EQ(r.genomes.size(), static_cast<size_t>(N) * p.n_units);
  ASSERT_EQ(r.objectives.size(), static_cast<size_t>(N) * m);
  ASSERT_EQ(r.violation.size(), static_cast<size_t>(N));
  ASSERT_EQ(r.rank.size(), static_cast<size_t>(N));
  // Objectives and violations are those of the genomes.
  for (int i = 0; i < N; ++i) {
    const auto g = member(r, i);
    EXPECT_NO_THROW(p.check_genome(g));
    double obj[3], viol;
    p.objectives(g.data(), obj, &viol);
    for (int k = 0; k < m; ++k) EXPECT_EQ(r.objectives[i * m + k], obj[k]);
    EXPECT_EQ(r.violation[i], viol);
  }
  // Ranks are those of the final population.
  const auto fronts = non_dominated_sort(r.objectives.data(), N, m, r.violation.data());
  for (size_t k = 0; k < fronts.size(); ++k)
    for (int i : fronts[k]) EXPECT_EQ(r.rank[i], static_cast<int>(k));
  // The front: every feasible rank-0 member, by bytes, mutually non-dominated.
  std::vector<int> expect_front;
  for (int i = 0; i < N; ++i)
    if (r.rank[i] == 0 && r.violation[i] == 0) expect_front.push_back(i);
  std::vector<int> sorted_front = r.front;
  std::sort(sorted_front.begin(), sorted_front.end());
  EXPECT_EQ(sorted_front, expect_front);
  for (size_t k = 1; k < r.front.size(); ++k)
    EXPECT_LE(r.objectives[r.front[k - 1] * m + 1], r.objectives[r.front[k] * m + 1]);
  for (int i : r.front)
    for (int j = 0; j < N; ++j)
      if (r.violation[j] == 0) {
        EXPECT_FALSE(dominates(&r.objectives[j * m], &r.objectives[i * m], m));
      }
  // History: one entry per generation, the last describing the result.
  ASSERT_EQ(r.history.size(), static_cast<size_t>(r.generations_run) + 1);
  for (size_t g = 0; g < r.history.size(); ++g) EXPECT_EQ(r.history[g].generation, static_cast<int>(g));
  EXPECT_EQ(r.history.back().evaluations, r.evaluations);
  EXPECT_EQ(r.evaluations, static_cast<int64_t>(N) * (r.generations_run + 1));
  EXPECT_EQ(r.history.back().front_size, static_cast<int>(r.front.size()));
  int feasible = 0;
  for (double v : r.violation) feasible += v == 0;
  EXPECT_EQ(r.history.back().n_feasible, feasible);
}

}  // namespace

TEST(NSGA2, SameSeedSameResultOnAnyThreadCount) {
  // Large enough that initialization, variation, evaluation and sorting take
  // their parallel paths (300 units x 96 members is above every grain).
  const Problem p = test::random_problem(300, {2, 3, 4, 8, 16}, 11);
  const NSGA2Result ref = run_nsga2(p, config(96, 15, 3, 1));
  expect_consistent(p, config(96, 15, 3), ref);
  for (int threads : {2, 4, 0}) {
    SCOPED_TRACE(std::to_string(threads) + " threads");
    expect_same_result(run_nsga2(p, config(96, 15, 3, threads)), ref);
  }
  const NSGA2Result other = run_nsga2(p, config(96, 15, 4, 2));
  EXPECT_NE(other.genomes, ref.genomes);
  EXPECT_NE(other.objectives, ref.objectives);
}

TEST(NSGA2, DeterministicWithConstraintsAndOtherOperators) {
  Problem p = test::random_problem(250, {2, 3, 4, 8}, 23);
  p.constraints.max_bytes = (p.min_bytes() + p.max_total_bytes()) / 3;
  p.finalize();
  NSGA2Config c = config(80, 10, 5);
  c.mutation = "uniform";
  c.sampling = "uniform";
  c.mutation_prob = 0.02;
  c.crossover_prob = 0.9;
  const NSGA2Result a = run_nsga2(p, c);
  expect_consistent(p, c, a);
  for (int threads : {2, 4}) {
    SCOPED_TRACE(std::to_string(threads) + " threads");
    c.threads = threads;
    expect_same_result(run_nsga2(p, c), a);
  }
  // Every gene mutating (the pm >= 1 branch) is deterministic too.
  c.mutation_prob = 1;
  c.threads = 1;
  const NSGA2Result b = run_nsga2(p, c);
  c.threads = 4;
  expect_same_result(run_nsga2(p, c), b);
}

TEST(NSGA2, ThreeObjectivesAreDeterministicToo) {
  Problem p = test::random_problem(200, {2, 4, 8}, 12);
  p.latency = p.delta;
  for (double& v : p.latency) v = 1.0 + v * 3;
  p.finalize();
  const NSGA2Config c = config(64, 8, 1, 1);
  const NSGA2Result a = run_nsga2(p, c);
  EXPECT_EQ(a.n_objectives, 3);
  expect_consistent(p, c, a);
  for (int threads : {2, 4}) expect_same_result(run_nsga2(p, config(64, 8, 1, threads)), a);
}

TEST(NSGA2, FrontIsFeasibleNonDominatedAndDuplicateFree) {
  Problem p = test::random_problem(60, {2, 3, 4, 8}, 13);
  p.constraints.max_bytes = (p.min_bytes() + p.max_total_bytes()) / 3;
  p.finalize();
  for (int threads : {1, 2}) {
    const NSGA2Config c = config(80, 40, 9, threads);
    const NSGA2Result r = run_nsga2(p, c);
    expect_consistent(p, c, r);
    ASSERT_FALSE(r.front.empty());
    const int m = r.n_objectives;
    for (int i : r.front) {
      EXPECT_EQ(r.violation[i], 0.0);
      EXPECT_LE(r.objectives[i * m + 1], static_cast<double>(p.constraints.max_bytes));
    }
    std::set<std::vector<Gene>> seen;
    for (int i = 0; i < c.pop_size; ++i) seen.insert(member(r, i));
    EXPECT_EQ(seen.size(), static_cast<size_t>(c.pop_size));
    EXPECT_EQ(r.history.size(), 41u);
    EXPECT_EQ(r.history.back().generation, 40);
    EXPECT_EQ(r.evaluations, 80 * 41);
  }
}

TEST(NSGA2, LargePopulationHasNoDuplicates) {
  // Many members, few genes mutating: copies arise all the time and must go.
  const Problem p = test::random_problem(24, {2, 4, 8}, 31);
  NSGA2Config c = config(200, 25, 2, 2);
  c.crossover_prob = 0.2;
  const NSGA2Result r = run_nsga2(p, c);
  std::set<std::vector<Gene>> seen;
  for (int i = 0; i < c.pop_size; ++i) seen.insert(member(r, i));
  EXPECT_EQ(seen.size(), static_cast<size_t>(c.pop_size));
}

TEST(NSGA2, AverageBitsBudgetIsRespected) {
  Problem p = test::random_problem(40, {2, 4, 8}, 24);
  p.constraints.max_avg_bits = 4.5;
  p.finalize();
  const NSGA2Config c = config(60, 30, 3);
  const NSGA2Result r = run_nsga2(p, c);
  expect_consistent(p, c, r);
  ASSERT_FALSE(r.front.empty());
  for (int i : r.front) {
    const auto g = member(r, i);
    EXPECT_LE(p.evaluate(g.data()).avg_bits, 4.5 + 1e-12);
  }
}

TEST(NSGA2, TinySpaceSmallerThanThePopulation) {
  // 3 units x 2 choices = 8 genomes for 20 members: duplicates cannot all go,
  // and the search must still finish with a sane front that keeps the
  // smallest plan.
  const Problem p = test::random_problem(3, {2, 8}, 25, false);
  const NSGA2Config c = config(20, 10, 1);
  const NSGA2Result r = run_nsga2(p, c);
  expect_consistent(p, c, r);
  const ExactFront f = exact_front(p);
  for (int i : r.front) {
    const double* o = &r.objectives[i * 2];
    bool on_front = false;
    for (size_t k = 0; k < f.size(); ++k)
      on_front = on_front || (o[0] == f.loss[k] && o[1] == static_cast<double>(f.bytes[k]));
    EXPECT_TRUE(on_front) << "(" << o[0] << ", " << o[1] << ")";
  }
  ASSERT_FALSE(r.front.empty());
  EXPECT_EQ(r.objectives[r.front[0] * 2 + 1], static_cast<double>(p.min_bytes()));
}

TEST(NSGA2, NeverBeatsTheExactFront) {
  const Problem p = test::random_problem(10, {2, 4, 8}, 14);
  const ExactFront f = exact_front(p);
  const NSGA2Result r = run_nsga2(p, config(40, 30, 1));
  for (int i : r.front) {
    const double* o = &r.objectives[i * 2];
    for (size_t k = 0; k < f.size(); ++k) {
      const double e[2] = {f.loss[k], static_cast<double>(f.bytes[k])};
      EXPECT_FALSE(dominates(o, e, 2));
    }
  }
}

TEST(NSGA2, HypervolumeImprovesAndHistoryIsConsistent) {
  // Crowding truncation may drop a front point once rank 0 outgrows the
  // population, so HV is not monotone per generation; it must improve overall.
  const Problem p = test::random_problem(40, {2, 3, 4, 8}, 15);
  const NSGA2Result r = run_nsga2(p, config(50, 30, 2));
  EXPECT_GT(r.history.back().hypervolume, r.history.front().hypervolume);
  std::vector<double> pts;
  for (int i : r.front) pts.insert(pts.end(), {r.objectives[i * 2], r.objectives[i * 2 + 1]});
  EXPECT_DOUBLE_EQ(r.history.back().hypervolume, hypervolume(pts, 2, p.reference_point()));
  EXPECT_EQ(r.history.back().front_size, static_cast<int>(r.front.size()));
  double best = 1e300;
  for (int i : r.front) best = std::min(best, r.objectives[i * 2]);
  EXPECT_EQ(r.history.back().best_loss, best);
}

TEST(NSGA2, CheckpointResumeEqualsUninterruptedRun) {
  const Problem p = test::random_problem(50, {2, 3, 4, 8}, 16);
  const NSGA2Result full = run_nsga2(p, config(40, 25, 7));
  const std::string ck = temp_path("resume.json");
  TempDirCleanup cleanup{fs::path(ck).parent_path().string()};
  NSGA2Config c = config(40, 12, 7);
  c.checkpoint_path = ck;
  c.checkpoint_every = 5;
  const NSGA2Result first = run_nsga2(p, c);
  EXPECT_EQ(first.generations_run, 12);
  EXPECT_EQ(first.resumed_from, -1);
  ASSERT_TRUE(fs::exists(ck));
  // The checkpoint holds the last generation (12, not a multiple of 5).
  EXPECT_EQ(parse_json(read_file(ck), "checkpoint").at("generation").get<int>(), 12);
  EXPECT_EQ(parse_json(read_file(ck), "checkpoint").at("format"), kNsga2CheckpointFormat);
  c.generations = 25;
  c.threads = 2;
  const NSGA2Result resumed = run_nsga2(p, c);
  EXPECT_EQ(resumed.resumed_from, 12);
  expect_same_result(resumed, full);
  expect_consistent(p, c, resumed);
  // Resuming a finished run gives it back unchanged.
  const NSGA2Result again = run_nsga2(p, c);
  EXPECT_EQ(again.resumed_from, 25);
  expect_same_result(again, full);
}

TEST(NSGA2, CheckpointRefusesAnotherSearch) {
  const Problem p = test::random_problem(50, {2, 3, 4, 8}, 16);
  const std::string ck = temp_path("other.json");
  TempDirCleanup cleanup{fs::path(ck).parent_path().string()};
  NSGA2Config c = config(40, 6, 7);
  c.checkpoint_path = ck;
  run_nsga2(p, c);
  ASSERT_TRUE(fs::exists(ck));
  const std::string saved = read_file(ck);
  auto expect_refused = [&](const Problem& prob, const NSGA2Config& cfg, const std::string& what) {
    try {
      run_nsga2(prob, cfg);
      ADD_FAILURE() << "expected FormatError for " << what;
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("another search"), std::string::npos) << e.what();
    }
    EXPECT_EQ(read_file(ck), saved) << "the checkpoint was overwritten (" << what << ")";
  };
  NSGA2Config other = c;
  other.seed = 8;
  expect_refused(p, other, "seed");
  other = c;
  other.pop_size = 44;
  expect_refused(p, other, "pop_size");
  other = c;
  other.mutation = "uniform";
  expect_refused(p, other, "mutation");
  expect_refused(test::random_problem(50, {2, 3, 4, 8}, 17), c, "problem");
  Problem budget = p;
  budget.constraints.max_bytes = p.max_total_bytes() - 1;
  budget.finalize();
  expect_refused(budget, c, "budget");
  // Settings that do not change the search may differ.
  other = c;
  other.threads = 3;
  other.checkpoint_every = 2;
  other.generations = 8;
  EXPECT_EQ(run_nsga2(p, other).resumed_from, 6);
}

TEST(NSGA2, CorruptCheckpointIsAClearError) {
  const Problem p = test::random_problem(20, {2, 4, 8}, 16);
  const std::string ck = temp_path("corrupt.json");
  TempDirCleanup cleanup{fs::path(ck).parent_path().string()};
  NSGA2Config c = config(20, 3, 7);
  c.checkpoint_path = ck;
  auto write = [&](const std::string& text) { write_file_atomic(ck, text); };
  write("{\"format\": ");
  EXPECT_THROW(run_nsga2(p, c), FormatError);
  write("{\"format\": \"empas.nsga2-checkpoint/0\"}");
  EXPECT_THROW(run_nsga2(p, c), FormatError);
  write("[1, 2, 3]");
  EXPECT_THROW(run_nsga2(p, c), FormatError);
  // A valid checkpoint with a damaged population.
  fs::remove(ck);
  run_nsga2(p, c);
  nlohmann::json j = parse_json(read_file(ck), "checkpoint");
  j["population"][0] = "zz";
  write(j.dump());
  EXPECT_THROW(run_nsga2(p, c), FormatError);
  j["population"].erase(0);
  write(j.dump());
  EXPECT_THROW(run_nsga2(p, c), FormatError);
}

TEST(NSGA2, CheckpointEveryKGenerationsAndOnStop) {
  const Problem p = test::random_problem(30, {2, 4, 8}, 26);
  const NSGA2Result full = run_nsga2(p, config(24, 20, 5));
  const std::string ck = temp_path("every.json");
  TempDirCleanup cleanup{fs::path(ck).parent_path().string()};
  NSGA2Config c = config(24, 20, 5);
  c.checkpoint_path = ck;
  c.checkpoint_every = 4;
  // The callback sees the file as it was before this generation's write; it
  // stops the run at generation 10 (an "interruption").
  std::vector<int> on_disk;
  const NSGA2Result stopped = run_nsga2(p, c, [&](const GenerationStats& s) {
    on_disk.push_back(fs::exists(ck) ? parse_json(read_file(ck), "ck").at("generation").get<int>() : -1);
    return s.generation < 10;
  });
  EXPECT_TRUE(stopped.stopped_early);
  EXPECT_EQ(stopped.generations_run, 10);
  EXPECT_EQ(on_disk, (std::vector<int>{-1, -1, -1, -1, -1, 4, 4, 4, 4, 8, 8}));
  EXPECT_EQ(parse_json(read_file(ck), "ck").at("generation").get<int>(), 10);  // written on stop
  // Resuming the interrupted run finishes it exactly as if never stopped.
  const NSGA2Result resumed = run_nsga2(p, c);
  EXPECT_EQ(resumed.resumed_from, 10);
  EXPECT_FALSE(resumed.stopped_early);
  expect_same_result(resumed, full);
}

TEST(NSGA2, ProgressCallbackSeesEveryGenerationAndCanStop) {
  const Problem p = test::random_problem(20, {2, 4, 8}, 18);
  std::vector<int> seen;
  const NSGA2Config c = config(20, 30, 1);
  const NSGA2Result r = run_nsga2(p, c, [&](const GenerationStats& s) {
    seen.push_back(s.generation);
    return s.generation < 7;
  });
  EXPECT_TRUE(r.stopped_early);
  EXPECT_EQ(r.generations_run, 7);
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
  expect_consistent(p, c, r);
  // The stopped run equals a run of exactly 7 generations.
  expect_same_result(r, run_nsga2(p, config(20, 7, 1)));
  // Stopping at generation 0 leaves the initial population.
  const NSGA2Result r0 = run_nsga2(p, c, [](const GenerationStats&) { return false; });
  EXPECT_TRUE(r0.stopped_early);
  EXPECT_EQ(r0.generations_run, 0);
  EXPECT_EQ(r0.history.size(), 1u);
  expect_same_result(r0, run_nsga2(p, config(20, 0, 1)));
  const NSGA2Result full = run_nsga2(p, c, [](const GenerationStats&) { return true; });
  EXPECT_FALSE(full.stopped_early);
  EXPECT_EQ(full.generations_run, 30);
}

TEST(NSGA2, ZeroGenerationsIsTheInitialPopulation) {
  const Problem p = test::random_problem(30, {2, 4, 8}, 19);
  const NSGA2Config c = config(20, 0, 1);
  const NSGA2Result r = run_nsga2(p, c);
  expect_consistent(p, c, r);
  EXPECT_EQ(r.generations_run, 0);
  EXPECT_EQ(r.evaluations, 20);
  // The uniform plans are seeded: the smallest and largest plans are there.
  bool smallest = false, largest = false;
  for (int i = 0; i < 20; ++i) {
    smallest = smallest || member(r, i) == p.extreme_genome(true);
    largest = largest || member(r, i) == p.extreme_genome(false);
  }
  EXPECT_TRUE(smallest);
  EXPECT_TRUE(largest);
}

TEST(NSGA2, InitialPlansAreKept) {
  const Problem p = test::random_problem(30, {2, 4, 8}, 19);
  NSGA2Config c = config(20, 0, 1);
  const auto small = p.extreme_genome(true);
  c.initial = {small};
  const NSGA2Result r = run_nsga2(p, c);
  EXPECT_TRUE(std::equal(small.begin(), small.end(), r.genomes.begin()));
  c.initial = {std::vector<Gene>(29, 0)};
  EXPECT_THROW(run_nsga2(p, c), ValueError);
  // A plan using a choice its unit does not allow.
  std::vector<Gene> bad = small;
  for (int u = 0; u < p.n_units; ++u)
    for (int ch = 0; ch < p.n_choices; ++ch)
      if (!p.allowed[u * p.n_choices + ch]) {
        bad[u] = static_cast<Gene>(ch);
        u = p.n_units;
        break;
      }
  ASSERT_NE(bad, small) << "the fixture should disallow some choice";
  c.initial = {bad};
  EXPECT_THROW(run_nsga2(p, c), ValueError);
}

TEST(NSGA2, ConfigValidation) {
  const Problem p = test::random_problem(5, {2, 4}, 20);
  auto expect_invalid = [&](auto edit, const std::string& what) {
    NSGA2Config c;
    c.generations = 1;
    edit(c);
    try {
      run_nsga2(p, c);
      ADD_FAILURE() << "expected ValueError mentioning '" << what << "'";
    } catch (const ValueError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_invalid([](NSGA2Config& c) { c.pop_size = 3; }, "pop_size");
  expect_invalid([](NSGA2Config& c) { c.pop_size = -10; }, "pop_size");
  expect_invalid([](NSGA2Config& c) { c.crossover_prob = 1.5; }, "crossover_prob");
  expect_invalid([](NSGA2Config& c) { c.crossover_prob = -0.1; }, "crossover_prob");
  expect_invalid([](NSGA2Config& c) { c.crossover_prob = std::nan(""); }, "crossover_prob");
  expect_invalid([](NSGA2Config& c) { c.mutation_prob = 1.01; }, "mutation_prob");
  expect_invalid([](NSGA2Config& c) { c.mutation_prob = std::nan(""); }, "mutation_prob");
  expect_invalid([](NSGA2Config& c) { c.generations = -1; }, "generations");
  expect_invalid([](NSGA2Config& c) { c.threads = -1; }, "threads");
  expect_invalid([](NSGA2Config& c) { c.checkpoint_every = 0; }, "checkpoint_every");
  expect_invalid([](NSGA2Config& c) { c.mutation = "gaussian"; }, "mutation");
  expect_invalid([](NSGA2Config& c) { c.sampling = "sobol"; }, "sampling");
  // The edges of the valid ranges are accepted.
  NSGA2Config ok = config(4, 2, 1);
  ok.crossover_prob = 1;
  ok.mutation_prob = 1;
  EXPECT_NO_THROW(run_nsga2(p, ok));
  ok.crossover_prob = 0;
  ok.mutation_prob = 0;
  EXPECT_NO_THROW(run_nsga2(p, ok));
}

// Issue 15: a checkpoint past the requested generations, or hand-edited with a
// negative generation, is an error (it was silently returned / accepted).
TEST(NSGA2, CheckpointGenerationIsValidated) {
  const Problem p = test::random_problem(20, {2, 4, 8}, 5);
  const std::string ck = temp_path("gens.json");
  TempDirCleanup cleanup{fs::path(ck).parent_path().string()};
  NSGA2Config c = config(16, 6, 1);
  c.checkpoint_path = ck;
  run_nsga2(p, c);
  c.generations = 3;
  try {
    run_nsga2(p, c);
    ADD_FAILURE() << "a shorter run resumed from a longer checkpoint";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("at generation 6, past the 3 generations"), std::string::npos)
        << e.what();
  }
  auto j = parse_json(read_file(ck), "checkpoint");
  j["generation"] = -5;
  write_file_atomic(ck, j.dump());
  c.generations = 10;
  try {
    run_nsga2(p, c);
    ADD_FAILURE() << "generation -5 accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("generation must be an integer >= 0"), std::string::npos)
        << e.what();
  }
}

// Issue 15: threads are capped before OpenMP sees them, and the result does not
// depend on the count.
TEST(NSGA2, HugeThreadCountsAreCappedAndDeterministic) {
  EXPECT_GE(max_threads(), 1);
  EXPECT_EQ(resolve_threads(100000), max_threads());
  EXPECT_EQ(resolve_threads(1), 1);
  const Problem p = test::random_problem(100, {2, 4, 8}, 9);
  const NSGA2Result a = run_nsga2(p, config(256, 3, 4));
  NSGA2Config c = config(256, 3, 4);
  c.threads = 100000;
  expect_same_result(run_nsga2(p, c), a);
}

TEST(NSGA2, PopulationTimesUnitsIsRefusedUpFront) {
  EXPECT_GT(nsga2_memory_estimate(1000, 2000, 2), nsga2_memory_estimate(1000, 1000, 2));
  EXPECT_GE(nsga2_memory_estimate(1000, 1000, 2), int64_t{16} * 1000 * 1000);
  try {
    check_memory(1000000, 1000000, 2);  // ~16 TB
    ADD_FAILURE() << "no error";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("GiB"), std::string::npos) << e.what();
  }
}
