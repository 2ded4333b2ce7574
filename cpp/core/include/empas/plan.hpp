// Bit-allocation plans: the plan format (kPlanFormat, empas/version.hpp),
// import of the original EMPAS artifacts, and conversion between plans and
// genomes of a profile. Every loader validates and throws FormatError naming
// the offending field.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "empas/profile.hpp"
#include "empas/space.hpp"
#include "empas/version.hpp"

namespace empas {

struct PlanUnit {
  std::string name;
  int bits = 16;
  std::vector<std::string> modules;
  int64_t params = 0;
};

struct Plan {
  nlohmann::json model = nlohmann::json::object();
  std::string archetype;  ///< "" if none
  std::vector<PlanUnit> units;
  Quantizer quantizer;
  nlohmann::json predicted = nlohmann::json::object();   ///< loss, bytes, avg_bits[, latency]
  nlohmann::json measured = nullptr;                     ///< filled by verify
  nlohmann::json provenance = nlohmann::json::object();  ///< profile, search, seed, version

  std::string model_name() const;
  void validate() const;  ///< throws FormatError
  nlohmann::json to_json() const;
  /// Parses kPlanFormat or an original EMPAS artifact (auto-detected).
  static Plan from_json(const nlohmann::json& j);
  static Plan from_empas(const nlohmann::json& j);
};

/// Genome of `plan` in `profile` order; throws FormatError when the plan is
/// for another model (name, unit names or counts) or uses a choice the
/// profile does not allow for a unit.
std::vector<Gene> plan_genome(const Profile& profile, const Plan& plan);

/// Plan for `genome`, with predicted metrics filled from the proxy.
/// `fingerprint` (optional) is profile.fingerprint(), passed to avoid recomputing it.
Plan make_plan(const Profile& profile, const Problem& problem, const std::vector<Gene>& genome,
               const std::string& fingerprint = "");

}  // namespace empas
