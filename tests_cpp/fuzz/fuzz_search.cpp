// libFuzzer target: the search entry points on a problem built from the bytes
// (unit and choice counts, deltas, byte counts, allowed mask, budgets), as the
// Python bindings can build one: Problem::finalize must reject what the
// searches cannot handle, and the searches must handle what it accepts.
#include <cstring>

#include "fuzz_common.hpp"

namespace {
struct Reader {
  const uint8_t* d;
  size_t n;
  template <class T>
  T take() {
    T v{};
    const size_t k = n < sizeof(T) ? n : sizeof(T);
    std::memcpy(&v, d, k);
    d += k;
    n -= k;
    return v;
  }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r{data, size};
  empas::Problem p;
  p.n_units = 1 + r.take<uint8_t>() % 12;
  p.n_choices = 1 + r.take<uint8_t>() % 5;
  static const int kBits[] = {0, 2, 3, 4, 8, 16};
  for (int c = 0; c < p.n_choices; ++c) p.choice_bits.push_back(kBits[r.take<uint8_t>() % 6]);
  const uint8_t mode = r.take<uint8_t>();
  p.base_loss = (mode & 1) ? r.take<double>() : 2.0;
  p.fixed_bytes = (mode & 2) ? r.take<int64_t>() : 100;
  if (mode & 4) p.constraints.max_bytes = r.take<int64_t>();
  if (mode & 8) p.constraints.max_avg_bits = r.take<double>();
  for (int u = 0; u < p.n_units; ++u) {
    p.params.push_back((mode & 16) ? r.take<int64_t>() : r.take<uint16_t>());
    for (int c = 0; c < p.n_choices; ++c) {
      p.delta.push_back((mode & 32) ? r.take<double>() : r.take<uint16_t>() / 1000.0);
      p.bytes.push_back((mode & 64) ? r.take<int64_t>() : r.take<uint16_t>());
      p.allowed.push_back(r.take<uint8_t>() % 4 != 0);
    }
  }
  if (mode & 128) p.latency.assign(p.delta.size(), 1.0);
  try {
    p.finalize();
  } catch (const empas::ValueError&) {
    return 0;
  }
  fuzz::search_all(p);
  return 0;
}
