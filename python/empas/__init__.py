"""EMPAS: find where the bits should go.

Profile how much each unit of a language model suffers at each precision, search
the Pareto front of loss vs memory over that table, and export deployable plans.

    >>> import empas
    >>> prof = empas.load_profile("example:tinyllama")
    >>> res = empas.search(prof, method="exact")
    >>> res.archetypes["balanced"]

Profiling a model of your own (needs torch + transformers):

    >>> prof = empas.profile("path/to/model", "calib.txt", units="block")

Checking plans on the real model, and exporting them:

    >>> rep = empas.verify("path/to/model", res, "held_out.txt", profile=prof)
    >>> empas.save_quantized(model, res.archetypes["balanced"], "ckpt/")
    >>> model = empas.load_quantized("ckpt/")
"""

from __future__ import annotations

import sys

from . import _compat, export, models
from ._native import build_info, version
from .errors import (
    CheckpointError,
    DeviceMemoryError,
    EmpasError,
    FormatError,
    InfeasibleError,
    NativeBuildError,
    PlanMismatchError,
    ProfileError,
    StaleCheckpointError,
)
from .plan import Plan, load_plan
from .profile import (
    LatencyTable,
    Profile,
    ProfileConfig,
    Unit,
    estimate_sensitivity,
    example_profile,
    fit_table,
    load_profile,
    measure_latency,
    profile,
    profile_cost,
    rank_correlation,
    synthetic_profile,
    with_latency,
)
from .quant import (
    QuantConfig,
    applied,
    apply,
    fake_quant,
    fake_quant_reference,
    load_quantized,
    packing,
    save_quantized,
    set_activations,
)
from .search import MeasuredSearch, SearchConfig, SearchResult, search, search_measured
from .util.sizes import format_bytes, parse_size
from .verify import VerifyConfig, VerifyReport, fidelity, refine, verify

_compat.install()
sys.modules.setdefault(__name__ + ".packing", packing)  # empas.packing: a public attribute


__version__ = version()

__all__ = [
    "CheckpointError",
    "DeviceMemoryError",
    "EmpasError",
    "FormatError",
    "InfeasibleError",
    "LatencyTable",
    "MeasuredSearch",
    "NativeBuildError",
    "Plan",
    "PlanMismatchError",
    "Profile",
    "ProfileConfig",
    "ProfileError",
    "QuantConfig",
    "SearchConfig",
    "SearchResult",
    "StaleCheckpointError",
    "Unit",
    "VerifyConfig",
    "VerifyReport",
    "applied",
    "apply",
    "build_info",
    "estimate_sensitivity",
    "example_profile",
    "export",
    "fake_quant",
    "fake_quant_reference",
    "fidelity",
    "fit_table",
    "format_bytes",
    "load_plan",
    "load_profile",
    "load_quantized",
    "measure_latency",
    "models",
    "packing",
    "parse_size",
    "profile",
    "profile_cost",
    "rank_correlation",
    "refine",
    "save_quantized",
    "search",
    "search_measured",
    "set_activations",
    "synthetic_profile",
    "verify",
    "with_latency",
]
