#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "empas/error.hpp"
#include "empas/exact.hpp"
#include "empas/hypervolume.hpp"
#include "empas/nsga2.hpp"
#include "empas/pareto.hpp"
#include "helpers.hpp"

using namespace empas;
namespace fs = std::filesystem;

namespace {

std::string temp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() /
                       ("empas_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
  fs::create_directories(dir);
  const fs::path p = dir / name;
  fs::remove(p);
  return p.string();
}

NSGA2Config config(int pop, int gens, uint64_t seed, int threads = 1) {
  NSGA2Config c;
  c.pop_size = pop;
  c.generations = gens;
  c.seed = seed;
  c.threads = threads;
  return c;
}

}  // namespace

TEST(NSGA2, SameSeedSameResultOnAnyThreadCount) {
  // Large enough that variation, evaluation and sorting take their parallel paths.
  const Problem p = test::random_problem(300, {2, 3, 4, 8, 16}, 11);
  const NSGA2Result ref = run_nsga2(p, config(96, 15, 3, 1));
  for (int threads : {2, 4}) {
    const NSGA2Result r = run_nsga2(p, config(96, 15, 3, threads));
    EXPECT_EQ(r.genomes, ref.genomes) << threads << " threads";
    EXPECT_EQ(r.objectives, ref.objectives);
    EXPECT_EQ(r.front, ref.front);
  }
  const NSGA2Result other = run_nsga2(p, config(96, 15, 4, 2));
  EXPECT_NE(other.genomes, ref.genomes);
}

TEST(NSGA2, ThreeObjectivesAreDeterministicToo) {
  Problem p = test::random_problem(200, {2, 4, 8}, 12);
  p.latency = p.delta;
  for (double& v : p.latency) v = 1.0 + v * 3;
  p.finalize();
  const NSGA2Result a = run_nsga2(p, config(64, 8, 1, 1));
  const NSGA2Result b = run_nsga2(p, config(64, 8, 1, 2));
  EXPECT_EQ(a.n_objectives, 3);
  EXPECT_EQ(a.genomes, b.genomes);
}

TEST(NSGA2, FrontIsFeasibleNonDominatedAndDuplicateFree) {
  Problem p = test::random_problem(60, {2, 3, 4, 8}, 13);
  p.constraints.max_bytes = (p.min_bytes() + p.max_total_bytes()) / 3;
  p.finalize();
  const NSGA2Result r = run_nsga2(p, config(80, 40, 9));
  ASSERT_FALSE(r.front.empty());
  const int m = r.n_objectives;
  for (int i : r.front) {
    EXPECT_EQ(r.violation[i], 0.0);
    EXPECT_LE(r.objectives[i * m + 1], static_cast<double>(p.constraints.max_bytes));
    for (int j = 0; j < static_cast<int>(r.violation.size()); ++j)
      if (r.violation[j] == 0) EXPECT_FALSE(dominates(&r.objectives[j * m], &r.objectives[i * m], m));
  }
  std::set<std::vector<Gene>> seen;
  for (size_t i = 0; i < r.violation.size(); ++i)
    seen.insert(
        std::vector<Gene>(r.genomes.begin() + i * p.n_units, r.genomes.begin() + (i + 1) * p.n_units));
  EXPECT_EQ(seen.size(), r.violation.size());
  EXPECT_EQ(r.history.size(), 41u);
  EXPECT_EQ(r.history.back().generation, 40);
  EXPECT_EQ(r.evaluations, 80 * 41);
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
}

TEST(NSGA2, CheckpointResumeEqualsUninterruptedRun) {
  const Problem p = test::random_problem(50, {2, 3, 4, 8}, 16);
  const NSGA2Result full = run_nsga2(p, config(40, 25, 7));
  const std::string ck = temp_path("resume.json");
  NSGA2Config c = config(40, 12, 7);
  c.checkpoint_path = ck;
  c.checkpoint_every = 5;
  const NSGA2Result first = run_nsga2(p, c);
  EXPECT_EQ(first.generations_run, 12);
  ASSERT_TRUE(fs::exists(ck));
  c.generations = 25;
  c.threads = 2;
  const NSGA2Result resumed = run_nsga2(p, c);
  EXPECT_EQ(resumed.resumed_from, 12);
  EXPECT_EQ(resumed.genomes, full.genomes);
  EXPECT_EQ(resumed.objectives, full.objectives);
  EXPECT_EQ(resumed.evaluations, full.evaluations);
  ASSERT_EQ(resumed.history.size(), full.history.size());
  for (size_t g = 0; g < full.history.size(); ++g)
    EXPECT_DOUBLE_EQ(resumed.history[g].hypervolume, full.history[g].hypervolume);
  // A checkpoint of another search is refused, not silently mixed in.
  NSGA2Config other = c;
  other.seed = 8;
  EXPECT_THROW(run_nsga2(p, other), FormatError);
  const Problem q = test::random_problem(50, {2, 3, 4, 8}, 17);
  EXPECT_THROW(run_nsga2(q, c), FormatError);
  // A corrupt checkpoint is a clear error.
  {
    std::FILE* f = std::fopen(ck.c_str(), "w");
    std::fputs("{\"format\": ", f);
    std::fclose(f);
  }
  EXPECT_THROW(run_nsga2(p, c), FormatError);
  fs::remove(ck);
}

TEST(NSGA2, ProgressCallbackSeesEveryGenerationAndCanStop) {
  const Problem p = test::random_problem(20, {2, 4, 8}, 18);
  std::vector<int> seen;
  const NSGA2Result r = run_nsga2(p, config(20, 30, 1), [&](const GenerationStats& s) {
    seen.push_back(s.generation);
    return s.generation < 7;
  });
  EXPECT_TRUE(r.stopped_early);
  EXPECT_EQ(r.generations_run, 7);
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
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
}

TEST(NSGA2, ConfigValidation) {
  const Problem p = test::random_problem(5, {2, 4}, 20);
  NSGA2Config c;
  c.pop_size = 3;
  EXPECT_THROW(run_nsga2(p, c), ValueError);
  c = NSGA2Config{};
  c.crossover_prob = 1.5;
  EXPECT_THROW(run_nsga2(p, c), ValueError);
  c = NSGA2Config{};
  c.generations = -1;
  EXPECT_THROW(run_nsga2(p, c), ValueError);
  c = NSGA2Config{};
  c.mutation = "gaussian";
  EXPECT_THROW(run_nsga2(p, c), ValueError);
  c = NSGA2Config{};
  c.sampling = "sobol";
  EXPECT_THROW(run_nsga2(p, c), ValueError);
}
