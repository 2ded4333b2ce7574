#include "empas/nsga2.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <string_view>
#include <unordered_set>

#include "empas/error.hpp"
#include "empas/hypervolume.hpp"
#include "empas/json_io.hpp"
#include "empas/parallel.hpp"
#include "empas/pareto.hpp"
#include "empas/rng.hpp"
#include "empas/version.hpp"

namespace empas {

namespace {

constexpr int kMaxDuplicateRetries = 20;

struct Fnv {
  uint64_t h = 1469598103934665603ULL;
  void add(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ULL;
  }
  template <class T>
  void add_vec(const std::vector<T>& v) {
    const uint64_t n = v.size();
    add(&n, sizeof n);
    if (!v.empty()) add(v.data(), v.size() * sizeof(T));
  }
  template <class T>
  void add_val(T v) {
    add(&v, sizeof v);
  }
};

std::string hex64(uint64_t h) {
  static const char* d = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4) s[i] = d[h & 15];
  return s;
}

std::string genome_hex(const Gene* g, int n) {
  static const char* d = "0123456789abcdef";
  std::string s(static_cast<size_t>(n) * 2, '0');
  for (int i = 0; i < n; ++i) {
    s[2 * i] = d[g[i] >> 4];
    s[2 * i + 1] = d[g[i] & 15];
  }
  return s;
}

std::vector<Gene> genome_from_hex(const std::string& s, int n) {
  if (s.size() != static_cast<size_t>(n) * 2) throw FormatError("checkpoint genome has wrong length");
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw FormatError("checkpoint genome is not hex");
  };
  std::vector<Gene> g(n);
  for (int i = 0; i < n; ++i) g[i] = static_cast<Gene>(nib(s[2 * i]) * 16 + nib(s[2 * i + 1]));
  return g;
}

// Mutable search state of one population.
struct Population {
  int n = 0, units = 0, m = 2;
  std::vector<Gene> genes;     // n x units
  std::vector<double> obj;     // n x m
  std::vector<double> viol;    // n
  std::vector<int> rank;       // n
  std::vector<double> crowd;   // n
  std::vector<uint64_t> hash;  // n, genome_hash of each member
  void resize(int count) {
    n = count;
    genes.resize(static_cast<size_t>(n) * units);
    obj.resize(static_cast<size_t>(n) * m);
    viol.resize(n);
    rank.assign(n, 0);
    crowd.assign(n, 0);
    hash.assign(n, 0);
  }
  Gene* g(int i) { return genes.data() + static_cast<size_t>(i) * units; }
  const Gene* g(int i) const { return genes.data() + static_cast<size_t>(i) * units; }
  std::string_view key(int i) const {
    return {reinterpret_cast<const char*>(g(i)), static_cast<size_t>(units)};
  }
};

// Hash of a genome, eight genes at a time.
uint64_t genome_hash(const Gene* g, int n) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ static_cast<uint64_t>(n);
  int u = 0;
  for (; u + 8 <= n; u += 8) {
    uint64_t w;
    std::memcpy(&w, g + u, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
    h ^= h >> 32;
  }
  for (; u < n; ++u) h = (h ^ g[u]) * 0x100000001B3ULL;
  return h ^ (h >> 29);
}

void hash_all(Population& pop, int threads) {
  parallel_for(
      pop.n, threads, [&](int64_t i) { pop.hash[i] = genome_hash(pop.g(static_cast<int>(i)), pop.units); },
      256);
}

// Open-addressing set of population members (by genome hash, then genes), reused every generation.
class GenomeSet {
 public:
  explicit GenomeSet(int capacity) {
    size_t cap = 16;
    while (cap < 4 * static_cast<size_t>(capacity)) cap <<= 1;
    slots_.assign(cap, -1);
  }
  void reset() { std::fill(slots_.begin(), slots_.end(), -1); }
  bool contains(const Population& pop, int i) const { return slots_[find(pop, i)] >= 0; }
  void insert(const Population& pop, int i) {
    const size_t s = find(pop, i);
    if (slots_[s] < 0) slots_[s] = i;
  }

 private:
  size_t find(const Population& pop, int i) const {
    const Gene* g = pop.g(i);
    const uint64_t h = pop.hash[i];
    const size_t mask = slots_.size() - 1;
    for (size_t s = h & mask;; s = (s + 1) & mask)
      if (slots_[s] < 0 ||
          (pop.hash[slots_[s]] == h && std::memcmp(pop.g(slots_[s]), g, static_cast<size_t>(pop.units)) == 0))
        return s;
  }
  std::vector<int> slots_;
};

// Parallel loops pay off only with enough work per call (OpenMP fork/join
// costs microseconds): about 16k gene visits.
int64_t grain_for(int n_units) { return std::max<int64_t>(16, 16384 / std::max(n_units, 1)); }

void evaluate_all(const Problem& p, Population& pop, int first, int threads) {
  parallel_for(
      pop.n - first, threads,
      [&](int64_t k) {
        const int i = first + static_cast<int>(k);
        p.objectives(pop.g(i), pop.obj.data() + static_cast<size_t>(i) * pop.m, &pop.viol[i]);
      },
      grain_for(pop.units));
}

// Rank and crowding of every member, computed within the population itself.
void assign_rank_crowding(Population& pop, int threads) {
  auto fronts = non_dominated_sort(pop.obj.data(), pop.n, pop.m, pop.viol.data(), 0, threads);
  for (size_t r = 0; r < fronts.size(); ++r) {
    auto cd = crowding_distance(pop.obj.data(), pop.m, fronts[r]);
    for (size_t k = 0; k < fronts[r].size(); ++k) {
      pop.rank[fronts[r][k]] = static_cast<int>(r);
      pop.crowd[fronts[r][k]] = cd[k];
    }
  }
}

// Each unit's allowed choices ordered by bytes (then delta), and each choice's
// position in that order.
struct Ladder {
  std::vector<std::vector<Gene>> order;
  std::vector<std::vector<int>> pos;
  explicit Ladder(const Problem& p) : order(p.n_units), pos(p.n_units, std::vector<int>(p.n_choices, -1)) {
    for (int u = 0; u < p.n_units; ++u) {
      order[u] = p.allowed_choices(u);
      std::stable_sort(order[u].begin(), order[u].end(), [&](Gene a, Gene b) {
        const int64_t ba = p.bytes_at(u, a), bb = p.bytes_at(u, b);
        return ba != bb ? ba < bb : p.delta_at(u, a) > p.delta_at(u, b);
      });
      for (size_t k = 0; k < order[u].size(); ++k) pos[u][order[u][k]] = static_cast<int>(k);
    }
  }
};

void mutate_gene(const Ladder& L, bool neighbor, Gene* g, int u, Rng& r) {
  const auto& al = L.order[u];
  const uint32_t k = static_cast<uint32_t>(al.size());
  if (k < 2) return;
  if (neighbor) {
    const int at = L.pos[u][g[u]];
    int to = (r.next() >> 63) ? at + 1 : at - 1;
    if (to < 0) to = 1;
    if (to >= static_cast<int>(k)) to = static_cast<int>(k) - 2;
    g[u] = al[to];
    return;
  }
  // Uniform over the other allowed choices.
  uint32_t j = r.below(k - 1);
  if (al[j] == g[u]) j = k - 1;
  g[u] = al[j];
}

GenerationStats make_stats(const Problem& p, const Population& pop, int gen, int64_t evals, double seconds) {
  GenerationStats s;
  s.generation = gen;
  s.evaluations = evals;
  s.seconds = seconds;
  s.best_loss = s.min_bytes = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> pts;
  for (int i = 0; i < pop.n; ++i) {
    if (pop.viol[i] > 0) continue;
    ++s.n_feasible;
    const double* o = pop.obj.data() + static_cast<size_t>(i) * pop.m;
    if (!(o[0] >= s.best_loss)) s.best_loss = std::isnan(s.best_loss) ? o[0] : std::min(s.best_loss, o[0]);
    if (!(o[1] >= s.min_bytes)) s.min_bytes = std::isnan(s.min_bytes) ? o[1] : std::min(s.min_bytes, o[1]);
    if (pop.rank[i] == 0) {
      ++s.front_size;
      pts.push_back(o[0]);
      pts.push_back(o[1]);
    }
  }
  const auto ref = p.reference_point();
  s.hypervolume = hypervolume(pts, 2, {ref[0], ref[1]});
  return s;
}

nlohmann::json stats_json(const GenerationStats& s) {
  auto num = [](double v) -> nlohmann::json {
    return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
  };
  return {{"generation", s.generation},   {"evaluations", s.evaluations},  {"front_size", s.front_size},
          {"n_feasible", s.n_feasible},   {"best_loss", num(s.best_loss)}, {"min_bytes", num(s.min_bytes)},
          {"hypervolume", s.hypervolume}, {"seconds", s.seconds}};
}

GenerationStats stats_from_json(const nlohmann::json& j) {
  auto num = [&](const char* k) {
    return j.at(k).is_null() ? std::numeric_limits<double>::quiet_NaN() : j.at(k).get<double>();
  };
  GenerationStats s;
  s.generation = j.at("generation").get<int>();
  s.evaluations = j.at("evaluations").get<int64_t>();
  s.front_size = j.at("front_size").get<int>();
  s.n_feasible = j.at("n_feasible").get<int>();
  s.best_loss = num("best_loss");
  s.min_bytes = num("min_bytes");
  s.hypervolume = j.at("hypervolume").get<double>();
  s.seconds = j.at("seconds").get<double>();
  return s;
}

// Everything that must match for a checkpoint to be resumed.
nlohmann::json run_identity(const Problem& p, const NSGA2Config& c) {
  Fnv f;
  for (const auto& g : c.initial) f.add_vec(g);
  return {{"problem", problem_fingerprint(p)},
          {"seed", c.seed},
          {"pop_size", c.pop_size},
          {"crossover_prob", c.crossover_prob},
          {"mutation_prob", c.mutation_prob},
          {"eliminate_duplicates", c.eliminate_duplicates},
          {"seed_uniform", c.seed_uniform},
          {"sampling", c.sampling},
          {"mutation", c.mutation},
          {"initial", hex64(f.h)}};
}

void write_checkpoint(const std::string& path, const nlohmann::json& identity, const Population& pop, int gen,
                      int64_t evals, const std::vector<GenerationStats>& history) {
  nlohmann::json j;
  j["format"] = kNsga2CheckpointFormat;
  j["identity"] = identity;
  j["generation"] = gen;
  j["evaluations"] = evals;
  auto& genomes = j["population"] = nlohmann::json::array();
  for (int i = 0; i < pop.n; ++i) genomes.push_back(genome_hex(pop.g(i), pop.units));
  auto& h = j["history"] = nlohmann::json::array();
  for (const auto& s : history) h.push_back(stats_json(s));
  write_file_atomic(path, j.dump());
}

// Initial population: user plans, uniform plans, extremes, then random plans.
void initialize(const Problem& p, const NSGA2Config& c, const Ladder& L, Population& pop) {
  const int n = p.n_units, N = c.pop_size;
  std::unordered_set<std::string> seen;
  int filled = 0;
  auto try_add = [&](const std::vector<Gene>& g) {
    if (filled >= N) return;
    std::string k(reinterpret_cast<const char*>(g.data()), g.size());
    if (c.eliminate_duplicates && !seen.insert(k).second) return;
    std::copy(g.begin(), g.end(), pop.g(filled++));
  };
  for (const auto& g : c.initial) {
    p.check_genome(g);
    try_add(g);
  }
  if (c.seed_uniform) {
    try_add(p.extreme_genome(true));
    try_add(p.extreme_genome(false));
    for (int ch = 0; ch < p.n_choices; ++ch) {
      std::vector<Gene> g(n);
      for (int u = 0; u < n; ++u) {
        // The allowed choice nearest in bits to the uniform precision.
        Gene best = p.allowed_choices(u)[0];
        for (Gene a : p.allowed_choices(u))
          if (std::abs(p.choice_bits[a] - p.choice_bits[ch]) <
              std::abs(p.choice_bits[best] - p.choice_bits[ch]))
            best = a;
        g[u] = best;
      }
      try_add(g);
    }
  }
  const int first_random = filled;
  const bool stratified = c.sampling == "stratified";
  parallel_for(N - first_random, c.threads, [&](int64_t k) {
    const int i = first_random + static_cast<int>(k);
    Rng r(c.seed, 0, static_cast<uint64_t>(i));
    Gene* g = pop.g(i);
    const double level = (static_cast<double>(k) + r.uniform()) / (N - first_random);  // in [0, 1)
    for (int u = 0; u < n; ++u) {
      const auto& al = L.order[u];
      if (!stratified) {
        g[u] = al[r.below(static_cast<uint32_t>(al.size()))];
        continue;
      }
      const double t = level * static_cast<double>(al.size() - 1);
      const size_t lo = static_cast<size_t>(t);
      g[u] = al[std::min(al.size() - 1, lo + (r.uniform() < t - static_cast<double>(lo) ? 1 : 0))];
    }
  });
  if (c.eliminate_duplicates) {
    for (int i = first_random; i < N; ++i) {
      Gene* g = pop.g(i);
      for (int a = 1; a <= kMaxDuplicateRetries; ++a) {
        if (seen.insert(std::string(pop.key(i))).second) break;
        Rng r(c.seed, 0, static_cast<uint64_t>(i), static_cast<uint64_t>(a));
        mutate_gene(L, false, g, static_cast<int>(r.below(static_cast<uint32_t>(n))), r);
      }
    }
  }
}

}  // namespace

int64_t nsga2_memory_estimate(int pop_size, int n_units, int n_objectives) {
  // Genes, 1 byte each: population, merged parents + children, the children's
  // buffer, the result's copy and the caller's copy of the final population
  // (6 x N x n); then the caller's front as int64 genomes (up to 8 x N x n,
  // e.g. empas.search's Front), rounded up to 16 bytes per gene. Per member:
  // objectives, violation, rank, crowding, hash (x 3 for the merged population).
  const double N = pop_size, n = n_units;
  const double genes = 16.0 * N * n;
  const double members = 3.0 * N * (8.0 * n_objectives + 8 + 4 + 8 + 8 + 16);
  const double total = genes + members;
  return total >= 0x1p62 ? (int64_t{1} << 62) : static_cast<int64_t>(total);
}

int64_t memory_limit_bytes() {
  // Half of the physical memory: the search must leave room for the rest.
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return int64_t{8} << 30;
  return static_cast<int64_t>(pages) * page / 2;
}

void check_memory(int pop_size, int n_units, int n_objectives) {
  const int64_t need = nsga2_memory_estimate(pop_size, n_units, n_objectives), limit = memory_limit_bytes();
  if (need > limit) {
    std::ostringstream m;
    m.precision(3);
    m << "pop_size " << pop_size << " x " << n_units << " units needs about " << need / 1073741824.0
      << " GiB for the search, more than the " << limit / 1073741824.0
      << " GiB limit (half of this machine's memory); lower pop_size";
    throw ValueError(m.str());
  }
}

void NSGA2Config::validate() const {
  if (pop_size < 4) throw ValueError("pop_size must be at least 4, got " + std::to_string(pop_size));
  if (pop_size > 1'000'000) throw ValueError("pop_size is too large (max 1,000,000)");
  if (generations < 0) throw ValueError("generations must be >= 0");
  if (!(crossover_prob >= 0 && crossover_prob <= 1)) throw ValueError("crossover_prob must be in [0, 1]");
  if (!(mutation_prob <= 1) || std::isnan(mutation_prob))
    throw ValueError("mutation_prob must be <= 1 (negative: 1 / n_units)");
  if (threads < 0) throw ValueError("threads must be >= 0 (0 = all)");
  if (checkpoint_every < 1) throw ValueError("checkpoint_every must be >= 1");
  if (sampling != "stratified" && sampling != "uniform")
    throw ValueError("sampling must be 'stratified' or 'uniform', got '" + sampling + "'");
  if (mutation != "neighbor" && mutation != "uniform")
    throw ValueError("mutation must be 'neighbor' or 'uniform', got '" + mutation + "'");
}

std::string problem_fingerprint(const Problem& p) {
  Fnv f;
  f.add_val(p.n_units);
  f.add_val(p.n_choices);
  f.add_vec(p.choice_bits);
  f.add_vec(p.delta);
  f.add_vec(p.bytes);
  f.add_vec(p.latency);
  f.add_vec(p.allowed);
  f.add_vec(p.params);
  f.add_val(p.base_loss);
  f.add_val(p.fixed_bytes);
  f.add_val(p.constraints.max_bytes);
  f.add_val(p.constraints.max_avg_bits);
  return hex64(f.h);
}

NSGA2Result run_nsga2(const Problem& p, const NSGA2Config& c, const ProgressFn& progress) {
  c.validate();
  if (p.n_units <= 0 || p.allowed_choices(0).empty())
    throw ValueError("the problem is empty or was not finalized");
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  const int n = p.n_units, N = c.pop_size, m = p.n_objectives();
  check_memory(N, n, m);
  const double pm = c.mutation_prob < 0 ? 1.0 / n : c.mutation_prob;
  const nlohmann::json identity = run_identity(p, c);

  NSGA2Result res;
  res.n_units = n;
  res.n_objectives = m;
  Population pop;
  pop.units = n;
  pop.m = m;
  pop.resize(N);
  int gen0 = 0;
  int64_t evals = 0;

  bool resumed = false;
  if (!c.checkpoint_path.empty()) {
    std::ifstream probe(c.checkpoint_path);
    if (probe.good()) {
      probe.close();
      const auto j = parse_json(read_file(c.checkpoint_path), "checkpoint " + c.checkpoint_path);
      try {
        if (j.at("format") != kNsga2CheckpointFormat)
          throw FormatError("checkpoint " + c.checkpoint_path + " is not an " + kNsga2CheckpointFormat +
                            " file");
        if (j.at("identity") != identity)
          throw FormatError("checkpoint " + c.checkpoint_path +
                            " belongs to another search (different profile, constraints, seed or "
                            "settings); delete it or choose another path");
        const auto& jg = j.at("generation");
        if (!jg.is_number_integer() || jg.get<int64_t>() < 0 || jg.get<int64_t>() > INT32_MAX)
          throw FormatError("checkpoint " + c.checkpoint_path + ": generation must be an integer >= 0, got " +
                            jg.dump());
        gen0 = jg.get<int>();
        if (gen0 > c.generations)
          throw ValueError("checkpoint " + c.checkpoint_path + " is at generation " + std::to_string(gen0) +
                           ", past the " + std::to_string(c.generations) +
                           " generations asked for; resume with generations >= " + std::to_string(gen0) +
                           ", or delete the checkpoint to start over");
        const auto& je = j.at("evaluations");
        if (!je.is_number_integer() || je.get<int64_t>() < 0)
          throw FormatError("checkpoint " + c.checkpoint_path + ": evaluations must be an integer >= 0");
        evals = je.get<int64_t>();
        const auto& genomes = j.at("population");
        if (static_cast<int>(genomes.size()) != N) throw FormatError("checkpoint population size differs");
        for (int i = 0; i < N; ++i) {
          auto g = genome_from_hex(genomes[i].get<std::string>(), n);
          p.check_genome(g);
          std::copy(g.begin(), g.end(), pop.g(i));
        }
        const auto& jh = j.at("history");
        if (!jh.is_array() || jh.size() != static_cast<size_t>(gen0) + 1)
          throw FormatError("checkpoint " + c.checkpoint_path + ": history must list generations 0.." +
                            std::to_string(gen0));
        for (const auto& s : jh) res.history.push_back(stats_from_json(s));
      } catch (const nlohmann::json::exception& e) {
        throw FormatError("checkpoint " + c.checkpoint_path + " is malformed: " + e.what());
      }
      resumed = true;
      res.resumed_from = gen0;
    }
  }
  const Ladder L(p);
  const bool neighbor = c.mutation == "neighbor";
  if (!resumed) initialize(p, c, L, pop);
  evaluate_all(p, pop, 0, c.threads);
  hash_all(pop, c.threads);
  assign_rank_crowding(pop, c.threads);
  if (!resumed) {
    evals = N;
    res.history.push_back(make_stats(p, pop, 0, evals, elapsed()));
    if (progress && !progress(res.history.back())) res.stopped_early = true;
  }

  Population merged;
  merged.units = n;
  merged.m = m;
  merged.resize(2 * N);
  std::vector<Gene> child_buf(static_cast<size_t>(N) * n);
  std::vector<uint64_t> child_hash(N);
  GenomeSet seen(2 * N);
  int gen = gen0;
  for (gen = gen0 + 1; gen <= c.generations && !res.stopped_early; ++gen) {
    // --- variation: each child owns the stream (seed, gen, i) ---
    auto tournament = [&](Rng& r) {
      const int a = static_cast<int>(r.below(N)), b = static_cast<int>(r.below(N));
      if (pop.rank[a] != pop.rank[b]) return pop.rank[a] < pop.rank[b] ? a : b;
      if (pop.crowd[a] != pop.crowd[b]) return pop.crowd[a] > pop.crowd[b] ? a : b;
      return std::min(a, b);
    };
    parallel_for(
        N, c.threads,
        [&](int64_t ii) {
          const int i = static_cast<int>(ii);
          Rng r(c.seed, static_cast<uint64_t>(gen), static_cast<uint64_t>(i));
          const Gene* p1 = pop.g(tournament(r));
          const Gene* p2 = pop.g(tournament(r));
          Gene* ch = child_buf.data() + static_cast<size_t>(i) * n;
          if (r.uniform() < c.crossover_prob) {
            uint64_t coins = 0;  // one random word gives 64 fair coin flips
            for (int u = 0; u < n; ++u) {
              if ((u & 63) == 0) coins = r.next();
              ch[u] = (coins & 1) ? p2[u] : p1[u];
              coins >>= 1;
            }
          } else {
            std::memcpy(ch, p1, static_cast<size_t>(n));
          }
          // Each gene mutates with probability pm: jump between mutated genes
          // with geometric gaps (about one draw per mutation, not one per gene).
          if (pm >= 1) {
            for (int u = 0; u < n; ++u) mutate_gene(L, neighbor, ch, u, r);
          } else if (pm > 0) {
            const double inv = 1.0 / std::log1p(-pm);
            auto gap = [&] { return std::floor(std::log1p(-r.uniform()) * inv); };
            for (double u = gap(); u < n; u += 1 + gap())
              mutate_gene(L, neighbor, ch, static_cast<int>(u), r);
          }
          child_hash[i] = genome_hash(ch, n);
        },
        grain_for(n));
    std::memcpy(merged.genes.data(), pop.genes.data(), pop.genes.size());
    std::memcpy(merged.obj.data(), pop.obj.data(), pop.obj.size() * sizeof(double));
    std::memcpy(merged.viol.data(), pop.viol.data(), pop.viol.size() * sizeof(double));
    std::memcpy(merged.g(N), child_buf.data(), child_buf.size());
    std::copy(pop.hash.begin(), pop.hash.end(), merged.hash.begin());
    std::copy(child_hash.begin(), child_hash.end(), merged.hash.begin() + N);
    // --- duplicate elimination (serial, deterministic) ---
    if (c.eliminate_duplicates) {
      seen.reset();
      for (int i = 0; i < N; ++i) seen.insert(merged, i);
      for (int i = 0; i < N; ++i) {
        Gene* g = merged.g(N + i);
        for (int a = 1; a <= kMaxDuplicateRetries && seen.contains(merged, N + i); ++a) {
          Rng r(c.seed, static_cast<uint64_t>(gen), static_cast<uint64_t>(i), static_cast<uint64_t>(a));
          mutate_gene(L, false, g, static_cast<int>(r.below(static_cast<uint32_t>(n))), r);
          merged.hash[N + i] = genome_hash(g, n);
        }
        seen.insert(merged, N + i);
      }
    }
    evaluate_all(p, merged, N, c.threads);
    evals += N;
    // --- (mu + lambda) survival ---
    auto fronts = non_dominated_sort(merged.obj.data(), 2 * N, m, merged.viol.data(), N, c.threads);
    std::vector<int> chosen;
    chosen.reserve(N);
    for (const auto& f : fronts) {
      if (static_cast<int>(chosen.size() + f.size()) <= N) {
        chosen.insert(chosen.end(), f.begin(), f.end());
        continue;
      }
      auto cd = crowding_distance(merged.obj.data(), m, f);
      std::vector<size_t> order(f.size());
      std::iota(order.begin(), order.end(), size_t{0});
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cd[a] > cd[b]; });
      for (size_t k = 0; static_cast<int>(chosen.size()) < N; ++k) chosen.push_back(f[order[k]]);
      break;
    }
    for (int i = 0; i < N; ++i) {
      const int s = chosen[i];
      std::memcpy(pop.g(i), merged.g(s), static_cast<size_t>(n));
      std::memcpy(pop.obj.data() + static_cast<size_t>(i) * m, merged.obj.data() + static_cast<size_t>(s) * m,
                  sizeof(double) * m);
      pop.viol[i] = merged.viol[s];
      pop.hash[i] = merged.hash[s];
    }
    assign_rank_crowding(pop, c.threads);
    res.history.push_back(make_stats(p, pop, gen, evals, elapsed()));
    if (progress && !progress(res.history.back())) res.stopped_early = true;
    if (!c.checkpoint_path.empty() &&
        (gen % c.checkpoint_every == 0 || gen == c.generations || res.stopped_early))
      write_checkpoint(c.checkpoint_path, identity, pop, gen, evals, res.history);
  }
  res.generations_run = gen - 1;

  res.genomes = pop.genes;
  res.objectives = pop.obj;
  res.violation = pop.viol;
  res.rank = pop.rank;
  res.evaluations = evals;
  for (int i = 0; i < N; ++i)
    if (pop.rank[i] == 0 && pop.viol[i] <= 0) res.front.push_back(i);
  std::stable_sort(res.front.begin(), res.front.end(), [&](int a, int b) {
    const double* x = pop.obj.data() + static_cast<size_t>(a) * m;
    const double* y = pop.obj.data() + static_cast<size_t>(b) * m;
    return x[1] != y[1] ? x[1] < y[1] : x[0] < y[0];
  });
  res.seconds = elapsed();
  return res;
}

}  // namespace empas
