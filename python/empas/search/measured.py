"""A search that measures and corrects: the plans EMPAS recommends at a budget
come from measuring candidates on a selection split of the calibration text,
not from the additive proxy alone.

The proxy (loss = base + Σ Δ of single-unit experiments) misses interactions:
measured on SmolLM2, uniform int3 hurts ~1.4x what its summed block deltas
predict, int4 ~1.2x, int2 ~2x; so a proxy-optimal plan that trades many 3-bit
units for a few 16-bit ones can lose to uniform int4 at the same bytes. The
loop (:func:`search_measured`):

1. measures the uniform plans that fit the largest budget and the proxy's best
   plan under each budget, on selection tokens the profile never used;
2. fits a correction of the proxy on every measurement so far,
   ``measured Δ ≈ Σ_b α_b·S_b + β·L²`` with ``S_b`` the summed table Δ of the
   plan's units at b bits and ``L`` the summed Δ of its units at ≤ 3 bits (or
   dropped): per-precision recalibration plus a super-additive term for many
   low-bit units together (ridge toward the proxy, α = 1, β = 0; its
   leave-one-out error is reported next to the proxy's);
3. searches the corrected objective: it is non-additive only through ``β·L²``,
   which is linearized at the best measured plan under each budget
   (weights α_b + 2βL* on the ≤ 3-bit cells), so the exact front solver still
   applies; the front plans under each budget are ranked by the full corrected
   objective and the best unmeasured ones are measured;
4. repeats until the measured best under every budget stops improving, no new
   candidate is left, or ``max_measurements`` is spent.

The recommendation at a budget is the plan *measured* best on the selection
text among those that fit it; the uniform plan at the budget is always
measured, so it is never a plan measured worse than uniform there.
Measurements are cached by plan in ``checkpoint`` (resumable)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, InfeasibleError
from ..plan import Plan
from ..profile.fit import fit_table
from ..profile.table import Profile, load_profile
from ..util.io import clean_json, read_json, write_json
from ..util.progress import progress_bar
from ..util.sizes import format_bytes, parse_size
from .result import SearchResult
from .run import search

__all__ = ["MeasuredSearch", "search_measured"]

CACHE_FORMAT = "empas.measurements/1"
LOW_BITS = 3  # units at this many bits or fewer (or dropped) count as low-bit


@dataclass
class Correction:
    """measured Δ ≈ Σ_b alpha[b]·S_b + beta·L² over a profile's fitted table."""

    choices: list[int]
    alpha: dict[int, float] = field(default_factory=dict)
    beta: float = 0.0

    @staticmethod
    def features(table: np.ndarray, choices: list[int], genome: np.ndarray) -> np.ndarray:
        """[S_b for each choice..., L²] of one plan (choice indices)."""
        cells = table[np.arange(table.shape[0]), genome]
        s = np.array([cells[genome == j].sum() for j in range(len(choices))])
        low = sum(s[j] for j, b in enumerate(choices) if b <= LOW_BITS)
        return np.append(s, low**2)

    def coef(self) -> np.ndarray:
        return np.append([self.alpha.get(b, 1.0) for b in self.choices], self.beta)

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return np.atleast_2d(feats) @ self.coef()

    @classmethod
    def fit(cls, choices: list[int], X: np.ndarray, y: np.ndarray, ridge: float = 0.1):
        """Ridge least squares toward the proxy (α = 1, β = 0); α ≥ 0."""
        prior = np.append(np.ones(len(choices)), 0.0)
        if len(y) == 0:
            return cls(choices, {b: 1.0 for b in choices}, 0.0)
        scale = np.maximum(np.abs(X).max(axis=0), 1e-12)
        Xs = X / scale
        ps = prior * scale
        A = Xs.T @ Xs + ridge * np.eye(X.shape[1])
        c = np.linalg.solve(A, Xs.T @ y + ridge * ps) / scale
        c[:-1] = np.maximum(c[:-1], 0.0)
        return cls(choices, {b: float(v) for b, v in zip(choices, c[:-1])}, float(c[-1]))

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": {str(b): v for b, v in self.alpha.items()}, "beta": self.beta}


@dataclass
class MeasuredSearch:
    """What :func:`search_measured` found: the recommended plan per budget (each
    with its selection measurement), every measured plan, the correction's fit
    per round and its held-out (leave-one-out) error, the budget used, and the
    front of the final corrected objective (``result``)."""

    recommended: dict[str, Plan]
    measurements: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    correction: dict[str, Any]
    budget: dict[str, Any]
    meta: dict[str, Any]
    result: SearchResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return clean_json(
            {
                "format": "empas.measured-search/1",
                "recommended": {k: p.to_dict() for k, p in self.recommended.items()},
                "measurements": self.measurements,
                "rounds": self.rounds,
                "correction": self.correction,
                "budget": self.budget,
                "meta": self.meta,
            }
        )

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(Path(path), self.to_dict())

    def __str__(self) -> str:
        c = self.correction
        lines = [
            f"measured search: {self.budget['measurements']} plans measured on "
            f"{self.meta['selection_tokens']:,} selection tokens in {len(self.rounds)} round(s)",
            f"correction (leave-one-out |error|): proxy {c['loo_mae_proxy']:.4f}, "
            f"corrected {c['loo_mae_corrected']:.4f}; alpha "
            + ", ".join(f"{b}b {v:.2f}" for b, v in c["alpha"].items())
            + f", beta {c['beta']:.3g}",
        ]
        for name, p in self.recommended.items():
            m = p.measured or {}
            lines.append(
                f"  {name:<24} {format_bytes(p.predicted_bytes)}: measured Δ "
                f"{m.get('delta', float('nan')):+.4f} (proxy {m.get('proxy', float('nan')):+.4f}); "
                f"{m.get('why', '')}"
            )
        return "\n".join(lines)


def search_measured(
    model=None,
    profile: Profile | str | os.PathLike | None = None,
    calibration=None,
    budgets: Sequence[int | str] | int | str = (),
    *,
    table: str = "monotone",
    selection_tokens: int = 2048,
    max_measurements: int = 16,
    per_round: int = 2,
    max_rounds: int = 6,
    seed: int = 0,
    device: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    tokenizer=None,
    measure: Callable[[list[int]], float] | None = None,
    progress: bool = True,
) -> MeasuredSearch:
    """The measure-and-correct loop of the module docstring.

    ``model``: the profiled model (path or object) and ``calibration`` the
    profile's calibration text: plans are measured on ``selection_tokens``
    tokens of it in windows the profile did not use. ``budgets``: one or more
    memory budgets (bytes or "60MB"); ``measure`` (instead of a model): a
    callable ``bits -> measured Δ`` (e.g. for synthetic tests). ``table``: the
    proxy's table (:func:`empas.fit_table`). ``max_measurements``: the budget
    of measured plans (each one forward pass over the selection tokens);
    ``per_round``: new candidates per budget per round. ``checkpoint``: a JSON
    file caching measurements (a rerun reuses them)."""
    t0 = time.perf_counter()
    if profile is None:
        raise ValueError("search_measured() needs the profile")
    raw = profile if isinstance(profile, Profile) else load_profile(profile)
    base = fit_table(raw, table)
    if isinstance(budgets, (int, str)):
        budgets = [budgets]
    budgets_b = sorted({int(parse_size(b)) for b in budgets})
    if not budgets_b:
        raise ValueError("give at least one budget (bytes or a size such as '60MB')")
    if max_measurements < 1 or per_round < 1 or max_rounds < 1:
        raise ValueError("max_measurements, per_round and max_rounds must be >= 1")
    choices = list(base.choices)
    table_d = np.nan_to_num(base.delta, nan=0.0)
    problem = base.problem()
    smallest = int(problem.evaluate(_smallest(base)[None, :])["bytes"][0])
    for b in budgets_b:
        if b < smallest:
            raise InfeasibleError(
                f"budget {format_bytes(b)} is below the smallest plan ({format_bytes(smallest)})"
            )
    meter = (
        _Meter.from_function(measure)
        if measure is not None
        else _Meter.from_model(model, raw, calibration, selection_tokens, seed, device, tokenizer)
    )
    cache = _Cache(checkpoint, {**meter.key, "profile": raw.fingerprint, "units": raw.unit_names})
    measured: dict[tuple[int, ...], dict[str, Any]] = {}
    rounds: list[dict[str, Any]] = []
    corr = Correction(choices, {b: 1.0 for b in choices}, 0.0)
    bar = progress_bar(max_measurements, "measured search", "plan", enabled=progress)

    def bits_of(genome: np.ndarray) -> tuple[int, ...]:
        return tuple(int(choices[j]) for j in genome)

    def run(genome: np.ndarray, why: str, rnd: int) -> None:
        key = bits_of(genome)
        if key in measured or len(measured) >= max_measurements:
            return
        d = cache.get(key)
        cached = d is not None
        if d is None:
            d = float(meter(list(key)))
            if not math.isfinite(d):
                raise FloatingPointError(f"the measured Δ of a plan is not finite ({d})")
            cache.put(key, d)
        ev = problem.evaluate(genome[None, :])
        feats = Correction.features(table_d, choices, genome)
        measured[key] = {
            "bits": list(key),
            "bytes": int(ev["bytes"][0]),
            "proxy": float(ev["loss"][0]) - base.baseline,
            "predicted": float(corr.predict(feats)[0]),
            "delta": d,
            "round": rnd,
            "why": why,
            "cached": cached,
            "_genome": genome.copy(),
            "_feats": feats,
        }
        bar.update(1)

    try:
        # round 0: uniform plans that fit, the proxy's best under each budget
        for j, b in enumerate(choices):
            if b in (0, 16) or np.isnan(base.delta[:, j]).any():
                continue
            g = np.full(base.n_units, j, dtype=np.int64)
            if problem.evaluate(g[None, :])["bytes"][0] <= budgets_b[-1]:
                run(g, f"uniform int{b}", 0)
        proxy_front = search(base, method="exact", table="raw")
        for B in budgets_b:
            g = _best_under(proxy_front.front, B)
            if g is not None:
                run(g, "proxy best", 0)
        best = {B: _best_measured(measured, B) for B in budgets_b}
        rounds.append(_round_record(0, corr, measured, best))
        for rnd in range(1, max_rounds + 1):
            if len(measured) >= max_measurements:
                break
            corr = _fit(choices, measured)
            new = 0
            for B in budgets_b:
                anchor = best[B]
                low = 0.0
                if anchor is not None:
                    f = measured[anchor]["_feats"]
                    low = float(np.sqrt(max(f[-1], 0.0)))
                w = np.array(
                    [
                        corr.alpha.get(b, 1.0) + (2 * corr.beta * low if b <= LOW_BITS else 0.0)
                        for b in choices
                    ]
                )
                w = np.maximum(w, 1e-6)
                front = search(_scaled(base, w), method="exact", table="raw").front
                under = np.nonzero(front.bytes <= B)[0]
                if under.size == 0:
                    continue
                cand = under[-max(4 * per_round, 8) :]
                feats = np.array(
                    [Correction.features(table_d, choices, front.genomes[i]) for i in cand]
                )
                order = np.argsort(corr.predict(feats), kind="stable")
                k = 0
                for i in order:
                    g = front.genomes[cand[i]]
                    if bits_of(g) in measured:
                        continue
                    before = len(measured)
                    run(g, "corrected", rnd)
                    new += len(measured) - before
                    k += 1
                    if k >= per_round:
                        break
            improved = False
            for B in budgets_b:
                b_new = _best_measured(measured, B)
                if b_new != best[B]:
                    improved = True
                best[B] = b_new
            rounds.append(_round_record(rnd, _fit(choices, measured), measured, best, new))
            if new == 0 or not improved:
                break
    finally:
        bar.close()
        cache.flush()
    corr = _fit(choices, measured)
    loo = _loo(choices, measured)
    recommended: dict[str, Plan] = {}
    for B in budgets_b:
        k = best[B]
        if k is None:
            continue
        m = measured[k]
        p = base.plan(list(k), archetype="best_under_budget")
        uni = [v for v in measured.values() if v["why"].startswith("uniform") and v["bytes"] <= B]
        u = max(uni, key=lambda v: v["bytes"]) if uni else None
        why = "measured best under the budget"
        if u is not None:
            why += f"; uniform at the budget ({u['why']}) measured {u['delta']:+.4f}"
        p.measured = {
            "delta": m["delta"],
            "proxy": m["proxy"],
            "loss_kind": "selection",
            "selection_tokens": meter.tokens,
            "why": why,
            "budget": B,
        }
        recommended[f"best_under_{B}"] = p
    final = search(_scaled(base, np.maximum(corr.coef()[:-1], 1e-6)), method="exact", table="raw")
    rows = [{k: v for k, v in m.items() if not k.startswith("_")} for m in measured.values()]
    return MeasuredSearch(
        recommended,
        rows,
        rounds,
        {**corr.to_dict(), **loo, "form": "sum_b alpha_b*S_b + beta*L^2"},
        {
            "measurements": len(measured),
            "new_forward_passes": sum(1 for m in measured.values() if not m["cached"]),
            "max_measurements": max_measurements,
            "selection_tokens_total": meter.tokens * len(measured),
        },
        {
            "budgets": budgets_b,
            "table": table,
            "selection_tokens": meter.tokens,
            "selection": meter.meta,
            "profile_fingerprint": raw.fingerprint,
            "seconds": time.perf_counter() - t0,
        },
        final,
    )


# -- pieces ----------------------------------------------------------------------


def _smallest(profile: Profile) -> np.ndarray:
    """The genome of each unit's fewest-bytes choice."""
    bt = profile.bytes_table.astype(float)
    bt[np.isnan(profile.delta)] = np.inf
    return np.argmin(bt, axis=1).astype(np.int64)


def _best_under(front, budget: int) -> np.ndarray | None:
    under = np.nonzero(front.bytes <= budget)[0]
    if under.size == 0:
        return None
    i = under[np.argmin(front.loss[under])]
    return front.genomes[i].copy()


def _best_measured(measured: dict, budget: int):
    fit = [k for k, v in measured.items() if v["bytes"] <= budget]
    if not fit:
        return None
    return min(fit, key=lambda k: (measured[k]["delta"], measured[k]["bytes"]))


def _scaled(base: Profile, w: np.ndarray) -> Profile:
    """The profile with column j of its table multiplied by w[j]."""
    doc = base.to_dict()
    doc["delta"] = [
        [None if v is None else float(v) * float(w[j]) for j, v in enumerate(row)]
        for row in doc["delta"]
    ]
    doc["stderr"] = None
    return Profile.from_dict(doc, negative="keep")


def _fit(choices: list[int], measured: dict) -> Correction:
    if not measured:
        return Correction(choices, {b: 1.0 for b in choices}, 0.0)
    X = np.array([m["_feats"] for m in measured.values()])
    y = np.array([m["delta"] for m in measured.values()])
    return Correction.fit(choices, X, y)


def _loo(choices: list[int], measured: dict) -> dict[str, float]:
    """Leave-one-out mean |error| of the corrected and the plain proxy."""
    ms = list(measured.values())
    if len(ms) < 3:
        return {"loo_mae_proxy": float("nan"), "loo_mae_corrected": float("nan"), "n": len(ms)}
    X = np.array([m["_feats"] for m in ms])
    y = np.array([m["delta"] for m in ms])
    errs = []
    for i in range(len(ms)):
        o = np.arange(len(ms)) != i
        c = Correction.fit(choices, X[o], y[o])
        errs.append(abs(float(c.predict(X[i])[0]) - y[i]))
    proxy = np.abs(X[:, :-1].sum(axis=1) - y)
    return {
        "loo_mae_proxy": float(proxy.mean()),
        "loo_mae_corrected": float(np.mean(errs)),
        "n": len(ms),
    }


def _round_record(rnd, corr, measured, best, new=None) -> dict[str, Any]:
    return {
        "round": rnd,
        "measured": len(measured),
        "new": new if new is not None else len(measured),
        "correction": corr.to_dict(),
        "best": {str(B): (None if k is None else measured[k]["delta"]) for B, k in best.items()},
    }


class _Meter:
    """Measures a plan's Δ (loss with the plan applied − the original's loss)."""

    def __init__(self, fn, key: dict[str, Any], tokens: int, meta: dict[str, Any]):
        self._fn = fn
        self.key = key
        self.tokens = tokens
        self.meta = meta

    def __call__(self, bits: list[int]) -> float:
        return self._fn(bits)

    @classmethod
    def from_function(cls, fn) -> _Meter:
        return cls(fn, {"function": getattr(fn, "__name__", "callable")}, 0, {"source": "function"})

    @classmethod
    def from_model(cls, model, profile, calibration, n_tokens, seed, device, tokenizer):
        from ..models.loading import fingerprint, load_model
        from ..profile.calibration import selection_tokens
        from ..quant.apply import applied
        from ..verify.evaluate import EvalData, evaluate

        if model is None or calibration is None:
            raise ValueError(
                "search_measured() measures plans on the model: give model= and calibration= "
                "(the profile's calibration text), or measure= (a function of the bits)"
            )
        m, tok, _, _ = load_model(model, device, tokenizer)
        m.eval()
        cal = profile.meta.get("calibration") or {}
        if not {"seq_len", "n_sequences", "seed", "sha256"} <= set(cal):
            raise FormatError(
                "the profile records no calibration windows (seq_len, n_sequences, seed, "
                "sha256): measured search needs a profile made by empas.profile"
            )
        windows, meta = selection_tokens(calibration, tok, cal, n_tokens, seed)
        seq_len = int(windows.shape[1])
        data = EvalData(
            "causal_lm",
            seq_len,
            seq_len,
            [(i * seq_len, (i + 1) * seq_len, seq_len) for i in range(windows.shape[0])],
            windows.reshape(-1),
            4,
            [],
            meta["source"],
        )
        original = evaluate(m, data)["loss"]
        clip = bool((profile.meta.get("source") or {}).get("clip_search", False))

        def fn(bits: list[int]) -> float:
            plan = profile.plan(bits)
            with applied(m, plan, "fake", clip_search=clip):
                return evaluate(m, data)["loss"] - original

        key = {
            "model": fingerprint(m),
            "selection": meta["sha256"],
            "quantizer": profile.quantizer,
        }
        return cls(fn, key, int(windows.numel()), {**meta, "original_loss": original})


class _Cache:
    """Measured Δ per plan, in a JSON file when ``path`` is given."""

    def __init__(self, path, key: dict[str, Any]):
        self.path = Path(path) if path is not None else None
        self.key = clean_json(key)
        self.data: dict[str, float] = {}
        self._dirty = False
        if self.path is not None and self.path.exists():
            doc = read_json(self.path, "measurement cache", FormatError)
            if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
                raise FormatError(f"{self.path}: not an {CACHE_FORMAT} file")
            if doc.get("key") != self.key:
                raise FormatError(
                    f"{self.path}: measurements of another model, selection text or profile; "
                    "delete it or give another checkpoint file"
                )
            meas = doc.get("measured")
            if not isinstance(meas, dict) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in meas.values()
            ):
                raise FormatError(f"{self.path}: 'measured' must map plans to finite numbers")
            self.data = {str(k): float(v) for k, v in meas.items()}

    def get(self, bits: tuple[int, ...]) -> float | None:
        return self.data.get(",".join(map(str, bits)))

    def put(self, bits: tuple[int, ...], d: float) -> None:
        self.data[",".join(map(str, bits))] = d
        self._dirty = True
        self.flush()

    def flush(self) -> None:
        if self.path is None or not self._dirty:
            return
        write_json(
            self.path, {"format": CACHE_FORMAT, "key": self.key, "measured": dict(self.data)}
        )
        self._dirty = False
