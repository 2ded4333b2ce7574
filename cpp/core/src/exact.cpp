#include "empas/exact.hpp"

#include <algorithm>
#include <limits>

#include "empas/error.hpp"

namespace empas {

ExactFront exact_front(const Problem& p, const ExactConfig& cfg) {
  if (p.n_objectives() != 2)
    throw ValueError(
        "the exact front covers the two additive objectives (loss, bytes); "
        "a latency objective needs method='nsga2'");
  if (p.constraints.max_avg_bits >= 0)
    throw ValueError(
        "the exact front supports a byte budget only; an average-bits budget "
        "needs method='nsga2' (or express it as max_bytes)");
  if (cfg.max_points < 1) throw ValueError("max_points must be >= 1");
  if (cfg.eps_bytes < 0) throw ValueError("eps_bytes must be >= 0");
  const int n = p.n_units;
  // The epsilon-grid: eps_bytes bounds the error of the final front, so each
  // of the n merge steps may move a point by at most eps_bytes / n bytes.
  const int64_t width = cfg.eps_bytes > 0 ? std::max<int64_t>(1, cfg.eps_bytes / n) : 0;
  int merged_steps = 0;  // steps at which the grid dropped a state
  const int64_t total_limit = cfg.max_points * 64;
  // Smallest bytes still to come after unit u, for budget pruning.
  std::vector<int64_t> min_rest(n + 1, 0);
  for (int u = n - 1; u >= 0; --u) {
    int64_t b = std::numeric_limits<int64_t>::max();
    for (Gene c : p.allowed_choices(u)) b = std::min(b, p.bytes_at(u, c));
    min_rest[u] = min_rest[u + 1] + b;
  }
  const int64_t budget = p.constraints.max_bytes >= 0 ? p.constraints.max_bytes - p.fixed_bytes
                                                      : std::numeric_limits<int64_t>::max();

  std::vector<int64_t> bytes{0}, nbytes;
  std::vector<double> loss{p.base_loss}, nloss;
  std::vector<std::vector<int32_t>> parent(n);
  std::vector<std::vector<Gene>> choice(n);
  int64_t stored = 0, peak = 1;

  for (int u = 0; u < n; ++u) {
    const auto& al = p.allowed_choices(u);
    const size_t k = al.size(), S = bytes.size();
    std::vector<size_t> head(k, 0);
    nbytes.clear();
    nloss.clear();
    auto& par = parent[u];
    auto& chs = choice[u];
    double best = std::numeric_limits<double>::infinity();
    bool merged = false;
    while (true) {
      // k-way merge by (bytes, loss, choice order).
      int pick = -1;
      int64_t pb = 0;
      double pl = 0;
      for (size_t c = 0; c < k; ++c) {
        if (head[c] >= S) continue;
        const int64_t b = bytes[head[c]] + p.bytes_at(u, al[c]);
        const double l = loss[head[c]] + p.delta_at(u, al[c]);
        if (pick < 0 || b < pb || (b == pb && l < pl)) {
          pick = static_cast<int>(c);
          pb = b;
          pl = l;
        }
      }
      if (pick < 0) break;
      const size_t from = head[pick]++;
      if (pb + min_rest[u + 1] > budget) continue;
      if (!(pl < best)) continue;  // dominated (or equal) by a smaller state
      best = pl;
      if (width > 0 && nbytes.size() > 1 && pb / width == nbytes.back() / width) {
        // Same bucket: the newer state has lower loss; it replaces the older,
        // which is at most `width` bytes smaller. The first state (the
        // smallest) is never replaced and the last one kept has the lowest
        // loss, so the front keeps both extremes.
        merged = true;
        nbytes.back() = pb;
        nloss.back() = pl;
        par.back() = static_cast<int32_t>(from);
        chs.back() = al[pick];
        continue;
      }
      nbytes.push_back(pb);
      nloss.push_back(pl);
      par.push_back(static_cast<int32_t>(from));
      chs.push_back(al[pick]);
      if (static_cast<int64_t>(nbytes.size()) > cfg.max_points ||
          stored + static_cast<int64_t>(nbytes.size()) > total_limit)
        throw ValueError("the exact front grows past max_points=" + std::to_string(cfg.max_points) +
                         " states (at unit " + std::to_string(u) + " of " + std::to_string(n) +
                         "); pass eps_bytes (resolution: the largest byte error you accept, e.g. 0.1% of "
                         "the model's size) for an epsilon-grid front, raise max_points, or use "
                         "method='nsga2'");
    }
    if (nbytes.empty())
      throw InfeasibleError("no plan fits the memory budget of " + std::to_string(p.constraints.max_bytes) +
                            " bytes");
    merged_steps += merged;
    stored += static_cast<int64_t>(nbytes.size());
    peak = std::max<int64_t>(peak, static_cast<int64_t>(nbytes.size()));
    bytes.swap(nbytes);
    loss.swap(nloss);
    par.shrink_to_fit();
    chs.shrink_to_fit();
  }

  ExactFront f;
  f.n_units = n;
  f.exact = cfg.eps_bytes == 0;
  f.eps_bytes = cfg.eps_bytes;
  f.error_bound_bytes = width * merged_steps;
  f.peak_states = peak;
  const size_t P = bytes.size();
  f.genomes.resize(P * n);
  f.loss = loss;
  f.bytes.resize(P);
  for (size_t i = 0; i < P; ++i) {
    f.bytes[i] = bytes[i] + p.fixed_bytes;
    int32_t s = static_cast<int32_t>(i);
    for (int u = n - 1; u >= 0; --u) {
      f.genomes[i * n + u] = choice[u][s];
      s = parent[u][s];
    }
  }
  return f;
}

}  // namespace empas
