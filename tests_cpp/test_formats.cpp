#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>

#include "empas/error.hpp"
#include "empas/formats.hpp"
#include "empas/version.hpp"

using namespace empas;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kSrc = EMPAS_SOURCE_DIR;
const std::string kEmpasProfile = kSrc + "/python/empas/data/tinyllama_sensitivity.json";
const std::string kEmpasPlans = kSrc + "/tests_py/data/empas_tinyllama/";

json small_profile() {
  return json::parse(R"({
    "format": "empas.sensitivity/1",
    "model": {"name": "tiny"},
    "loss": {"kind": "causal_lm", "baseline": 2.0},
    "quantizer": {"scheme": "symmetric", "granularity": "group", "group_size": 64},
    "choices": [2, 4, 16],
    "units": [
      {"name": "b0", "kind": "block", "modules": ["m.0.q", "m.0.k"], "params": 8192, "shapes": [[64, 64], [64, 64]]},
      {"name": "b1", "kind": "block", "params": 4096, "shapes": [[64, 64]]}
    ],
    "unsearched_bytes": 100,
    "delta": [[0.5, 0.01, 0.0], [0.3, null, 0.0]],
    "stderr": [[0.01, 0.002, 0.0], [0.01, null, 0.0]]
  })");
}

json small_empas_profile() {
  return json::parse(R"({"model_name": "m", "baseline_loss": 3.0,
    "layer_params": {"0": 100, "1": 100},
    "sensitivity": {"0_2": 0.5, "0_4": 0.1, "1_2": 0.4, "1_4": 0.05}})");
}

// Expects FormatError whose message contains `what`.
template <class F>
void expect_format_error(F&& f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "expected FormatError mentioning '" << what << "'";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

// small_profile() after `edit`.
template <class F>
json with(F&& edit, json j = small_profile()) {
  edit(j);
  return j;
}

Profile load_empas_profile() { return Profile::from_json(parse_json(read_file(kEmpasProfile), "profile")); }

Plan load_empas_plan(const std::string& name) {
  return Plan::from_json(parse_json(read_file(kEmpasPlans + name + ".json"), name));
}

}  // namespace

TEST(ProfileFormat, RoundTripAndDerivedTables) {
  const Profile p = Profile::from_json(small_profile());
  EXPECT_EQ(p.n_units(), 2);
  EXPECT_EQ(p.model_name(), "tiny");
  EXPECT_EQ(p.baseline, 2.0);
  EXPECT_EQ(p.units[0].modules, (std::vector<std::string>{"m.0.q", "m.0.k"}));
  EXPECT_TRUE(std::isnan(p.delta[1 * 3 + 1]));  // null: b1 does not allow 4 bits
  EXPECT_EQ(p.unit_index("b1"), 1);
  EXPECT_EQ(p.unit_index("b7"), -1);
  EXPECT_EQ(p.choice_index(16), 2);
  EXPECT_EQ(p.choice_index(8), -1);
  const auto bytes = p.bytes_table();
  EXPECT_EQ(bytes[0], 8192 * 2 / 8 + 2 * 64 * 1 * 2);  // 2-bit + one fp16 scale per row
  EXPECT_EQ(bytes[2], 8192 * 2);                       // 16 bits
  EXPECT_EQ(bytes[3], 4096 * 2 / 8 + 64 * 2);
  const Profile q = Profile::from_json(p.to_json());
  EXPECT_EQ(q.to_json(), p.to_json());
  EXPECT_EQ(q.fingerprint(), p.fingerprint());
  const Problem prob = p.to_problem({});
  EXPECT_EQ(prob.allowed_choices(1).size(), 2u);
  EXPECT_EQ(prob.fixed_bytes, 100);
  EXPECT_EQ(prob.base_loss, 2.0);
}

TEST(ProfileFormat, RoundTripKeepsEveryField) {
  json j = small_profile();
  j["calibration"] = {{"source", "wikitext"}, {"n_tokens", 4096}, {"seed", 3}};
  j["timings"] = {{"profile_s", 12.5}};
  j["source"] = {{"tool", "test"}};
  j["latency"] = json::parse("[[1.0, 2.0, 4.0], [0.5, null, 2.0]]");
  j["quantizer"]["scheme"] = "asymmetric";
  j["quantizer"]["zero_bytes"] = 1;
  j["units"][1]["kind"] = "linear";
  j["delta"][0][1] = 0.1 + 0.2;  // not exactly representable in decimal: must survive
  const Profile p = Profile::from_json(j);
  const Profile q = Profile::from_json(json::parse(p.to_json().dump()));
  EXPECT_EQ(q.calibration, p.calibration);
  EXPECT_EQ(q.timings, p.timings);
  EXPECT_EQ(q.source, p.source);
  EXPECT_EQ(q.quantizer.scheme, "asymmetric");
  EXPECT_EQ(q.quantizer.zero_bytes, 1);
  EXPECT_EQ(q.quantizer.group_size, 64);
  EXPECT_EQ(q.units[1].kind, "linear");
  EXPECT_EQ(q.units[0].shapes, p.units[0].shapes);
  EXPECT_EQ(q.unsearched_bytes, 100);
  EXPECT_EQ(q.delta[1], 0.1 + 0.2);
  ASSERT_EQ(q.latency.size(), 6u);
  EXPECT_TRUE(std::isnan(q.latency[4]));
  EXPECT_EQ(q.latency[5], 2.0);
  ASSERT_EQ(q.stderr_.size(), 6u);
  EXPECT_EQ(q.stderr_[1], 0.002);
  EXPECT_EQ(q.to_json(), p.to_json());
  EXPECT_EQ(q.fingerprint(), p.fingerprint());
  // The fingerprint follows the tables.
  Profile r = q;
  r.delta[0] += 1e-9;
  EXPECT_NE(r.fingerprint(), q.fingerprint());
  // Latency becomes the third objective on request.
  const Problem prob = q.to_problem({}, {}, {}, true);
  EXPECT_EQ(prob.n_objectives(), 3);
  EXPECT_THROW(Profile::from_json(small_profile()).to_problem({}, {}, {}, true), ValueError);
}

TEST(ProfileFormat, ToProblemPinsAndRestricts) {
  const Profile p = Profile::from_json(small_profile());
  const Problem pinned = p.to_problem({}, {{"b0", 4}});
  EXPECT_EQ(pinned.allowed_choices(0), std::vector<Gene>{1});
  EXPECT_EQ(pinned.allowed_choices(1).size(), 2u);
  const Problem only16 = p.to_problem({}, {}, {2, 16});
  EXPECT_EQ(only16.allowed_choices(0), (std::vector<Gene>{0, 2}));
  EXPECT_THROW(p.to_problem({}, {{"b9", 4}}), ValueError);  // unknown unit
  EXPECT_THROW(p.to_problem({}, {{"b1", 4}}), ValueError);  // not measured for b1
  EXPECT_THROW(p.to_problem({}, {}, {3}), ValueError);      // not a choice
  EXPECT_THROW(p.to_problem({}, {}, {4}), ValueError);      // b1 has no 4-bit choice
  Constraints c;
  c.max_bytes = 10;  // below the smallest plan
  EXPECT_THROW(p.to_problem(c), InfeasibleError);
}

TEST(ProfileFormat, OriginalEmpasImport) {
  const Profile p = load_empas_profile();
  const json raw = parse_json(read_file(kEmpasProfile), "profile");
  EXPECT_EQ(p.n_units(), 22);
  EXPECT_EQ(p.model_name(), "TinyLlama/TinyLlama-1.1B-Chat-v1.0");
  EXPECT_EQ(p.baseline, raw["baseline_loss"].get<double>());
  EXPECT_EQ(p.choices, (std::vector<int>{2, 4, 8, 16}));
  EXPECT_EQ(p.units[0].name, "layer_0");
  EXPECT_EQ(p.units[10].name, "layer_10");  // numeric, not lexicographic, order
  EXPECT_EQ(p.units[21].name, "layer_21");
  EXPECT_EQ(p.quantizer.bytes_model, "params_bits");
  EXPECT_EQ(p.unsearched_bytes, 0);
  for (int u = 0; u < 22; ++u) {
    EXPECT_EQ(p.units[u].params, 44040192);
    for (int c = 0; c < 3; ++c) {
      const std::string key = std::to_string(u) + "_" + std::to_string(p.choices[c]);
      EXPECT_EQ(p.delta[u * 4 + c], raw["sensitivity"][key].get<double>()) << key;
    }
    EXPECT_EQ(p.delta[u * 4 + 3], 0.0);  // 16 bits: untouched
  }
  EXPECT_EQ(p.bytes_table()[1], 44040192LL / 2);  // layer_0 at 4 bits
  EXPECT_EQ(p.bytes_table()[3], 44040192LL * 2);  // layer_0 at 16 bits
  EXPECT_EQ(p.source["imported_from"], "empas");
  // Saving and reloading the imported profile changes nothing.
  const Profile q = Profile::from_json(p.to_json());
  EXPECT_EQ(q.fingerprint(), p.fingerprint());
}

TEST(ProfileFormat, OriginalEmpasPlansReproduceTheirPredictedLoss) {
  const Profile p = load_empas_profile();
  const Problem prob = p.to_problem({});
  const std::pair<const char*, double> expect[] = {{"balanced", 3.380362629890442},
                                                   {"max_accuracy", 3.3058765530586243},
                                                   {"max_compression", 4.271416008472443}};
  for (const auto& [name, loss] : expect) {
    SCOPED_TRACE(name);
    const Plan plan = load_empas_plan(name);
    EXPECT_EQ(plan.archetype, name);
    EXPECT_EQ(plan.model_name(), "TinyLlama/TinyLlama-1.1B-Chat-v1.0");
    ASSERT_EQ(plan.units.size(), 22u);
    EXPECT_EQ(plan.units[2].name, "layer_2");  // numeric order
    EXPECT_EQ(plan.predicted["loss"].get<double>(), loss);
    const auto g = plan_genome(p, plan);
    const Evaluation e = prob.evaluate(g.data());
    EXPECT_NEAR(e.loss, loss, 1e-12);
    // The original reported params x bits / 8 in MiB plus a fixed 1024 MiB.
    const double vram = plan.provenance["original_metrics"]["predicted_vram_mb"].get<double>();
    EXPECT_DOUBLE_EQ(static_cast<double>(e.bytes) / (1 << 20) + 1024, vram);
    // Converting to empas.plan/1 and back keeps the plan.
    const Plan native = make_plan(p, prob, g);
    EXPECT_EQ(plan_genome(p, Plan::from_json(native.to_json())), g);
    EXPECT_EQ(native.predicted["loss"].get<double>(), e.loss);
  }
}

TEST(ProfileFormat, MalformedInputsNameTheProblem) {
  expect_format_error([] { parse_json("{\"format\": ", "profile"); }, "not valid JSON");
  expect_format_error([] { parse_json("{\"format\": ", "my-profile.json"); }, "my-profile.json");
  expect_format_error([] { parse_json("{\"a\": 1,\n \"b\": }", "profile"); }, "line 2");
  expect_format_error([] { parse_json("{\"x\": NaN}", "profile"); }, "NaN");
  expect_format_error([] { parse_json("{\"x\": Infinity}", "profile"); }, "Infinity");
  expect_format_error([] { parse_json("{\"x\": 1e999}", "profile"); }, "not finite");
  expect_format_error([] { Profile::from_json(json::array()); }, "JSON object");
  expect_format_error([] { Profile::from_json(json::object()); }, "no 'format' field");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["format"] = "empas.sensitivity/9"; })); },
                      "unsupported format");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["format"] = 1; })); },
                      "unsupported format");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j.erase("loss"); })); }, "'loss'");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["loss"].erase("baseline"); })); },
                      "'baseline'");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j.erase("choices"); })); }, "'choices'");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j.erase("units"); })); }, "'units'");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j.erase("delta"); })); }, "'delta'");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"][0].erase("params"); })); },
                      "profile.units[0]: missing required field 'params'");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"][1].erase("name"); })); },
                      "profile.units[1]: missing required field 'name'");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"] = json::array(); })); },
                      "no units");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["choices"] = json::array(); })); },
                      "no choices");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["choices"][1] = 5 + 12; })); },
                      "not a supported precision");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["choices"][1] = 2; })); }, "twice");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["choices"][1] = 4.5; })); },
                      "profile.choices[1] must be an integer");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"][1]["name"] = "b0"; })); },
                      "appears twice");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"][1]["name"] = ""; })); },
                      "empty name");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"][0]["params"] = 1; })); },
                      "shapes hold");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"][0]["params"] = -8192; })); },
                      "negative params");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"][0]["params"] = "8192"; })); },
                      "params must be an integer");
  expect_format_error(
      [&] { Profile::from_json(with([](json& j) { j["units"][1]["shapes"] = json::parse("[[64, 0]]"); })); },
      "non-positive shape");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["unsearched_bytes"] = -1; })); },
                      "unsearched_bytes");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["quantizer"]["group_size"] = 0; })); },
                      "group_size");
  expect_format_error(
      [&] { Profile::from_json(with([](json& j) { j["quantizer"]["granularity"] = "block"; })); },
      "profile.quantizer");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["model"] = "tiny"; })); },
                      "profile.model must be an object");
  // Channel granularity needs every unit's shapes.
  expect_format_error(
      [&] {
        Profile::from_json(with([](json& j) {
          j["quantizer"]["granularity"] = "channel";
          j["units"][1].erase("shapes");
        }));
      },
      "per-channel");
}

TEST(ProfileFormat, DeltaTableMustMatchUnitsAndChoices) {
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["delta"].push_back({1, 1, 0}); })); },
                      "3 rows but there are 2 units (missing or extra units)");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["delta"].erase(1); })); },
                      "1 rows but there are 2 units (missing or extra units)");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["delta"][0].erase(0); })); },
                      "unit 'b0'");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["delta"][1].push_back(0.1); })); },
                      "(unit 'b1') must be an array of 3 values, one per choice [2, 4, 16]");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["delta"] = json::object(); })); },
                      "array of per-unit rows");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["delta"][0][0] = "x"; })); },
                      "profile.delta[0] (unit 'b0') at 2 bits must be a number, got string");
  expect_format_error(
      [&] {
        Profile::from_json(with([](json& j) { j["delta"][0][0] = std::numeric_limits<double>::infinity(); }));
      },
      "not finite");
  expect_format_error(
      [&] { Profile::from_json(with([](json& j) { j["delta"][1] = {nullptr, nullptr, nullptr}; })); },
      "no measured choice");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["stderr"].erase(0); })); },
                      "profile.stderr has 1 rows");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["stderr"][0][0] = -0.1; })); },
                      "stderr of unit 'b0'");
  expect_format_error(
      [&] {
        Profile::from_json(with([](json& j) { j["latency"] = json::parse("[[1, 1, 1], [-1, 1, 1]]"); }));
      },
      "latency");
}

TEST(ProfileFormat, NegativeDeltaPolicies) {
  json j = small_profile();
  j["delta"][0][1] = -0.003;  // within 3 stderr (0.002): measurement noise, kept raw
  EXPECT_DOUBLE_EQ(Profile::from_json(j).delta[1], -0.003);
  j["delta"][0][1] = -0.006;  // exactly 3 stderr: still noise
  EXPECT_DOUBLE_EQ(Profile::from_json(j).delta[1], -0.006);
  j["delta"][0][1] = -0.05;
  expect_format_error([&] { Profile::from_json(j); }, "unit 'b0' at 4 bits is negative");
  expect_format_error([&] { Profile::from_json(j); }, "beyond 3 standard errors");
  EXPECT_DOUBLE_EQ(Profile::from_json(j, NegativePolicy::Clamp).delta[1], 0.0);
  EXPECT_DOUBLE_EQ(Profile::from_json(j, NegativePolicy::Keep).delta[1], -0.05);
  // Clamp also zeroes noise-level negatives; keep leaves everything.
  j["delta"][0][1] = -0.003;
  EXPECT_DOUBLE_EQ(Profile::from_json(j, NegativePolicy::Clamp).delta[1], 0.0);
  // Without a standard error there is no noise allowance.
  json k = small_profile();
  k.erase("stderr");
  k["delta"][0][1] = -1e-6;
  expect_format_error([&] { Profile::from_json(k); }, "negative");
  json u = small_profile();
  u["stderr"][0][1] = nullptr;
  u["delta"][0][1] = -1e-6;
  expect_format_error([&] { Profile::from_json(u); }, "negative");
  // The original EMPAS format has no standard errors.
  json e = small_empas_profile();
  e["sensitivity"]["1_4"] = -0.01;
  expect_format_error([&] { Profile::from_json(e); }, "'layer_1' at 4 bits is negative");
  EXPECT_EQ(Profile::from_json(e, NegativePolicy::Clamp).delta[1 * 3 + 1], 0.0);
  EXPECT_EQ(Profile::from_json(e, NegativePolicy::Keep).delta[1 * 3 + 1], -0.01);
}

TEST(ProfileFormat, OriginalEmpasBadKeys) {
  const json base = small_empas_profile();
  const Profile ok = Profile::from_json(base);
  EXPECT_EQ(ok.n_units(), 2);
  EXPECT_EQ(ok.choices, (std::vector<int>{2, 4, 16}));
  json extra = base;
  extra["sensitivity"]["2_4"] = 0.1;
  expect_format_error([&] { Profile::from_json(extra); }, "extra unit");
  json missing = base;
  missing["layer_params"]["2"] = 100;
  expect_format_error([&] { Profile::from_json(missing); }, "missing unit");
  json bad = base;
  bad["sensitivity"]["0-8"] = 0.1;
  expect_format_error([&] { Profile::from_json(bad); }, "'<layer>_<bits>'");
  json bits = base;
  bits["sensitivity"]["0_9"] = 0.1;
  expect_format_error([&] { Profile::from_json(bits); }, "'0_9': 9 bits is not supported");
  json layer = base;
  layer["layer_params"]["x"] = 100;
  expect_format_error([&] { Profile::from_json(layer); }, "'x' is not a layer number");
  json nan = base;
  nan["sensitivity"]["0_2"] = "nan";
  expect_format_error([&] { Profile::from_json(nan); }, "sensitivity[0_2]");
  json name = base;
  name.erase("model_name");
  expect_format_error([&] { Profile::from_json(name); }, "'model_name'");
  json empty = base;
  empty["layer_params"] = json::object();
  expect_format_error([&] { Profile::from_json(empty); }, "layer_params");
  // A layer missing one precision: that choice is not allowed for it.
  json partial = base;
  partial["sensitivity"].erase("1_2");
  const Profile part = Profile::from_json(partial);
  EXPECT_TRUE(std::isnan(part.delta[1 * 3 + 0]));
  EXPECT_EQ(part.to_problem({}).allowed_choices(1), (std::vector<Gene>{1, 2}));
}

TEST(ProfileFormat, IntegersOutOfRangeAreRejected) {
  // Bit widths and byte counts that do not fit an int must not wrap around
  // to a valid value (4294967300 = 2^32 + 4).
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["choices"][1] = 4294967300LL; })); },
                      "choices[1]");
  expect_format_error(
      [&] { Profile::from_json(with([](json& j) { j["quantizer"]["scale_bytes"] = 4294967298LL; })); },
      "scale_bytes");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"][0]["params"] = 1e300; })); },
                      "params");
  const Profile prof = Profile::from_json(small_profile());
  json plan = make_plan(prof, prof.to_problem({}), {1, 0}).to_json();
  plan["units"][0]["bits"] = 4294967300LL;
  expect_format_error([&] { Plan::from_json(plan); }, "bits");
}

TEST(PlanFormat, RoundTripAndMismatches) {
  const Profile prof = Profile::from_json(small_profile());
  const Problem prob = prof.to_problem({});
  const Plan plan = make_plan(prof, prob, {1, 0});
  EXPECT_EQ(plan.units[0].bits, 4);
  EXPECT_EQ(plan.units[0].modules, (std::vector<std::string>{"m.0.q", "m.0.k"}));
  EXPECT_EQ(plan.units[0].params, 8192);
  const Evaluation e = prob.evaluate(std::vector<Gene>{1, 0}.data());
  EXPECT_EQ(plan.predicted["bytes"].get<int64_t>(), e.bytes);
  EXPECT_EQ(plan.predicted["loss"].get<double>(), e.loss);
  EXPECT_EQ(plan.predicted["avg_bits"].get<double>(), e.avg_bits);
  EXPECT_EQ(plan.provenance["profile"]["fingerprint"], prof.fingerprint());
  EXPECT_EQ(plan.model_name(), "tiny");
  const Plan back = Plan::from_json(json::parse(plan.to_json().dump()));
  EXPECT_EQ(back.to_json(), plan.to_json());
  EXPECT_EQ(plan_genome(prof, back), (std::vector<Gene>{1, 0}));
  EXPECT_THROW(make_plan(prof, prob, {1, 1}), ValueError);  // b1 does not allow 4 bits
  EXPECT_THROW(make_plan(prof, prob, {1}), ValueError);

  json other = plan.to_json();
  other["model"]["name"] = "another-model";
  expect_format_error([&] { plan_genome(prof, Plan::from_json(other)); },
                      "plan is for model 'another-model' but the profile is for 'tiny'");
  json unknown = plan.to_json();
  unknown["units"][1]["name"] = "b9";
  expect_format_error([&] { plan_genome(prof, Plan::from_json(unknown)); }, "unknown to the profile: 'b9'");
  expect_format_error([&] { plan_genome(prof, Plan::from_json(unknown)); }, "missing units: 'b1'");
  json fewer = plan.to_json();
  fewer["units"].erase(1);
  expect_format_error([&] { plan_genome(prof, Plan::from_json(fewer)); }, "missing units: 'b1'");
  json more = plan.to_json();
  more["units"].push_back({{"name", "b2"}, {"bits", 4}});
  expect_format_error([&] { plan_genome(prof, Plan::from_json(more)); }, "unknown to the profile: 'b2'");
  json twice = plan.to_json();
  twice["units"][1]["name"] = "b0";
  expect_format_error([&] { Plan::from_json(twice); }, "unit 'b0' appears twice");
  json bits = plan.to_json();
  bits["units"][0]["bits"] = 8;
  expect_format_error([&] { plan_genome(prof, Plan::from_json(bits)); },
                      "unit 'b0' has 8 bits, which is not among the profile's choices [2, 4, 16]");
  json invalid = plan.to_json();
  invalid["units"][0]["bits"] = 9;
  expect_format_error([&] { Plan::from_json(invalid); }, "not a supported precision");
  json disallowed = plan.to_json();
  disallowed["units"][1]["bits"] = 4;
  expect_format_error([&] { plan_genome(prof, Plan::from_json(disallowed)); },
                      "unit 'b1' has 4 bits, which the profile does not allow");
  json version = plan.to_json();
  version["format"] = "empas.plan/2";
  expect_format_error([&] { Plan::from_json(version); }, "unsupported format");
  json no_units = plan.to_json();
  no_units.erase("units");
  expect_format_error([&] { Plan::from_json(no_units); }, "'units'");
  json no_bits = plan.to_json();
  no_bits["units"][0].erase("bits");
  expect_format_error([&] { Plan::from_json(no_bits); }, "plan.units[0]: missing required field 'bits'");
  expect_format_error([&] { Plan::from_json(json::object()); }, "no 'format' field");
  // A plan without a model name is matched by its units alone.
  json anonymous = plan.to_json();
  anonymous["model"] = json::object();
  EXPECT_EQ(plan_genome(prof, Plan::from_json(anonymous)), (std::vector<Gene>{1, 0}));
}

TEST(PlanFormat, OriginalEmpasArtifactMismatches) {
  const Profile prof = load_empas_profile();
  json raw = parse_json(read_file(kEmpasPlans + "balanced.json"), "balanced");
  json other = raw;
  other["config"]["base_model"] = "meta-llama/Llama-2-7b-hf";
  expect_format_error([&] { plan_genome(prof, Plan::from_json(other)); }, "meta-llama/Llama-2-7b-hf");
  json extra = raw;
  extra["config"]["quantization_map"]["layer_22"] = 4;
  expect_format_error([&] { plan_genome(prof, Plan::from_json(extra)); }, "'layer_22'");
  json missing = raw;
  missing["config"]["quantization_map"].erase("layer_5");
  expect_format_error([&] { plan_genome(prof, Plan::from_json(missing)); }, "missing units: 'layer_5'");
  json bits = raw;
  bits["config"]["quantization_map"]["layer_3"] = 3;
  expect_format_error([&] { plan_genome(prof, Plan::from_json(bits)); }, "'layer_3' has 3 bits");
  json bad = raw;
  bad["config"]["quantization_map"]["layer_3"] = "four";
  expect_format_error([&] { Plan::from_json(bad); }, "quantization_map[layer_3]");
  json empty = raw;
  empty["config"]["quantization_map"] = json::object();
  expect_format_error([&] { Plan::from_json(empty); }, "quantization_map");
  json no_map = raw;
  no_map["config"].erase("quantization_map");
  expect_format_error([&] { Plan::from_json(no_map); }, "'quantization_map'");
}

TEST(Files, AtomicWriteAndRead) {
  const std::string dir = ::testing::TempDir() + "empas_atomic_" + std::to_string(::getpid());
  fs::create_directories(dir);
  const std::string path = dir + "/plan.json";
  write_file_atomic(path, "{\"a\": 1}");
  EXPECT_EQ(read_file(path), "{\"a\": 1}");
  write_file_atomic(path, "{}");
  EXPECT_EQ(read_file(path), "{}");
  const std::string big(1 << 20, 'x');
  write_file_atomic(path, big);
  EXPECT_EQ(read_file(path), big);
  // Nothing but the file is left behind.
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
  EXPECT_THROW(read_file(path + ".missing"), ValueError);
  EXPECT_THROW(write_file_atomic("/nonexistent-dir/x.json", "{}"), ValueError);
  fs::remove_all(dir);
}

TEST(Version, FormatIdsAreTheOnesTheFilesUse) {
  EXPECT_STREQ(kProfileFormat, "empas.sensitivity/1");
  EXPECT_STREQ(kPlanFormat, "empas.plan/1");
  EXPECT_STREQ(kNsga2CheckpointFormat, "empas.nsga2-checkpoint/1");
  const Profile prof = Profile::from_json(small_profile());
  EXPECT_EQ(prof.to_json().at("format"), kProfileFormat);
  const Plan plan = make_plan(prof, prof.to_problem({}), {1, 0});
  EXPECT_EQ(plan.to_json().at("format"), kPlanFormat);
  EXPECT_EQ(plan.provenance.at("empas_version"), kVersion);
  // kFormats lists each identifier once, under a distinct name.
  std::map<std::string, std::string> by_name;
  for (const FormatId& f : kFormats) EXPECT_TRUE(by_name.emplace(f.name, f.id).second) << f.name;
  EXPECT_EQ(by_name, (std::map<std::string, std::string>{{"profile", kProfileFormat},
                                                         {"plan", kPlanFormat},
                                                         {"nsga2_checkpoint", kNsga2CheckpointFormat}}));
}

TEST(Version, IsPyprojectVersion) {
  // pyproject.toml ([project] version) is the one place the version is written.
  std::ifstream f(kSrc + "/pyproject.toml");
  ASSERT_TRUE(f) << "cannot read pyproject.toml";
  std::string line, version;
  bool in_project = false;
  while (std::getline(f, line)) {
    if (!line.empty() && line[0] == '[') in_project = line.rfind("[project]", 0) == 0;
    if (in_project && line.rfind("version", 0) == 0) {
      const auto a = line.find('"'), b = line.find('"', a + 1);
      if (a != std::string::npos && b != std::string::npos) version = line.substr(a + 1, b - a - 1);
      break;
    }
  }
  EXPECT_FALSE(version.empty()) << "no version in the [project] table of pyproject.toml";
  EXPECT_EQ(std::string(kVersion), version);
  EXPECT_STREQ(kVersion, EMPAS_VERSION);
}

// Issue 15: deep nesting is a FormatError before any recursive walk.
TEST(ParseJson, DeepNestingIsAFormatError) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  try {
    parse_json(deep, "profile");
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("nested 100000 levels deep"), std::string::npos) << e.what();
  }
  // brackets inside strings do not count
  const std::string text = "{\"a\": \"" + std::string(1000, '[') + "\\\"\"}";
  EXPECT_NO_THROW(parse_json(text, "x"));
  EXPECT_NO_THROW(parse_json(std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']'), "x"));
}

TEST(WriteFileAtomic, ReplacesAndLeavesNoTemp) {
  const auto dir = std::filesystem::temp_directory_path() / ("empas_wfa_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "x.json").string();
  write_file_atomic(path, "one");
  write_file_atomic(path, "two");
  EXPECT_EQ(read_file(path), "two");
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) n += e.is_regular_file();
  EXPECT_EQ(n, 1);
  EXPECT_THROW(write_file_atomic((dir / "no" / "x.json").string(), "z"), ValueError);
  std::filesystem::remove_all(dir);
}
