"""Rank statistics: average ranks, Spearman's ρ and Kendall's τ-b."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["kendall_tau", "ranks", "spearman"]


def ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks of ``x``, ties given their average rank."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    xs = x[order]
    i = 0
    while i < len(xs):  # average ranks of ties
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        if j > i:
            r[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return r


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b) or len(a) < 3:
        raise ValueError(f"need two sequences of equal length >= 3, got {len(a)} and {len(b)}")
    return a, b


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ (Pearson correlation of average ranks); nan if either is constant."""
    a, b = _pair(a, b)
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b (ties accounted for); O(n²), fine for the plan counts here."""
    a, b = _pair(a, b)
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    conc = float((da * db).sum())
    n1, n2 = float((da != 0).sum()), float((db != 0).sum())
    return conc / math.sqrt(n1 * n2) if n1 > 0 and n2 > 0 else float("nan")
