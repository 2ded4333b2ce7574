// NSGA-II over the additive proxy: binary tournament, uniform crossover,
// per-gene mutation to another allowed choice, (mu + lambda) survival with
// constrained domination, duplicate elimination. Deterministic for a seed.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "empas/space.hpp"

namespace empas {

struct NSGA2Config {
  int pop_size = 100;
  int generations = 50;
  uint64_t seed = 0;
  double crossover_prob = 0.7;  ///< chance a child mixes two parents (tuned: see benchmarks/)
  double mutation_prob = -1;    ///< per gene; < 0 means 1 / n_units
  int threads = 0;              ///< 0 = OpenMP default
  bool eliminate_duplicates = true;
  bool seed_uniform = true;  ///< start with the uniform-precision plans
  /// Random members of generation 0: "stratified" spreads them over the size
  /// range (member i mixes the two precision levels around level i / pop_size
  /// of each unit's choices ordered by bytes); "uniform" draws every gene uniformly.
  std::string sampling = "stratified";
  /// "neighbor": a mutated gene moves one step up or down its unit's choices
  /// ordered by bytes; "uniform": to any other allowed choice.
  std::string mutation = "neighbor";
  std::vector<std::vector<Gene>> initial;  ///< user plans placed in generation 0
  std::string checkpoint_path;             ///< empty: no checkpoint
  int checkpoint_every = 10;               ///< generations between checkpoint writes
  void validate() const;                   ///< throws ValueError
};

/// Per-generation record (history).
struct GenerationStats {
  int generation = 0;       ///< 0 = initial population
  int64_t evaluations = 0;  ///< cumulative proxy evaluations
  int front_size = 0;       ///< feasible rank-0 members
  int n_feasible = 0;
  double best_loss = 0;    ///< over feasible members (NaN if none)
  double min_bytes = 0;    ///< over feasible members (NaN if none)
  double hypervolume = 0;  ///< loss x bytes HV of the feasible front (problem reference point)
  double seconds = 0;      ///< wall time since start (this process)
};

struct NSGA2Result {
  int n_units = 0;
  int n_objectives = 2;
  std::vector<Gene> genomes;       ///< pop_size x n_units, final population
  std::vector<double> objectives;  ///< pop_size x n_objectives
  std::vector<double> violation;   ///< pop_size
  std::vector<int> rank;           ///< pop_size, 0 = non-dominated
  std::vector<int> front;          ///< indices of feasible rank-0 members, by bytes
  std::vector<GenerationStats> history;
  int64_t evaluations = 0;
  int generations_run = 0;     ///< the last generation completed
  int resumed_from = -1;       ///< generation loaded from a checkpoint (-1: none)
  bool stopped_early = false;  ///< the progress callback asked to stop
  double seconds = 0;
};

/// Called after every generation; return false to stop early.
using ProgressFn = std::function<bool(const GenerationStats&)>;

/// Runs NSGA-II. With a checkpoint path, state is written atomically every
/// `checkpoint_every` generations and at the end; a matching checkpoint found
/// at start is resumed, giving the same result as an uninterrupted run.
NSGA2Result run_nsga2(const Problem& problem, const NSGA2Config& config, const ProgressFn& progress = {});

/// Estimated peak bytes of run_nsga2 for this population and problem size.
int64_t nsga2_memory_estimate(int pop_size, int n_units, int n_objectives);
/// The most bytes a search may take: half of the physical memory.
int64_t memory_limit_bytes();
/// Throws ValueError, with the figures, when the estimate exceeds the limit.
void check_memory(int pop_size, int n_units, int n_objectives);

/// Fingerprint of the proxy tables and constraints (hex string).
std::string problem_fingerprint(const Problem& problem);

}  // namespace empas
