"""Cheap alternatives to measuring: the Fisher estimate of the Δloss table, and
the rank correlation that tells how well one table orders the cells of another."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..util.settings import settle
from ..util.stats import spearman
from .config import ProfileConfig
from .fisher import fisher_deltas, fisher_diagonal
from .session import Session
from .table import Profile

__all__ = ["estimate_sensitivity", "rank_correlation"]


def estimate_sensitivity(
    model_or_path,
    calibration,
    units="block",
    choices: Sequence[int] = (2, 3, 4, 8),
    *,
    config: ProfileConfig | None = None,
    tokenizer=None,
    **settings: Any,
) -> Profile:
    """Estimates the Δloss table from one backward pass per calibration batch:
    Δ(unit, b) ≈ ½ Σ F ⊙ (Q_b(W) − W)² with F the empirical Fisher diagonal
    (squared gradients of the cross-entropy, averaged over batches), as HAWQ-style
    and ModelOpt's sensitivity estimators do. Seconds instead of one forward per
    (unit, choice); compare with :func:`rank_correlation`. Causal LMs only.
    The settings are :func:`empas.profile`'s: ``config=`` (a ProfileConfig) or
    keywords (``settings``: n_tokens, seq_len, batch_size, device, seed, group_size,
    symmetric, clip_search, embeddings, head); the loss is always causal_lm and
    choice 0 (drop) is left out.
    """
    unknown = sorted(set(settings) - set(ProfileConfig.__dataclass_fields__) - {"quant"})
    if unknown:
        raise TypeError(f"estimate_sensitivity() got unexpected settings: {', '.join(unknown)}")
    given = {**settings, "units": units}
    given["choices"] = [b for b in choices if b != 0]  # nothing to estimate for a drop
    cfg = settle(ProfileConfig, config, given)
    if cfg.stream:
        raise ValueError(
            "estimate_sensitivity: the Fisher estimate needs a backward pass through the whole "
            "resident model; it is not streamed (stream=True)"
        )
    cfg = replace(cfg, choices=[b for b in cfg.choices if b != 0], loss="causal_lm", estimate=())
    s = Session(model_or_path, calibration, cfg, tokenizer)
    t0 = time.perf_counter()
    fisher, base_losses = fisher_diagonal(s)
    delta = [fisher_deltas(s, fisher, spec, s.choices) for spec in s.specs]
    timings = {"total_s": round(time.perf_counter() - t0, 4), "method": "fisher"}
    return s.make_profile(
        float(np.mean(base_losses)),
        delta,
        None,
        "fisher_estimate",
        timings,
        {"estimator": "fisher"},
    )


def rank_correlation(a: Profile, b: Profile, bits: Sequence[int] | None = None) -> float:
    """Spearman rank correlation between two profiles' Δ tables over the
    (unit, choice) cells both hold (optionally only the given bit widths; the
    16-bit and drop columns are left out by default)."""
    if a.unit_names != b.unit_names:
        raise ValueError("the two profiles have different units")
    keep = [
        c for c in a.choices if c in b.choices and (c not in (0, 16) if bits is None else c in bits)
    ]
    if not keep:
        raise ValueError("the two profiles share no choices to compare")
    xa = a.delta[:, [a.choices.index(c) for c in keep]].ravel()
    xb = b.delta[:, [b.choices.index(c) for c in keep]].ravel()
    ok = np.isfinite(xa) & np.isfinite(xb)
    if ok.sum() < 3:
        raise ValueError("fewer than 3 cells to correlate")
    return spearman(xa[ok], xb[ok])
