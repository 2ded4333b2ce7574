// Shared by the libFuzzer targets: what counts as a finding. Every failure a
// user can cause must be an empas::ValueError (FormatError, InfeasibleError):
// the Python bindings turn those into Python exceptions with a clear message.
// Anything else escaping (std::out_of_range, nlohmann's exceptions, bad_alloc
// from a size taken from the input), a crash, a sanitizer report or a hang is
// a finding; libFuzzer aborts on an uncaught exception.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "empas/archetypes.hpp"
#include "empas/error.hpp"
#include "empas/exact.hpp"
#include "empas/formats.hpp"
#include "empas/hypervolume.hpp"
#include "empas/json_io.hpp"
#include "empas/nsga2.hpp"

namespace fuzz {

/// Cheap searches on a valid problem: exact (exact and an epsilon grid),
/// NSGA-II for two generations, hypervolume and archetypes of the front.
inline void search_all(const empas::Problem& p) {
  try {
    const empas::ExactFront f = empas::exact_front(p, empas::ExactConfig{2000, 0});
    std::vector<double> loss(f.loss), bytes(f.bytes.begin(), f.bytes.end()), pts;
    for (size_t i = 0; i < f.size(); ++i) {
      pts.push_back(f.loss[i]);
      pts.push_back(static_cast<double>(f.bytes[i]));
    }
    (void)empas::hypervolume(pts, 2, {p.worst_loss(), static_cast<double>(p.max_total_bytes())});
    (void)empas::select_archetypes(loss, bytes);
  } catch (const empas::ValueError&) {
  }
  try {
    (void)empas::exact_front(p, empas::ExactConfig{2000, 1 + (p.max_total_bytes() >> 3)});
  } catch (const empas::ValueError&) {
  }
  try {
    empas::NSGA2Config c;
    c.pop_size = 8;
    c.generations = 2;
    c.threads = 1;
    (void)empas::run_nsga2(p, c);
  } catch (const empas::ValueError&) {
  }
}

}  // namespace fuzz
