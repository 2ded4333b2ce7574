"""``empas.search``: Pareto search over a sensitivity profile.

Two methods over the same additive proxy (loss = baseline + Σ Δ, bytes = Σ
exact unit bytes + unsearched bytes):

* ``"nsga2"``: multithreaded NSGA-II in C++ (any objectives, budgets,
  checkpoint/resume, progress);
* ``"exact"``: the exact loss-vs-bytes front by Pareto-set merging (or an
  ε-grid when ``resolution`` is given), the yardstick for the GA.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ._native import core
from .errors import InfeasibleError
from .plan import Plan
from .sensitivity import Profile, load_profile
from .sizes import format_bytes, parse_size

METHODS = ("nsga2", "exact")
ARCHETYPES = ("max_accuracy", "balanced", "max_compression")


@dataclass
class SearchConfig:
    """Validated settings of one search (see :func:`search` for meanings)."""

    method: str = "nsga2"
    pop_size: int = 100
    generations: int = 50
    seed: int = 0
    max_bytes: int | None = None
    max_avg_bits: float | None = None
    threads: int | None = None
    latency: bool = False
    pinned: dict[str, int] | None = field(default_factory=dict)
    allowed_bits: list[int] | None = None
    crossover_prob: float = 0.7
    mutation_prob: float | None = None
    eliminate_duplicates: bool = True
    seed_uniform: bool = True
    sampling: str = "stratified"
    mutation: str = "neighbor"
    checkpoint: str | None = None
    checkpoint_every: int = 10
    max_points: int = 2_000_000
    resolution: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        self.pop_size = _int("pop_size", self.pop_size, 4, "a population needs at least 4 members")
        self.generations = _int("generations", self.generations, 1, "run at least one generation")
        self.seed = _int("seed", self.seed, 0, "seeds are integers >= 0", hi=None)
        if self.seed >= 2**64:
            raise ValueError("seed must be < 2**64")
        if self.threads is not None:
            self.threads = _int("threads", self.threads, 1, "use threads=None for all cores")
        if self.max_bytes is not None:
            self.max_bytes = parse_size(self.max_bytes)
            if self.max_bytes > _INT64_MAX:
                raise ValueError(
                    f"max_bytes must be at most {_INT64_MAX} bytes, got {self.max_bytes}"
                )
        if self.max_avg_bits is not None:
            v = self.max_avg_bits
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v <= 0
            ):
                raise ValueError(f"max_avg_bits must be a positive number, got {v!r}")
        for name in ("crossover_prob",) + (
            ("mutation_prob",) if self.mutation_prob is not None else ()
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
        self.checkpoint_every = _int("checkpoint_every", self.checkpoint_every, 1, "")
        self.max_points = _int("max_points", self.max_points, 1, "", hi=_INT64_MAX)
        if self.resolution is not None:
            self.resolution = parse_size(self.resolution)
            if not 1 <= self.resolution <= _INT64_MAX:
                raise ValueError(f"resolution must be between 1 and {_INT64_MAX} bytes")
        if self.method == "exact" and self.latency:
            raise ValueError("method='exact' covers loss vs bytes; latency needs method='nsga2'")
        if self.method == "exact" and self.max_avg_bits is not None:
            raise ValueError("method='exact' supports max_bytes only; max_avg_bits needs 'nsga2'")
        if self.sampling not in ("stratified", "uniform"):
            raise ValueError(f"sampling must be 'stratified' or 'uniform', got {self.sampling!r}")
        if self.mutation not in ("neighbor", "uniform"):
            raise ValueError(f"mutation must be 'neighbor' or 'uniform', got {self.mutation!r}")
        try:
            pinned = dict(self.pinned or {})
        except (TypeError, ValueError):
            raise ValueError(
                f"pinned must be a {{unit_name: bits}} dict, got {self.pinned!r}"
            ) from None
        self.pinned = {str(k): _bits(f"pinned[{k!r}]", v) for k, v in pinned.items()}
        if self.allowed_bits is not None:
            if isinstance(self.allowed_bits, (str, bytes)) or not isinstance(
                self.allowed_bits, Iterable
            ):
                raise ValueError(
                    f"allowed_bits must be a list of bit widths, got {self.allowed_bits!r}"
                )
            self.allowed_bits = [_bits("allowed_bits", b) for b in self.allowed_bits]
        if self.checkpoint is not None:
            self.checkpoint = os.fspath(self.checkpoint)


_INT32_MAX = 2**31 - 1  # C++ int arguments
_INT64_MAX = 2**63 - 1  # C++ int64_t arguments


def _int(name: str, v: Any, lo: int, hint: str, hi: int | None = _INT32_MAX) -> int:
    """``v`` as a plain int (numpy integers too) in [lo, hi], else ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(
            f"{name} must be an integer >= {lo}, got {v!r}" + (f" ({hint})" if hint else "")
        )
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be at most {hi}, got {v!r}")
    return int(v)


def _bits(name: str, v: Any) -> int:
    """A bit width: an integer (numpy integers too), never a float or string."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name}: bit widths must be integers, got {v!r}")
    return int(v)


class Front(Sequence):
    """The Pareto front as a read-only sequence of :class:`Plan`, ascending
    predicted bytes. Backed by arrays (``genomes``, ``loss``, ``bytes``,
    ``avg_bits``); Plans are built on access, so fronts of thousands of plans
    over hundreds of units stay cheap."""

    def __init__(self, profile: Profile, problem: Any, genomes: np.ndarray, provenance: dict):
        self._profile = profile
        self._problem = problem
        ev = problem.evaluate(genomes) if len(genomes) else None
        order = (
            np.lexsort((ev["loss"], ev["bytes"])) if ev is not None else np.zeros(0, dtype=np.int64)
        )
        self.genomes = np.ascontiguousarray(genomes[order])
        self.loss = ev["loss"][order] if ev is not None else np.zeros(0)
        self.bytes = ev["bytes"][order] if ev is not None else np.zeros(0, dtype=np.int64)
        self.avg_bits = ev["avg_bits"][order] if ev is not None else np.zeros(0)
        self.latency = (
            ev["latency"][order] if ev is not None and problem.n_objectives == 3 else None
        )
        self._provenance = provenance
        self._cache: dict[int, Plan] = {}
        self._choice_bits = np.asarray(problem.choice_bits)

    def __len__(self) -> int:
        return len(self.loss)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"front index {i} out of range (front has {n} plans)")
        i %= n
        if i not in self._cache:
            plan = self._profile._make_plan(self._problem, self.genomes[i])
            plan._data["provenance"]["search"] = self._provenance
            self._cache[i] = plan
        return self._cache[i]

    def bits(self, i: int) -> list[int]:
        """Bits of plan ``i`` without building the Plan."""
        return self._choice_bits[self.genomes[i]].tolist()

    def __repr__(self) -> str:
        return f"<Front of {len(self)} plans>"


class SearchResult:
    """Everything a search produced.

    ``front``: :class:`Front` (sequence of :class:`Plan`, ascending predicted
    bytes; non-dominated and feasible). ``archetypes``: name -> Plan.
    ``hypervolume``: of the loss x bytes front against ``reference_point`` (the
    worst corner of the space: worst reachable loss, largest reachable bytes).
    ``history``: per-generation dicts (NSGA-II)."""

    def __init__(
        self,
        profile: Profile,
        config: SearchConfig,
        front: Front,
        reference_point: list[float],
        history: list[dict[str, Any]],
        evaluations: int,
        seconds: float,
        exact: bool,
        extra: dict[str, Any],
    ):
        self.profile = profile
        self.config = config
        self.front = front
        self.reference_point = reference_point
        self.history = history
        self.evaluations = evaluations
        self.seconds = seconds
        self.exact = exact
        self.extra = extra
        self.hypervolume = (
            float(core().hypervolume(self._points(front), reference_point[:2]))
            if len(front)
            else 0.0
        )
        loss, size = front.loss.tolist(), front.bytes.astype(float).tolist()
        self._archetype_index = {
            k: v for k, v in dict(core().select_archetypes(loss, size)).items() if v >= 0
        }
        if config.max_bytes is not None and len(front):
            i = core().best_under_budget(loss, size, float(config.max_bytes))
            if i >= 0:
                self._archetype_index["best_under_budget"] = i
        self.archetypes: dict[str, Plan] = {
            name: _labelled(front[i], name) for name, i in self._archetype_index.items()
        }

    @staticmethod
    def _points(front: Front) -> np.ndarray:
        return np.column_stack([front.loss, front.bytes.astype(float)])

    # -- queries ------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.config.method

    def best_under(self, budget: int | str) -> Plan:
        """Lowest-loss front plan whose predicted bytes fit ``budget`` ("8GB", bytes...)."""
        b = parse_size(budget)
        i = core().best_under_budget(
            self.front.loss.tolist(), self.front.bytes.astype(float).tolist(), float(b)
        )
        if i < 0:
            smallest = int(self.front.bytes.min()) if len(self.front) else 0
            raise InfeasibleError(
                f"no plan on the front fits {b:,} bytes ({format_bytes(b)}); the smallest "
                f"is {smallest:,} bytes ({format_bytes(smallest)})"
            )
        return _labelled(self.front[i], "best_under_budget")

    def hypervolume_ratio(self, other: SearchResult) -> float:
        """This front's hypervolume / ``other``'s, both against this result's reference point."""
        if not len(other.front):
            return float("nan")
        hv = float(core().hypervolume(self._points(other.front), self.reference_point[:2]))
        return self.hypervolume / hv if hv > 0 else float("nan")

    # -- output -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        f = self.front
        return {
            "format": "empas.search/1",
            "profile": {
                "path": self.profile.path,
                "model": self.profile.model_name,
                "fingerprint": self.profile.fingerprint,
            },
            "config": asdict(self.config),
            "exact": self.exact,
            "reference_point": list(self.reference_point),
            "hypervolume": self.hypervolume,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "choices": list(self.profile.choices),
            "units": self.profile.unit_names,
            "front": {
                "loss": f.loss.tolist(),
                "bytes": f.bytes.tolist(),
                "avg_bits": f.avg_bits.tolist(),
                "bits": [f.bits(i) for i in range(len(f))],
            },
            "archetypes": {
                name: {"index": self._archetype_index[name], "plan": p.to_dict()}
                for name, p in self.archetypes.items()
            },
            "history": self.history,
            "extra": self.extra,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(_finite(self.to_dict()), indent=indent, allow_nan=False)

    def save(self, outdir: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Path]:
        """Writes result.json, front.csv and plans/<archetype>.json into ``outdir``."""
        out = Path(outdir)
        targets = {"result": out / "result.json", "front_csv": out / "front.csv"}
        for name in self.archetypes:
            targets[name] = out / "plans" / f"{name}.json"
        if not overwrite:
            existing = [str(p) for p in targets.values() if p.exists()]
            if existing:
                raise FileExistsError(
                    f"refusing to overwrite {existing[0]}"
                    + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                    + "; pass overwrite=True (CLI: --force)"
                )
        (out / "plans").mkdir(parents=True, exist_ok=True)
        write = core().write_file_atomic
        write(str(targets["result"]), self.to_json() + "\n")
        write(str(targets["front_csv"]), self._csv())
        for name, plan in self.archetypes.items():
            plan.save(targets[name])
        return targets

    def _labels(self) -> dict[int, list[str]]:
        labels: dict[int, list[str]] = {}
        for name, i in self._archetype_index.items():
            labels.setdefault(i, []).append(name)
        return labels

    def _csv(self) -> str:
        f, labels = self.front, self._labels()
        lines = ["index,predicted_loss,predicted_bytes,avg_bits,archetypes,bits"]
        for i in range(len(f)):
            lines.append(
                f"{i},{f.loss[i]:.10g},{int(f.bytes[i])},{f.avg_bits[i]:.6g},"
                f"{'|'.join(labels.get(i, []))},{' '.join(map(str, f.bits(i)))}"
            )
        return "\n".join(lines) + "\n"

    def to_pandas(self):
        """One row per front plan: loss, bytes, MiB, avg bits, archetype labels, bits."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        f, labels = self.front, self._labels()
        return pd.DataFrame(
            {
                "predicted_loss": f.loss,
                "predicted_bytes": f.bytes,
                "predicted_mib": f.bytes / 2**20,
                "avg_bits": f.avg_bits,
                "archetypes": [",".join(labels.get(i, [])) for i in range(len(f))],
                "bits": [f.bits(i) for i in range(len(f))],
            }
        )

    def plot(self, ax=None, *, others: Sequence[SearchResult] = (), annotate: bool = True):
        """Loss vs MiB of the front (and of ``others``), archetypes marked. Returns the Axes."""
        from .plotting import plot_fronts

        return plot_fronts([self, *others], ax=ax, annotate=annotate)

    def compare_uniform(self) -> list[dict[str, Any]]:
        """For each uniform precision every unit allows (all 2-bit, all 4-bit, ...):
        its predicted loss and bytes, and the best front plan that fits the same bytes."""
        rows = []
        allowed = ~np.isnan(self.profile.delta)
        for c, bits in enumerate(self.profile.choices):
            if bits == 0 or not allowed[:, c].all():
                continue
            u = self.profile.evaluate([bits] * self.profile.n_units)
            i = core().best_under_budget(
                self.front.loss.tolist(), self.front.bytes.astype(float).tolist(), float(u["bytes"])
            )
            rows.append(
                {
                    "bits": bits,
                    "uniform_loss": u["loss"],
                    "uniform_bytes": u["bytes"],
                    "front_loss": float(self.front.loss[i]) if i >= 0 else None,
                    "front_bytes": int(self.front.bytes[i]) if i >= 0 else None,
                }
            )
        return rows

    def summary(self) -> str:
        """A readable text table of the archetypes and of the front vs uniform precision."""
        lines = [
            f"{self.method} search on {self.profile.model_name or self.profile.path}: "
            f"{len(self.front)} front plans, hypervolume {self.hypervolume:.6g}, "
            f"{self.evaluations:,} evaluations, {self.seconds * 1e3:.1f} ms"
        ]
        lines.append(f"{'archetype':<18} {'loss':>10} {'size':>12} {'avg bits':>9}")
        for name, p in self.archetypes.items():
            lines.append(
                f"{name:<18} {p.predicted_loss:>10.4f} {format_bytes(p.predicted_bytes):>12} "
                f"{p.predicted_avg_bits:>9.2f}"
            )
        rows = self.compare_uniform()
        if rows:
            lines.append(f"{'uniform':<8} {'size':>12} {'loss':>10}   {'front at <= size':>16}")
            for r in rows:
                best = "-" if r["front_loss"] is None else f"{r['front_loss']:.4f}"
                lines.append(
                    f"{str(r['bits']) + '-bit':<8} {format_bytes(r['uniform_bytes']):>12} "
                    f"{r['uniform_loss']:>10.4f}   {best:>16}"
                )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"SearchResult(method={self.method!r}, front={len(self.front)} plans, "
            f"hypervolume={self.hypervolume:.6g}, seconds={self.seconds:.4f})"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{p.predicted_loss:.4f}</td>"
            f"<td>{format_bytes(p.predicted_bytes)}</td><td>{p.predicted_avg_bits:.2f}</td></tr>"
            for n, p in self.archetypes.items()
        )
        return (
            f"<div><b>{html.escape(repr(self))}</b><table><tr><th>archetype</th><th>loss</th>"
            f"<th>size</th><th>avg bits</th></tr>{rows}</table></div>"
        )


def _labelled(plan: Plan, name: str) -> Plan:
    p = Plan(plan.to_dict())
    p.archetype = name
    return p


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


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
) -> SearchResult:
    """Searches bit allocations on a sensitivity profile.

    Args:
        profile: a :class:`Profile` or a path (``empas.sensitivity/1`` or original EMPAS).
        method: "nsga2" (genetic, any objectives/budgets) or "exact" (exact loss-vs-bytes front).
        pop_size, generations: NSGA-II population (>= 4) and generations (>= 1).
        seed: random seed; the same seed gives the same result on any thread count.
        max_bytes: memory budget for the whole model, bytes or "8GB"/"1.5GiB".
        threads: worker threads (None: all cores).
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
        max_points, resolution: exact method: largest intermediate front, and an
            optional ε-grid width in bytes for huge spaces.
    """
    given = locals()
    cfg = SearchConfig(**{f.name: given[f.name] for f in fields(SearchConfig)})
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
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
        "profile_path": profile.path,
    }
    t0 = time.perf_counter()
    if cfg.method == "exact":
        r = core().exact_front(problem, cfg.max_points, cfg.resolution or 0)
        genomes = r["genomes"]
        history: list[dict[str, Any]] = []
        evaluations = 0
        extra = {"peak_states": r["peak_states"], "eps_bytes": r["eps_bytes"]}
        exact = bool(r["exact"])
    else:
        init = None
        if initial is not None:  # a sequence of plans, or a (k, n_units) array of bits
            rows = [profile.genome(_as_plan_input(p)) for p in initial]
            if rows:
                init = np.stack(rows).astype(np.int64)
        cb, close = _progress_callback(progress, cfg.generations)
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
    front = Front(profile, problem, np.asarray(genomes, dtype=np.int64), provenance)
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


def _progress_callback(progress: Any, total: int):
    if callable(progress):
        # Python truthiness for any return value (None: go on); the native
        # side only converts None and bools.
        def call(stats: dict[str, Any]) -> bool:
            r = progress(stats)
            return True if r is None else bool(r)

        return call, lambda: None
    if not progress:
        return None, lambda: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from None
    bar = tqdm(total=total, desc="NSGA-II", unit="gen")

    def cb(stats: dict[str, Any]) -> bool:
        if stats["generation"] > 0:
            bar.update(stats["generation"] - bar.n)
        bar.set_postfix(front=stats["front_size"], best=f"{stats['best_loss']:.4f}")
        return True

    return cb, bar.close
