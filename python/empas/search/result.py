"""The result of a search (``empas.search/1``): the Pareto :class:`Front` and
its archetypes, saved as result.json, front.csv and plan files, and loaded back
by :meth:`SearchResult.load`."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .._native import core
from ..errors import FormatError, InfeasibleError
from ..plan import Plan
from ..profile.table import Profile
from ..util.io import atomic_write_text, clean_json, fsync_dir, read_json
from ..util.sizes import format_bytes, parse_size
from .config import SearchConfig

__all__ = ["ARCHETYPES", "SEARCH_FORMAT", "Front", "SearchResult"]

SEARCH_FORMAT = "empas.search/1"
ARCHETYPES = ("max_accuracy", "balanced", "max_compression")


class Front(Sequence):
    """The Pareto front as a read-only sequence of :class:`Plan`, ascending
    predicted bytes. Backed by arrays (``genomes``, ``loss``, ``bytes``,
    ``avg_bits``, ``latency`` or None); Plans are built on access, so fronts of
    thousands of plans over hundreds of units stay cheap."""

    def __init__(
        self,
        genomes: np.ndarray,
        loss: np.ndarray,
        bytes: np.ndarray,
        avg_bits: np.ndarray,
        latency: np.ndarray | None,
        choice_bits: Sequence[int],
        make_plan: Any,
    ):
        self.genomes = np.ascontiguousarray(genomes, dtype=np.int64)
        self.loss = np.asarray(loss, dtype=float)
        self.bytes = np.asarray(bytes, dtype=np.int64)
        self.loss_stderr: np.ndarray | None = None  # the predicted loss's standard error
        self.avg_bits = np.asarray(avg_bits, dtype=float)
        self.latency = None if latency is None else np.asarray(latency, dtype=float)
        self._choice_bits = np.asarray(choice_bits)
        self._make_plan = make_plan  # genome row -> Plan
        self._cache: dict[int, Plan] = {}

    @classmethod
    def evaluated(cls, profile: Profile, problem: Any, genomes: np.ndarray, provenance: dict):
        """The front of ``genomes`` with the proxy's metrics, sorted by (bytes, loss)."""
        ev = problem.evaluate(genomes) if len(genomes) else None
        if ev is None:
            z = np.zeros(0)
            g = np.zeros((0, profile.n_units), dtype=np.int64)
            return cls(g, z, z.astype(np.int64), z, None, problem.choice_bits, None)
        order = np.lexsort((ev["loss"], ev["bytes"]))
        lat = ev["latency"][order] if problem.n_objectives == 3 else None
        front = cls(
            np.asarray(genomes)[order],
            ev["loss"][order],
            ev["bytes"][order],
            ev["avg_bits"][order],
            lat,
            problem.choice_bits,
            _plan_maker(profile, problem, provenance),
        )
        if profile.stderr is not None:
            from ..profile.fit import plan_stderr

            front.loss_stderr = plan_stderr(profile, front.genomes)
        return front

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
            self._cache[i] = self._make_plan(i, self.genomes[i])
        return self._cache[i]

    def bits(self, i: int) -> list[int]:
        """Bits of plan ``i`` without building the Plan."""
        return self._choice_bits[self.genomes[i]].tolist()

    def __repr__(self) -> str:
        return f"<Front of {len(self)} plans>"


def _plan_maker(profile: Profile, problem: Any, provenance: dict):
    def make(i: int, genome: np.ndarray) -> Plan:
        plan = profile.plan_from_genome(problem, genome)
        plan.set_provenance("search", provenance)
        return plan

    return make


def _stored_plan_maker(front_doc: dict, template: dict[str, Any], provenance: dict):
    """Plans of a result loaded without its profile: the template plan's units and
    quantizer with each front point's bits and stored predictions."""

    def make(i: int, genome: np.ndarray) -> Plan:
        d = json.loads(json.dumps(template))
        for u, b in zip(d["units"], front_doc["bits"][i]):
            u["bits"] = int(b)
        d["predicted"] = {k: front_doc[k][i] for k in ("loss", "bytes", "avg_bits")}
        d["archetype"] = None
        d["measured"] = None
        d.setdefault("provenance", {})["search"] = provenance
        return Plan.from_dict(d)

    return make


class SearchResult:
    """Everything a search produced.

    ``front``: :class:`Front` (sequence of :class:`Plan`, ascending predicted
    bytes; non-dominated and feasible). ``archetypes``: name -> Plan.
    ``hypervolume``: of the loss x bytes front against ``reference_point`` (the
    worst corner of the space: worst reachable loss, largest reachable bytes).
    ``history``: per-generation dicts (NSGA-II). ``profile``: the profile searched
    (None for a result loaded without it: see :meth:`load`)."""

    def __init__(
        self,
        profile: Profile | None,
        config: SearchConfig,
        front: Front,
        reference_point: list[float],
        history: list[dict[str, Any]],
        evaluations: int,
        seconds: float,
        exact: bool,
        extra: dict[str, Any],
        *,
        stored: dict[str, Any] | None = None,
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
        if stored is not None:  # loaded: what the file says
            self.source = stored["profile"]
            self.unit_names = list(stored["units"])
            self.choices = list(stored["choices"])
            self.hypervolume = stored["hypervolume"]
            self.archetype_index = dict(stored["archetype_index"])
            self.archetypes = dict(stored["archetypes"])
            return
        self.source = {
            "path": profile.path,
            "model": profile.model_name,
            "fingerprint": profile.fingerprint,
            "table": ((profile.meta.get("source") or {}).get("table") or {}).get("kind", "raw"),
        }
        self.unit_names = profile.unit_names
        self.choices = list(profile.choices)
        self.hypervolume = (
            float(core().hypervolume(self._points(front), reference_point[:2]))
            if len(front)
            else 0.0
        )
        loss, size = front.loss.tolist(), front.bytes.astype(float).tolist()
        self.archetype_index = {
            k: v for k, v in dict(core().select_archetypes(loss, size)).items() if v >= 0
        }
        if config.max_bytes is not None and len(front):
            i = core().best_under_budget(loss, size, float(config.max_bytes))
            if i >= 0:
                self.archetype_index["best_under_budget"] = i
        self.archetypes: dict[str, Plan] = {
            name: _labelled(front[i], name) for name, i in self.archetype_index.items()
        }

    @property
    def model_name(self) -> str:
        """The searched profile's model name."""
        return str(self.source.get("model") or "")

    def profile_mismatch(self, profile: Profile) -> str | None:
        """None if ``profile`` is this result's profile (the same units and, where the
        result records one, fingerprint), else why not."""
        return _mismatch(profile, {"units": self.unit_names, "profile": self.source})

    @staticmethod
    def _points(front: Front) -> np.ndarray:
        return np.column_stack([front.loss, front.bytes.astype(float)])

    # -- loading ------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, profile: Profile | str | None = None) -> SearchResult:
        """Reads ``result.json`` (``empas.search/1``; ``path`` may also be the
        directory holding it). With the profile it was searched on (``profile=``, or
        found by the path the result records, or a ``profile.json`` beside it, when
        its units and fingerprint match) plans are rebuilt from it exactly; without,
        the front's plans come from the stored predictions and ``profile`` is None.
        Raises FormatError naming the file and the field for malformed results, and
        for a given profile that is not the result's."""
        path = Path(path)
        if path.is_dir():
            path = path / "result.json"
        doc = read_json(path, "search result", FormatError)
        r = _parse(path, doc)
        if isinstance(profile, (str, os.PathLike)):
            from ..profile.table import load_profile

            profile = load_profile(profile)
        if profile is not None:
            why = _mismatch(profile, r)
            if why:
                raise FormatError(f"{path}: the profile is not this result's ({why})")
        else:
            profile = _find_profile(path, r)
        try:
            # results written before fitted tables existed were searched on the raw table
            config = SearchConfig(**{"table": "raw", **r["config"]})
        except (TypeError, ValueError) as exc:
            raise FormatError(
                f"{path}: 'config' is not a valid search configuration ({exc})"
            ) from None
        prov = dict(next(iter(r["plans"].values()), {}).get("provenance", {}).get("search") or {})
        f = r["front"]
        if profile is not None:
            from ..profile.fit import fit_table

            profile = fit_table(profile, config.table)
            problem = profile.problem(
                config.max_bytes,
                config.max_avg_bits,
                config.pinned,
                config.allowed_bits,
                config.latency,
            )
            col = {b: j for j, b in enumerate(profile.choices)}
            genomes = np.array([[col[b] for b in row] for row in f["bits"]], dtype=np.int64)
            maker = _plan_maker(profile, problem, prov)
            choice_bits = profile.choices
        else:
            col = {b: j for j, b in enumerate(r["choices"])}
            genomes = np.array([[col[b] for b in row] for row in f["bits"]], dtype=np.int64)
            template = next(iter(r["plans"].values()), None) or {
                "format": "empas.plan/1",  # no archetype plan stored: the units only
                "model": {"name": r["profile"].get("model") or ""},
                "units": [{"name": n, "bits": 0} for n in r["units"]],
            }
            maker = _stored_plan_maker(f, template, prov)
            choice_bits = r["choices"]
        genomes = genomes.reshape(len(f["loss"]), len(r["units"]))
        front = Front(
            genomes, f["loss"], f["bytes"], f["avg_bits"], f.get("latency"), choice_bits, maker
        )
        if profile is not None and profile.stderr is not None:
            from ..profile.fit import plan_stderr

            front.loss_stderr = plan_stderr(profile, genomes)
        elif f.get("loss_stderr") is not None and len(f["loss_stderr"]) == len(f["loss"]):
            front.loss_stderr = np.asarray(f["loss_stderr"], dtype=float)
        archetypes = {name: Plan.from_dict(d) for name, d in r["plans"].items()}
        stored = {
            "profile": r["profile"],
            "units": r["units"],
            "choices": r["choices"],
            "hypervolume": r["hypervolume"],
            "archetype_index": r["archetypes"],
            "archetypes": archetypes,
        }
        res = cls(
            profile,
            config,
            front,
            r["reference_point"],
            r["history"],
            r["evaluations"],
            r["seconds"],
            r["exact"],
            r["extra"],
            stored=stored,
        )
        res.path = path
        return res

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
            "profile": dict(self.source),
            "config": asdict(self.config),
            "exact": self.exact,
            "reference_point": list(self.reference_point),
            "hypervolume": self.hypervolume,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "choices": list(self.choices),
            "units": list(self.unit_names),
            "front": {
                "loss": f.loss.tolist(),
                "bytes": f.bytes.tolist(),
                "avg_bits": f.avg_bits.tolist(),
                "bits": [f.bits(i) for i in range(len(f))],
                **({"loss_stderr": f.loss_stderr.tolist()} if f.loss_stderr is not None else {}),
                # the third objective of a latency search (read back by load)
                **({} if f.latency is None else {"latency": f.latency.tolist()}),
            },
            "archetypes": {
                name: {"index": self.archetype_index[name], "plan": p.to_dict()}
                for name, p in self.archetypes.items()
            },
            "history": self.history,
            "extra": self.extra,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(clean_json(self.to_dict()), indent=indent, allow_nan=False)

    @staticmethod
    def check_outdir(
        outdir: str | os.PathLike, names: Sequence[str] = (*ARCHETYPES, "best_under_budget")
    ) -> None:
        """Raises FileExistsError if :meth:`save` into ``outdir`` would replace a file
        (result.json, front.csv, plans/<name>.json). Callers run it before a long
        search so that an existing output is refused before the work, not after."""
        out = Path(outdir)
        targets = [out / "result.json", out / "front.csv"]
        targets += [out / "plans" / f"{n}.json" for n in names]
        existing = [str(p) for p in targets if p.exists()]
        if existing:
            raise FileExistsError(
                f"refusing to overwrite {existing[0]}"
                + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                + "; pass overwrite=True (CLI: --force)"
            )

    def save(self, outdir: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Path]:
        """Writes result.json, front.csv and plans/<archetype>.json into ``outdir``.

        Every file is rendered and written to a temporary file first; only when
        all are on disk are they renamed into place, so an error (or a crash)
        while writing leaves the earlier set, never a mix of old and new files."""
        out = Path(outdir)
        targets = {"result": out / "result.json", "front_csv": out / "front.csv"}
        for name in self.archetypes:
            targets[name] = out / "plans" / f"{name}.json"
        if not overwrite:
            self.check_outdir(out, list(self.archetypes))
        texts = {"result": self.to_json() + "\n", "front_csv": self._csv()}
        for name, plan in self.archetypes.items():
            texts[name] = plan.to_json() + "\n"
        (out / "plans").mkdir(parents=True, exist_ok=True)
        staged: dict[str, Path] = {}
        try:
            for key, text in texts.items():
                tmp = targets[key].with_name(f".{targets[key].name}.{os.getpid()}.tmp")
                staged[key] = atomic_write_text(tmp, text)
            for key, tmp in staged.items():
                os.replace(tmp, targets[key])
        finally:
            for tmp in staged.values():
                if tmp.exists():
                    tmp.unlink()
        fsync_dir(out)
        fsync_dir(out / "plans")
        return targets

    def _labels(self) -> dict[int, list[str]]:
        labels: dict[int, list[str]] = {}
        for name, i in self.archetype_index.items():
            labels.setdefault(i, []).append(name)
        return labels

    def _csv(self) -> str:
        f, labels = self.front, self._labels()
        lat = f.latency is not None  # a latency search: its third objective, before the bits
        lines = [
            "index,predicted_loss,predicted_bytes,avg_bits,archetypes,"
            + ("predicted_latency," if lat else "")
            + "bits"
        ]
        for i in range(len(f)):
            lines.append(
                f"{i},{f.loss[i]:.10g},{int(f.bytes[i])},{f.avg_bits[i]:.6g},"
                f"{'|'.join(labels.get(i, []))},"
                + (f"{f.latency[i]:.10g}," if lat else "")
                + f"{' '.join(map(str, f.bits(i)))}"
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
                **({} if f.latency is None else {"predicted_latency": f.latency}),
                "bits": [f.bits(i) for i in range(len(f))],
            }
        )

    def plot(self, ax=None, *, others: Sequence[SearchResult] = (), annotate: bool = True):
        """Loss vs MiB of the front (and of ``others``), archetypes marked. Returns the Axes."""
        from .plot import plot_fronts

        return plot_fronts([self, *others], ax=ax, annotate=annotate)

    def compare_uniform(self) -> list[dict[str, Any]]:
        """For each uniform precision every unit allows (all 2-bit, all 4-bit, ...):
        its predicted loss and bytes, and the best front plan that fits the same bytes."""
        if self.profile is None:
            raise ValueError(
                "compare_uniform() needs the profile: load the result with "
                "SearchResult.load(path, profile=...)"
            )
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
            f"{self.method} search on {self.model_name or self.source.get('path')}: "
            f"{len(self.front)} front plans, hypervolume {self.hypervolume:.6g}, "
            f"{self.evaluations:,} evaluations, {self.seconds * 1e3:.1f} ms"
        ]
        bound = (self.extra or {}).get("error_bound_bytes")
        if self.method == "exact" and not self.exact and bound is not None:
            lines.append(
                f"epsilon-grid front: each exact front plan has one here of no greater loss "
                f"and at most {format_bytes(int(bound))} ({int(bound):,} bytes) larger"
            )
        lat = self.front.latency is not None
        lines.append(
            f"{'archetype':<18} {'loss':>10} {'size':>12} {'avg bits':>9}"
            + (f" {'latency':>10}" if lat else "")
        )
        for name, p in self.archetypes.items():
            pl = p.predicted_latency
            lines.append(
                f"{name:<18} {p.predicted_loss:>10.4f} {format_bytes(p.predicted_bytes):>12} "
                f"{p.predicted_avg_bits:>9.2f}"
                + ((f" {pl:>10.4f}" if pl is not None else f" {'-':>10}") if lat else "")
            )
        if lat:
            lines.append(
                "latency: the profile's table summed over units (ms of the units' linear "
                "layers; the rest of the model is a constant on top)"
            )
        rows = self.compare_uniform() if self.profile is not None else []
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


# ----------------------------------------------------------------------------
# reading empas.search/1
# ----------------------------------------------------------------------------


def _num(v: Any) -> float:
    """A float (NaN for None / non-numbers: a non-finite value is stored as null)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


def _int_list(v: Any) -> list[int] | None:
    if not isinstance(v, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) for b in v
    ):
        return None
    return [int(b) for b in v]


def _parse(path: Path, doc: Any) -> dict[str, Any]:
    """The validated contents of a result document; FormatError names the field."""
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: expected a JSON object ({SEARCH_FORMAT})")
    fmt = doc.get("format")
    if fmt != SEARCH_FORMAT:
        raise FormatError(
            f"{path}: not an EMPAS search result (format {fmt!r}, expected {SEARCH_FORMAT!r})"
        )
    units = doc.get("units")
    if not isinstance(units, list) or not units or not all(isinstance(u, str) for u in units):
        raise FormatError(f"{path}: 'units' must be a non-empty list of unit names")
    front = doc.get("front")
    if not isinstance(front, dict):
        raise FormatError(f"{path}: 'front' must be an object with loss/bytes/avg_bits/bits")
    cols = {}
    for k in ("loss", "bytes", "avg_bits", "bits"):
        v = front.get(k)
        if not isinstance(v, list):
            raise FormatError(f"{path}: front.{k} must be a list")
        cols[k] = v
    n = len(cols["loss"])
    if any(len(v) != n for v in cols.values()):
        lens = {k: len(v) for k, v in cols.items()}
        raise FormatError(f"{path}: front lists differ in length: {lens}")
    if n == 0:
        raise FormatError(f"{path}: the front is empty (the search found no feasible plan)")
    bits = []
    for i, b in enumerate(cols["bits"]):
        bl = _int_list(b)
        if bl is None or len(bl) != len(units):
            raise FormatError(
                f"{path}: front.bits[{i}] must list {len(units)} integer bit widths (one per unit)"
            )
        bits.append(bl)
    for k in ("loss", "bytes"):
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in cols[k]):
            raise FormatError(f"{path}: front.{k} must hold numbers")
    latency = front.get("latency")
    if latency is not None and (not isinstance(latency, list) or len(latency) != n):
        raise FormatError(f"{path}: front.latency must be a list of {n} numbers")
    choices = _int_list(doc.get("choices")) or sorted({b for row in bits for b in row})
    unknown = sorted({b for row in bits for b in row} - set(choices))
    if unknown:
        raise FormatError(f"{path}: front.bits uses {unknown}, which 'choices' does not list")
    arch_doc = doc.get("archetypes") or {}
    if not isinstance(arch_doc, dict):
        raise FormatError(f"{path}: 'archetypes' must be an object")
    archetypes: dict[str, int] = {}
    plans: dict[str, dict[str, Any]] = {}
    for name, a in arch_doc.items():
        idx = a.get("index") if isinstance(a, dict) else None
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < n:
            raise FormatError(f"{path}: archetypes.{name}.index must be a front index < {n}")
        plan = a.get("plan")
        if not isinstance(plan, dict) or not isinstance(plan.get("units"), list):
            raise FormatError(f"{path}: archetypes.{name}.plan must be an empas.plan/1 object")
        if [u.get("name") if isinstance(u, dict) else None for u in plan["units"]] != units:
            raise FormatError(f"{path}: archetypes.{name}.plan does not list the result's units")
        archetypes[str(name)] = idx
        plans[str(name)] = plan
    prof = doc.get("profile") if isinstance(doc.get("profile"), dict) else {}
    cfg = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    known = {f for f in SearchConfig.__dataclass_fields__}
    ref = doc.get("reference_point")
    ref = [_num(x) for x in ref] if isinstance(ref, list) else [math.nan, math.nan]
    hist = doc.get("history") if isinstance(doc.get("history"), list) else []
    evals = doc.get("evaluations")
    secs = doc.get("seconds")
    return {
        "units": units,
        "choices": choices,
        "front": {
            "loss": [_num(x) for x in cols["loss"]],
            "bytes": [int(x) for x in cols["bytes"]],
            "avg_bits": [_num(x) for x in cols["avg_bits"]],
            "bits": bits,
            "latency": None if latency is None else [_num(x) for x in latency],
            "loss_stderr": (
                [_num(x) for x in front["loss_stderr"]]
                if isinstance(front.get("loss_stderr"), list) and len(front["loss_stderr"]) == n
                else None
            ),
        },
        "archetypes": archetypes,
        "plans": plans,
        "profile": prof,
        "config": {k: v for k, v in cfg.items() if k in known},
        "method": str(cfg.get("method") or "?"),
        "exact": bool(doc.get("exact")),
        "hypervolume": _num(doc.get("hypervolume")),
        "reference_point": ref,
        "history": hist,
        "evaluations": int(evals) if isinstance(evals, int) and not isinstance(evals, bool) else 0,
        "seconds": float(_num(secs)),
        "extra": doc.get("extra") if isinstance(doc.get("extra"), dict) else {},
    }


def _mismatch(prof: Profile, r: dict[str, Any]) -> str | None:
    """None if ``prof`` is the result's profile, else why not."""
    if prof.n_units != len(r["units"]):
        return f"it has {prof.n_units} units, the result {len(r['units'])}"
    if prof.unit_names != r["units"]:
        bad = next(i for i, (a, b) in enumerate(zip(prof.unit_names, r["units"])) if a != b)
        return f"unit {bad} is {prof.unit_names[bad]!r} there, {r['units'][bad]!r} in the result"
    fp = r["profile"].get("fingerprint")
    if fp and prof.fingerprint != fp:
        return f"fingerprint {prof.fingerprint} differs from the result's {fp}"
    return None


def profile_candidates(path: Path, r_profile: dict[str, Any]) -> list[str]:
    """Where a result's profile may be: ``profile.json`` beside result.json or one
    level up, and the path the result records (an ``example:`` name, or a file
    relative to the working directory or the result's directory)."""
    specs = [str(c) for c in (path.parent / "profile.json", path.parent.parent / "profile.json")]
    specs = [s for s in specs if Path(s).is_file()]
    ref = r_profile.get("path")
    if isinstance(ref, str) and ref:
        if ref.startswith("example:"):
            specs.append(ref)
        else:
            for d in (Path.cwd(), path.parent, path.parent.parent):
                c = Path(ref) if Path(ref).is_absolute() else d / ref
                if c.is_file():
                    specs.append(str(c))
                    break
    out: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        key = spec if spec.startswith("example:") else str(Path(spec).resolve())
        if key not in seen:
            seen.add(key)
            out.append(spec)
    return out


def _find_profile(path: Path, r: dict[str, Any]) -> Profile | None:
    from ..profile.table import load_profile

    for spec in profile_candidates(path, r["profile"]):
        try:
            prof = load_profile(spec)
        except (OSError, ValueError):
            continue
        if _mismatch(prof, r) is None:
            return prof
    return None
