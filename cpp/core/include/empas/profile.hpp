// Sensitivity profiles: the profile format (kProfileFormat, empas/version.hpp)
// and import of the original EMPAS profile format. Every loader validates and
// throws FormatError naming the offending field.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "empas/space.hpp"
#include "empas/version.hpp"

namespace empas {

/// How to treat negative deltas on load: "error" (unless within 3 stderr of
/// zero, i.e. measurement noise, which is kept raw), "clamp" (to 0), "keep".
enum class NegativePolicy { Error, Clamp, Keep };

struct Profile {
  nlohmann::json model = nlohmann::json::object();        ///< name, path, hash, ...
  nlohmann::json calibration = nlohmann::json::object();  ///< source, n_tokens, seq_len, seed, hash
  std::string loss_kind = "causal_lm";
  double baseline = 0;
  Quantizer quantizer;
  std::vector<Unit> units;
  std::vector<int> choices;      ///< bits per choice (16 = untouched, 0 = dropped)
  std::vector<double> delta;     ///< n_units x n_choices; NaN = not allowed/measured
  std::vector<double> stderr_;   ///< empty or n_units x n_choices (NaN = unknown)
  std::vector<double> latency;   ///< empty or n_units x n_choices
  int64_t unsearched_bytes = 0;  ///< embeddings, norms, head... at stored dtype
  nlohmann::json timings = nlohmann::json::object();
  nlohmann::json source = nlohmann::json::object();  ///< provenance (e.g. imported from EMPAS)

  int n_units() const { return static_cast<int>(units.size()); }
  int n_choices() const { return static_cast<int>(choices.size()); }
  std::string model_name() const;
  /// Validates everything; throws FormatError. Applies the negative policy.
  void validate(NegativePolicy neg = NegativePolicy::Error);
  /// bytes[unit][choice] from the memory model (n_units x n_choices).
  std::vector<int64_t> bytes_table() const;
  /// Hash of units, choices, tables and quantizer (hex).
  std::string fingerprint() const;
  int unit_index(const std::string& name) const;  ///< -1 if absent
  int choice_index(int bits) const;               ///< -1 if absent

  /// Builds the search problem. `pinned` maps unit name -> bits; `allowed_bits`
  /// (if non-empty) restricts choices globally.
  Problem to_problem(const Constraints& c, const std::map<std::string, int>& pinned = {},
                     const std::vector<int>& allowed_bits = {}, bool use_latency = false) const;

  nlohmann::json to_json() const;
  /// Parses kProfileFormat or the original EMPAS profile (auto-detected).
  static Profile from_json(const nlohmann::json& j, NegativePolicy neg = NegativePolicy::Error);
  static Profile from_empas(const nlohmann::json& j);
};

}  // namespace empas
