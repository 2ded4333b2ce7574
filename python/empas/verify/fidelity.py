"""How far the additive proxy can be trusted, measured: :func:`fidelity` (rank
correlation between predicted and measured Δloss over random and front plans)
and :func:`refine` (archetypes re-picked by measured loss, and corrections to
the proxy fitted on measurements and scored on held-out plans)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._native import core
from ..plan import Plan, as_plan
from ..profile.table import Profile
from ..util.io import clean_json
from ..util.progress import progress_bar
from ..util.settings import settle
from ..util.sizes import parse_size
from ..util.stats import kendall_tau, spearman
from .config import VerifyConfig
from .evaluate import Verifier

__all__ = [
    "FidelityReport",
    "ProxyCorrection",
    "RefineReport",
    "fidelity",
    "fit_correction",
    "random_plans",
    "refine",
]


@dataclass
class FidelityReport:
    """Predicted vs measured over random plans and front plans."""

    spearman: float
    kendall: float
    mae: float  # mean |measured Δ - predicted Δ|
    n: int
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return clean_json(
            {
                "spearman": self.spearman,
                "kendall": self.kendall,
                "mae": self.mae,
                "n": self.n,
                "rows": self.rows,
                "meta": self.meta,
            }
        )

    def __str__(self) -> str:
        return (
            f"proxy fidelity over {self.n} plans: Spearman ρ = {self.spearman:.3f}, "
            f"Kendall τ = {self.kendall:.3f}, mean |error| = {self.mae:.4f}"
        )


def random_plans(profile: Profile, n: int, seed: int = 0, include_drop: bool = False) -> list[Plan]:
    """``n`` random plans spread over the size range: each plan draws a mix
    weight t ~ U(0, 1) and each unit takes a choice with probability ∝ exp(-κ·|i -
    t·(k-1)|) over the k sorted choices (so plans go from mostly-2-bit to
    mostly-16-bit). Choice 0 (drop) is left out unless ``include_drop``."""
    rng = np.random.default_rng(seed)
    choices = sorted(c for c in profile.choices if include_drop or c != 0)
    k = len(choices)
    out = []
    for _ in range(n):
        t = rng.uniform(0, 1)
        w = np.exp(-1.5 * np.abs(np.arange(k) - t * (k - 1)))
        w /= w.sum()
        bits = [int(choices[rng.choice(k, p=w)]) for _ in range(profile.n_units)]
        out.append(profile.plan(bits, archetype="random"))
    return out


def _measure_plans(v: Verifier, plans: list[Plan], progress: bool, desc: str) -> list[dict]:
    out = []
    bar = progress_bar(len(plans), desc, "plan", enabled=progress, leave=False)
    try:
        for p in plans:
            m = v.measure(p)
            out.append(
                {
                    "bits": p.bits,
                    "pred_loss": p.predicted_loss,
                    "pred_delta": p.predicted_loss - v.profile.baseline,
                    "pred_bytes": p.predicted_bytes,
                    "loss": m["loss"],
                    "delta": m["loss"] - v.original["loss"],
                    "bytes": m["bytes"],
                    "archetype": p.archetype,
                }
            )
            bar.update(1)
    finally:
        bar.close()
    return out


def _fid(rows: list[dict]) -> tuple[float, float, float]:
    x = [r["pred_delta"] for r in rows]
    y = [r["delta"] for r in rows]
    mae = float(np.mean(np.abs(np.asarray(y) - np.asarray(x))))
    return spearman(x, y), kendall_tau(x, y), mae


def _verifier(model, eval_text, profile, kw: dict[str, Any]) -> Verifier:
    """The Verifier of fidelity/refine: ``kw`` holds VerifyConfig keywords (mode
    "fake" by default: the same weights as packed, faster), ``config=`` and
    ``tokenizer=``."""
    if profile is None:
        raise ValueError("a profile is required (predictions come from it)")
    kw = dict(kw)
    tokenizer = kw.pop("tokenizer", None)
    config = kw.pop("config", None)
    if config is None:
        kw.setdefault("mode", "fake")
        unknown = sorted(set(kw) - set(VerifyConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(unknown)}")
    config = settle(VerifyConfig, config, kw)
    return Verifier(model, eval_text, config, profile, tokenizer)


def fidelity(
    model,
    profile: Profile | str,
    eval_text,
    *,
    n_random: int = 30,
    front=None,
    max_front: int | None = 30,
    seed: int = 0,
    include_drop: bool = False,
    progress: bool = True,
    **kw,
) -> FidelityReport:
    """Rank correlation (Spearman, Kendall) and mean error between predicted and
    measured Δloss over ``n_random`` random plans (:func:`random_plans`) plus the
    plans of ``front`` (a SearchResult or a list of plans; at most ``max_front`` of
    them, evenly spread). Measures with
    ``mode="fake"`` by default (same weights as packed, faster). Extra keywords
    (seq_len, stride, max_tokens, batch_size, tokenizer, device, mode, loss) as
    for :func:`verify`."""
    v = _verifier(model, eval_text, profile, kw)
    plans = random_plans(v.profile, n_random, seed, include_drop)
    fplans = list(front.front) if hasattr(front, "front") else list(front or [])
    if max_front is not None and len(fplans) > max_front:  # evenly spread over the front
        keep = np.unique(np.linspace(0, len(fplans) - 1, max_front).round().astype(int))
        fplans = [fplans[i] for i in keep]
    for p in fplans:
        p.archetype = p.archetype or "front"
    rows = _measure_plans(v, plans + [as_plan(p) for p in fplans], progress, "fidelity")
    for r in rows[:n_random]:
        r["set"] = "random"
    for r in rows[n_random:]:
        r["set"] = "front"
    rho, tau, mae = _fid(rows)
    return FidelityReport(rho, tau, mae, len(rows), rows, v.meta())


# ----------------------------------------------------------------------------
# refinement: measured archetypes and a corrected proxy
# ----------------------------------------------------------------------------


def _features(profile: Profile, bits: list[int], kind: str) -> np.ndarray:
    """Features of a plan for the corrected proxy: [ΣΔ, 1] (recalibration) or
    [ΣΔ, Σ_neighbours Δ_i·Δ_j, Σ max(Δ_i, 0)², 1] (pairwise interactions of
    adjacent units and a convexity term)."""
    d = profile.delta
    col = {c: j for j, c in enumerate(profile.choices)}
    deltas = np.array([d[u, col[b]] for u, b in enumerate(bits)], dtype=float)
    s = deltas.sum()
    if kind == "recalibrated":
        return np.array([s, 1.0])
    pair = float((deltas[:-1] * deltas[1:]).sum()) if len(deltas) > 1 else 0.0
    sq = float((np.clip(deltas, 0, None) ** 2).sum())
    return np.array([s, pair, sq, 1.0])


@dataclass
class ProxyCorrection:
    """A fitted correction: measured Δ ≈ features · coef (ridge least squares)."""

    kind: str
    coef: list[float]

    def predict(self, profile: Profile, bits: list[int]) -> float:
        return float(_features(profile, bits, self.kind) @ np.asarray(self.coef))


def fit_correction(
    profile: Profile, rows: list[dict], kind: str = "interaction", ridge: float = 1e-6
):
    """Fits a :class:`ProxyCorrection` ("recalibrated" or "interaction") to
    measured rows (``bits`` and ``delta``)."""
    if kind not in ("recalibrated", "interaction"):
        raise ValueError(f"kind must be 'recalibrated' or 'interaction', got {kind!r}")
    X = np.array([_features(profile, r["bits"], kind) for r in rows])
    y = np.array([r["delta"] for r in rows])
    scale = np.maximum(np.abs(X).max(axis=0), 1e-12)
    Xs = X / scale
    coef = np.linalg.solve(Xs.T @ Xs + ridge * np.eye(X.shape[1]), Xs.T @ y) / scale
    return ProxyCorrection(kind, coef.tolist())


@dataclass
class RefineReport:
    """Archetypes picked by measured loss among the front's candidates, and the
    held-out effect of proxy corrections."""

    archetypes: dict[str, Plan]
    measured_front: list[dict[str, Any]]
    corrections: dict[str, dict[str, Any]]  # kind -> {coef, heldout: {spearman, kendall, mae}}
    additive_heldout: dict[str, float]
    meta: dict[str, Any]

    def improved(self, kind: str = "interaction") -> bool:
        """Whether the correction lowers the held-out mean error and keeps ρ."""
        c = self.corrections[kind]["heldout"]
        a = self.additive_heldout
        return c["mae"] < a["mae"] and c["spearman"] >= a["spearman"] - 1e-9

    def to_dict(self) -> dict[str, Any]:
        return clean_json(
            {
                "archetypes": {k: p.to_dict() for k, p in self.archetypes.items()},
                "measured_front": self.measured_front,
                "corrections": self.corrections,
                "additive_heldout": self.additive_heldout,
                "meta": self.meta,
            }
        )

    def __str__(self) -> str:
        a = self.additive_heldout
        lines = [
            f"held-out ({self.meta['n_heldout']} plans): additive ρ={a['spearman']:.3f} "
            f"τ={a['kendall']:.3f} |err|={a['mae']:.4f}"
        ]
        for k, c in self.corrections.items():
            h = c["heldout"]
            lines.append(
                f"  {k:<13} ρ={h['spearman']:.3f} τ={h['kendall']:.3f} |err|={h['mae']:.4f} "
                f"({'better' if self.improved(k) else 'not better'})"
            )
        for name, p in self.archetypes.items():
            m = p.measured or {}
            lines.append(
                f"  {name:<16} measured loss {m.get('loss', float('nan')):.4f}, "
                f"{p.predicted_bytes:,} bytes"
            )
        return "\n".join(lines)


def refine(
    model,
    result,
    profile: Profile | str,
    eval_text,
    *,
    top_k: int = 12,
    n_random: int = 30,
    seed: int = 0,
    budget: int | str | None = None,
    progress: bool = True,
    **kw,
) -> RefineReport:
    """Measures ``top_k`` plans of ``result``'s front (evenly spread over its
    bytes, the archetypes always included), re-picks the archetypes by measured
    loss (max_accuracy, balanced knee and max_compression on the measured front;
    best_under_budget when ``budget`` is given), and fits proxy corrections on
    those measurements plus half of ``n_random`` random plans; the other half is
    held out to report whether the corrections improve the rank correlation and
    the error. Extra keywords as for :func:`fidelity`."""
    v = _verifier(model, eval_text, profile, kw)
    front = list(result.front)
    if not front:
        raise ValueError("the result's front is empty")
    k = min(top_k, len(front))
    idx = set(np.linspace(0, len(front) - 1, k).round().astype(int).tolist())
    for p in result.archetypes.values():
        for i, q in enumerate(front):
            if q.bits == p.bits:
                idx.add(i)
    cands = [front[i] for i in sorted(idx)]
    crow = _measure_plans(v, cands, progress, "refine")
    rnd = _measure_plans(v, random_plans(v.profile, n_random, seed), progress, "held-out")
    train = crow + rnd[: n_random // 2]
    test = rnd[n_random // 2 :]
    if len(test) < 3:
        raise ValueError("n_random must be >= 6 to hold out at least 3 plans")
    add = dict(zip(("spearman", "kendall", "mae"), _fid(test)))
    corr = {}
    for kind in ("recalibrated", "interaction"):
        c = fit_correction(v.profile, train, kind)
        pred = [c.predict(v.profile, r["bits"]) for r in test]
        y = [r["delta"] for r in test]
        corr[kind] = {
            "coef": c.coef,
            "heldout": {
                "spearman": spearman(pred, y),
                "kendall": kendall_tau(pred, y),
                "mae": float(np.mean(np.abs(np.asarray(pred) - np.asarray(y)))),
            },
        }
    # archetypes on the measured front
    loss = [r["loss"] for r in crow]
    size = [float(r["pred_bytes"]) for r in crow]
    nd = [
        i
        for i in range(len(crow))
        if not any(
            (loss[j] <= loss[i] and size[j] <= size[i]) and (loss[j] < loss[i] or size[j] < size[i])
            for j in range(len(crow))
        )
    ]
    nd.sort(key=lambda i: size[i])
    sel = dict(core().select_archetypes([loss[i] for i in nd], [size[i] for i in nd]))
    arche: dict[str, Plan] = {}
    for name, j in sel.items():
        if j >= 0:
            arche[name] = _pick(cands[nd[j]], crow[nd[j]], name, v)
    if budget is not None:
        b = float(parse_size(budget))
        fit = [i for i in range(len(crow)) if size[i] <= b]
        if fit:
            i = min(fit, key=lambda i: loss[i])
            arche["best_under_budget"] = _pick(cands[i], crow[i], "best_under_budget", v)
    meta = v.meta()
    meta.update({"n_candidates": len(cands), "n_train": len(train), "n_heldout": len(test)})
    return RefineReport(arche, crow, corr, add, meta)


def _pick(plan: Plan, row: dict, name: str, v: Verifier) -> Plan:
    p = Plan.from_dict(plan.to_dict())
    p.archetype = name
    p.measured = v.measured_record(row)
    return p
