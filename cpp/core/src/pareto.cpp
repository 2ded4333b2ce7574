#include "empas/pareto.hpp"

#include <algorithm>
#include <limits>
#include <numeric>

#include "empas/parallel.hpp"

namespace empas {

bool dominates(const double* a, const double* b, int m) {
  bool strictly = false;
  for (int k = 0; k < m; ++k) {
    if (a[k] > b[k]) return false;
    if (a[k] < b[k]) strictly = true;
  }
  return strictly;
}

bool constrained_dominates(const double* a, double va, const double* b, double vb, int m) {
  if (va <= 0 && vb <= 0) return dominates(a, b, m);
  if (va <= 0) return true;  // feasible beats infeasible
  if (vb <= 0) return false;
  return va < vb;  // both infeasible: smaller violation wins
}

namespace {

// Two objectives: lexicographic sweep with a binary search over fronts
// (Zhang et al., ENS-BS), O(n log n). Infeasible points form one front per
// violation level after all feasible fronts, exactly as constrained dominance
// orders them. Returns the same fronts as the general algorithm.
std::vector<std::vector<int>> sort_2d(const double* objs, int n, const double* violation) {
  std::vector<int> feas, infeas;
  for (int i = 0; i < n; ++i) (violation && violation[i] > 0 ? infeas : feas).push_back(i);
  std::stable_sort(feas.begin(), feas.end(), [&](int a, int b) {
    const double* x = objs + 2 * static_cast<size_t>(a);
    const double* y = objs + 2 * static_cast<size_t>(b);
    return x[0] != y[0] ? x[0] < y[0] : x[1] < y[1];
  });
  std::vector<std::vector<int>> fronts;
  std::vector<int> last;  // last member of each front: the one with the least objective 1
  for (int p : feas) {
    const double* q = objs + 2 * static_cast<size_t>(p);
    auto dominated_by = [&](size_t k) { return dominates(objs + 2 * static_cast<size_t>(last[k]), q, 2); };
    size_t lo = 0, hi = fronts.size();  // first front that does not dominate p
    while (lo < hi) {
      const size_t mid = (lo + hi) / 2;
      if (dominated_by(mid))
        lo = mid + 1;
      else
        hi = mid;
    }
    if (lo == fronts.size()) {
      fronts.emplace_back();
      last.push_back(p);
    }
    fronts[lo].push_back(p);
    last[lo] = p;
  }
  for (auto& f : fronts) std::sort(f.begin(), f.end());
  std::stable_sort(infeas.begin(), infeas.end(), [&](int a, int b) { return violation[a] < violation[b]; });
  for (size_t i = 0; i < infeas.size();) {
    size_t j = i;
    std::vector<int> f;
    while (j < infeas.size() && violation[infeas[j]] == violation[infeas[i]]) f.push_back(infeas[j++]);
    std::sort(f.begin(), f.end());
    fronts.push_back(std::move(f));
    i = j;
  }
  return fronts;
}

}  // namespace

std::vector<std::vector<int>> non_dominated_sort(const double* objs, int n, int m, const double* violation,
                                                 int needed, int threads) {
  std::vector<std::vector<int>> fronts;
  if (n <= 0) return fronts;
  if (needed <= 0 || needed > n) needed = n;
  if (m == 2) {
    fronts = sort_2d(objs, n, violation);
    int sorted = 0;
    size_t k = 0;
    while (k < fronts.size() && sorted < needed) sorted += static_cast<int>(fronts[k++].size());
    fronts.resize(k);
    return fronts;
  }
  std::vector<std::vector<int>> dominated(n);  // S_i: points i dominates
  std::vector<int> count(n, 0);                // n_i: points dominating i
  parallel_for(
      n, threads,
      [&](int64_t ii) {
        const int i = static_cast<int>(ii);
        const double* a = objs + static_cast<size_t>(i) * m;
        const double va = violation ? violation[i] : 0.0;
        auto& s = dominated[i];
        int c = 0;
        for (int j = 0; j < n; ++j) {
          if (j == i) continue;
          const double* b = objs + static_cast<size_t>(j) * m;
          const double vb = violation ? violation[j] : 0.0;
          if (constrained_dominates(a, va, b, vb, m))
            s.push_back(j);
          else if (constrained_dominates(b, vb, a, va, m))
            ++c;
        }
        count[i] = c;
      },
      128);
  std::vector<int> current;
  for (int i = 0; i < n; ++i)
    if (count[i] == 0) current.push_back(i);
  int sorted = 0;
  while (!current.empty()) {
    sorted += static_cast<int>(current.size());
    fronts.push_back(current);
    if (sorted >= needed) break;
    std::vector<int> next;
    for (int i : current)
      for (int j : dominated[i])
        if (--count[j] == 0) next.push_back(j);
    std::sort(next.begin(), next.end());
    current.swap(next);
  }
  return fronts;
}

std::vector<double> crowding_distance(const double* objs, int m, const std::vector<int>& front) {
  const size_t n = front.size();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> d(n, 0.0);
  if (n <= 2) {
    std::fill(d.begin(), d.end(), inf);
    return d;
  }
  std::vector<size_t> order(n);
  for (int k = 0; k < m; ++k) {
    std::iota(order.begin(), order.end(), size_t{0});
    auto val = [&](size_t p) { return objs[static_cast<size_t>(front[p]) * m + k]; };
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return val(a) < val(b); });
    const double lo = val(order.front()), hi = val(order.back());
    d[order.front()] = inf;
    d[order.back()] = inf;
    if (!(hi > lo)) continue;
    for (size_t p = 1; p + 1 < n; ++p) d[order[p]] += (val(order[p + 1]) - val(order[p - 1])) / (hi - lo);
  }
  return d;
}

std::vector<int> pareto_filter(const double* objs, int n, int m) {
  std::vector<int> keep;
  for (int i = 0; i < n; ++i) {
    bool dominated = false;
    for (int j = 0; j < n && !dominated; ++j)
      if (j != i && dominates(objs + static_cast<size_t>(j) * m, objs + static_cast<size_t>(i) * m, m))
        dominated = true;
    if (!dominated) keep.push_back(i);
  }
  return keep;
}

}  // namespace empas
