// Bit-allocation plans: the plan format (kPlanFormat), import of the original
// EMPAS artifacts, plan_genome and make_plan.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "empas/error.hpp"
#include "empas/plan.hpp"
#include "empas/version.hpp"
#include "json_util.hpp"

namespace empas {

using namespace json_util;

// --------------------------------------------------------------------- Plan
std::string Plan::model_name() const {
  if (model.is_object() && model.contains("name") && model["name"].is_string()) return model["name"];
  return "";
}

void Plan::validate() const {
  if (units.empty()) fail("plan has no units");
  std::set<std::string> names;
  for (size_t i = 0; i < units.size(); ++i) {
    const auto& u = units[i];
    if (u.name.empty()) fail("plan.units[" + std::to_string(i) + "] has an empty name");
    if (!names.insert(u.name).second) fail("plan: unit '" + u.name + "' appears twice");
    if (!valid_bits(u.bits))
      fail("plan: unit '" + u.name + "' has " + std::to_string(u.bits) +
           " bits, not a supported precision (0, 2..8, 16)");
  }
  try {
    quantizer.validate();
  } catch (const ValueError& e) {
    fail(std::string("plan.quantizer: ") + e.what());
  }
}

json Plan::to_json() const {
  json j;
  j["format"] = kPlanFormat;
  j["model"] = model;
  j["archetype"] = archetype.empty() ? json(nullptr) : json(archetype);
  json us = json::array();
  for (const auto& u : units)
    us.push_back({{"name", u.name}, {"bits", u.bits}, {"modules", u.modules}, {"params", u.params}});
  j["units"] = us;
  j["quantizer"] = quantizer_to_json(quantizer);
  j["predicted"] = predicted;
  j["measured"] = measured;
  j["provenance"] = provenance;
  return j;
}

Plan Plan::from_json(const json& j) {
  if (!j.is_object()) fail("plan: expected a JSON object at the top level");
  if (j.contains("config") && !j.contains("format")) return from_empas(j);
  if (!j.contains("format"))
    fail("plan: no 'format' field; expected '" + std::string(kPlanFormat) +
         "' or an original EMPAS artifact (config.quantization_map)");
  if (!j["format"].is_string() || j["format"].get<std::string>() != kPlanFormat)
    fail("plan: unsupported format " + j["format"].dump() + "; this EMPAS reads '" + kPlanFormat + "'");
  Plan p;
  p.model = object_or_empty(j, "model", "plan");
  if (j.contains("archetype") && !j["archetype"].is_null()) p.archetype = need_string(j, "archetype", "plan");
  const json& us = need(j, "units", "plan");
  if (!us.is_array()) fail("plan.units must be an array");
  for (size_t i = 0; i < us.size(); ++i) {
    const std::string where = "plan.units[" + std::to_string(i) + "]";
    PlanUnit u;
    u.name = need_string(us[i], "name", where);
    u.bits = as_small_int(need(us[i], "bits", where), where + ".bits");
    if (us[i].contains("modules") && us[i]["modules"].is_array())
      for (const auto& m : us[i]["modules"]) {
        if (!m.is_string()) fail(where + ".modules must be an array of names");
        u.modules.push_back(m.get<std::string>());
      }
    if (us[i].contains("params") && !us[i]["params"].is_null())
      u.params = as_int(us[i]["params"], where + ".params");
    p.units.push_back(std::move(u));
  }
  p.quantizer = quantizer_from_json(j.value("quantizer", json(nullptr)), "plan.quantizer");
  p.predicted = object_or_empty(j, "predicted", "plan");
  if (j.contains("measured")) p.measured = j["measured"];
  p.provenance = object_or_empty(j, "provenance", "plan");
  p.validate();
  return p;
}

Plan Plan::from_empas(const json& j) {
  const std::string where = "EMPAS artifact";
  const json& cfg = need(j, "config", where);
  const json& qm = need(cfg, "quantization_map", where + ".config");
  if (!qm.is_object() || qm.empty()) fail(where + ".config.quantization_map must be a non-empty object");
  Plan p;
  if (cfg.contains("base_model")) p.model = {{"name", need_string(cfg, "base_model", where + ".config")}};
  if (j.contains("archetype") && j["archetype"].is_string()) p.archetype = j["archetype"];
  std::vector<std::pair<long, std::string>> order;
  for (auto it = qm.begin(); it != qm.end(); ++it) order.emplace_back(name_index(it.key()), it.key());
  std::sort(order.begin(), order.end());
  for (const auto& [idx, name] : order) {
    (void)idx;
    PlanUnit u;
    u.name = name;
    u.bits = as_small_int(qm[name], where + ".config.quantization_map[" + name + "]");
    p.units.push_back(u);
  }
  p.quantizer.bytes_model = "params_bits";
  json metrics = object_or_empty(j, "metrics", where);
  if (metrics.contains("predicted_loss"))
    p.predicted["loss"] = as_number(metrics["predicted_loss"], where + ".metrics.predicted_loss");
  p.provenance = {{"imported_from", "empas"}, {"original_metrics", metrics}};
  p.validate();
  return p;
}

std::vector<Gene> plan_genome(const Profile& profile, const Plan& plan) {
  const std::string pm = plan.model_name(), fm = profile.model_name();
  if (!pm.empty() && !fm.empty() && pm != fm)
    fail("plan is for model '" + pm + "' but the profile is for '" + fm + "'");
  std::map<std::string, int> bits;
  for (const auto& u : plan.units) bits[u.name] = u.bits;
  std::vector<std::string> missing, extra;
  for (const auto& u : profile.units)
    if (!bits.count(u.name)) missing.push_back(u.name);
  for (const auto& u : plan.units)
    if (profile.unit_index(u.name) < 0) extra.push_back(u.name);
  if (!missing.empty() || !extra.empty()) {
    auto few = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size() && i < 5; ++i) s += (i ? ", " : "") + ("'" + v[i] + "'");
      if (v.size() > 5) s += ", ... (" + std::to_string(v.size()) + " in all)";
      return s;
    };
    std::string msg = "plan does not match the profile (" + std::to_string(plan.units.size()) +
                      " plan units vs " + std::to_string(profile.n_units()) + " profile units)";
    if (!missing.empty()) msg += "; missing units: " + few(missing);
    if (!extra.empty()) msg += "; units unknown to the profile: " + few(extra);
    fail(msg);
  }
  std::vector<Gene> g(profile.n_units());
  for (int u = 0; u < profile.n_units(); ++u) {
    const int b = bits[profile.units[u].name];
    const int c = profile.choice_index(b);
    if (c < 0)
      fail("plan: unit '" + profile.units[u].name + "' has " + std::to_string(b) +
           " bits, which is not among the profile's choices " + bits_list(profile.choices));
    if (std::isnan(profile.delta[static_cast<size_t>(u) * profile.n_choices() + c]))
      fail("plan: unit '" + profile.units[u].name + "' has " + std::to_string(b) +
           " bits, which the profile does not allow for that unit");
    g[u] = static_cast<Gene>(c);
  }
  return g;
}

Plan make_plan(const Profile& profile, const Problem& problem, const std::vector<Gene>& genome,
               const std::string& fingerprint) {
  problem.check_genome(genome);
  Plan p;
  p.model = profile.model;
  p.quantizer = profile.quantizer;
  for (int u = 0; u < profile.n_units(); ++u) {
    const auto& src = profile.units[u];
    p.units.push_back({src.name, profile.choices[genome[u]], src.modules, src.params});
  }
  const Evaluation e = problem.evaluate(genome.data());
  p.predicted = {{"loss", e.loss}, {"bytes", e.bytes}, {"avg_bits", e.avg_bits}};
  if (!problem.latency.empty()) p.predicted["latency"] = e.latency;
  // n_units and the hash of the unit names let apply/export tell a plan that
  // lost a unit (by hand editing) from a complete one.
  std::string names;
  for (const auto& u : profile.units) names += u.name + '\n';
  p.provenance = {{"profile",
                   {{"fingerprint", fingerprint.empty() ? profile.fingerprint() : fingerprint},
                    {"model", profile.model_name()},
                    {"n_units", profile.n_units()},
                    {"units_hash", hex(fnv(names))}}},
                  {"empas_version", kVersion}};
  return p;
}

}  // namespace empas
