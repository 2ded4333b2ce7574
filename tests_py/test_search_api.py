"""The public search API on the real TinyLlama profile and synthetic spaces."""

from __future__ import annotations

import json

import numpy as np
import pytest

import empas


def test_front_is_sorted_nondominated_and_consistent(tinyllama, nsga2_tl):
    res = nsga2_tl
    sizes = [p.predicted_bytes for p in res.front]
    assert sizes == sorted(sizes)
    losses = [p.predicted_loss for p in res.front]
    for i in range(1, len(losses)):
        assert losses[i] < losses[i - 1] or sizes[i] == sizes[i - 1]
    for plan in res.front:
        assert len(plan.bits) == tinyllama.n_units
        assert set(plan.bits) <= set(tinyllama.choices)
        ev = tinyllama.evaluate(plan)
        assert ev["loss"] == pytest.approx(plan.predicted_loss, rel=1e-12)
        assert ev["bytes"] == plan.predicted_bytes


def test_archetypes_and_history(nsga2_tl):
    res = nsga2_tl
    assert set(res.archetypes) == {"max_accuracy", "balanced", "max_compression"}
    a = res.archetypes
    assert a["max_accuracy"].predicted_loss == min(p.predicted_loss for p in res.front)
    assert a["max_compression"].predicted_bytes == min(p.predicted_bytes for p in res.front)
    assert a["balanced"].archetype == "balanced"
    assert len(res.history) == 51
    assert res.history[-1]["generation"] == 50
    assert res.evaluations == 100 * 51
    assert res.history[-1]["hypervolume"] == pytest.approx(res.hypervolume, rel=1e-12)


def test_exact_front_matches_the_issue_figures(exact_tl):
    by_bits = {sum(p.bits): p.predicted_loss for p in exact_tl.front}
    assert by_bits[96] == pytest.approx(3.355441927909851, abs=1e-12)
    assert by_bits[76] == pytest.approx(3.714881420135498, abs=1e-12)
    assert len(exact_tl.front) == 55
    assert exact_tl.exact


def test_nsga2_reaches_999_permille_of_exact_hypervolume(exact_tl, nsga2_tl):
    assert nsga2_tl.hypervolume / exact_tl.hypervolume >= 0.999


def test_nsga2_never_beats_exact(exact_tl, nsga2_tl):
    ex = np.column_stack([exact_tl.front.loss, exact_tl.front.bytes])
    for loss, size in zip(nsga2_tl.front.loss, nsga2_tl.front.bytes):
        better = (loss <= ex[:, 0]) & (size <= ex[:, 1]) & ((loss < ex[:, 0]) | (size < ex[:, 1]))
        assert not better.any()


def test_budget_keeps_every_plan_under_it(tinyllama):
    res = empas.search(tinyllama, max_bytes="600MB", generations=20)
    assert all(p.predicted_bytes <= 600_000_000 for p in res.front)
    assert res.archetypes["best_under_budget"].predicted_bytes <= 600_000_000
    ex = empas.search(tinyllama, method="exact", max_bytes=600_000_000)
    assert ex.front.bytes.max() <= 600_000_000
    assert ex.archetypes["best_under_budget"].predicted_loss == pytest.approx(ex.front.loss.min())


def test_max_avg_bits_budget(tinyllama):
    res = empas.search(tinyllama, max_avg_bits=4.5, generations=20)
    assert all(p.predicted_avg_bits <= 4.5 + 1e-9 for p in res.front)


def test_best_under(exact_tl):
    plan = exact_tl.best_under("600MB")
    assert plan.predicted_bytes <= 600e6
    fits = [p.predicted_loss for p in exact_tl.front if p.predicted_bytes <= 600e6]
    assert plan.predicted_loss == min(fits)
    smallest = int(exact_tl.front.bytes.min())
    with pytest.raises(empas.InfeasibleError, match=f"{smallest:,}"):
        exact_tl.best_under("10MB")


def test_pinned_and_allowed_bits(tinyllama):
    res = empas.search(tinyllama, pinned={"layer_0": 16, "layer_21": 8}, generations=10)
    assert all(
        p.bits_by_unit["layer_0"] == 16 and p.bits_by_unit["layer_21"] == 8 for p in res.front
    )
    res = empas.search(tinyllama, method="exact", allowed_bits=[2, 4])
    assert all(set(p.bits) <= {2, 4} for p in res.front)


def test_initial_plans_warm_start(tinyllama, exact_tl):
    seeds = [exact_tl.front[i] for i in range(0, len(exact_tl.front), 5)]
    res = empas.search(tinyllama, initial=seeds, generations=1)
    assert res.hypervolume > 0


def test_result_outputs(tmp_path, nsga2_tl):
    res = nsga2_tl
    doc = json.loads(res.to_json())
    assert doc["format"] == "empas.search/1"
    assert len(doc["front"]["bits"]) == len(res.front)
    df = res.to_pandas()
    assert len(df) == len(res.front) and "predicted_loss" in df
    assert "balanced" in ",".join(df["archetypes"])
    ax = res.plot()
    assert ax.get_xlabel().startswith("predicted size")
    assert "<table>" in res._repr_html_()
    assert "balanced" in res.summary()
    paths = res.save(tmp_path / "out")
    assert paths["result"].exists() and paths["front_csv"].exists()
    assert (tmp_path / "out" / "plans" / "balanced.json").exists()
    before = paths["result"].read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        res.save(tmp_path / "out")
    assert paths["result"].read_text() == before
    res.save(tmp_path / "out", overwrite=True)


def test_compare_uniform(exact_tl):
    rows = {r["bits"]: r for r in exact_tl.compare_uniform()}
    assert set(rows) == {2, 4, 8, 16}
    for r in rows.values():
        assert r["front_loss"] <= r["uniform_loss"] + 1e-12
        assert r["front_bytes"] <= r["uniform_bytes"]


def test_plan_round_trip(tmp_path, nsga2_tl):
    plan = nsga2_tl.archetypes["balanced"]
    path = plan.save(tmp_path / "p.json")
    back = empas.load_plan(path)
    assert back == plan
    assert back.bits == plan.bits and back.archetype == "balanced"
    assert back.provenance["search"]["seed"] == 0
    with pytest.raises(FileExistsError):
        plan.save(path, overwrite=False)


def test_profile_round_trip(tmp_path, tinyllama):
    path = tinyllama.save(tmp_path / "prof.json")
    back = empas.load_profile(path)
    assert back.fingerprint == tinyllama.fingerprint
    np.testing.assert_array_equal(back.delta, tinyllama.delta)
    np.testing.assert_array_equal(back.bytes_table, tinyllama.bytes_table)
    assert json.loads(path.read_text())["format"] == "empas.sensitivity/1"
    assert tinyllama.to_pandas().shape == (22, 4)
    assert "<table>" in tinyllama._repr_html_()


def test_synthetic_profiles_and_latency_objective():
    prof = empas.synthetic_profile(40, seed=3)
    assert prof.n_units == 40 and prof.choices == [2, 3, 4, 8, 16]
    ex = empas.search(prof, method="exact")
    ga = empas.search(prof, generations=100, seed=1)
    assert 0.9 < ga.hypervolume / ex.hypervolume <= 1.0 + 1e-12
    d = prof.to_dict()
    d["latency"] = [[1.0 + b / 16 for b in d["choices"]] for _ in d["units"]]
    lat = empas.Profile.from_dict(d)
    res = empas.search(lat, latency=True, generations=10)
    assert all(p.predicted_latency is not None for p in res.front[:3])


def test_build_info():
    info = empas.build_info()
    assert info["version"] == empas.__version__
    assert info["openmp"] is True
    assert info["cuda"] is False or isinstance(info["cuda"], bool)
