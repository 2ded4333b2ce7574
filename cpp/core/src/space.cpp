#include "empas/space.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "empas/error.hpp"

namespace empas {

namespace {
// a / b rounded up, for a >= 0 and b > 0, without the overflow of a + b - 1.
int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

// Byte arithmetic checked for int64 overflow: a count beyond what an int64 can
// hold is an error naming the unit, never a wrapped (negative or tiny) number.
[[noreturn]] void too_big(const Unit& unit, int bits) {
  throw ValueError("unit '" + unit.name + "': its size at " + std::to_string(bits) +
                   " bits overflows a 64-bit byte count (params or shapes are too large)");
}
int64_t mul(int64_t a, int64_t b, const Unit& unit, int bits) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) too_big(unit, bits);
  return r;
}
int64_t add(int64_t a, int64_t b, const Unit& unit, int bits) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) too_big(unit, bits);
  return r;
}
}  // namespace

void Quantizer::validate() const {
  if (scheme != "symmetric" && scheme != "asymmetric")
    throw ValueError("quantizer.scheme must be 'symmetric' or 'asymmetric', got '" + scheme + "'");
  if (granularity != "group" && granularity != "channel" && granularity != "tensor")
    throw ValueError("quantizer.granularity must be 'group', 'channel' or 'tensor', got '" + granularity +
                     "'");
  if (group_size <= 0)
    throw ValueError("quantizer.group_size must be positive, got " + std::to_string(group_size));
  if (scale_bytes < 0 || scale_bytes > 8 || zero_bytes < 0 || zero_bytes > 8)
    throw ValueError("quantizer.scale_bytes / zero_bytes must be in [0, 8]");
  if (bytes_model != "packed" && bytes_model != "params_bits")
    throw ValueError("quantizer.bytes_model must be 'packed' or 'params_bits', got '" + bytes_model + "'");
}

bool valid_bits(int bits) { return bits == 0 || (bits >= 2 && bits <= 8) || bits == 16; }

int64_t unit_bytes(const Unit& unit, int bits, const Quantizer& q) {
  if (!valid_bits(bits))
    throw ValueError("unit '" + unit.name + "': " + std::to_string(bits) +
                     " bits is not a supported precision (0, 2..8, 16)");
  if (unit.params < 0) throw ValueError("unit '" + unit.name + "' has negative params");
  if (bits == 0) return 0;
  if (bits == 16 || q.bytes_model == "params_bits") return ceil_div(mul(unit.params, bits, unit, bits), 8);
  const int64_t per_group = q.scale_bytes + q.zero_bytes;
  if (unit.shapes.empty()) {
    // Only a parameter count is known: treat it as one row-major tensor.
    if (q.granularity == "channel")
      throw ValueError("unit '" + unit.name + "': per-channel byte counts need the member weight shapes");
    const int64_t groups = q.granularity == "group" ? ceil_div(unit.params, q.group_size) : 1;
    return add(ceil_div(mul(unit.params, bits, unit, bits), 8), mul(groups, per_group, unit, bits), unit,
               bits);
  }
  int64_t total = 0;
  for (const auto& s : unit.shapes) {
    const int64_t rows = s[0], cols = s[1];
    if (rows <= 0 || cols <= 0) throw ValueError("unit '" + unit.name + "' has a non-positive shape");
    int64_t groups = 1;
    if (q.granularity == "group")
      groups = mul(rows, ceil_div(cols, q.group_size), unit, bits);
    else if (q.granularity == "channel")
      groups = rows;
    const int64_t packed = ceil_div(mul(mul(rows, cols, unit, bits), bits, unit, bits), 8);
    total = add(total, add(packed, mul(groups, per_group, unit, bits), unit, bits), unit, bits);
  }
  return total;
}

void Problem::finalize() {
  std::ostringstream err;
  if (n_units <= 0) throw ValueError("the search space has no units");
  if (n_choices <= 0 || n_choices > 255)
    throw ValueError("the number of choices must be in [1, 255], got " + std::to_string(n_choices));
  const size_t cells = static_cast<size_t>(n_units) * n_choices;
  if (choice_bits.size() != static_cast<size_t>(n_choices))
    throw ValueError("choice_bits has " + std::to_string(choice_bits.size()) + " entries, expected " +
                     std::to_string(n_choices));
  if (delta.size() != cells || bytes.size() != cells || allowed.size() != cells)
    throw ValueError("delta/bytes/allowed tables must have n_units x n_choices = " + std::to_string(cells) +
                     " entries");
  if (!latency.empty() && latency.size() != cells)
    throw ValueError("latency table must have n_units x n_choices = " + std::to_string(cells) + " entries");
  if (params.size() != static_cast<size_t>(n_units)) throw ValueError("params must have one entry per unit");
  if (!std::isfinite(base_loss)) throw ValueError("the baseline loss is not finite");
  if (fixed_bytes < 0) throw ValueError("fixed (unsearched) bytes must be >= 0");

  allowed_list_.assign(n_units, {});
  min_bytes_ = max_bytes_ = fixed_bytes;
  worst_loss_ = best_loss_ = base_loss;
  max_latency_ = 0;
  total_params_ = 0;
  double min_pbits = 0;
  for (int u = 0; u < n_units; ++u) {
    if (params[u] < 0) throw ValueError("unit " + std::to_string(u) + " has negative params");
    total_params_ += static_cast<double>(params[u]);
    int64_t bmin = std::numeric_limits<int64_t>::max(), bmax = 0;
    double lmin = std::numeric_limits<double>::infinity(), lmax = -lmin, tmax = 0;
    int min_bits = std::numeric_limits<int>::max();
    for (int c = 0; c < n_choices; ++c) {
      const size_t k = static_cast<size_t>(u) * n_choices + c;
      if (!allowed[k]) continue;
      if (!std::isfinite(delta[k]))
        throw ValueError("delta of unit " + std::to_string(u) + " at " + std::to_string(choice_bits[c]) +
                         " bits is not finite");
      if (bytes[k] < 0)
        throw ValueError("unit " + std::to_string(u) + " has negative bytes (" + std::to_string(bytes[k]) +
                         ") at " + std::to_string(choice_bits[c]) + " bits in the bytes table");
      if (!latency.empty() && !std::isfinite(latency[k]))
        throw ValueError("latency of unit " + std::to_string(u) + " is not finite");
      allowed_list_[u].push_back(static_cast<Gene>(c));
      bmin = std::min(bmin, bytes[k]);
      bmax = std::max(bmax, bytes[k]);
      lmin = std::min(lmin, delta[k]);
      lmax = std::max(lmax, delta[k]);
      if (!latency.empty()) tmax = std::max(tmax, latency[k]);
      min_bits = std::min(min_bits, choice_bits[c]);
    }
    if (allowed_list_[u].empty()) throw ValueError("unit " + std::to_string(u) + " allows no choice");
    if (__builtin_add_overflow(min_bytes_, bmin, &min_bytes_) ||
        __builtin_add_overflow(max_bytes_, bmax, &max_bytes_))
      throw ValueError("the total size overflows a 64-bit byte count at unit " + std::to_string(u) +
                       " (unsearched bytes plus unit bytes exceed " + std::to_string(INT64_MAX) + ")");
    worst_loss_ += lmax;
    best_loss_ += lmin;
    max_latency_ += tmax;
    min_pbits += static_cast<double>(params[u]) * min_bits;
  }
  min_avg_bits_ = total_params_ > 0 ? min_pbits / total_params_ : 0;
  // Loss sums must stay finite and keep the deltas: a baseline or deltas so
  // large that base + sum overflows (or swallows the deltas) would make every
  // plan look alike, flatten the front and break the hypervolume.
  if (!std::isfinite(worst_loss_) || !std::isfinite(best_loss_)) {
    std::ostringstream m;
    m << "the baseline loss (" << base_loss
      << ") plus the sum of the units' deltas is not a finite number (it overflows a double); "
         "the deltas or the baseline are far too large";
    throw ValueError(m.str());
  }
  {
    double spread = 0;  // sum of per-unit delta ranges, computed without the baseline
    for (int u = 0; u < n_units; ++u) {
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      for (Gene c : allowed_list_[u]) {
        lo = std::min(lo, delta_at(u, c));
        hi = std::max(hi, delta_at(u, c));
      }
      spread += hi - lo;
    }
    if (!std::isfinite(spread)) throw ValueError("the sum of the units' delta ranges overflows a double");
    if (spread > 0 && !(worst_loss_ - best_loss_ >= 0.5 * spread)) {
      std::ostringstream m;
      m << "the baseline loss (" << base_loss << ") is so large that the units' deltas (total spread "
        << spread << ") vanish when added to it; every plan would have the same loss";
      throw ValueError(m.str());
    }
    const double area = (worst_loss_ - best_loss_) * static_cast<double>(max_bytes_ - min_bytes_);
    if (!std::isfinite(area))
      throw ValueError("loss range x byte range overflows a double; the hypervolume cannot be computed");
  }
  if (constraints.max_bytes >= 0 && constraints.max_bytes < min_bytes_)
    throw InfeasibleError("memory budget of " + std::to_string(constraints.max_bytes) +
                          " bytes is below the smallest reachable size of " + std::to_string(min_bytes_) +
                          " bytes (every unit at its smallest choice)");
  if (constraints.max_avg_bits >= 0 && constraints.max_avg_bits < min_avg_bits_ - 1e-12) {
    std::ostringstream m;
    m << "average-bits budget of " << constraints.max_avg_bits
      << " is below the smallest reachable average of " << min_avg_bits_ << " bits";
    throw InfeasibleError(m.str());
  }
  finalized_ = true;
}

Evaluation Problem::evaluate(const Gene* g) const {
  Evaluation e;
  e.loss = base_loss;
  e.bytes = fixed_bytes;
  double pbits = 0;
  for (int u = 0; u < n_units; ++u) {
    const size_t k = static_cast<size_t>(u) * n_choices + g[u];
    e.loss += delta[k];
    e.bytes += bytes[k];
    pbits += static_cast<double>(params[u]) * choice_bits[g[u]];
    if (!latency.empty()) e.latency += latency[k];
  }
  e.avg_bits = total_params_ > 0 ? pbits / total_params_ : 0;
  if (constraints.max_bytes >= 0 && e.bytes > constraints.max_bytes)
    e.violation += static_cast<double>(e.bytes - constraints.max_bytes) /
                   static_cast<double>(std::max<int64_t>(constraints.max_bytes, 1));
  if (constraints.max_avg_bits >= 0 && e.avg_bits > constraints.max_avg_bits + 1e-12)
    e.violation += (e.avg_bits - constraints.max_avg_bits) / std::max(constraints.max_avg_bits, 1e-9);
  return e;
}

void Problem::objectives(const Gene* g, double* obj, double* violation) const {
  const Evaluation e = evaluate(g);
  obj[0] = e.loss;
  obj[1] = static_cast<double>(e.bytes);
  if (!latency.empty()) obj[2] = e.latency;
  *violation = e.violation;
}

std::vector<double> Problem::reference_point() const {
  std::vector<double> r{worst_loss_, static_cast<double>(max_bytes_)};
  if (!latency.empty()) r.push_back(max_latency_);
  return r;
}

std::vector<Gene> Problem::extreme_genome(bool smallest) const {
  std::vector<Gene> g(n_units);
  for (int u = 0; u < n_units; ++u) {
    Gene best = allowed_list_[u][0];
    for (Gene c : allowed_list_[u]) {
      const int64_t b = bytes_at(u, c), bb = bytes_at(u, best);
      const double d = delta_at(u, c), db = delta_at(u, best);
      if (smallest ? (b < bb || (b == bb && d < db)) : (b > bb || (b == bb && d < db))) best = c;
    }
    g[u] = best;
  }
  return g;
}

void Problem::check_genome(const std::vector<Gene>& g) const {
  if (g.size() != static_cast<size_t>(n_units))
    throw ValueError("a plan has " + std::to_string(g.size()) + " genes, the space has " +
                     std::to_string(n_units) + " units");
  for (int u = 0; u < n_units; ++u) {
    if (g[u] >= n_choices || !allowed[static_cast<size_t>(u) * n_choices + g[u]])
      throw ValueError("unit " + std::to_string(u) + ": choice index " + std::to_string(g[u]) +
                       " is not allowed");
  }
}

}  // namespace empas
