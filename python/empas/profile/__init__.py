"""Profiling: the measured Δloss table of a model.

For every unit (:mod:`.units`: decoder block, attention/MLP sub-block, single
linear, or a user grouping) and every choice (2..8 bits fake-quantized by the C++
ops, 16 = fp16 storage, 0 = block dropped), the unit alone is changed, the loss on
the calibration tokens (:mod:`.calibration`) is measured, and the weights are
restored bit-exactly (:mod:`.session`).

Speed: one model load; the hidden states entering every block are cached once
(baseline pass) and each experiment runs from its own block onward
(:mod:`.runner`). Per-sequence losses give the standard error of every Δ (paired
with the baseline on the same tokens). A checkpoint (:mod:`.checkpoint`) lets a
killed run resume without redoing finished experiments. The result is a
:class:`Profile` (:mod:`.table`, ``empas.sensitivity/1``); :mod:`.estimator` has
the cheap Fisher estimate, :mod:`.fit` the noise-aware monotone table the search
uses by default, and :mod:`.synthetic` random profiles for tests.

    >>> prof = empas.profile(path, calib_texts, units="block", choices=(2, 3, 4, 8))
    >>> prof.delta.shape          # n_units x n_choices (16 is always measured too)
"""

from __future__ import annotations

from ..errors import ProfileError, StaleCheckpointError
from .config import LOSSES, UNIT_MODES, ProfileConfig
from .cost import SHAPES, CostEstimate, profile_cost
from .estimator import estimate_sensitivity, rank_correlation
from .fit import TABLES, adjustment, fit_table, plan_stderr
from .latency import LatencyTable, measure_latency, with_latency
from .session import profile
from .synthetic import synthetic_profile
from .table import NEGATIVE_POLICIES, Profile, Unit, example_profile, load_profile

__all__ = [
    "CostEstimate",
    "LatencyTable",
    "LOSSES",
    "NEGATIVE_POLICIES",
    "UNIT_MODES",
    "Profile",
    "ProfileConfig",
    "ProfileError",
    "SHAPES",
    "StaleCheckpointError",
    "TABLES",
    "Unit",
    "adjustment",
    "estimate_sensitivity",
    "example_profile",
    "fit_table",
    "load_profile",
    "measure_latency",
    "plan_stderr",
    "profile",
    "profile_cost",
    "rank_correlation",
    "synthetic_profile",
    "with_latency",
]
