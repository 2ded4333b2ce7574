"""Latency as a measured objective: empas.measure_latency, the profile's latency
table, empas latency / profile --latency and search --latency (tiny model, few
repeats: timings are noisy, so the tests check structure, signs and sums)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

import empas
from empas.cli.main import main
from empas.profile.latency import schedule

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lat_table(tiny_model_path, tiny_profile):
    return empas.measure_latency(
        tiny_model_path, tiny_profile, device="cpu", repeats=3, warmup=1, seed=5
    )


@pytest.fixture(scope="module")
def lat_profile(tiny_profile, lat_table):
    return lat_table.into(tiny_profile)


def test_table_shape_units_and_choices_match_the_profile(lat_table, tiny_profile):
    assert lat_table.unit_names == tiny_profile.unit_names
    assert lat_table.choices == tiny_profile.choices
    assert lat_table.ms.shape == (tiny_profile.n_units, tiny_profile.n_choices)
    assert lat_table.samples.shape == (tiny_profile.n_units, tiny_profile.n_choices, 3)
    assert lat_table.to_pandas().shape == lat_table.ms.shape


def test_cells_are_finite_and_positive_except_drop(lat_table):
    ms = lat_table.ms
    drop = lat_table.choices.index(0)
    assert np.all(ms[:, drop] == 0.0)
    kept = np.delete(ms, drop, axis=1)
    assert np.isfinite(kept).all() and (kept > 0).all()
    # every cell is the median of its samples
    assert np.array_equal(ms, np.median(lat_table.samples, axis=2))


def test_provenance_is_recorded(lat_table):
    m = lat_table.meta
    for k in ("device", "batch", "tokens", "repeats", "warmup", "seed", "torch_threads", "machine"):
        assert k in m, k
    assert (m["device"], m["batch"], m["tokens"], m["repeats"], m["warmup"], m["seed"]) == (
        "cpu",
        1,
        1,
        3,
        1,
        5,
    )
    assert m["unit"] == "ms" and "linear layers" in m["covers"]
    assert m["machine"]["cpu_count"] >= 1 and m["torch_threads"] >= 1


def test_interleaved_order_is_deterministic_for_a_seed_and_covers_every_cell(lat_table):
    n_u, n_c = len(lat_table.unit_names), len(lat_table.choices)
    rounds = 1 + 3
    assert lat_table.order == schedule(n_u, n_c, rounds, 5)  # what ran is the seeded schedule
    assert schedule(n_u, n_c, rounds, 5) == schedule(n_u, n_c, rounds, 5)
    assert schedule(n_u, n_c, rounds, 5) != schedule(n_u, n_c, rounds, 6)
    per_round = {}
    for u, r, c in lat_table.order:
        per_round.setdefault((u, r), []).append(c)
    assert set(per_round) == {(u, r) for u in range(n_u) for r in range(rounds)}
    for cs in per_round.values():  # each round runs every choice exactly once
        assert sorted(cs) == list(range(n_c))
    # shuffled: not one fixed order for every round
    assert len({tuple(cs) for cs in per_round.values()}) > 1
    # units are timed one after the other (a unit's variants are built once)
    units = [u for u, _, _ in lat_table.order]
    assert units == sorted(units)
    assert Counter(units) == {u: rounds * n_c for u in range(n_u)}


def test_fewer_repeats_and_no_warmup_still_work(tiny_model_path, tiny_profile):
    t = empas.measure_latency(tiny_model_path, tiny_profile, choices=[4, 16], repeats=1, warmup=0)
    assert t.choices == [4, 16] and t.samples.shape == (tiny_profile.n_units, 2, 1)
    assert (t.ms > 0).all()


def test_units_without_a_profile(tiny_model_path):
    t = empas.measure_latency(tiny_model_path, "sublayer", [2, 16], repeats=1, warmup=0)
    assert len(t.unit_names) == 8 and all(n.endswith(("self_attn", "mlp")) for n in t.unit_names)
    assert (t.ms > 0).all()
    with pytest.raises(ValueError, match="choices are required"):
        empas.measure_latency(tiny_model_path, "block", repeats=1)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"batch": 0}, "batch must be >= 1"),
        ({"tokens": -2}, "tokens must be >= 1"),
        ({"tokens": float("nan")}, "tokens must be an integer"),
        ({"repeats": 0}, "repeats must be >= 1"),
        ({"warmup": -1}, "warmup must be >= 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"choices": [5]}, r"choice\(s\) \[5\] are not among the profile's choices"),
        ({"choices": [4, 4]}, "repeat a bit width"),
        ({"choices": [1]}, "choice 1 is not a known format"),
    ],
)
def test_bad_settings_are_named(tiny_model_path, tiny_profile, kw, match):
    with pytest.raises(ValueError, match=match):
        empas.measure_latency(tiny_model_path, tiny_profile, **kw)


def test_unknown_unit_is_named(tiny_model_path):
    with pytest.raises(empas.PlanMismatchError, match="model.layers.9.mlp.up_proj"):
        empas.measure_latency(
            tiny_model_path, [("ghost", ["model.layers.9.mlp.up_proj"])], [4], repeats=1
        )


def test_nan_weight_is_refused(tiny_model_path, tiny_profile):
    import torch

    from empas.models import load_model

    model, _, _, _ = load_model(tiny_model_path, "cpu")
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="model.layers.2.mlp.down_proj.*NaN"):
        empas.measure_latency(model, tiny_profile, repeats=1)


def test_into_profile_round_trips_and_changes_the_fingerprint(lat_profile, tiny_profile, tmp_path):
    assert tiny_profile.latency is None
    lat = lat_profile.latency
    assert lat is not None and lat.shape == (tiny_profile.n_units, tiny_profile.n_choices)
    assert lat_profile.fingerprint != tiny_profile.fingerprint  # the table is part of the proxy
    lat_profile.save(tmp_path / "p.json")
    back = empas.load_profile(tmp_path / "p.json")
    assert np.allclose(back.latency, lat)
    assert back.fingerprint == lat_profile.fingerprint
    assert back.meta["source"]["latency"]["repeats"] == 3
    # a fitted view keeps the table, and the measured profile's identity
    fitted = empas.fit_table(back)
    assert np.array_equal(fitted.latency, back.latency)
    assert fitted.fingerprint == back.fingerprint


def test_into_refuses_a_partial_table_or_a_fitted_view(tiny_model_path, tiny_profile, lat_table):
    part = empas.measure_latency(tiny_model_path, tiny_profile, choices=[4], repeats=1, warmup=0)
    with pytest.raises(empas.FormatError, match="every choice must be timed"):
        part.into(tiny_profile)
    fitted = empas.fit_table(tiny_profile)
    with pytest.raises(empas.FormatError, match="fitted view"):
        lat_table.into(fitted)


def test_search_latency_predicts_the_sum_of_table_cells(lat_profile):
    res = empas.search(lat_profile, latency=True, pop_size=24, generations=8, seed=1)
    assert res.front.latency is not None and len(res.front.latency) == len(res.front)
    lat = lat_profile.latency
    for i in range(len(res.front)):
        g = lat_profile.genome(res.front.bits(i))
        want = float(sum(lat[u, c] for u, c in enumerate(g)))
        assert res.front.latency[i] == pytest.approx(want, rel=1e-12, abs=1e-12)
    for p in res.archetypes.values():
        g = lat_profile.genome(p)
        assert p.predicted_latency == pytest.approx(sum(lat[u, c] for u, c in enumerate(g)))
    assert lat_profile.evaluate(res.archetypes["balanced"])["latency"] == pytest.approx(
        res.archetypes["balanced"].predicted_latency
    )


def test_search_latency_without_a_table_says_so(tiny_profile):
    with pytest.raises(ValueError, match="no latency table|has none.*empas latency"):
        empas.search(tiny_profile, latency=True, pop_size=8, generations=2)


def test_cli_latency_then_search_latency(tiny_model_path, tiny_profile, tmp_path, capsys):
    src = tiny_profile.save(tmp_path / "prof.json")
    out = tmp_path / "prof.lat.json"
    rc = main(
        ["latency", str(src), "--model", str(tiny_model_path), "-o", str(out)]
        + ["--repeats", "2", "--warmup", "0", "--tokens", "3", "--device", "cpu", "--quiet"]
    )
    assert rc == 0
    prof = empas.load_profile(out)
    assert prof.latency.shape == (tiny_profile.n_units, tiny_profile.n_choices)
    meta = prof.meta["source"]["latency"]
    assert (meta["repeats"], meta["warmup"], meta["tokens"], meta["batch"]) == (2, 0, 3, 1)
    assert "fingerprint" in capsys.readouterr().out
    # the output exists: refused without --force
    assert main(["latency", str(src), "--model", str(tiny_model_path), "-o", str(out)]) == 2
    # search --latency: three objectives, in result.json and front.csv
    sdir = tmp_path / "search"
    rc = main(["search", str(out), "-o", str(sdir), "--latency"] + ["--pop-size", "16"])
    assert rc == 0
    doc = json.loads((sdir / "result.json").read_text())
    assert len(doc["front"]["latency"]) == len(doc["front"]["loss"])
    head = (sdir / "front.csv").read_text().splitlines()[0].split(",")
    assert "predicted_latency" in head
    plan = empas.load_plan(sdir / "plans" / "balanced.json")
    g = prof.genome(plan)
    assert plan.predicted_latency == pytest.approx(sum(prof.latency[u, c] for u, c in enumerate(g)))
    # a profile without the table: exit 2 and the way to get one
    capsys.readouterr()
    assert main(["search", str(src), "-o", str(tmp_path / "s2"), "--latency"]) == 2
    err = capsys.readouterr().err
    assert "latency table" in err and "empas latency" in err


def test_cli_profile_with_latency(tiny_model_path, tmp_path):
    from empas.models import corpus

    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(corpus("train")[:40]))
    out = tmp_path / "p.json"
    rc = main(
        ["profile", str(tiny_model_path), "--calib", str(calib), "-o", str(out)]
        + ["--bits", "2,4", "--n-tokens", "256", "--seq-len", "64", "--device", "cpu"]
        + ["--latency", "--latency-repeats", "1", "--latency-warmup", "0", "--quiet"]
    )
    assert rc == 0
    prof = empas.load_profile(out)
    assert prof.latency is not None and (prof.latency > 0).all()
    assert prof.meta["source"]["latency"]["repeats"] == 1
