"""The public search API on the real TinyLlama profile and synthetic spaces."""

from __future__ import annotations

import json

import numpy as np
import pytest

import empas

ARCHETYPES = {"max_accuracy", "balanced", "max_compression"}


@pytest.fixture(params=["nsga2", "exact"])
def result(request, nsga2_tl, exact_tl):
    return {"nsga2": nsga2_tl, "exact": exact_tl}[request.param]


def _dominates(a, b):
    """(loss, bytes) a dominates b: no worse in both, better in one."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


# -- the front ------------------------------------------------------------------------


def test_front_is_sorted_by_bytes_and_plans_are_complete(tinyllama, result):
    res = result
    assert len(res.front) > 1
    sizes = [p.predicted_bytes for p in res.front]
    assert sizes == sorted(sizes)
    assert sizes == res.front.bytes.tolist()
    for plan in res.front:
        assert isinstance(plan.bits, list) and len(plan.bits) == tinyllama.n_units
        assert all(type(b) is int for b in plan.bits)
        assert set(plan.bits) <= set(tinyllama.choices)
        assert isinstance(plan.predicted_loss, float)
        assert isinstance(plan.predicted_bytes, int)
        ev = tinyllama.evaluate(plan)
        assert ev["loss"] == pytest.approx(plan.predicted_loss, rel=1e-12)
        assert ev["bytes"] == plan.predicted_bytes
        assert plan.model_name == tinyllama.model_name
    assert res.front[-1] == res.front[len(res.front) - 1]
    assert [p.bits for p in res.front[:3]] == [res.front.bits(i) for i in range(3)]
    with pytest.raises(IndexError, match="out of range"):
        res.front[len(res.front)]


def test_front_is_non_dominated(result):
    pts = list(zip(result.front.loss.tolist(), result.front.bytes.tolist()))
    for i, a in enumerate(pts):
        for j, b in enumerate(pts):
            assert i == j or not _dominates(a, b), (i, j, a, b)
    # Ascending bytes, falling loss. Distinct genomes may share a point (TinyLlama
    # has many zero deltas), but never one genome twice.
    assert all(pts[i + 1][0] <= pts[i][0] for i in range(len(pts) - 1))
    assert len({tuple(result.front.bits(i)) for i in range(len(pts))}) == len(pts)


def test_front_has_no_duplicates_without_duplicate_elimination(tinyllama):
    res = empas.search(tinyllama, pop_size=100, generations=30, eliminate_duplicates=False)
    genomes = [tuple(res.front.bits(i)) for i in range(len(res.front))]
    assert len(genomes) > 1 and len(set(genomes)) == len(genomes)


def test_archetypes(result):
    res = result
    assert set(res.archetypes) == ARCHETYPES
    a = res.archetypes
    assert a["max_accuracy"].predicted_loss == min(p.predicted_loss for p in res.front)
    assert a["max_compression"].predicted_bytes == min(p.predicted_bytes for p in res.front)
    for name, plan in a.items():
        assert plan.archetype == name
        assert any(plan.bits == p.bits for p in res.front), name
    b = a["balanced"]
    assert a["max_compression"].predicted_bytes < b.predicted_bytes
    assert b.predicted_bytes < a["max_accuracy"].predicted_bytes


def test_nsga2_history_and_hypervolume(nsga2_tl):
    res = nsga2_tl
    assert res.method == "nsga2" and not res.exact
    assert len(res.history) == 50 + 1
    assert [h["generation"] for h in res.history] == list(range(51))
    assert res.evaluations == 100 * 51 == res.history[-1]["evaluations"]
    hvs = [h["hypervolume"] for h in res.history]
    assert all(b >= a for a, b in zip(hvs, hvs[1:]))  # elitist: never gets worse
    assert res.hypervolume > 0
    assert res.history[-1]["hypervolume"] == pytest.approx(res.hypervolume, rel=1e-12)
    assert res.extra["generations_run"] == 50 and not res.extra["stopped_early"]


def test_exact_result(exact_tl):
    assert exact_tl.method == "exact" and exact_tl.exact
    assert exact_tl.history == [] and exact_tl.hypervolume > 0


# -- facts from the issue, on the real TinyLlama profile ---------------------------------


def test_exact_front_matches_the_issue_figures(exact_tl):
    by_bits = {}
    for p in exact_tl.front:
        by_bits.setdefault(sum(p.bits), []).append(p.predicted_loss)
    assert len(by_bits[96]) == 1 and len(by_bits[76]) == 1
    assert by_bits[96][0] == pytest.approx(3.355441927909851, abs=1e-12)
    assert round(by_bits[96][0], 4) == 3.3554
    assert by_bits[76][0] == pytest.approx(3.714881420135498, abs=1e-12)
    assert len(exact_tl.front) == 55  # one optimum per reachable size, 22 x 2 bits ... 22 x 16


def test_nsga2_reaches_999_permille_of_exact_hypervolume(exact_tl, nsga2_tl):
    assert nsga2_tl.reference_point == exact_tl.reference_point
    ratio = nsga2_tl.hypervolume / exact_tl.hypervolume
    assert 0.999 <= ratio <= 1.0 + 1e-12
    assert nsga2_tl.hypervolume_ratio(exact_tl) == pytest.approx(ratio, rel=1e-12)


def test_nsga2_never_beats_exact(exact_tl, nsga2_tl):
    ex = np.column_stack([exact_tl.front.loss, exact_tl.front.bytes])
    for loss, size in zip(nsga2_tl.front.loss, nsga2_tl.front.bytes):
        better = (loss <= ex[:, 0]) & (size <= ex[:, 1]) & ((loss < ex[:, 0]) | (size < ex[:, 1]))
        assert not better.any(), (loss, size)
    # ...and the exact optimum within each GA plan's size is at least as good.
    for loss, size in zip(nsga2_tl.front.loss.tolist(), nsga2_tl.front.bytes.tolist()):
        assert exact_tl.best_under(size).predicted_loss <= loss


# -- budgets ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nsga2", "exact"])
def test_budget_keeps_every_plan_under_it(tinyllama, method):
    kw = {"generations": 20} if method == "nsga2" else {}
    res = empas.search(tinyllama, method=method, max_bytes="600MB", **kw)
    assert res.config.max_bytes == 600_000_000
    assert len(res.front) > 0
    assert all(p.predicted_bytes <= 600_000_000 for p in res.front)
    assert set(res.archetypes) == ARCHETYPES | {"best_under_budget"}
    best = res.archetypes["best_under_budget"]
    assert best.predicted_bytes <= 600_000_000
    assert best.predicted_loss == pytest.approx(res.front.loss.min(), rel=1e-15)
    assert best.archetype == "best_under_budget"


def test_no_budget_archetype_without_a_budget(exact_tl):
    assert "best_under_budget" not in exact_tl.archetypes


def test_max_avg_bits_budget(tinyllama):
    res = empas.search(tinyllama, max_avg_bits=4.5, generations=20)
    assert len(res.front) > 0
    assert all(p.predicted_avg_bits <= 4.5 + 1e-9 for p in res.front)


def test_best_under(exact_tl):
    plan = exact_tl.best_under("600MB")
    assert plan.archetype == "best_under_budget"
    assert plan.predicted_bytes <= 600e6
    fits = [p.predicted_loss for p in exact_tl.front if p.predicted_bytes <= 600e6]
    assert plan.predicted_loss == min(fits)
    assert exact_tl.best_under(600_000_000) == plan
    smallest = int(exact_tl.front.bytes.min())
    assert smallest == 22 * 44040192 * 2 // 8
    with pytest.raises(empas.InfeasibleError, match=f"smallest is {smallest:,} bytes"):
        exact_tl.best_under("10MB")
    with pytest.raises(ValueError, match=f"{smallest:,}"):  # InfeasibleError is a ValueError
        exact_tl.best_under(smallest - 1)
    assert exact_tl.best_under(smallest).predicted_bytes == smallest


# -- constraints and warm starts --------------------------------------------------------


def test_pinned_and_allowed_bits(tinyllama):
    res = empas.search(tinyllama, pinned={"layer_0": 16, "layer_21": 8}, generations=10)
    assert all(
        p.bits_by_unit["layer_0"] == 16 and p.bits_by_unit["layer_21"] == 8 for p in res.front
    )
    res = empas.search(tinyllama, method="exact", allowed_bits=[2, 4])
    assert all(set(p.bits) <= {2, 4} for p in res.front)
    assert len(res.front) == 23  # 0..22 units at 4 bits


def test_initial_plans_warm_start(tinyllama, exact_tl):
    seeds = [exact_tl.front[i] for i in range(0, len(exact_tl.front), 5)]
    res = empas.search(tinyllama, initial=seeds, generations=1, pop_size=16)
    assert res.hypervolume > 0
    # A warm start from the whole exact front keeps it: elitism loses nothing.
    full = empas.search(tinyllama, initial=list(exact_tl.front), pop_size=64, generations=3)
    assert full.hypervolume == pytest.approx(exact_tl.hypervolume, rel=1e-12)


@pytest.mark.parametrize("kind", ["list", "dict", "array"])
def test_initial_accepts_bits_lists_dicts_and_arrays(tinyllama, kind):
    bits = [8] * 11 + [4] * 11
    plain = {
        "list": [bits],
        "dict": [dict(zip(tinyllama.unit_names, bits))],
        "array": np.array([bits]),
    }[kind]
    res = empas.search(tinyllama, initial=plain, pop_size=8, generations=1, seed_uniform=False)
    assert res.evaluations == 8 * 2


# -- outputs ------------------------------------------------------------------------


def test_to_json_and_pandas(result):
    res = result
    doc = json.loads(res.to_json())
    assert doc["format"] == "empas.search/1"
    assert doc["hypervolume"] == res.hypervolume
    assert doc["front"]["bits"] == [p.bits for p in res.front]
    assert doc["front"]["bytes"] == [p.predicted_bytes for p in res.front]
    assert doc["config"]["method"] == res.method
    assert len(doc["history"]) == len(res.history)
    assert set(doc["archetypes"]) == set(res.archetypes)
    df = res.to_pandas()
    assert df.shape == (len(res.front), 6)
    assert list(df.columns) == [
        "predicted_loss",
        "predicted_bytes",
        "predicted_mib",
        "avg_bits",
        "archetypes",
        "bits",
    ]
    assert df["predicted_loss"].tolist() == res.front.loss.tolist()
    assert "balanced" in set(df["archetypes"])


def test_plot_and_reprs(nsga2_tl, exact_tl):
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    ax = nsga2_tl.plot(others=[exact_tl])
    try:
        assert isinstance(ax, Axes)
        assert ax.get_xlabel().startswith("predicted size")
        assert len(ax.get_lines()) >= 2  # one step line per result
    finally:
        plt.close(ax.figure)
    fig, given = plt.subplots()
    try:
        assert exact_tl.plot(ax=given, annotate=False) is given
    finally:
        plt.close(fig)
    html = nsga2_tl._repr_html_()
    assert isinstance(html, str) and "<table>" in html and "balanced" in html
    assert "balanced" in nsga2_tl.summary()
    assert repr(nsga2_tl).startswith("SearchResult(method='nsga2'")


def test_save_writes_files_and_refuses_to_overwrite(tmp_path, nsga2_tl):
    res = nsga2_tl
    out = tmp_path / "out"
    paths = res.save(out)
    assert paths["result"] == out / "result.json"
    assert json.loads((out / "result.json").read_text()) == json.loads(res.to_json())
    csv = (out / "front.csv").read_text().splitlines()
    assert csv[0].startswith("index,predicted_loss,predicted_bytes")
    assert len(csv) == len(res.front) + 1
    saved = sorted(p.name for p in (out / "plans").glob("*.json"))
    assert saved == sorted(f"{n}.json" for n in res.archetypes)
    for name, plan in res.archetypes.items():
        assert empas.load_plan(out / "plans" / f"{name}.json") == plan

    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        res.save(out)
    assert {p: p.read_bytes() for p in files} == before
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files  # nothing new either
    res.save(out, overwrite=True)
    assert json.loads((out / "result.json").read_text()) == json.loads(res.to_json())


def test_compare_uniform(exact_tl):
    rows = {r["bits"]: r for r in exact_tl.compare_uniform()}
    assert set(rows) == {2, 4, 8, 16}
    for r in rows.values():
        assert r["front_loss"] <= r["uniform_loss"] + 1e-12
        assert r["front_bytes"] <= r["uniform_bytes"]


# -- round trips --------------------------------------------------------------------


def test_plan_round_trip(tmp_path, nsga2_tl):
    plan = nsga2_tl.archetypes["balanced"]
    path = plan.save(tmp_path / "p.json")
    back = empas.load_plan(path)
    assert back == plan
    assert back.to_dict() == plan.to_dict()
    assert back.bits == plan.bits and back.archetype == "balanced"
    assert back.predicted_loss == plan.predicted_loss
    assert back.predicted_bytes == plan.predicted_bytes
    assert back.provenance["search"]["seed"] == 0
    assert back != nsga2_tl.archetypes["max_accuracy"]
    with pytest.raises(FileExistsError):
        plan.save(path, overwrite=False)


def test_profile_round_trip(tmp_path, tinyllama):
    path = tinyllama.save(tmp_path / "sub" / "prof.json")
    back = empas.load_profile(path)
    assert back.fingerprint == tinyllama.fingerprint
    np.testing.assert_array_equal(back.delta, tinyllama.delta)
    np.testing.assert_array_equal(back.bytes_table, tinyllama.bytes_table)
    assert back.unit_names == tinyllama.unit_names
    assert back.choices == tinyllama.choices
    assert back.baseline == tinyllama.baseline
    assert back.model_name == tinyllama.model_name
    assert json.loads(path.read_text())["format"] == "empas.sensitivity/1"
    assert tinyllama.to_pandas().shape == (22, 4)
    assert "<table>" in tinyllama._repr_html_()
    # The saved profile gives the same search results.
    a = empas.search(back, method="exact")
    b = empas.search(tinyllama, method="exact")
    assert a.front.loss.tolist() == b.front.loss.tolist()


def test_profile_round_trip_keeps_nan_cells_and_latency(tmp_path):
    d = empas.synthetic_profile(14, seed=2).to_dict()
    d["delta"][3][0] = None  # unit 3 does not allow 2 bits
    d["latency"] = [[1.0 + b / 16 for b in d["choices"]] for _ in d["units"]]
    prof = empas.Profile.from_dict(d)
    back = empas.load_profile(prof.save(tmp_path / "p.json"))
    assert back.fingerprint == prof.fingerprint
    np.testing.assert_array_equal(back.delta, prof.delta)  # NaN == NaN here
    assert np.isnan(back.delta[3, 0])
    np.testing.assert_array_equal(back.latency, prof.latency)


def test_latency_objective():
    d = empas.synthetic_profile(40, seed=3).to_dict()
    d["latency"] = [[1.0 + b / 16 for b in d["choices"]] for _ in d["units"]]
    lat = empas.Profile.from_dict(d)
    res = empas.search(lat, latency=True, generations=10)
    assert res.front.latency is not None and len(res.front.latency) == len(res.front)
    # each plan's latency is the sum of the table at its bits
    for i, p in enumerate(res.front):
        expect = sum(1.0 + b / 16 for b in p.bits)
        assert p.predicted_latency == pytest.approx(expect, rel=1e-12)
        assert res.front.latency[i] == pytest.approx(expect, rel=1e-12)
    # latency is a real third objective: the front trades it off (not one value),
    # and no front plan dominates another in (loss, bytes, latency)
    assert len(set(np.round(res.front.latency, 9))) > 1
    pts = np.column_stack([res.front.loss, res.front.bytes, res.front.latency])
    for a in pts:
        assert not any(np.all(b <= a) and np.any(b < a) for b in pts)


def test_latency_front_survives_save_and_load(tmp_path):
    d = empas.synthetic_profile(21, seed=3).to_dict()
    d["latency"] = [[1.0 + b / 16 for b in d["choices"]] for _ in d["units"]]
    lat = empas.Profile.from_dict(d)
    res = empas.search(lat, latency=True, generations=5)
    res.save(tmp_path)
    for prof in (None, lat):  # rebuilt from the profile, or from the stored predictions
        back = empas.SearchResult.load(tmp_path / "result.json", prof)
        np.testing.assert_array_equal(back.front.latency, res.front.latency)
    two = empas.search(lat, generations=5)  # 2 objectives: no latency stored
    assert "latency" not in json.loads(two.to_json())["front"]


def test_build_info():
    info = empas.build_info()
    assert info["version"] == empas.__version__
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["cuda"], bool)
