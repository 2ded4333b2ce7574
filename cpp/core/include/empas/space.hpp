// Search space, memory model and the O(1) additive proxy.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace empas {

/// Gene value: index into Problem::choice_bits.
using Gene = uint8_t;

/// How weights are quantized, which fixes the bytes a quantized tensor takes.
struct Quantizer {
  std::string scheme = "symmetric";   ///< "symmetric" | "asymmetric"
  std::string granularity = "group";  ///< "group" | "channel" | "tensor"
  int64_t group_size = 128;           ///< weights per group along the input dim
  int scale_bytes = 2;                ///< bytes per stored scale (fp16)
  int zero_bytes = 0;                 ///< bytes per stored zero-point (0 if symmetric)
  /// "packed": packed integers + scales/zeros (design.md section 4);
  /// "params_bits": params x bits / 8 only (the original EMPAS count, for imports).
  std::string bytes_model = "packed";
  void validate() const;  ///< throws ValueError
};

/// A searchable unit: a block, sub-block or single linear layer.
struct Unit {
  std::string name;
  std::string kind = "block";
  std::vector<std::string> modules;            ///< member module names
  int64_t params = 0;                          ///< weights quantized by this unit
  std::vector<std::array<int64_t, 2>> shapes;  ///< [out, in] of each member weight (optional)
};

/// Bytes of `unit` stored at `bits` under `q`: 0 bits = dropped (0 bytes),
/// 16 bits = fp16 weights, 2..8 bits = packed integers + scales (+ zeros).
int64_t unit_bytes(const Unit& unit, int bits, const Quantizer& q);

/// Whether `bits` is a precision EMPAS can represent (0, 2..8, 16).
bool valid_bits(int bits);

/// Budgets. A negative value means "no constraint".
struct Constraints {
  int64_t max_bytes = -1;    ///< total bytes incl. unsearched tensors
  double max_avg_bits = -1;  ///< parameter-weighted mean bits of searched units
};

/// Objectives of one plan under the additive proxy.
struct Evaluation {
  double loss = 0;       ///< base + sum of deltas
  int64_t bytes = 0;     ///< fixed bytes + sum of unit bytes
  double avg_bits = 0;   ///< sum(params * bits) / sum(params)
  double latency = 0;    ///< sum of latency table (0 without one)
  double violation = 0;  ///< normalized constraint violation (0 = feasible)
};

/// The search problem: lookup tables laid out [unit][choice] (row-major,
/// n_units x n_choices). Entries of choices a unit does not allow are ignored.
struct Problem {
  int n_units = 0;
  int n_choices = 0;
  std::vector<int> choice_bits;  ///< n_choices
  std::vector<double> delta;     ///< Δloss, n_units x n_choices
  std::vector<int64_t> bytes;    ///< bytes, n_units x n_choices
  std::vector<double> latency;   ///< empty, or n_units x n_choices (any unit, e.g. ms)
  std::vector<uint8_t> allowed;  ///< 1 if the unit may take the choice, n_units x n_choices
  std::vector<int64_t> params;   ///< n_units
  double base_loss = 0;
  int64_t fixed_bytes = 0;  ///< unsearched tensors
  Constraints constraints;

  /// Checks sizes, finiteness and that every unit allows at least one choice;
  /// then caches derived data. Throws ValueError / InfeasibleError.
  void finalize();

  int n_objectives() const { return latency.empty() ? 2 : 3; }
  const std::vector<Gene>& allowed_choices(int unit) const { return allowed_list_[unit]; }
  double delta_at(int u, int c) const { return delta[static_cast<size_t>(u) * n_choices + c]; }
  int64_t bytes_at(int u, int c) const { return bytes[static_cast<size_t>(u) * n_choices + c]; }

  Evaluation evaluate(const Gene* genome) const;
  /// Writes n_objectives() values (loss, bytes[, latency]) and the violation.
  void objectives(const Gene* genome, double* obj, double* violation) const;

  int64_t min_bytes() const { return min_bytes_; }        ///< smallest reachable total
  int64_t max_total_bytes() const { return max_bytes_; }  ///< largest reachable total
  double min_avg_bits() const { return min_avg_bits_; }
  double worst_loss() const { return worst_loss_; }  ///< largest reachable proxy loss
  double best_loss() const { return best_loss_; }
  double max_latency() const { return max_latency_; }
  /// Hypervolume reference point: the worst corner of the space (loss, bytes[, latency]).
  std::vector<double> reference_point() const;
  /// Genome with every unit at its smallest (largest) allowed byte size.
  std::vector<Gene> extreme_genome(bool smallest) const;
  /// Throws ValueError naming the problem if `g` is not a valid genome.
  void check_genome(const std::vector<Gene>& g) const;

 private:
  std::vector<std::vector<Gene>> allowed_list_;
  int64_t min_bytes_ = 0, max_bytes_ = 0;
  double min_avg_bits_ = 0, worst_loss_ = 0, best_loss_ = 0, max_latency_ = 0;
  double total_params_ = 0;
  bool finalized_ = false;
};

}  // namespace empas
