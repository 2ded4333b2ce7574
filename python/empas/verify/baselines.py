"""The plans every verification compares against: uniform precisions
(:func:`uniform_plan`) and the honesty check's plan, the front's best within the
bytes of a uniform precision (:func:`best_under_uniform`)."""

from __future__ import annotations

from ..errors import InfeasibleError
from ..plan import Plan
from ..profile.table import Profile

__all__ = ["best_under_uniform", "bits_name", "uniform_plan"]


def uniform_plan(template: Plan | Profile, bits: int, profile: Profile | None = None) -> Plan:
    """Every unit of ``template`` (a plan or a profile) at ``bits``, with predicted
    metrics from ``profile`` (or the template profile) when it has that choice (none
    otherwise: a uniform int8 baseline of a 2/3/4-bit profile is measured, not predicted)."""
    prof = template if isinstance(template, Profile) else profile
    if prof is not None and bits in prof.choices:
        p = prof.plan([bits] * prof.n_units, archetype=f"uniform-{bits_name(bits)}")
        return p
    if isinstance(template, Profile):  # a precision the profile did not measure: no prediction
        template = template.plan([16] * template.n_units)
    d = template.to_dict()
    for u in d["units"]:
        u["bits"] = int(bits)
    d["predicted"] = {}
    d["measured"] = None
    d["archetype"] = f"uniform-{bits_name(bits)}"
    return Plan.from_dict(d)


def bits_name(bits: int) -> str:
    return "fp16" if bits == 16 else ("drop" if bits == 0 else f"int{bits}")


def best_under_uniform(result, profile: Profile | None = None, bits: int = 4) -> Plan | None:
    """The lowest-loss plan of ``result``'s front within the predicted bytes of
    uniform ``bits`` (the honesty check: does the search beat uniform int4 at the
    same size?), labelled ``best_under_int4``. None when the profile has no such
    choice or no front plan is that small."""
    prof = profile if profile is not None else result.profile
    if prof is None or bits not in prof.choices:
        return None
    try:
        plan = result.best_under(uniform_plan(prof, bits).predicted_bytes)
    except InfeasibleError:
        return None
    plan.archetype = f"best_under_{bits_name(bits)}"
    return plan
