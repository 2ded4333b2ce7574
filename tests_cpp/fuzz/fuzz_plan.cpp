// libFuzzer target: the plan loader (empas.plan/1 and original EMPAS
// artifacts) on arbitrary bytes, and matching a plan to a fixed profile.
#include "fuzz_common.hpp"

namespace {
const empas::Profile& profile() {
  static const empas::Profile p = empas::Profile::from_json(empas::parse_json(R"({
    "format": "empas.sensitivity/1", "model": {"name": "m"},
    "loss": {"kind": "causal_lm", "baseline": 2.0}, "choices": [2, 4, 8, 16],
    "units": [{"name": "layer_0", "params": 4096, "shapes": [[64, 64]]},
              {"name": "layer_1", "params": 8192, "shapes": [[64, 128]]}],
    "unsearched_bytes": 100,
    "delta": [[0.4, 0.02, 0.001, 0.0], [0.2, 0.01, null, 0.0]]})",
                                                                              "profile"));
  return p;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  empas::Plan plan;
  try {
    plan = empas::Plan::from_json(empas::parse_json(text, "plan"));
  } catch (const empas::ValueError&) {
    return 0;
  }
  // A loaded plan is valid: its own JSON loads again to the same JSON.
  const nlohmann::json j = plan.to_json();
  if (empas::Plan::from_json(j).to_json() != j) __builtin_trap();
  try {
    (void)empas::plan_genome(profile(), plan);
  } catch (const empas::ValueError&) {
  }
  return 0;
}
