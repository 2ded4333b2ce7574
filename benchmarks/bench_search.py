"""Search benchmark: EMPAS's C++ NSGA-II vs pymoo's NSGA-II, side by side in one run,
and both vs the exact Pareto front.

Spaces: the real TinyLlama profile (22 units x {2,4,8,16} bits, pop 100 x 50
generations) and synthetic profiles of 100 units (pop 100 x 200) and 560 units
(pop 256 x 500), 5 choices each.

Both GAs get the same population size, number of generations (EMPAS counts
generations after generation 0, pymoo counts generation 0 as its first, so pymoo gets
``("n_gen", generations + 1)`` and both make pop x (generations + 1) evaluations), the
same initial population (EMPAS's generation 0 for the same seed, passed to pymoo as
``sampling``) and the same operators:

* selection: binary tournament by non-dominated rank, then crowding distance (pymoo's
  NSGA-II ``binary_tournament`` with ``tournament_type="comp_by_rank_and_crowding"``;
  pymoo's default compares by Pareto dominance instead of rank);
* crossover: uniform crossover with probability 0.7 giving ONE child per mating, else a
  copy of a parent (EMPAS copies parent 1, pymoo a random one of the two; both parents
  are independent tournament winners, so the two are the same in distribution);
* mutation: each gene with probability 1/n_units moves one step up or down the unit's
  allowed choices ordered by bytes (reflected at either end);
* duplicate elimination and (mu + lambda) survival by rank, then crowding.

pymoo evaluates a whole population at once with numpy table lookups. Hypervolumes
(``empas._core.hypervolume``) share one reference point, ``problem.reference_point``:
the worst corner of the space (worst reachable loss, largest reachable bytes).

    python benchmarks/bench_search.py            # full run (~2 minutes on 2 cores)
    python benchmarks/bench_search.py --quick    # smoke test (seconds)

Prints a readable report and writes JSON (--json, default benchmarks/results/search.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import empas
from empas import _core

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "search.json"
DEFAULT_CHECKPOINT = HERE.parents[1] / "shared/data/empas-tinyllama/checkpoint_gen_50.json"

# Quoted from the issue, not measured here: the original EMPAS GA's run time.
ORIGINAL_QUOTED = {"seconds": 11.7, "evaluations": 5000}
CROSSOVER_PROB = 0.7
HV_TARGET = 0.999


@dataclass
class Space:
    name: str
    profile: empas.Profile
    pop: int
    gens: int
    seeds: int  # EMPAS runs (seeds 0..seeds-1): each one timed and scored
    pymoo_runs: int  # pymoo runs (seeds 0..pymoo_runs-1)
    exact_runs: int


def spaces(quick: bool) -> list[Space]:
    tl = empas.load_profile("example:tinyllama")
    s100 = empas.synthetic_profile(100, choices=(2, 3, 4, 8, 16), seed=0)
    s560 = empas.synthetic_profile(560, choices=(2, 3, 4, 8, 16), seed=0)
    if quick:
        return [
            Space("tinyllama", tl, 100, 50, seeds=5, pymoo_runs=1, exact_runs=3),
            Space("synth-100", s100, 100, 200, seeds=3, pymoo_runs=1, exact_runs=2),
            Space("synth-560", s560, 256, 500, seeds=2, pymoo_runs=0, exact_runs=1),
        ]
    return [
        Space("tinyllama", tl, 100, 50, seeds=100, pymoo_runs=3, exact_runs=15),
        Space("synth-100", s100, 100, 200, seeds=20, pymoo_runs=3, exact_runs=7),
        Space("synth-560", s560, 256, 500, seeds=7, pymoo_runs=3, exact_runs=3),
    ]


# ----------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def median(xs):
    return statistics.median(xs) if xs else None


def hv(points, ref) -> float:
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    return float(_core.hypervolume(pts, [float(ref[0]), float(ref[1])]))


class CpuMeter:
    """CPU time used by other processes (and stolen by the hypervisor) while we run,
    in cores: the machine's busy time from /proc/stat minus this process's own."""

    def __init__(self):
        self.t0, self.self0, self.stat0 = time.perf_counter(), self._self(), self._stat()

    @staticmethod
    def _self() -> float:
        t = os.times()
        return t.user + t.system

    @staticmethod
    def _stat():
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = f[0] + f[1] + f[2] + f[5] + f[6]  # user nice system irq softirq
        steal = f[7] if len(f) > 7 else 0
        return busy / hz, steal / hz

    def result(self) -> dict:
        wall = time.perf_counter() - self.t0
        stat = self._stat()
        if self.stat0 is None or stat is None:
            return {"other_processes_cpu_cores": None, "steal_cpu_cores": None}
        mine = self._self() - self.self0
        return {
            "other_processes_cpu_cores": max(0.0, (stat[0] - self.stat0[0] - mine) / wall),
            "steal_cpu_cores": (stat[1] - self.stat0[1]) / wall,
        }


def machine() -> dict:
    import pymoo

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pymoo": pymoo.__version__,
        "empas": dict(empas.build_info()),
        "loadavg_at_start": list(os.getloadavg()),
    }


# ------------------------------------------------------------------ EMPAS side
def run_ours(problem, pop: int, gens: int, seed: int, threads: int = 0) -> dict:
    t0 = time.perf_counter()
    r = _core.run_nsga2(problem, pop_size=pop, generations=gens, seed=seed, threads=threads)
    wall = time.perf_counter() - t0
    return {
        "F": r["objectives"][r["front"]][:, :2],  # feasible rank-0 members
        "seconds": r["seconds"],
        "wall": wall,
        "evaluations": int(r["evaluations"]),
        "genomes": r["genomes"],
    }


def initial_population(problem, pop: int, seed: int) -> np.ndarray:
    """EMPAS's generation 0 (extremes, uniform-precision plans, stratified random plans)."""
    return _core.run_nsga2(problem, pop_size=pop, generations=0, seed=seed)["genomes"]


# ------------------------------------------------------------------ pymoo side
class PymooNSGA2:
    """pymoo's NSGA-II on the same additive proxy with EMPAS's operators.

    pymoo's variables are positions on each unit's ladder of allowed choices ordered by
    bytes (then by falling delta, as EMPAS orders them), so the neighbor mutation is
    +-1 on a variable; evaluation is a vectorized lookup in per-ladder tables."""

    def __init__(self, profile: empas.Profile, problem):
        allowed = np.asarray(problem.allowed, dtype=bool)
        delta = np.nan_to_num(np.asarray(profile.delta, dtype=float))
        size = np.asarray(profile.bytes_table, dtype=np.int64)
        n, k = allowed.shape
        ladders = [
            sorted(np.flatnonzero(allowed[u]), key=lambda c, u=u: (size[u, c], -delta[u, c]))
            for u in range(n)
        ]
        width = max(len(lad) for lad in ladders)
        self.n = n
        self.top = np.array([len(lad) - 1 for lad in ladders], dtype=np.int64)
        self.lad_delta = np.zeros((n, width))
        self.lad_bytes = np.zeros((n, width))
        self.pos_of = np.full((n, k), -1, dtype=np.int64)  # choice index -> ladder position
        for u, lad in enumerate(ladders):
            for j, c in enumerate(lad):
                self.lad_delta[u, j] = delta[u, c]
                self.lad_bytes[u, j] = float(size[u, c])
                self.pos_of[u, c] = j
        self.rows = np.arange(n)
        self.baseline = float(profile.baseline)
        self.fixed = float(profile.unsearched_bytes)
        self.eval_seconds = 0.0

    def objectives(self, X: np.ndarray) -> np.ndarray:
        X = X.astype(np.intp, copy=False)
        return np.column_stack(
            [
                self.baseline + self.lad_delta[self.rows, X].sum(axis=1),
                self.fixed + self.lad_bytes[self.rows, X].sum(axis=1),
            ]
        )

    def run(self, init_genomes: np.ndarray, pop: int, gens: int, seed: int) -> dict:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.crossover import Crossover
        from pymoo.core.mutation import Mutation
        from pymoo.core.problem import Problem
        from pymoo.optimize import minimize

        outer = self

        class Proxy(Problem):
            def __init__(self):
                super().__init__(n_var=outer.n, n_obj=2, xl=0, xu=outer.top, vtype=int)

            def _evaluate(self, x, out, *args, **kwargs):
                t0 = time.perf_counter()
                out["F"] = outer.objectives(x)
                outer.eval_seconds += time.perf_counter() - t0

        class UniformOneChild(Crossover):
            def __init__(self):
                super().__init__(n_parents=2, n_offsprings=1, prob=CROSSOVER_PROB)

            def _do(self, problem, X, *args, random_state=None, **kwargs):
                take_second = random_state.random(X.shape[1:]) < 0.5
                return np.where(take_second, X[1], X[0])[None, ...]

        class NeighborStep(Mutation):
            def _do(self, problem, X, *args, random_state=None, **kwargs):
                X = X.astype(np.int64)
                hit = random_state.random(X.shape) < 1.0 / outer.n
                up = random_state.random(X.shape) < 0.5
                Y = np.where(up, X + 1, X - 1)
                Y = np.where(Y < 0, 1, Y)  # reflect at the ends of the ladder
                Y = np.where(Y > outer.top, outer.top - 1, Y)
                Y = np.where(outer.top == 0, 0, Y)  # a unit with one choice never moves
                return np.where(hit, Y, X)

        algo = NSGA2(
            pop_size=pop,
            sampling=self.pos_of[self.rows, np.asarray(init_genomes, dtype=np.intp)],
            crossover=UniformOneChild(),
            mutation=NeighborStep(),
            eliminate_duplicates=True,
        )
        algo.tournament_type = "comp_by_rank_and_crowding"
        self.eval_seconds = 0.0
        t0 = time.perf_counter()
        res = minimize(Proxy(), algo, ("n_gen", gens + 1), seed=seed, verbose=False)
        seconds = time.perf_counter() - t0
        return {
            "F": np.asarray(res.F, dtype=float),  # rank-0 members of the final population
            "seconds": seconds,
            "eval_seconds": self.eval_seconds,
            "evaluations": int(res.algorithm.evaluator.n_eval),
        }


# ---------------------------------------------------------------- one space
def bench_space(sp: Space, pymoo_budget_s: float) -> dict:
    prof, pop, gens = sp.profile, sp.pop, sp.gens
    problem = prof.problem()
    ref = list(problem.reference_point)[:2]
    log(f"{sp.name}: {prof.n_units} units x {prof.n_choices} choices, pop {pop} x {gens} gens")

    # Exact front (the yardstick) and its timing.
    exact_s = []
    for _ in range(sp.exact_runs):
        t0 = time.perf_counter()
        exact = empas.search(prof, method="exact")
        exact_s.append(time.perf_counter() - t0)
    hv_exact = exact.hypervolume

    # EMPAS NSGA-II on all cores: seeds 0..seeds-1, each timed and scored.
    run_ours(problem, pop, gens, 0)  # warm-up: threads, caches, page faults
    native, wall, ratios = [], [], []
    evaluations = 0
    for seed in range(sp.seeds):
        r = run_ours(problem, pop, gens, seed)
        native.append(r["seconds"])
        wall.append(r["wall"])
        ratios.append(hv(r["F"], ref) / hv_exact)
        evaluations = r["evaluations"]
    # One thread, and whether the result is the same on any thread count.
    n1 = min(sp.seeds, 7)
    single, paired, same_result = [], [], True
    for seed in range(n1):
        r1 = run_ours(problem, pop, gens, seed, threads=1)
        single.append(r1["seconds"])
        rt = run_ours(problem, pop, gens, seed, threads=0)
        paired.append(rt["seconds"])
        same_result &= bool(np.array_equal(r1["genomes"], rt["genomes"]))
    # The public API end to end (search + Front + archetypes + hypervolume).
    api = []
    for seed in range(n1):
        t0 = time.perf_counter()
        empas.search(prof, pop_size=pop, generations=gens, seed=seed)
        api.append(time.perf_counter() - t0)
    init0 = initial_population(problem, pop, 0)
    ev0 = problem.evaluate(init0)
    gen0_ratio = hv(np.column_stack([ev0["loss"], ev0["bytes"]]), ref) / hv_exact

    # pymoo: seeds 0..pymoo_runs-1, each from EMPAS's generation 0 of the same seed.
    pm = PymooNSGA2(prof, problem)
    pm_s, pm_eval_s, pm_ratio, pm_evals = [], [], [], None
    for seed in range(sp.pymoo_runs):
        spent = sum(pm_s)
        if pm_s and spent + statistics.mean(pm_s) > pymoo_budget_s:
            log(f"{sp.name}: pymoo stopped after {len(pm_s)} run(s), {spent:.0f} s (budget)")
            break
        r = pm.run(initial_population(problem, pop, seed), pop, gens, seed)
        pm_s.append(r["seconds"])
        pm_eval_s.append(r["eval_seconds"])
        pm_ratio.append(hv(r["F"], ref) / hv_exact)
        pm_evals = r["evaluations"]
        log(f"{sp.name}: pymoo seed {seed}: {r['seconds']:.2f} s")

    ours_med = median(native)
    return {
        "space": sp.name,
        "model": prof.model_name,
        "units": prof.n_units,
        "choices": prof.choices,
        "pop_size": pop,
        "generations": gens,
        "ours": {
            "runs": len(native),
            "seeds": f"0..{sp.seeds - 1}",
            "threads": int(empas.build_info().get("max_threads", 0)) or "all",
            "native_s": native,
            "evaluations": evaluations,
            "native_s_median": ours_med,
            "native_s_min": min(native),
            "native_s_max": max(native),
            "call_s_median": median(wall),
            "one_thread_runs": len(single),
            "one_thread_native_s_median": median(single),
            "thread_speedup": median(single) / median(paired),
            "same_result_on_1_and_all_threads": same_result,
            "search_api_runs": len(api),
            "search_api_s_median": median(api),
            "hv_ratio_median": median(ratios),
            "hv_ratio_min": min(ratios),
            "hv_ratio_max": max(ratios),
            "hv_ratio_seed0": ratios[0],
            "hv_ratios": ratios,
            "hv_ratio_on_pymoo_seeds": ratios[: len(pm_ratio)],
            "share_of_seeds_hv_ge_99.9%": sum(x >= HV_TARGET for x in ratios) / len(ratios),
            "hv_ratio_generation0_seed0": gen0_ratio,
        },
        "pymoo": {
            "runs": len(pm_s),
            "runs_planned": sp.pymoo_runs,
            "evaluations": pm_evals,
            "seconds": pm_s,
            "s_median": median(pm_s),
            "evaluate_s_median": median(pm_eval_s),
            "hv_ratios": pm_ratio,
            "hv_ratio_median": median(pm_ratio),
            "hv_ratio_min": min(pm_ratio) if pm_ratio else None,
        },
        "speedup_pymoo_over_ours": median(pm_s) / ours_med if pm_s else None,
        "exact": {
            "runs": len(exact_s),
            "s_median": median(exact_s),
            "s_min": min(exact_s),
            "front_size": len(exact.front),
            "is_exact": bool(exact.exact),
            "peak_states": exact.extra["peak_states"],
            "hypervolume": hv_exact,
        },
        "reference_point": ref,
    }


def original_ga(profile: empas.Profile, path: Path) -> dict | None:
    """Scores the original EMPAS GA's final population on the same hypervolume scale."""
    if not path.is_file():
        log(f"original EMPAS checkpoint not found: {path}")
        return None
    pop = json.loads(path.read_text())["population"]
    col = {b: c for c, b in enumerate(profile.choices)}
    genomes = np.array([[col[int(b)] for b in ind] for ind in pop], dtype=np.int64)
    problem = profile.problem()
    ev = problem.evaluate(genomes)
    exact = empas.search(profile, method="exact")
    ratio = hv(np.column_stack([ev["loss"], ev["bytes"]]), problem.reference_point) / (
        exact.hypervolume
    )
    return {
        "checkpoint": str(path),
        "population": len(pop),
        "distinct_plans": len({tuple(ind) for ind in pop}),
        "hv_ratio_final_population": ratio,
        "quoted_from_issue_not_measured": {
            "seconds": ORIGINAL_QUOTED["seconds"],
            "evaluations": ORIGINAL_QUOTED["evaluations"],
        },
    }


def targets(rows: list[dict]) -> list[dict]:
    by = {r["space"]: r for r in rows}
    out = []

    def add(name, value, limit, ok, unit):
        out.append({"target": name, "value": value, "limit": limit, "unit": unit, "pass": ok})

    tl = by["tinyllama"]
    t = tl["ours"]["native_s_median"]
    add("TinyLlama pop100x50 time (median, all cores)", t * 1e3, 20.0, t <= 0.020, "ms")
    h = tl["ours"]["hv_ratio_median"]
    add("TinyLlama HV / exact (median over seeds)", h * 100, HV_TARGET * 100, h >= HV_TARGET, "%")
    s = tl["speedup_pymoo_over_ours"]
    add("TinyLlama speedup over pymoo", s, 50.0, s is not None and s >= 50, "x")
    big = by.get("synth-560")
    if big:
        t = big["ours"]["native_s_median"]
        add("560x5 pop256x500 time (median, all cores)", t, 5.0, t <= 5.0, "s")
    return out


# ------------------------------------------------------------------ report
def _f(x, fmt: str, scale: float = 1.0) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x * scale, fmt)


def _load(xs) -> str:
    return "/".join(f"{x:.2f}" for x in xs)


def _busy(m: dict) -> bool:
    """Whether other processes ran alongside: OpenMP timings are then unreliable."""
    other = m.get("other_processes_cpu_cores")
    return (other is not None and other > 0.2) or m["loadavg_at_start"][0] > 0.5


def report(doc: dict) -> str:
    m, e = doc["machine"], doc["machine"]["empas"]
    rows = doc["spaces"]
    L = [
        "EMPAS search benchmark" + (" (--quick)" if doc["quick"] else ""),
        f"machine: {m['cpu']}, {m['cores']} cores, {m['platform']}",
        f"python {m['python']}, numpy {m['numpy']}, pymoo {m['pymoo']}; empas {e.get('version')} "
        f"({e.get('build_type')}, compiler {e.get('compiler')}, OpenMP {e.get('openmp')}, "
        f"max_threads {e.get('max_threads')})",
        f"load average (1/5/15 min) at start {_load(m['loadavg_at_start'])}, at end "
        f"{_load(m['loadavg_at_end'])}; other processes used {_f(m['other_processes_cpu_cores'], '.2f')}"
        f" cores on average during the run, hypervisor steal {_f(m['steal_cpu_cores'], '.2f')}",
    ]
    if _busy(m):
        L.append(
            "WARNING: other work ran alongside the benchmark; multithreaded (OpenMP) times "
            "are unreliable under contention. Rerun on an idle machine."
        )
    L += [
        "",
        "Time: medians; ours = run_nsga2's own 'seconds' on all cores, call = the Python call,",
        "search() = empas.search end to end, 1 thr = threads=1; pymoo = minimize() wall time.",
        f"{'space':<10} {'units x ch':>10} {'pop x gen':>9} {'evals':>7} {'ours ms':>9} "
        f"{'(min)':>8} {'call ms':>8} {'search()':>9} {'1 thr':>8} {'pymoo ms':>9} "
        f"{'(runs)':>6} {'pymoo/ours':>10}",
    ]
    for r in rows:
        o, p = r["ours"], r["pymoo"]
        L.append(
            f"{r['space']:<10} {str(r['units']) + ' x ' + str(len(r['choices'])):>10} "
            f"{str(r['pop_size']) + 'x' + str(r['generations']):>9} {o['evaluations']:>7,} "
            f"{_f(o['native_s_median'], '.2f', 1e3):>9} {_f(o['native_s_min'], '.2f', 1e3):>8} "
            f"{_f(o['call_s_median'], '.2f', 1e3):>8} {_f(o['search_api_s_median'], '.2f', 1e3):>9} "
            f"{_f(o['one_thread_native_s_median'], '.2f', 1e3):>8} "
            f"{_f(p['s_median'], '.0f', 1e3):>9} {'(' + str(p['runs']) + ')':>6} "
            f"{_f(r['speedup_pymoo_over_ours'], '.0f') + 'x':>10}"
        )
    L += [
        "",
        "Quality: hypervolume as % of the exact front's (same reference point); ours over",
        "seeds 0..k-1 ('@pymoo' = ours on pymoo's seeds), pymoo over its runs; gen0 = ours' start.",
        f"{'space':<10} {'seeds':>5} {'ours med':>9} {'ours min':>9} {'>=99.9%':>8} "
        f"{'@pymoo':>9} {'pymoo med':>10} {'pymoo min':>10} {'gen0':>8}",
    ]
    for r in rows:
        o, p = r["ours"], r["pymoo"]
        at = o["hv_ratio_on_pymoo_seeds"]
        L.append(
            f"{r['space']:<10} {o['runs']:>5} {_f(o['hv_ratio_median'], '.3f', 100):>8}% "
            f"{_f(o['hv_ratio_min'], '.3f', 100):>8}% "
            f"{_f(o['share_of_seeds_hv_ge_99.9%'], '.0f', 100):>7}% "
            f"{_f(median(at), '.3f', 100):>8}% {_f(p['hv_ratio_median'], '.3f', 100):>9}% "
            f"{_f(p['hv_ratio_min'], '.3f', 100):>9}% "
            f"{_f(o['hv_ratio_generation0_seed0'], '.2f', 100):>7}%"
        )
    L += [
        "",
        "Exact solver (empas.search(method='exact'), median) and threads:",
        f"{'space':<10} {'exact ms':>9} {'(runs)':>6} {'front':>6} {'exact?':>6} "
        f"{'2/1 thr':>8} {'same result 1 vs all threads':>29}",
    ]
    for r in rows:
        x, o = r["exact"], r["ours"]
        L.append(
            f"{r['space']:<10} {_f(x['s_median'], '.2f', 1e3):>9} {'(' + str(x['runs']) + ')':>6} "
            f"{x['front_size']:>6} {str(x['is_exact']):>6} {_f(o['thread_speedup'], '.2f'):>7}x "
            f"{str(o['same_result_on_1_and_all_threads']):>29}"
        )
    short = [r for r in rows if r["pymoo"]["runs"] < r["pymoo"]["runs_planned"]]
    if short:
        L += [
            "",
            "note: pymoo runs cut by --pymoo-budget: "
            + ", ".join(
                f"{r['space']} {r['pymoo']['runs']} of {r['pymoo']['runs_planned']}" for r in short
            ),
        ]
    if doc["quick"]:
        L += [
            "",
            "note: --quick: few repeats; pymoo runs "
            + ", ".join(f"{r['space']} {r['pymoo']['runs']}" for r in rows)
            + " (the 560-unit pymoo run is skipped).",
        ]
    o = doc.get("original_empas")
    if o:
        q = o["quoted_from_issue_not_measured"]
        L += [
            "",
            f"Original EMPAS GA, final population ({o['population']} plans, "
            f"{o['distinct_plans']} distinct; {Path(o['checkpoint']).name}): "
            f"{o['hv_ratio_final_population'] * 100:.2f}% of the exact HV (measured here).",
            f"  Its run time as QUOTED IN THE ISSUE (not measured here, other machine): "
            f"{q['seconds']} s for {q['evaluations']:,} evaluations.",
        ]
    L += ["", "Targets:"]
    for t in doc["targets"]:
        L.append(
            f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['target']}: "
            f"{_f(t['value'], '.3f' if t['unit'] != 'x' else '.0f')} {t['unit']} "
            f"({'>=' if t['unit'] in ('%', 'x') else '<='} {t['limit']:g} {t['unit']})"
        )
    L.append(f"\ntotal benchmark time: {doc['benchmark_seconds']:.0f} s")
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="few repeats, no 560-unit pymoo run")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help=f"output (default {DEFAULT_JSON})")
    ap.add_argument(
        "--original-checkpoint",
        default=str(DEFAULT_CHECKPOINT),
        help="original EMPAS GA checkpoint (skipped if missing)",
    )
    ap.add_argument(
        "--pymoo-budget",
        type=float,
        default=180.0,
        help="seconds of pymoo runs per space before further runs are skipped (default 180)",
    )
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    meter = CpuMeter()
    sps = spaces(a.quick)
    rows = [bench_space(sp, a.pymoo_budget) for sp in sps]
    doc = {
        "benchmark": "empas.search",
        "quick": a.quick,
        "machine": machine(),
        "settings": {
            "crossover": f"uniform, prob {CROSSOVER_PROB}, one child per mating",
            "mutation": "neighbor step on the byte-ordered ladder, prob 1/n_units per gene",
            "selection": "binary tournament by rank then crowding",
            "survival": "(mu + lambda), rank then crowding; duplicates eliminated",
            "pymoo_n_gen": "generations + 1 (pymoo counts generation 0)",
            "timing": "medians; ours = run_nsga2 'seconds', pymoo = minimize() wall time",
        },
        "spaces": rows,
        "original_empas": original_ga(sps[0].profile, Path(a.original_checkpoint)),
    }
    doc["targets"] = targets(rows)
    doc["benchmark_seconds"] = time.perf_counter() - t0
    doc["machine"]["loadavg_at_end"] = list(os.getloadavg())
    doc["machine"].update(meter.result())
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    print(report(doc))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
