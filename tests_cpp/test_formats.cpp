#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "empas/error.hpp"
#include "empas/formats.hpp"

using namespace empas;
using json = nlohmann::json;

namespace {

const std::string kSrc = EMPAS_SOURCE_DIR;

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

}  // namespace

TEST(ProfileFormat, RoundTripAndDerivedTables) {
  const Profile p = Profile::from_json(small_profile());
  EXPECT_EQ(p.n_units(), 2);
  EXPECT_EQ(p.model_name(), "tiny");
  EXPECT_TRUE(std::isnan(p.delta[1 * 3 + 1]));  // null: b1 does not allow 4 bits
  const auto bytes = p.bytes_table();
  EXPECT_EQ(bytes[0], 8192 * 2 / 8 + 2 * 64 * 1 * 2);  // 2-bit + one fp16 scale per row
  EXPECT_EQ(bytes[2], 8192 * 2);                       // 16 bits
  const Profile q = Profile::from_json(p.to_json());
  EXPECT_EQ(q.to_json(), p.to_json());
  EXPECT_EQ(q.fingerprint(), p.fingerprint());
  const Problem prob = p.to_problem({});
  EXPECT_EQ(prob.allowed_choices(1).size(), 2u);
  EXPECT_EQ(prob.fixed_bytes, 100);
}

TEST(ProfileFormat, OriginalEmpasImport) {
  const Profile p = Profile::from_json(
      parse_json(read_file(kSrc + "/python/empas/data/tinyllama_sensitivity.json"), "profile"));
  EXPECT_EQ(p.n_units(), 22);
  EXPECT_EQ(p.choices, (std::vector<int>{2, 4, 8, 16}));
  EXPECT_EQ(p.units[21].name, "layer_21");
  EXPECT_EQ(p.quantizer.bytes_model, "params_bits");
  EXPECT_EQ(p.bytes_table()[1], 44040192LL / 2);  // layer_0 at 4 bits
  const Problem prob = p.to_problem({});
  const std::pair<const char*, double> expect[] = {{"balanced", 3.380362629890442},
                                                   {"max_accuracy", 3.3058765530586243},
                                                   {"max_compression", 4.271416008472443}};
  for (const auto& [name, loss] : expect) {
    const Plan plan = Plan::from_json(
        parse_json(read_file(kSrc + "/tests_py/data/empas_tinyllama/" + name + ".json"), name));
    EXPECT_EQ(plan.archetype, name);
    EXPECT_NEAR(plan.predicted["loss"].get<double>(), loss, 1e-15);
    const auto g = plan_genome(p, plan);
    EXPECT_NEAR(prob.evaluate(g.data()).loss, loss, 1e-12) << name;
  }
}

TEST(ProfileFormat, MalformedInputsNameTheProblem) {
  expect_format_error([] { parse_json("{\"format\": ", "profile"); }, "not valid JSON");
  expect_format_error([] { parse_json("{\"x\": NaN}", "profile"); }, "NaN");
  auto with = [](auto edit) {
    json j = small_profile();
    edit(j);
    return j;
  };
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["format"] = "empas.sensitivity/9"; })); },
                      "unsupported format");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j.erase("loss"); })); }, "'loss'");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["delta"].push_back({1, 1, 0}); })); },
                      "missing or extra units");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["delta"][0].erase(0); })); }, "b0");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["delta"][0][0] = "x"; })); }, "number");
  expect_format_error(
      [&] {
        Profile::from_json(with([](json& j) { j["delta"][0][0] = std::numeric_limits<double>::infinity(); }));
      },
      "not finite");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["choices"][1] = 5 + 12; })); },
                      "not a supported precision");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"][1]["name"] = "b0"; })); },
                      "appears twice");
  expect_format_error([&] { Profile::from_json(with([](json& j) { j["units"][0]["params"] = 1; })); },
                      "shapes hold");
  expect_format_error(
      [&] { Profile::from_json(with([](json& j) { j["delta"][1] = {nullptr, nullptr, nullptr}; })); },
      "no measured choice");
}

TEST(ProfileFormat, NegativeDeltaPolicies) {
  json j = small_profile();
  j["delta"][0][1] = -0.003;  // within 3 stderr (0.002): measurement noise, kept raw
  EXPECT_DOUBLE_EQ(Profile::from_json(j).delta[1], -0.003);
  j["delta"][0][1] = -0.05;
  expect_format_error([&] { Profile::from_json(j); }, "negative");
  EXPECT_DOUBLE_EQ(Profile::from_json(j, NegativePolicy::Clamp).delta[1], 0.0);
  EXPECT_DOUBLE_EQ(Profile::from_json(j, NegativePolicy::Keep).delta[1], -0.05);
}

TEST(ProfileFormat, OriginalEmpasBadKeys) {
  const json base = json::parse(R"({"model_name": "m", "baseline_loss": 3.0,
    "layer_params": {"0": 100, "1": 100}, "sensitivity": {"0_2": 0.5, "0_4": 0.1, "1_2": 0.4, "1_4": 0.05}})");
  EXPECT_EQ(Profile::from_json(base).n_units(), 2);
  json extra = base;
  extra["sensitivity"]["2_4"] = 0.1;
  expect_format_error([&] { Profile::from_json(extra); }, "extra unit");
  json missing = base;
  missing["layer_params"]["2"] = 100;
  expect_format_error([&] { Profile::from_json(missing); }, "missing unit");
  json bad = base;
  bad["sensitivity"]["0-8"] = 0.1;
  expect_format_error([&] { Profile::from_json(bad); }, "'<layer>_<bits>'");
}

TEST(PlanFormat, RoundTripAndMismatches) {
  const Profile prof = Profile::from_json(small_profile());
  const Problem prob = prof.to_problem({});
  const Plan plan = make_plan(prof, prob, {1, 0});
  EXPECT_EQ(plan.units[0].bits, 4);
  EXPECT_EQ(plan.units[0].modules, (std::vector<std::string>{"m.0.q", "m.0.k"}));
  EXPECT_EQ(plan.predicted["bytes"].get<int64_t>(), prob.evaluate(std::vector<Gene>{1, 0}.data()).bytes);
  const Plan back = Plan::from_json(plan.to_json());
  EXPECT_EQ(back.to_json(), plan.to_json());
  EXPECT_EQ(plan_genome(prof, back), (std::vector<Gene>{1, 0}));

  json other = plan.to_json();
  other["model"]["name"] = "another-model";
  expect_format_error([&] { plan_genome(prof, Plan::from_json(other)); }, "another-model");
  json unknown = plan.to_json();
  unknown["units"][1]["name"] = "b9";
  expect_format_error([&] { plan_genome(prof, Plan::from_json(unknown)); }, "'b9'");
  json fewer = plan.to_json();
  fewer["units"].erase(1);
  expect_format_error([&] { plan_genome(prof, Plan::from_json(fewer)); }, "missing units");
  json bits = plan.to_json();
  bits["units"][0]["bits"] = 8;
  expect_format_error([&] { plan_genome(prof, Plan::from_json(bits)); }, "not among the profile's choices");
  json disallowed = plan.to_json();
  disallowed["units"][1]["bits"] = 4;
  expect_format_error([&] { plan_genome(prof, Plan::from_json(disallowed)); }, "does not allow");
  json version = plan.to_json();
  version["format"] = "empas.plan/2";
  expect_format_error([&] { Plan::from_json(version); }, "unsupported format");
}

TEST(Files, AtomicWriteAndRead) {
  const std::string path = ::testing::TempDir() + "empas_atomic.json";
  write_file_atomic(path, "{\"a\": 1}");
  EXPECT_EQ(read_file(path), "{\"a\": 1}");
  write_file_atomic(path, "{}");
  EXPECT_EQ(read_file(path), "{}");
  EXPECT_THROW(read_file(path + ".missing"), ValueError);
  EXPECT_THROW(write_file_atomic("/nonexistent-dir/x.json", "{}"), ValueError);
}
