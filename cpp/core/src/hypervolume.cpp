#include "empas/hypervolume.hpp"

#include <algorithm>
#include <utility>

#include "empas/error.hpp"

namespace empas {

namespace {

// 2-D hypervolume of (x, y) points against (rx, ry).
double hv2(std::vector<std::pair<double, double>> pts, double rx, double ry) {
  std::sort(pts.begin(), pts.end());
  double vol = 0, y_best = ry;
  for (const auto& [x, y] : pts) {
    if (x >= rx || y >= y_best) continue;
    vol += (rx - x) * (y_best - y);
    y_best = y;
  }
  return vol;
}

}  // namespace

double hypervolume(const std::vector<double>& points, int m, const std::vector<double>& ref) {
  if (m != 2 && m != 3) throw ValueError("hypervolume supports 2 or 3 objectives");
  if (ref.size() != static_cast<size_t>(m)) throw ValueError("reference point has wrong size");
  if (points.size() % m != 0) throw ValueError("points size is not a multiple of m");
  const size_t n = points.size() / m;
  std::vector<const double*> in;
  for (size_t i = 0; i < n; ++i) {
    const double* p = points.data() + i * m;
    bool inside = true;
    for (int k = 0; k < m; ++k) inside = inside && p[k] < ref[k];
    if (inside) in.push_back(p);
  }
  if (m == 2) {
    std::vector<std::pair<double, double>> pts;
    for (const double* p : in) pts.emplace_back(p[0], p[1]);
    return hv2(std::move(pts), ref[0], ref[1]);
  }
  // 3-D: sweep along the third objective; each slab's area is a 2-D HV.
  std::sort(in.begin(), in.end(), [](const double* a, const double* b) { return a[2] < b[2]; });
  double vol = 0;
  std::vector<std::pair<double, double>> slab;
  for (size_t i = 0; i < in.size(); ++i) {
    slab.emplace_back(in[i][0], in[i][1]);
    const double z_next = i + 1 < in.size() ? in[i + 1][2] : ref[2];
    if (z_next > in[i][2]) vol += hv2(slab, ref[0], ref[1]) * (z_next - in[i][2]);
  }
  return vol;
}

}  // namespace empas
