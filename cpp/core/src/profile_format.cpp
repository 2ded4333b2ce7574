// Sensitivity profiles: the profile format (kProfileFormat) and import of the
// original EMPAS profile format.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "empas/error.hpp"
#include "empas/profile.hpp"
#include "empas/version.hpp"
#include "json_util.hpp"

namespace empas {

using namespace json_util;

// ------------------------------------------------------------------ Profile
std::string Profile::model_name() const {
  if (model.is_object()) {
    if (model.contains("name") && model["name"].is_string()) return model["name"];
    if (model.contains("path") && model["path"].is_string()) return model["path"];
  }
  return "";
}

int Profile::unit_index(const std::string& name) const {
  for (int u = 0; u < n_units(); ++u)
    if (units[u].name == name) return u;
  return -1;
}

int Profile::choice_index(int bits) const {
  for (int c = 0; c < n_choices(); ++c)
    if (choices[c] == bits) return c;
  return -1;
}

void Profile::validate(NegativePolicy neg) {
  if (units.empty()) fail("profile has no units");
  if (choices.empty()) fail("profile has no choices");
  if (choices.size() > 255) fail("profile has more than 255 choices");
  std::set<int> seen_bits;
  for (int b : choices) {
    if (!valid_bits(b))
      fail("profile.choices: " + std::to_string(b) + " bits is not a supported precision (0, 2..8, 16)");
    if (!seen_bits.insert(b).second) fail("profile.choices lists " + std::to_string(b) + " bits twice");
  }
  if (!std::isfinite(baseline)) fail("profile baseline loss is not finite");
  if (unsearched_bytes < 0) fail("profile.unsearched_bytes must be >= 0");
  try {
    quantizer.validate();
  } catch (const ValueError& e) {
    fail(std::string("profile.quantizer: ") + e.what());
  }
  std::set<std::string> names;
  for (size_t u = 0; u < units.size(); ++u) {
    const Unit& un = units[u];
    const std::string where = "profile.units[" + std::to_string(u) + "]";
    if (un.name.empty()) fail(where + " has an empty name");
    if (!names.insert(un.name).second) fail(where + ": unit name '" + un.name + "' appears twice");
    if (un.params < 0) fail(where + " ('" + un.name + "') has negative params");
    if (!un.shapes.empty()) {
      int64_t total = 0;
      for (const auto& s : un.shapes) {
        if (s[0] <= 0 || s[1] <= 0) fail(where + " ('" + un.name + "') has a non-positive shape");
        int64_t n = 0;
        if (__builtin_mul_overflow(s[0], s[1], &n) || __builtin_add_overflow(total, n, &total))
          fail(where + " ('" + un.name + "'): its shapes hold more weights than a 64-bit count can hold");
      }
      if (total != un.params)
        fail(where + " ('" + un.name + "'): shapes hold " + std::to_string(total) +
             " weights but params says " + std::to_string(un.params));
    }
  }
  const size_t cells = units.size() * choices.size();
  if (delta.size() != cells) fail("profile.delta must have n_units x n_choices entries");
  if (!stderr_.empty() && stderr_.size() != cells) fail("profile.stderr must match profile.delta in shape");
  if (!latency.empty() && latency.size() != cells) fail("profile.latency must match profile.delta in shape");
  const int nc = n_choices();
  for (int u = 0; u < n_units(); ++u) {
    bool any = false;
    for (int c = 0; c < nc; ++c) {
      const size_t k = static_cast<size_t>(u) * nc + c;
      double& d = delta[k];
      if (std::isinf(d))
        fail("profile.delta of unit '" + units[u].name + "' at " + std::to_string(choices[c]) +
             " bits is infinite");
      if (std::isnan(d)) continue;
      any = true;
      if (!stderr_.empty() && !std::isnan(stderr_[k]) && !(stderr_[k] >= 0 && std::isfinite(stderr_[k])))
        fail("profile.stderr of unit '" + units[u].name + "' must be a finite value >= 0");
      if (!latency.empty() && !(std::isfinite(latency[k]) && latency[k] >= 0))
        fail("profile.latency of unit '" + units[u].name + "' at " + std::to_string(choices[c]) +
             " bits must be a finite value >= 0");
      if (d < 0) {
        const bool noise = !stderr_.empty() && std::isfinite(stderr_[k]) && d >= -3 * stderr_[k];
        if (neg == NegativePolicy::Clamp) {
          d = 0;
        } else if (neg == NegativePolicy::Error && !noise) {
          std::ostringstream m;
          m << "profile.delta of unit '" << units[u].name << "' at " << choices[c] << " bits is negative ("
            << d << ")" << (stderr_.empty() ? "" : " beyond 3 standard errors")
            << "; pass negative='clamp' or negative='keep' to accept negative deltas";
          fail(m.str());
        }
      }
    }
    if (!any) fail("profile unit '" + units[u].name + "' has no measured choice (every delta is null)");
  }
  // Loss sums: baseline + the largest (smallest) delta of every unit must be
  // finite and must still show the deltas (a baseline of 1.7e308 would swallow
  // them and flatten the front). Negative deltas were handled above.
  {
    double worst = baseline, best = baseline, spread = 0;
    for (int u = 0; u < n_units(); ++u) {
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      for (int c = 0; c < nc; ++c) {
        const double d = delta[static_cast<size_t>(u) * nc + c];
        if (std::isnan(d)) continue;
        lo = std::min(lo, d);
        hi = std::max(hi, d);
      }
      worst += hi;
      best += lo;
      spread += hi - lo;
    }
    if (!std::isfinite(worst) || !std::isfinite(best) || !std::isfinite(spread)) {
      std::ostringstream m;
      m << "profile: the baseline loss (" << baseline
        << ") plus the sum of the units' deltas overflows a double (not finite); the deltas or "
           "the baseline are far too large";
      fail(m.str());
    }
    if (spread > 0 && !(worst - best >= 0.5 * spread)) {
      std::ostringstream m;
      m << "profile: the baseline loss (" << baseline << ") is so large that the units' deltas (total spread "
        << spread << ") vanish when added to it; every plan would have the same loss";
      fail(m.str());
    }
  }
  // Raises for memory-model problems (e.g. channel granularity without shapes)
  // and for byte counts past int64, naming the unit.
  const std::vector<int64_t> bt = bytes_table();
  int64_t largest = unsearched_bytes;
  for (int u = 0; u < n_units(); ++u) {
    int64_t b = 0;
    for (int c = 0; c < nc; ++c) b = std::max(b, bt[static_cast<size_t>(u) * nc + c]);
    if (__builtin_add_overflow(largest, b, &largest))
      fail("profile: unsearched_bytes (" + std::to_string(unsearched_bytes) + ") plus the units up to '" +
           units[u].name + "' overflow a 64-bit byte count");
  }
}

std::vector<int64_t> Profile::bytes_table() const {
  std::vector<int64_t> t(units.size() * choices.size());
  for (size_t u = 0; u < units.size(); ++u)
    for (size_t c = 0; c < choices.size(); ++c) {
      try {
        t[u * choices.size() + c] = unit_bytes(units[u], choices[c], quantizer);
      } catch (const ValueError& e) {
        fail(std::string("profile: ") + e.what());
      }
    }
  return t;
}

std::string Profile::fingerprint() const {
  json j = to_json();
  json core = {{"units", j["units"]},    {"choices", j["choices"]},
               {"delta", j["delta"]},    {"quantizer", j["quantizer"]},
               {"loss", j["loss"]},      {"unsearched_bytes", j["unsearched_bytes"]},
               {"latency", j["latency"]}};
  return hex(fnv(core.dump()));
}

Problem Profile::to_problem(const Constraints& cons, const std::map<std::string, int>& pinned,
                            const std::vector<int>& allowed_bits, bool use_latency) const {
  Problem p;
  p.n_units = n_units();
  p.n_choices = n_choices();
  p.choice_bits = choices;
  p.bytes = bytes_table();
  p.base_loss = baseline;
  p.fixed_bytes = unsearched_bytes;
  p.constraints = cons;
  const size_t cells = units.size() * choices.size();
  p.delta.assign(cells, 0.0);
  p.allowed.assign(cells, 0);
  for (const int b : allowed_bits)
    if (choice_index(b) < 0)
      throw ValueError("allowed bits " + std::to_string(b) + " is not among the profile's choices " +
                       bits_list(choices));
  for (const auto& [name, bits] : pinned) {
    const int u = unit_index(name);
    if (u < 0) throw ValueError("pinned unit '" + name + "' is not a unit of this profile");
    const int c = choice_index(bits);
    if (c < 0 || std::isnan(delta[static_cast<size_t>(u) * n_choices() + c]))
      throw ValueError("pinned unit '" + name + "': " + std::to_string(bits) +
                       " bits is not a measured choice for it");
  }
  if (use_latency && latency.empty())
    throw ValueError("the profile has no latency table, so latency cannot be an objective");
  if (use_latency) p.latency.assign(cells, 0.0);
  for (int u = 0; u < n_units(); ++u) {
    p.params.push_back(units[u].params);
    auto pin = pinned.find(units[u].name);
    bool any = false;
    for (int c = 0; c < n_choices(); ++c) {
      const size_t k = static_cast<size_t>(u) * n_choices() + c;
      bool ok = !std::isnan(delta[k]);
      if (!allowed_bits.empty())
        ok = ok && std::find(allowed_bits.begin(), allowed_bits.end(), choices[c]) != allowed_bits.end();
      if (pin != pinned.end()) ok = !std::isnan(delta[k]) && choices[c] == pin->second;
      if (ok) {
        p.allowed[k] = 1;
        p.delta[k] = delta[k];
        if (use_latency) p.latency[k] = latency[k];
        any = true;
      }
    }
    if (!any)
      throw ValueError("unit '" + units[u].name + "' has no allowed choice among bits " +
                       bits_list(allowed_bits));
  }
  p.finalize();
  return p;
}

json Profile::to_json() const {
  json j;
  j["format"] = kProfileFormat;
  j["model"] = model;
  j["calibration"] = calibration;
  j["loss"] = {{"kind", loss_kind}, {"baseline", baseline}};
  j["quantizer"] = quantizer_to_json(quantizer);
  j["choices"] = choices;
  json us = json::array();
  for (const auto& u : units) {
    json ju = {{"name", u.name}, {"kind", u.kind}, {"modules", u.modules}, {"params", u.params}};
    if (!u.shapes.empty()) {
      json sh = json::array();
      for (const auto& s : u.shapes) sh.push_back({s[0], s[1]});
      ju["shapes"] = sh;
    }
    us.push_back(ju);
  }
  j["units"] = us;
  j["unsearched_bytes"] = unsearched_bytes;
  j["delta"] = table_to_json(delta, n_units(), n_choices());
  j["stderr"] = stderr_.empty() ? json(nullptr) : table_to_json(stderr_, n_units(), n_choices());
  j["latency"] = latency.empty() ? json(nullptr) : table_to_json(latency, n_units(), n_choices());
  j["timings"] = timings;
  j["source"] = source;
  return j;
}

Profile Profile::from_json(const json& j, NegativePolicy neg) {
  if (!j.is_object()) fail("profile: expected a JSON object at the top level");
  if (j.contains("layer_params") || j.contains("sensitivity")) {
    Profile p = from_empas(j);
    p.validate(neg);
    return p;
  }
  if (!j.contains("format"))
    fail("profile: no 'format' field; expected '" + std::string(kProfileFormat) +
         "' or an original EMPAS profile (layer_params + sensitivity)");
  const json& fmt = j["format"];
  if (!fmt.is_string() || fmt.get<std::string>() != kProfileFormat)
    fail("profile: unsupported format " + fmt.dump() + "; this EMPAS reads '" + kProfileFormat + "'");
  Profile p;
  p.model = object_or_empty(j, "model", "profile");
  p.calibration = object_or_empty(j, "calibration", "profile");
  p.timings = object_or_empty(j, "timings", "profile");
  p.source = object_or_empty(j, "source", "profile");
  const json& loss = need(j, "loss", "profile");
  if (loss.contains("kind")) p.loss_kind = need_string(loss, "kind", "profile.loss");
  p.baseline = as_number(need(loss, "baseline", "profile.loss"), "profile.loss.baseline");
  p.quantizer = quantizer_from_json(j.value("quantizer", json(nullptr)), "profile.quantizer");
  const json& ch = need(j, "choices", "profile");
  if (!ch.is_array()) fail("profile.choices must be an array of bit widths");
  for (size_t i = 0; i < ch.size(); ++i)
    p.choices.push_back(as_small_int(ch[i], "profile.choices[" + std::to_string(i) + "]"));
  const json& us = need(j, "units", "profile");
  if (!us.is_array()) fail("profile.units must be an array");
  for (size_t i = 0; i < us.size(); ++i) {
    const std::string where = "profile.units[" + std::to_string(i) + "]";
    const json& ju = us[i];
    Unit u;
    u.name = need_string(ju, "name", where);
    if (ju.contains("kind") && !ju["kind"].is_null()) u.kind = need_string(ju, "kind", where);
    if (ju.contains("modules") && !ju["modules"].is_null()) {
      if (!ju["modules"].is_array()) fail(where + ".modules must be an array of names");
      for (const auto& m : ju["modules"]) {
        if (!m.is_string()) fail(where + ".modules must be an array of names");
        u.modules.push_back(m.get<std::string>());
      }
    }
    u.params = as_int(need(ju, "params", where), where + ".params");
    if (ju.contains("shapes") && !ju["shapes"].is_null()) {
      if (!ju["shapes"].is_array()) fail(where + ".shapes must be an array of [out, in] pairs");
      for (const auto& s : ju["shapes"]) {
        if (!s.is_array() || s.size() != 2) fail(where + ".shapes must be an array of [out, in] pairs");
        u.shapes.push_back({as_int(s[0], where + ".shapes"), as_int(s[1], where + ".shapes")});
      }
    }
    p.units.push_back(std::move(u));
  }
  if (p.units.empty()) fail("profile has no units");
  if (p.choices.empty()) fail("profile has no choices");
  p.delta = read_table(need(j, "delta", "profile"), p.n_units(), p.n_choices(), "delta", p.units, p.choices);
  if (j.contains("stderr") && !j["stderr"].is_null())
    p.stderr_ = read_table(j["stderr"], p.n_units(), p.n_choices(), "stderr", p.units, p.choices);
  if (j.contains("latency") && !j["latency"].is_null())
    p.latency = read_table(j["latency"], p.n_units(), p.n_choices(), "latency", p.units, p.choices);
  if (j.contains("unsearched_bytes") && !j["unsearched_bytes"].is_null())
    p.unsearched_bytes = as_int(j["unsearched_bytes"], "profile.unsearched_bytes");
  p.validate(neg);
  return p;
}

Profile Profile::from_empas(const json& j) {
  const std::string where = "EMPAS profile";
  Profile p;
  p.model = {{"name", need_string(j, "model_name", where)}};
  p.baseline = as_number(need(j, "baseline_loss", where), where + ".baseline_loss");
  const json& lp = need(j, "layer_params", where);
  const json& sens = need(j, "sensitivity", where);
  if (!lp.is_object() || lp.empty()) fail(where + ".layer_params must be a non-empty object");
  if (!sens.is_object() || sens.empty()) fail(where + ".sensitivity must be a non-empty object");
  std::vector<std::pair<long, int64_t>> layers;
  for (auto it = lp.begin(); it != lp.end(); ++it) {
    const long k = name_index(it.key());
    if (k < 0 || std::to_string(k) != it.key())
      fail(where + ".layer_params key '" + it.key() + "' is not a layer number");
    layers.emplace_back(k, as_int(it.value(), where + ".layer_params[" + it.key() + "]"));
  }
  std::sort(layers.begin(), layers.end());
  std::set<int> bits{16};
  std::map<std::pair<long, int>, double> values;
  for (auto it = sens.begin(); it != sens.end(); ++it) {
    const std::string& key = it.key();
    const auto us = key.find('_');
    long layer = -1, b = -1;
    if (us != std::string::npos) {
      layer = name_index(key.substr(0, us));
      b = name_index(key.substr(us + 1));
    }
    if (layer < 0 || b < 0 || key != std::to_string(layer) + "_" + std::to_string(b))
      fail(where + ".sensitivity key '" + key + "' is not of the form '<layer>_<bits>'");
    if (!valid_bits(static_cast<int>(b)))
      fail(where + ".sensitivity key '" + key + "': " + std::to_string(b) + " bits is not supported");
    if (!lp.contains(std::to_string(layer)))
      fail(where + ".sensitivity key '" + key + "' names layer " + std::to_string(layer) +
           ", which layer_params does not list (extra unit)");
    bits.insert(static_cast<int>(b));
    values[{layer, static_cast<int>(b)}] = as_number(it.value(), where + ".sensitivity[" + key + "]");
  }
  p.choices.assign(bits.begin(), bits.end());
  p.quantizer.bytes_model = "params_bits";
  for (const auto& [k, params] : layers) {
    Unit u;
    u.name = "layer_" + std::to_string(k);
    u.kind = "block";
    u.params = params;
    p.units.push_back(u);
    bool any = false;
    for (int b : p.choices) {
      auto v = values.find({k, b});
      if (v != values.end()) {
        p.delta.push_back(v->second);
        any = true;
      } else {
        // 16 bits is the untouched model: zero change by definition.
        p.delta.push_back(b == 16 ? 0.0 : kNaN);
      }
    }
    if (!any) fail(where + ": layer " + std::to_string(k) + " has no sensitivity entries (missing unit)");
  }
  p.source = {{"imported_from", "empas"},
              {"note",
               "original EMPAS profile: bytes counted as params x bits / 8 per unit, no "
               "scales, no unsearched tensors (the original added a fixed 1024 MiB); "
               "16 bits = untouched (delta 0)"}};
  return p;
}

}  // namespace empas
