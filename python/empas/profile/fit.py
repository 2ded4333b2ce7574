"""Fitted Δ tables: what the search should believe about a measured profile.

A measured cell is a mean over calibration sequences with a standard error; with
a few thousand tokens the 3- and 4-bit cells of one unit often come out in the
wrong order (3 bits "better" than 4) within one or two standard errors, and an
additive proxy then buys bytes with noise. :func:`fit_table` returns a profile
whose table is

1. **shrunk toward the unit's own scaling law** (empirical Bayes): in every unit
   the damage of weight quantization falls by a roughly constant factor per extra
   bit (the error of a b-bit uniform quantizer scales as 2^-2b; the factors are
   estimated from this profile's well-measured cells, not assumed). Each unit's
   row gets a scale a_u fitted by weighted least squares; each cell becomes the
   precision-weighted mean of its measurement (weight 1/stderr²) and the law's
   prediction (weight 1/(τ·prediction)², τ: the relative scatter of
   well-measured cells around the law, estimated robustly);
2. **monotone**: weighted isotonic regression (pool adjacent violators, weights
   = the cells' posterior precisions) makes Δ non-increasing in bits per unit
   (fp16 ≤ 8 ≤ … ≤ 2 bits; the drop column 0 is left as measured).

Step 1 keeps neighbouring choices apart where the data cannot (plain isotonic
regression pools a flipped 3/4-bit pair into a tie, and a tie still makes the
lower bit width look free); step 2 guarantees the order. Cells measured far
beyond their noise barely move. A profile without standard errors (e.g. the
original EMPAS format) gets step 2 only, with equal weights.

The raw table is kept in the fitted profile's ``source.table.raw_delta``; the
per-cell adjustment is ``delta - raw_delta`` (:func:`adjustment`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .table import Profile

__all__ = ["TABLES", "adjustment", "fit_table", "isotonic_decreasing", "plan_stderr"]

TABLES = ("monotone", "raw")


def isotonic_decreasing(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares fit of ``y`` (ordered by increasing bits) that is
    non-increasing, by pool-adjacent-violators; ``w`` > 0."""
    # fit a non-decreasing sequence to the reversed data (most bits first)
    vals: list[float] = []
    wts: list[float] = []
    cnt: list[int] = []
    for yi, wi in zip(y[::-1], w[::-1]):
        vals.append(float(yi))
        wts.append(float(wi))
        cnt.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wsum = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
            n = cnt[-2] + cnt[-1]
            vals[-2:], wts[-2:], cnt[-2:] = [v], [wsum], [n]
    out = np.repeat(vals, cnt)
    return out[::-1].copy()


def _scaling_law(
    delta: np.ndarray, se: np.ndarray, cols: list[int], bits: list[int]
) -> tuple[np.ndarray, float]:
    """Per-choice law g (g = 1 at the fewest bits) and the relative scatter τ of
    single units around it, from adjacent pairs of cells both measured at more
    than 3 standard errors: g's steps are the median ratios, τ the robust spread
    of the log ratios (divided by √2: each ratio carries two cells' deviations)."""
    g = np.ones(len(cols))
    spread = []
    for k in range(1, len(cols)):
        a, b = delta[:, cols[k - 1]], delta[:, cols[k]]
        sa, sb = se[:, cols[k - 1]], se[:, cols[k]]
        ok = (a > 3 * sa) & (b > 3 * sb) & np.isfinite(a) & np.isfinite(b)
        if ok.sum() >= 3:
            lr = np.log(b[ok] / a[ok])
            med = float(np.median(lr))
            spread.extend((lr - med).tolist())
            ratio = float(np.exp(med))
        else:  # too few clean cells: the uniform quantizer's 4x per bit
            ratio = 0.25 ** (bits[k] - bits[k - 1])
        g[k] = g[k - 1] * min(ratio, 1.0)
    if len(spread) >= 5:
        tau = float(1.4826 * np.median(np.abs(spread)) / math.sqrt(2))
    else:
        tau = 1.0
    return g, max(tau, 0.1)


def _shrink(y: np.ndarray, w: np.ndarray, g: np.ndarray, tau: float):
    """Each cell but the first (fewest bits) combined with its leave-one-out
    prediction from the unit's other cells under the law (a_u·g, a_u by weighted least squares; the prediction's
    variance is a_u's plus the law's scatter τ): (values, precisions)."""
    out, prec = y.copy(), w.copy()
    # the fewest-bits cell is left as measured: its Δ is the largest relative to its
    # noise, and 2-bit damage varies from unit to unit more than any law allows
    # (shrinking it made blocks look cheap at 2 bits on SmolLM2; README)
    for k in range(1, len(y)):
        o = np.arange(len(y)) != k
        den = float(np.sum(w[o] * g[o] ** 2))
        if den <= 0:
            continue
        a = float(np.sum(w[o] * g[o] * y[o]) / den)
        pred = max(a, 0.0) * g[k]
        var = g[k] ** 2 / den + (tau * pred) ** 2
        if var <= 0:
            continue
        out[k] = (w[k] * y[k] + pred / var) / (w[k] + 1.0 / var)
        prec[k] = w[k] + 1.0 / var
    return out, prec


def _law_at(g: np.ndarray, law_cols: list[int], choices: list[int], j: int) -> float:
    """The law at column ``j``; NaN off the law (fp16)."""
    if j in law_cols:
        return float(g[law_cols.index(j)])
    # fp16 is not on the law: a pool that holds it stays tied (spreading by an
    # extrapolated, tiny law value would multiply its neighbours by thousands)
    return float("nan")


def _monotone(y: np.ndarray, w: np.ndarray, g: np.ndarray | None, rounds: int = 4) -> np.ndarray:
    """Isotonic (non-increasing in bits) fit; where it pools cells into a tie and
    the law is known, the pool's weighted mean is spread in the law's proportions
    (a tie would make the fewer bits look free), then the fit is repeated until
    it is monotone again (at most ``rounds`` times; the last fit is isotonic)."""
    fit = isotonic_decreasing(y, w)
    if g is None:
        return fit
    for _ in range(rounds):
        tied = False
        out = fit.copy()
        k = 0
        while k < len(fit):
            e = k
            while e + 1 < len(fit) and fit[e + 1] == fit[k]:
                e += 1
            if e > k and fit[k] > 0 and np.all(np.isfinite(g[k : e + 1])):
                sl = slice(k, e + 1)
                gbar = float(np.sum(w[sl] * g[sl]) / np.sum(w[sl]))
                if gbar > 0:
                    out[sl] = fit[k] * g[sl] / gbar
                    tied = True
            k = e + 1
        if not tied:
            return fit
        if np.all(np.diff(out) <= 0):
            return out
        fit = isotonic_decreasing(out, w)
    return fit


def fit_table(profile: Profile, kind: str = "monotone") -> Profile:
    """The profile whose table the search uses: ``kind="monotone"`` (see the
    module docstring) or ``"raw"`` (the profile itself). The fitted profile's
    stderr is the posterior standard error of each cell; its ``source.table``
    holds the kind, the raw table, the per-bit law and τ."""
    if kind not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {kind!r}")
    if kind == "raw":
        return profile
    src = profile.meta.get("source") or {}
    if (src.get("table") or {}).get("kind") == kind:
        return profile  # fitted already
    choices = profile.choices
    delta = profile.delta.astype(float)
    raw_se = profile.stderr
    has_se = raw_se is not None and np.isfinite(raw_se[np.isfinite(delta)]).any()
    se = raw_se.astype(float) if raw_se is not None else np.full_like(delta, np.nan)
    # the chain: every choice but drop, fewest bits first
    chain = [j for j, c in sorted(enumerate(choices), key=lambda t: t[1]) if c != 0]
    law_cols = [j for j in chain if choices[j] != 16]  # fp16 rounding is not on the law
    fitted = delta.copy()
    post_se = se.copy()
    g, tau = (None, None)
    if has_se:
        ok_se = np.isfinite(se) & (se > 0)
        floor = float(np.min(se[ok_se])) if ok_se.any() else 1e-12
        se = np.where(ok_se, se, np.nan)
        g, tau = _scaling_law(
            delta, np.where(np.isfinite(se), se, np.inf), law_cols, [choices[j] for j in law_cols]
        )
    for u in range(delta.shape[0]):
        cols = [j for j in chain if np.isfinite(delta[u, j])]
        if not cols:
            continue
        y = delta[u, cols]
        if has_se:
            s = se[u, cols]
            # estimated cells (no stderr): as precise as the row's best measurement
            row_floor = np.nanmin(s) if np.isfinite(s).any() else floor
            s = np.where(np.isfinite(s), s, row_floor)
            w = 1.0 / s**2
            lc = [k for k, j in enumerate(cols) if j in law_cols]
            if len(lc) >= 2:
                gi = g[[law_cols.index(cols[k]) for k in lc]]
                yl, wl = _shrink(y[lc], w[lc], gi, tau)
                y, w = y.copy(), w.copy()
                y[lc], w[lc] = yl, wl
        else:
            w = np.ones(len(cols))
        gg = None
        if has_se:
            gg = np.array([_law_at(g, law_cols, choices, j) for j in cols])
        fit = _monotone(y, w, gg)
        fitted[u, cols] = fit
        if has_se:
            post_se[u, cols] = 1.0 / np.sqrt(w)
    doc = profile.to_dict()
    doc["delta"] = [[None if not math.isfinite(v) else float(v) for v in row] for row in fitted]
    if has_se:
        doc["stderr"] = [
            [None if not math.isfinite(v) else float(v) for v in row] for row in post_se
        ]
    table: dict[str, Any] = {
        "kind": kind,
        "raw_fingerprint": profile.fingerprint,
        "raw_delta": profile.to_dict()["delta"],
        "raw_stderr": profile.to_dict().get("stderr"),
        "noise_aware": bool(has_se),
    }
    if g is not None:
        table["law"] = {str(choices[j]): float(v) for j, v in zip(law_cols, g)}
        table["tau"] = tau
    doc.setdefault("source", {})
    doc["source"] = {**(doc["source"] or {}), "table": table}
    out = Profile.from_dict(doc, negative="keep")
    out.path = profile.path
    return out


def adjustment(fitted: Profile) -> np.ndarray:
    """Per cell: the fitted Δ minus the measured one (zeros for a raw table)."""
    t = (fitted.meta.get("source") or {}).get("table")
    if not t:
        return np.zeros_like(fitted.delta)
    raw = np.array([[np.nan if v is None else v for v in row] for row in t["raw_delta"]], float)
    return fitted.delta - raw


RHO_RAW = 0.2  # cells of a raw table: calibrated against another calibration seed


def plan_stderr(profile: Profile, genomes: np.ndarray, rho: float | None = None) -> np.ndarray:
    """Standard error of the predicted Δ of each plan (rows of choice indices):
    sqrt(Σ se² + ρ·Σ_{i≠j} se_i se_j), ``rho`` the assumed correlation of the
    cells of different units. Cells are measured on the same sequences, so it is
    positive in general. Default: 0.2 for a raw table, 0 for a fitted one (whose
    stderrs are posterior errors). Both were checked against repeated measurement
    on SmolLM2 (two 1,024-token profiles, calibration seeds 0 and 1, 30 front
    plans): the cross-seed differences divided by the stated errors have an rms
    of 0.97 (raw, ρ = 0.2; 1.67 with ρ = 0) and 0.58 (fitted, ρ = 0; benchmarks/check_plan_stderr.py). NaN where
    the profile has no stderr."""
    if rho is None:
        fitted = bool((profile.meta.get("source") or {}).get("table"))
        rho = 0.0 if fitted else RHO_RAW
    se = profile.stderr
    genomes = np.atleast_2d(np.asarray(genomes, dtype=np.int64))
    if se is None:
        return np.full(genomes.shape[0], np.nan)
    s = np.nan_to_num(se, nan=0.0)
    cells = s[np.arange(s.shape[0])[None, :], genomes]
    sq = (cells**2).sum(axis=1)
    lin = cells.sum(axis=1)
    return np.sqrt(np.maximum(sq + rho * (lin**2 - sq), 0.0))
