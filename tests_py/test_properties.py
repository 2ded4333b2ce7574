"""Property-based tests (hypothesis) of the Python API: profiles, plans, budgets
and sizes. For any input, a call either raises a ValueError subclass naming the
problem (FormatError, InfeasibleError, ...) or returns a result that obeys the
additive proxy exactly; never another exception, a crash or a wrong number."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import empas  # noqa: E402
from empas.errors import InfeasibleError  # noqa: E402
from empas.util.sizes import format_bytes, parse_size  # noqa: E402

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

BITS = [0, 2, 3, 4, 8, 16]
# Integers up to past int64 and floats up to the double range: the overflow cases.
INTS = st.one_of(st.integers(0, 10**6), st.integers(-5, 2**64 + 5))
DELTAS = st.one_of(
    st.none(),
    st.floats(0, 1, allow_nan=False),
    st.floats(-1e308, 1.7e308, allow_nan=False, allow_infinity=False),
)


@st.composite
def profile_docs(draw, hostile: bool = True):
    """empas.sensitivity/1 documents, valid or (with ``hostile``) not quite."""
    choices = draw(st.lists(st.sampled_from(BITS), min_size=1, max_size=5, unique=True))
    n = draw(st.integers(1, 6))
    units = []
    for i in range(n):
        rows = draw(st.integers(1, 64))
        cols = draw(st.integers(1, 256))
        u = {"name": f"u{i}", "kind": "linear", "params": rows * cols, "shapes": [[rows, cols]]}
        if hostile and draw(st.booleans()):
            u["params"] = draw(INTS)
            if draw(st.booleans()):
                del u["shapes"]
        units.append(u)
    if hostile:
        delta = [[draw(DELTAS) for _ in choices] for _ in range(n)]
    else:
        delta = [[draw(st.floats(0, 2)) for _ in choices] for _ in range(n)]
    for row in delta:  # every unit needs one measured choice
        if all(v is None for v in row):
            row[0] = 0.0
    return {
        "format": "empas.sensitivity/1",
        "model": {"name": "m"},
        "loss": {"kind": "causal_lm", "baseline": draw(DELTAS.filter(lambda v: v is not None))
                 if hostile else 2.0},
        "quantizer": {"group_size": draw(st.sampled_from([1, 32, 128]))},
        "choices": choices,
        "units": units,
        "unsearched_bytes": draw(INTS) if hostile else draw(st.integers(0, 10**6)),
        "delta": delta,
    }  # fmt: skip


def _load(doc, negative="keep"):
    try:
        return empas.Profile.from_dict(doc, negative=negative)
    except ValueError as exc:  # FormatError is a ValueError: a clear, named error
        assert str(exc)
        return None


@SETTINGS
@given(profile_docs())
def test_any_profile_loads_or_is_a_clear_error(doc):
    prof = _load(doc)
    if prof is None:
        return
    bt = prof.bytes_table
    assert bt.dtype == np.int64 and (bt >= 0).all()
    # the largest plan's size fits an int64 (checked on load)
    assert int(bt.max(axis=1).sum()) + prof.unsearched_bytes < 2**63
    d = prof.delta
    assert not np.isinf(d).any()
    # round trip
    again = empas.Profile.from_json(prof.to_json(), negative="keep")
    assert again.fingerprint == prof.fingerprint


@SETTINGS
@given(profile_docs())
def test_any_loaded_profile_searches_to_a_consistent_front(doc):
    prof = _load(doc)
    if prof is None:
        return
    try:
        res = empas.search(prof, method="exact", table="raw")  # the proxy of the table as given
    except ValueError as exc:  # a clear error for a space whose ranges overflow a double
        assert "overflows a double" in str(exc)
        return
    f = res.front
    assert len(f) >= 1 and np.all(np.isfinite(f.loss)) and math.isfinite(res.hypervolume)
    assert np.all(np.diff(f.bytes) > 0) and np.all(np.diff(f.loss) < 0)
    bt, delta = prof.bytes_table, prof.delta
    for i in range(len(f)):
        g = prof.genome(f.bits(i))
        rows = np.arange(prof.n_units)
        assert f.bytes[i] == prof.unsearched_bytes + int(bt[rows, g].sum())
        assert f.loss[i] == pytest.approx(prof.baseline + float(delta[rows, g].sum()), rel=1e-9)
    nsga = empas.search(prof, pop_size=8, generations=3, threads=2, table="raw")
    assert np.all(np.isfinite(nsga.front.loss))
    # the exact front is never beaten by NSGA-II
    for b, loss in zip(nsga.front.bytes, nsga.front.loss):
        assert np.any((f.bytes <= b) & (f.loss <= loss + 1e-9 * max(1.0, abs(loss))))


@SETTINGS
@given(profile_docs(hostile=False), st.data())
def test_plans_round_trip_and_match_their_profile(doc, data):
    prof = _load(doc)
    assume(prof is not None)
    allowed = ~np.isnan(prof.delta)
    bits = [
        prof.choices[data.draw(st.sampled_from(list(np.flatnonzero(allowed[u]))))]
        for u in range(prof.n_units)
    ]
    plan = prof.plan(bits)
    assert plan.bits == bits
    back = empas.Plan.from_json(plan.to_json())
    assert back == plan and list(prof.genome(back)) == list(prof.genome(bits))
    assert plan.predicted_bytes == prof.unsearched_bytes + sum(
        int(prof.bytes_table[u, prof.choices.index(b)]) for u, b in enumerate(bits)
    )
    # a plan missing a unit is refused by the profile, naming it
    d = plan.to_dict()
    gone = d["units"].pop(data.draw(st.integers(0, prof.n_units - 1)))
    with pytest.raises(ValueError, match=gone["name"] if d["units"] else "no units"):
        prof.genome(empas.Plan.from_dict(d))


@SETTINGS
@given(profile_docs(hostile=False), st.floats(0, 1.5))
def test_budgets_are_met_or_infeasible(doc, frac):
    prof = _load(doc)
    assume(prof is not None)
    prob = prof.problem(None, None, {}, None, False)
    budget = max(0, int(prob.min_bytes + frac * (prob.max_total_bytes - prob.min_bytes)) - 1)
    for method in ("exact", "nsga2"):
        try:
            res = empas.search(prof, method=method, max_bytes=budget, pop_size=8, generations=2)
        except InfeasibleError as exc:
            assert budget < prob.min_bytes and "budget" in str(exc)
            continue
        assert budget >= prob.min_bytes
        assert len(res.front) >= 1 and int(res.front.bytes.max()) <= budget


@SETTINGS
@given(st.integers(0, 2**63 - 1))
def test_sizes_parse_back(n):
    assert parse_size(n) == n
    assert parse_size(f"{n}B") == n
    text = format_bytes(n)
    assert isinstance(text, str) and text
    # a formatted size parses back to within its printed precision
    back = parse_size(text.replace(" ", ""))
    assert abs(back - n) <= 0.05 * n + 1


@SETTINGS
@given(st.text(max_size=20))
def test_any_size_text_parses_or_is_a_value_error(text):
    try:
        v = parse_size(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert isinstance(v, int) and v >= 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@SETTINGS
@given(JSON)
def test_any_json_as_profile_or_plan_is_a_value_error_or_valid(doc):
    text = json.dumps(doc)
    for load in (empas.Profile.from_json, empas.Plan.from_json):
        try:
            load(text)
        except ValueError as exc:
            assert str(exc)
