// The one parallel-for of the project. Work items must not throw and must
// write only to their own slots, so results are identical for any thread count.
#pragma once
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace empas {

/// Most threads a parallel region may use: the processors this process may
/// run on (at least 1). More threads than cores never speed up this CPU-bound
/// work, and a huge count makes libgomp fail to create them (abort) or crash.
inline int max_threads() {
#ifdef _OPENMP
  const int procs = omp_get_num_procs();
  return procs > 0 ? procs : 1;
#else
  return 1;
#endif
}

/// Threads to use: `requested` if > 0, else the OpenMP default; always capped
/// at max_threads() before OpenMP sees the number.
inline int resolve_threads(int requested) {
#ifdef _OPENMP
  const int want = requested > 0 ? requested : omp_get_max_threads();
  return want < 1 ? 1 : (want > max_threads() ? max_threads() : want);
#else
  (void)requested;
  return 1;
#endif
}

/// Calls f(i) for i in [0, n). Runs serially below `grain` items.
template <class F>
void parallel_for(int64_t n, int threads, F&& f, int64_t grain = 64) {
#ifdef _OPENMP
  const int nt = resolve_threads(threads);
  if (nt > 1 && n >= grain) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  (void)threads;
  (void)grain;
  for (int64_t i = 0; i < n; ++i) f(i);
}

}  // namespace empas
