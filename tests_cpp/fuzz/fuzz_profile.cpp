// libFuzzer target: the profile loader (empas.sensitivity/1 and the original
// EMPAS format) on arbitrary bytes, then everything a loaded profile feeds:
// round trip, bytes table, problem, searches, plans.
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const auto neg : {empas::NegativePolicy::Error, empas::NegativePolicy::Keep}) {
    empas::Profile prof;
    try {
      prof = empas::Profile::from_json(empas::parse_json(text, "profile"), neg);
    } catch (const empas::ValueError&) {
      continue;
    }
    // A loaded profile is valid: its own JSON loads again to the same fingerprint.
    const empas::Profile again = empas::Profile::from_json(prof.to_json(), empas::NegativePolicy::Keep);
    if (again.fingerprint() != prof.fingerprint()) __builtin_trap();
    (void)prof.bytes_table();
    try {
      const empas::Problem p = prof.to_problem(empas::Constraints{});
      fuzz::search_all(p);
      const auto g = p.extreme_genome(true);
      const empas::Plan plan = empas::make_plan(prof, p, g);
      const empas::Plan back = empas::Plan::from_json(plan.to_json());
      if (empas::plan_genome(prof, back) != g) __builtin_trap();
    } catch (const empas::ValueError&) {
    }
  }
  return 0;
}
