// Non-dominated sorting and crowding distance (Deb et al. 2002), minimization.
#pragma once
#include <vector>

namespace empas {

/// Pareto dominance of a over b (m objectives, minimize).
bool dominates(const double* a, const double* b, int m);

/// Constrained dominance: feasible beats infeasible, smaller violation beats
/// larger, and among feasible points ordinary Pareto dominance.
bool constrained_dominates(const double* a, double va, const double* b, double vb, int m);

/// Fast non-dominated sort of n points (objs: n x m row-major). `violation`
/// may be null (all feasible). Returns the fronts, each in ascending index
/// order; stops once at least `needed` points are sorted (needed <= 0: all).
std::vector<std::vector<int>> non_dominated_sort(const double* objs, int n, int m, const double* violation,
                                                 int needed = 0, int threads = 1);

/// Crowding distance of the points `front` (indices into objs); returns one
/// value per entry of `front`, +inf at the boundaries of every objective.
std::vector<double> crowding_distance(const double* objs, int m, const std::vector<int>& front);

/// Indices of the non-dominated points among n (ascending index order).
std::vector<int> pareto_filter(const double* objs, int n, int m);

}  // namespace empas
