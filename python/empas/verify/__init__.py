"""Verification on the real model: measured loss, perplexity and bytes of plans.

:func:`verify` (:mod:`.run`) measures plans and the uniform baselines
(:mod:`.baselines`) on held-out text (:mod:`.evaluate`) with the settings of a
:class:`VerifyConfig` (:mod:`.config`) and returns a :class:`VerifyReport`
(:mod:`.report`, ``empas.verify/1``, with the honesty check); ``memory=True``
loads each plan's packed checkpoint in a fresh process (:mod:`.memory`).
:func:`fidelity` and :func:`refine` (:mod:`.fidelity`) measure how far the
additive proxy can be trusted and correct it. Rank statistics are in
:mod:`empas.util.stats`.
"""

from __future__ import annotations

from ..util.io import write_json
from ..util.stats import kendall_tau, spearman
from .baselines import best_under_uniform, bits_name, uniform_plan
from .config import BASELINE_BITS, VerifyConfig
from .fidelity import (
    FidelityReport,
    ProxyCorrection,
    RefineReport,
    fidelity,
    fit_correction,
    random_plans,
    refine,
)
from .memory import probe_memory
from .report import VERIFY_FORMAT, VerifyReport
from .run import verify

__all__ = [
    "BASELINE_BITS",
    "VERIFY_FORMAT",
    "FidelityReport",
    "ProxyCorrection",
    "RefineReport",
    "VerifyConfig",
    "VerifyReport",
    "best_under_uniform",
    "bits_name",
    "fidelity",
    "fit_correction",
    "kendall_tau",
    "probe_memory",
    "random_plans",
    "refine",
    "spearman",
    "uniform_plan",
    "verify",
    "write_json",
]
