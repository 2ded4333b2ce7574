"""empas.apply (fake mode), empas.verify, fidelity and refine on the tiny trained
model: real forward passes, measured numbers, and bad plans."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import empas  # noqa: E402
from empas.verify import kendall_tau, random_plans, spearman, uniform_plan  # noqa: E402

EV = dict(seq_len=64, max_tokens=4096, progress=False)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


@pytest.fixture(scope="module")
def exact(tiny_profile):
    return empas.search(tiny_profile, method="exact")


@pytest.fixture(scope="module")
def report(tiny_model_path, exact, tiny_profile, eval_texts):
    return empas.verify(tiny_model_path, exact, eval_texts, profile=tiny_profile, mode="fake", **EV)


# -- statistics ---------------------------------------------------------------


def test_rank_statistics_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one discordant pair of three: tau = (2 - 1) / 3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # spearman of [1,2,3,4,5] vs [2,1,4,3,5]: 1 - 6*4/(5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # ties: tau-b of [1,1,2] vs [1,2,3] = 2 / sqrt(2 * 3)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2], [1, 2, 3])


# -- apply (fake) -------------------------------------------------------------------


def test_apply_fake_matches_fake_quant_and_applied_restores(tiny_model_path, tiny_profile):
    model = _load(tiny_model_path)
    orig = {k: v.clone() for k, v in model.state_dict().items()}
    plan = tiny_profile.plan([2, 4, 8, 16])
    with empas.applied(model, plan, mode="fake"):
        q = model.model.layers[0].self_attn.q_proj.weight
        ref = empas.fake_quant_reference(orig["model.layers.0.self_attn.q_proj.weight"], 2)
        assert torch.equal(q, ref)
        w3 = model.model.layers[3].mlp.down_proj.weight
        assert torch.equal(w3, orig["model.layers.3.mlp.down_proj.weight"].half().float())
        assert not torch.equal(q, orig["model.layers.0.self_attn.q_proj.weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, orig[k]), k  # restored bit-exactly


def test_apply_drop_replaces_block_and_changes_output(tiny_model_path, tiny_profile):
    from empas.quant.nn import DroppedBlock

    model = _load(tiny_model_path)
    ids = torch.arange(1, 33).view(1, -1)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    plan = tiny_profile.plan([16, 0, 16, 16])
    empas.apply(model, plan, mode="fake")
    assert isinstance(model.model.layers[1], DroppedBlock)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert after.shape == before.shape and not torch.allclose(after, before)


# -- verify ---------------------------------------------------------------------------


def test_verify_uniform_ordering(report):
    loss = {r["name"]: r["loss"] for r in report.rows}
    assert loss["uniform-int2"] > loss["uniform-int3"] > loss["uniform-int8"]
    assert loss["uniform-int2"] > loss["uniform-int4"] > loss["uniform-int8"]
    assert abs(loss["uniform-fp16"] - loss["original"]) < 1e-3
    for r in report.rows:
        assert math.isfinite(r["loss"]) and r["ppl"] == pytest.approx(math.exp(r["loss"]))


def test_verify_rows_have_predictions_and_errors(report, tiny_profile, exact):
    names = [r["name"] for r in report.rows]
    assert names[:6] == ["original"] + [
        f"uniform-{n}" for n in ("fp16", "int8", "int4", "int3", "int2")
    ]
    assert "best_under_int4" in names and set(exact.archetypes) <= set(names)
    for r in report.rows[1:]:
        assert r["pred_delta"] == pytest.approx(r["pred_loss"] - tiny_profile.baseline)
        assert r["error"] == pytest.approx(r["delta"] - r["pred_delta"])
        assert r["delta"] == pytest.approx(r["loss"] - report.row("original")["loss"])
    # the plans got their measured numbers
    bal = report.plans["balanced"]
    assert bal.measured["loss"] == report.row("balanced")["loss"]
    assert bal.measured["eval_tokens"] == report.meta["eval_tokens"] == 4096


def test_verify_outputs(report, tmp_path):
    df = report.to_pandas()
    assert list(df["name"]) == [r["name"] for r in report.rows]
    doc = json.loads(report.to_json())
    assert doc["format"] == "empas.verify/1" and len(doc["rows"]) == len(report.rows)
    assert "uniform-int4" in str(report) and "held-out tokens" in str(report)
    p = report.save(tmp_path / "v.json")
    assert json.loads(p.read_text())["rows"][0]["name"] == "original"
    ax = report.plot()
    assert ax.get_xlabel().startswith("predicted")
    h = report.honesty()
    assert h["plan_bytes"] <= h["int4_bytes"] == report.row("uniform-int4")["pred_bytes"]
    gap = h["int4_loss"] - h["fp16_loss"]
    assert h["recovered"] == pytest.approx((h["int4_loss"] - h["plan_loss"]) / gap)
    assert ("beats" in h["verdict"]) == h["beats_int4"]


def test_verify_sliding_window_scores_every_token_once(tiny_model_path, tiny_profile, eval_texts):
    kw = dict(profile=tiny_profile, baselines=(16,), **EV)
    a = empas.verify(tiny_model_path, None, eval_texts, stride=64, **kw)
    b = empas.verify(tiny_model_path, None, eval_texts, stride=32, **kw)
    # disjoint windows leave each window's first token unscored; overlapping ones do not
    assert a.meta["original"]["tokens"] == 64 * 63 and b.meta["original"]["tokens"] == 4095
    assert b.meta["stride"] == 32 and a.meta["stride"] == 64
    # more context per scored token: the loss can only be lower (or equal) on average
    assert b.meta["original"]["loss"] < a.meta["original"]["loss"]


# -- fidelity and refine -----------------------------------------------------------------


def test_random_plans_spread_and_are_valid(tiny_profile):
    ps = random_plans(tiny_profile, 20, seed=1)
    assert len(ps) == 20 and all(0 not in p.bits for p in ps)
    b = [p.predicted_bytes for p in ps]
    assert max(b) > 1.5 * min(b)
    assert [p.bits for p in random_plans(tiny_profile, 20, seed=1)] == [p.bits for p in ps]


def test_fidelity_on_real_measurements(tiny_model_path, tiny_profile, exact, eval_texts, report):
    f = empas.fidelity(tiny_model_path, tiny_profile, eval_texts, n_random=8, front=exact, **EV)
    assert f.n == 8 + len(exact.front) == len(f.rows)
    # the additive proxy ranks real measurements: a clearly positive rank correlation
    # (plans predicted worse measure worse), not just a number in [-1, 1]
    assert f.spearman > 0.6 and f.kendall > 0.4, (f.spearman, f.kendall)
    assert f.mae >= 0
    x = [r["pred_delta"] for r in f.rows]
    y = [r["delta"] for r in f.rows]
    assert f.spearman == pytest.approx(spearman(x, y))
    # a front plan measured here equals verify's measurement of the same plan
    bal = exact.archetypes["balanced"]
    row = next(r for r in f.rows if r["bits"] == bal.bits)
    assert row["loss"] == pytest.approx(report.row("balanced")["loss"], abs=1e-9)
    assert "Spearman" in str(f) and json.dumps(f.to_dict())


def test_refine_picks_archetypes_by_measured_loss(tiny_model_path, tiny_profile, exact, eval_texts):
    r = empas.refine(
        tiny_model_path, exact, tiny_profile, eval_texts, top_k=5, n_random=8, budget=400_000, **EV
    )
    assert set(r.archetypes) >= {"max_accuracy", "max_compression", "balanced", "best_under_budget"}
    losses = [m["loss"] for m in r.measured_front]
    assert r.archetypes["max_accuracy"].measured["loss"] == pytest.approx(min(losses))
    # best_under_budget: the lowest *measured* loss among measured plans that fit
    fit = [m["loss"] for m in r.measured_front if m["pred_bytes"] <= 400_000]
    assert r.archetypes["best_under_budget"].predicted_bytes <= 400_000
    assert r.archetypes["best_under_budget"].measured["loss"] == pytest.approx(min(fit))
    # max_compression: the smallest measured plan
    smallest = min(r.measured_front, key=lambda m: (m["pred_bytes"], m["loss"]))
    assert r.archetypes["max_compression"].predicted_bytes == smallest["pred_bytes"]
    # every archetype carries the measurement it was picked by
    for p in r.archetypes.values():
        assert any(p.measured["loss"] == pytest.approx(m["loss"]) for m in r.measured_front)
    a = r.additive_heldout
    for kind in ("recalibrated", "interaction"):
        h = r.corrections[kind]["heldout"]
        assert set(h) == {"spearman", "kendall", "mae"} and h["mae"] >= 0
        # improved() is: lower held-out error than the additive proxy, rank kept
        assert r.improved(kind) == (h["mae"] < a["mae"] and h["spearman"] >= a["spearman"] - 1e-9)
    assert r.meta["n_heldout"] == 4 and "held-out" in str(r)
    json.dumps(r.to_dict())


# -- bad plans -------------------------------------------------------------------------------


def test_plan_for_another_model_is_rejected(tiny_model_path, tiny_profile):
    model = _load(tiny_model_path)
    d = tiny_profile.plan([4, 4, 4, 4]).to_dict()
    d["units"][2]["modules"][0] = "model.layers.2.self_attn.qq_proj"
    with pytest.raises(empas.PlanMismatchError, match="qq_proj"):
        empas.apply(model, empas.Plan.from_dict(d))
    d = tiny_profile.plan([4, 4, 4, 4]).to_dict()
    d["units"][1]["params"] += 1
    with pytest.raises(empas.PlanMismatchError, match="parameters"):
        empas.apply(model, empas.Plan.from_dict(d))
    d = tiny_profile.plan([4, 4, 4, 4]).to_dict()
    d["model"]["n_blocks"] = 22
    with pytest.raises(empas.PlanMismatchError, match="22 blocks"):
        empas.apply(model, empas.Plan.from_dict(d))
    d = tiny_profile.plan([4, 4, 4, 4]).to_dict()
    d["model"]["blocks"] = "transformer.h"
    with pytest.raises(empas.PlanMismatchError, match="transformer.h"):
        empas.apply(model, empas.Plan.from_dict(d))
    # nothing was changed by the failed calls
    ref = _load(tiny_model_path)
    for (k, v), (_, w) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(v, w), k


def test_unknown_quantizer_and_bad_inputs(tiny_model_path, tiny_profile, eval_texts):
    model = _load(tiny_model_path)
    d = tiny_profile.plan([4, 4, 4, 4]).to_dict()
    d["quantizer"]["granularity"] = "tensor"
    with pytest.raises(empas.FormatError, match="granularity 'tensor'"):
        empas.apply(model, empas.Plan.from_dict(d))
    with pytest.raises(ValueError, match="mode must be"):
        empas.apply(model, tiny_profile.plan([4, 4, 4, 4]), mode="int4")
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        empas.apply(model, tiny_profile.plan([4, 4, 4, 4]))
    with pytest.raises(ValueError, match="eval_text is required"):
        empas.verify(tiny_model_path, None, None, profile=tiny_profile)
    with pytest.raises(ValueError, match="stride"):
        empas.verify(tiny_model_path, None, eval_texts, profile=tiny_profile, stride=999, **EV)


def test_uniform_plan_from_a_plan_template(tiny_profile):
    p = uniform_plan(tiny_profile.plan([2, 3, 4, 8]), 16)
    assert p.bits == [16] * 4 and p.archetype == "uniform-fp16"
    q = uniform_plan(tiny_profile, 3)
    assert q.predicted_bytes == tiny_profile.plan([3] * 4).predicted_bytes
    assert np.isfinite(q.predicted_loss)
