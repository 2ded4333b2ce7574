"""Import of the original EMPAS profile and artifact files reproduces its numbers."""

from __future__ import annotations

import json

import pytest

import empas

from .conftest import ORIGINAL_PLANS, ORIGINAL_PROFILE

ORIGINAL_LOSS = {
    "balanced": 3.380362629890442,
    "max_accuracy": 3.3058765530586243,
    "max_compression": 4.271416008472443,
}


def test_original_profile_imports():
    prof = empas.load_profile(ORIGINAL_PROFILE)
    assert prof.model_name == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert prof.n_units == 22 and prof.choices == [2, 4, 8, 16]
    assert prof.unit_names[0] == "layer_0" and prof.unit_names[-1] == "layer_21"
    assert prof.quantizer["bytes_model"] == "params_bits"
    assert prof.unsearched_bytes == 0
    assert prof.meta["source"]["imported_from"] == "empas"
    raw = json.loads(ORIGINAL_PROFILE.read_text())
    assert prof.baseline == raw["baseline_loss"]
    assert prof.delta[3, 0] == raw["sensitivity"]["3_2"]
    assert (prof.delta[:, 3] == 0).all()  # 16 bits = untouched


@pytest.mark.parametrize("name", sorted(ORIGINAL_LOSS))
def test_original_plans_reproduce_their_predicted_loss(tinyllama, name):
    path = ORIGINAL_PLANS / f"{name}.json"
    plan = empas.load_plan(path)
    assert plan.archetype == name
    assert plan.model_name == tinyllama.model_name
    assert plan.predicted_loss == ORIGINAL_LOSS[name]
    ev = tinyllama.evaluate(plan)
    assert ev["loss"] == pytest.approx(ORIGINAL_LOSS[name], rel=1e-12)
    # Bytes counted as the original did: params x bits / 8; it then added 1024 MiB.
    params = json.loads(ORIGINAL_PROFILE.read_text())["layer_params"]
    expect = sum(params[str(i)] * b // 8 for i, b in enumerate(plan.bits))
    assert ev["bytes"] == expect
    original_mb = plan.provenance["original_metrics"]["predicted_vram_mb"]
    assert ev["bytes"] / 2**20 + 1024 == pytest.approx(original_mb)


def test_exact_beats_the_original_plans_at_their_sizes(tinyllama, exact_tl):
    for name in ("balanced", "max_compression"):
        orig = tinyllama.evaluate(empas.load_plan(ORIGINAL_PLANS / f"{name}.json"))
        best = exact_tl.best_under(orig["bytes"])
        assert best.predicted_loss < orig["loss"]
    # The figures: 3.3804 -> 3.3554 (balanced), 4.2714 -> 3.7149 (max_compression).
    assert exact_tl.best_under(528482304).predicted_loss == pytest.approx(3.355441927909851)
    assert exact_tl.best_under(418381824).predicted_loss == pytest.approx(3.714881420135498)


def test_original_plan_converts_to_empas_plan(tmp_path):
    plan = empas.load_plan(ORIGINAL_PLANS / "balanced.json")
    path = plan.save(tmp_path / "converted.json")
    assert json.loads(path.read_text())["format"] == "empas.plan/1"
    assert empas.load_plan(path).bits == plan.bits
