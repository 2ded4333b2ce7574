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


def test_int8_activations_are_timed_and_recorded(tiny_model_path, tiny_profile, monkeypatch):
    from empas.quant import nn as qnn

    seen = []
    real = qnn.set_activations
    monkeypatch.setattr(qnn, "set_activations", lambda m, mode: seen.append(mode) or real(m, mode))
    t = empas.measure_latency(
        tiny_model_path, tiny_profile, choices=[4], repeats=1, warmup=0, activations="int8"
    )
    assert t.meta["activations"] == "int8" and (t.ms > 0).all()
    assert seen and set(seen) == {"int8"}  # every packed module timed was set to int8


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
        ({"activations": "int4"}, "activations must be one of exact, int8"),
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


# -- verify --speed ------------------------------------------------------------------

SPEED = dict(
    speed=True,
    speed_new_tokens=4,
    speed_prompt_tokens=8,
    speed_prefill_tokens=16,
    speed_repeats=1,
    max_tokens=300,
    baselines=(16, 4, 2),
    progress=False,
)


@pytest.fixture(scope="module")
def speed_report(tiny_model_path, lat_profile, eval_texts):
    res = empas.search(lat_profile, latency=True, pop_size=16, generations=4, seed=0)
    return empas.verify(tiny_model_path, res, eval_texts, profile=lat_profile, **SPEED)


def test_verify_speed_fields_and_predicted_latency(speed_report, lat_profile):
    rows = {r["name"]: r for r in speed_report.rows}
    assert "original" in rows and "uniform-fp16" in rows and "balanced" in rows
    for r in rows.values():
        for k in ("decode_tok_s", "prefill_tok_s", "decode_ms_per_token", "prefill_ms_per_token"):
            assert r[k] > 0 and np.isfinite(r[k]), (r["name"], k)
        assert r["decode_tok_s"] == pytest.approx(1e3 / r["decode_ms_per_token"])
        assert len(r["decode_ms_samples"]) == 1
    assert rows["original"]["pred_latency"] is None  # not a plan: nothing predicted
    fp16 = lat_profile.choices.index(16)
    assert rows["uniform-fp16"]["pred_latency"] == pytest.approx(lat_profile.latency[:, fp16].sum())
    bal = speed_report.plans["balanced"]
    assert rows["balanced"]["pred_latency"] == pytest.approx(bal.predicted_latency)


def test_verify_speed_spearman_is_computed_from_the_rows(speed_report):
    from empas.util.stats import spearman

    sp = speed_report.extra["speed"]
    pts = [r for r in speed_report.rows if r["pred_latency"] is not None]
    assert sp["n_compared"] == len(pts) >= 3
    assert sp["compared"] == [r["name"] for r in pts]
    for what in ("decode", "prefill"):
        want = spearman([r["pred_latency"] for r in pts], [r[f"{what}_ms_per_token"] for r in pts])
        assert sp[f"spearman_{what}"] == pytest.approx(want)
        assert -1.0 <= sp[f"spearman_{what}"] <= 1.0
    assert (sp["new_tokens"], sp["prompt_tokens"], sp["prefill_tokens"], sp["repeats"]) == (
        4,
        8,
        16,
        1,
    )
    assert sp["latency_table"]["repeats"] == 3


def test_verify_speed_report_json_and_table(speed_report, tmp_path):
    text = speed_report.table()
    assert "decode tok/s" in text and "Spearman" in text
    path = speed_report.save(tmp_path / "v.json")
    doc = json.loads(path.read_text())
    assert doc["speed"]["n_compared"] >= 3
    assert all("decode_tok_s" in r for r in doc["rows"])
    back = empas.VerifyReport.load(path)
    assert back.speed_table() == speed_report.speed_table()
    assert "decode_tok_s" in speed_report.to_pandas().columns


def test_verify_speed_without_latency_table(tiny_model_path, tiny_profile, eval_texts):
    rep = empas.verify(
        tiny_model_path, None, eval_texts, profile=tiny_profile, **{**SPEED, "baselines": (16, 4)}
    )
    assert all(r["pred_latency"] is None for r in rep.rows)
    sp = rep.extra["speed"]
    assert sp["n_compared"] == 0 and sp["spearman_decode"] is None
    assert "no rank correlation" in rep.speed_table()
    assert empas.VerifyConfig().speed is False  # opt-in: it costs generation time


def test_verify_speed_bad_settings(tiny_model_path, tiny_profile, eval_texts):
    with pytest.raises(ValueError, match="speed_new_tokens must be >= 1"):
        empas.VerifyConfig(speed=True, speed_new_tokens=0)
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        empas.verify(
            tiny_model_path,
            None,
            eval_texts,
            profile=tiny_profile,
            **{**SPEED, "baselines": (16,), "speed_new_tokens": 60},
        )


def test_cli_verify_speed(tiny_model_path, lat_profile, eval_texts, tmp_path, capsys):
    prof = lat_profile.save(tmp_path / "p.json")
    ev = tmp_path / "eval.txt"
    ev.write_text("\n\n".join(eval_texts))
    out = tmp_path / "v.json"
    rc = main(
        ["verify", str(tiny_model_path), "--profile", str(prof), "--eval", str(ev), "-o", str(out)]
        + ["--baselines", "16,8,4,2", "--no-honesty", "--max-tokens", "300", "--quiet"]
        + ["--speed", "--speed-new-tokens", "3", "--speed-prefill-tokens", "8"]
        + ["--speed-prompt-tokens", "4", "--speed-repeats", "1", "--device", "cpu"]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["speed"]["n_compared"] == 4 and doc["speed"]["spearman_decode"] is not None
    assert "decode tok/s" in capsys.readouterr().out
