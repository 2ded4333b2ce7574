"""``empas.search``: Pareto search over a sensitivity profile.

Two methods over the same additive proxy (loss = baseline + Σ Δ, bytes = Σ
exact unit bytes + unsearched bytes):

* ``"nsga2"``: multithreaded NSGA-II in C++ (any objectives, budgets,
  checkpoint/resume, progress);
* ``"exact"``: the exact loss-vs-bytes front by Pareto-set merging (or an
  ε-grid when ``resolution`` is given), the yardstick for the GA.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from .._native import core
from ..plan import Plan
from ..profile.fit import fit_table
from ..profile.table import Profile, load_profile
from ..track import TrackerSpec, log_search, open_tracker, search_progress
from ..track.stages import stage_config
from ..util.progress import progress_bar
from .config import SearchConfig
from .result import Front, SearchResult

__all__ = ["search"]


def search(
    profile: Profile | str | os.PathLike,
    method: str = "nsga2",
    pop_size: int = 100,
    generations: int = 50,
    seed: int = 0,
    max_bytes: int | str | None = None,
    threads: int | None = None,
    *,
    max_avg_bits: float | None = None,
    latency: bool = False,
    pinned: dict[str, int] | None = None,
    allowed_bits: Sequence[int] | None = None,
    initial: Sequence[Plan | Sequence[int] | dict[str, int]] | None = None,
    crossover_prob: float = 0.7,
    mutation_prob: float | None = None,
    eliminate_duplicates: bool = True,
    seed_uniform: bool = True,
    sampling: str = "stratified",
    mutation: str = "neighbor",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    progress: bool | Callable[[dict[str, Any]], bool | None] = False,
    max_points: int = 2_000_000,
    resolution: int | str | None = None,
    table: str = "monotone",
    tracker: TrackerSpec = None,
) -> SearchResult:
    """Searches bit allocations on a sensitivity profile.

    Args:
        profile: a :class:`Profile` or a path (``empas.sensitivity/1`` or original EMPAS).
        method: "nsga2" (genetic, any objectives/budgets) or "exact" (exact loss-vs-bytes front).
        pop_size, generations: NSGA-II population (>= 4) and generations (>= 1).
        seed: random seed; the same seed gives the same result on any thread count.
        max_bytes: memory budget for the whole model, bytes or "8GB"/"1.5GiB".
        threads: worker threads (None: all cores; capped at the cores available).
        max_avg_bits: budget on the parameter-weighted mean bits of searched units.
        latency: add the profile's latency table as a third objective (NSGA-II).
        pinned: {unit: bits} fixed choices. allowed_bits: restrict the choices globally.
        initial: plans placed in the first generation (warm start).
        crossover_prob, mutation_prob: uniform crossover probability; per-gene
            mutation probability (None: 1 / n_units).
        eliminate_duplicates: re-mutate children that repeat a member.
        seed_uniform: put the uniform-precision plans (all 2-bit, all 4-bit, ...)
            and the smallest/largest plans in the first generation.
        sampling: "stratified" (random members spread over the size range) or "uniform".
        mutation: "neighbor" (one step up/down a unit's precisions) or "uniform".
        checkpoint: file to write every ``checkpoint_every`` generations; a run
            started with an existing matching checkpoint resumes from it.
        progress: True for a progress bar, or a callable receiving each
            generation's stats (return False to stop early).
        max_points, resolution: exact method: largest intermediate front, and for
            huge spaces an ε-grid: ``resolution`` (bytes or "1MB") is the largest
            byte error accepted; every exact front point (B, L) then has a returned
            point with loss <= L and bytes <= B + ``extra["error_bound_bytes"]``
            (<= resolution), and the smallest and lowest-loss plans are kept.
        table: "monotone" (default: the noise-aware fitted table of
            :func:`empas.fit_table`, Δ non-increasing in bits per unit; the result's
            plans carry its standard errors) or "raw" (the measured cells as they are).
        tracker: "wandb", "mlflow" (a new run, finished on return) or a tracker object
            (see :mod:`empas.track`): the settings, each generation (front size,
            hypervolume, best loss, evaluations/s), the front as a table and the
            archetype plans as an artifact.
    """
    given = locals()
    cfg = SearchConfig(**{f.name: given[f.name] for f in fields(SearchConfig)})
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    if cfg.latency and profile.latency is None:
        where = f" ({profile.path})" if profile.path else ""
        raise ValueError(
            f"latency=True needs the profile's latency table, and this profile{where} has none: "
            "measure one with `empas latency PROFILE --model MODEL -o OUT` (or "
            "`empas profile --latency`, or empas.measure_latency(model, profile).into(profile))"
        )
    with open_tracker(tracker, run_name="empas-search") as t:
        stage_config(t, "search", cfg, profile)
        res = _search(profile, cfg, initial, progress, search_progress(t))
        log_search(t, res)
    return res


def _search(
    profile: Profile,
    cfg: SearchConfig,
    initial: Any,
    progress: Any,
    on_generation: Callable[[dict[str, Any]], None] | None,
) -> SearchResult:
    profile = fit_table(profile, cfg.table)
    problem = profile.problem(
        cfg.max_bytes, cfg.max_avg_bits, cfg.pinned, cfg.allowed_bits, cfg.latency
    )
    provenance = {
        "method": cfg.method,
        "seed": cfg.seed,
        "pop_size": cfg.pop_size,
        "generations": cfg.generations,
        "max_bytes": cfg.max_bytes,
        "max_avg_bits": cfg.max_avg_bits,
        "table": cfg.table,
        "profile_path": profile.path,
    }
    t0 = time.perf_counter()
    if cfg.method == "exact":
        r = core().exact_front(problem, cfg.max_points, cfg.resolution or 0)
        genomes = r["genomes"]
        history: list[dict[str, Any]] = []
        evaluations = 0
        extra = {
            "peak_states": r["peak_states"],
            "eps_bytes": r["eps_bytes"],
            # ε-grid: every exact front point (B, L) has a returned point with
            # loss <= L and bytes <= B + error_bound_bytes (0 when exact).
            "error_bound_bytes": r["error_bound_bytes"],
        }
        exact = bool(r["exact"])
    else:
        init = None
        if initial is not None:  # a sequence of plans, or a (k, n_units) array of bits
            rows = [profile.genome(_as_plan_input(p)) for p in initial]
            if rows:
                init = np.stack(rows).astype(np.int64)
        cb, close = _progress_callback(progress, cfg.generations, on_generation)
        try:
            r = core().run_nsga2(
                problem,
                pop_size=cfg.pop_size,
                generations=cfg.generations,
                seed=cfg.seed,
                crossover_prob=cfg.crossover_prob,
                mutation_prob=-1.0 if cfg.mutation_prob is None else cfg.mutation_prob,
                threads=cfg.threads or 0,
                eliminate_duplicates=cfg.eliminate_duplicates,
                seed_uniform=cfg.seed_uniform,
                initial=init,
                checkpoint=cfg.checkpoint or "",
                checkpoint_every=cfg.checkpoint_every,
                progress=cb,
                sampling=cfg.sampling,
                mutation=cfg.mutation,
            )
        finally:
            close()
        genomes = _unique_rows(r["genomes"][r["front"]])
        history = list(r["history"])
        evaluations = int(r["evaluations"])
        extra = {
            "generations_run": r["generations_run"],
            "resumed_from": r["resumed_from"],
            "stopped_early": r["stopped_early"],
            "native_seconds": r["seconds"],
        }
        exact = False
    front = Front.evaluated(profile, problem, np.asarray(genomes, dtype=np.int64), provenance)
    seconds = time.perf_counter() - t0
    return SearchResult(
        profile,
        cfg,
        front,
        list(problem.reference_point),
        history,
        evaluations,
        seconds,
        exact,
        extra,
    )


def _as_plan_input(p: Any) -> Any:
    if isinstance(p, (Plan, dict)):
        return p
    return [int(b) for b in p]


def _unique_rows(a: np.ndarray) -> np.ndarray:
    seen: set[bytes] = set()
    keep = []
    for i, row in enumerate(a):
        key = row.tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return a[keep]


def _progress_callback(progress: Any, total: int, also: Callable[[dict[str, Any]], None] | None):
    """The native progress callback: ``progress`` (a bar or the user's callable)
    and ``also`` (the tracker's), each generation."""
    cb, close = _user_callback(progress, total)
    if also is None:
        return cb, close

    def both(stats: dict[str, Any]) -> bool:
        also(stats)
        return True if cb is None else cb(stats)

    return both, close


def _user_callback(progress: Any, total: int):
    if callable(progress):
        # Python truthiness for any return value (None: go on); the native
        # side only converts None and bools.
        def call(stats: dict[str, Any]) -> bool:
            r = progress(stats)
            return True if r is None else bool(r)

        return call, lambda: None
    if not progress:
        return None, lambda: None
    bar = progress_bar(total, "NSGA-II", "gen")

    def cb(stats: dict[str, Any]) -> bool:
        if stats["generation"] > 0:
            bar.update(stats["generation"] - bar.n)
        bar.set_postfix(front=stats["front_size"], best=f"{stats['best_loss']:.4f}")
        return True

    return cb, bar.close
