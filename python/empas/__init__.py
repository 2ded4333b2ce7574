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

from . import export, models, packing
from ._native import build_info
from .apply import PlanMismatchError, applied, apply
from .checkpoint import CheckpointError, load_quantized, save_quantized
from .errors import EmpasError, FormatError, InfeasibleError, NativeBuildError
from .plan import Plan, load_plan
from .profiling import estimate_sensitivity, profile, rank_correlation
from .quant import fake_quant, fake_quant_reference  # torch imported on first call
from .search import SearchConfig, SearchResult, search
from .sensitivity import Profile, Unit, example_profile, load_profile
from .sizes import format_bytes, parse_size
from .synthetic import synthetic_profile
from .verify import fidelity, refine, verify

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "EmpasError",
    "FormatError",
    "InfeasibleError",
    "NativeBuildError",
    "Plan",
    "PlanMismatchError",
    "Profile",
    "SearchConfig",
    "SearchResult",
    "Unit",
    "apply",
    "applied",
    "build_info",
    "estimate_sensitivity",
    "export",
    "example_profile",
    "fake_quant",
    "fidelity",
    "fake_quant_reference",
    "format_bytes",
    "load_plan",
    "load_quantized",
    "load_profile",
    "models",
    "packing",
    "parse_size",
    "profile",
    "rank_correlation",
    "refine",
    "save_quantized",
    "search",
    "synthetic_profile",
    "verify",
]
