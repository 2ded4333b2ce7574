"""Import of the original EMPAS profile and artifact files reproduces its numbers."""

from __future__ import annotations

import json

import pytest

import empas

ORIGINAL_LOSS = {
    "balanced": 3.380362629890442,
    "max_accuracy": 3.3058765530586243,
    "max_compression": 4.271416008472443,
}
MODEL = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


def test_original_profile_imports(original_profile_path, tinyllama):
    prof = empas.load_profile(original_profile_path)
    assert prof.model_name == MODEL
    assert prof.n_units == 22 and prof.choices == [2, 4, 8, 16]
    assert prof.unit_names == [f"layer_{i}" for i in range(22)]
    assert prof.quantizer["bytes_model"] == "params_bits"
    assert prof.unsearched_bytes == 0
    assert prof.meta["source"]["imported_from"] == "empas"
    raw = json.loads(original_profile_path.read_text())
    assert prof.baseline == raw["baseline_loss"]
    for i in range(22):
        for c, bits in enumerate(prof.choices):
            key = f"{i}_{bits}"
            assert prof.delta[i, c] == raw["sensitivity"].get(key, 0.0), key
            assert prof.bytes_table[i, c] == raw["layer_params"][str(i)] * bits // 8
    assert (prof.delta[:, 3] == 0).all()  # 16 bits = untouched
    # The shipped example is the same profile.
    assert prof.fingerprint == tinyllama.fingerprint


@pytest.mark.parametrize("name", sorted(ORIGINAL_LOSS))
def test_original_plans_reproduce_their_predicted_loss(
    tinyllama, original_profile_path, original_plan_paths, name
):
    path = original_plan_paths[name]
    raw = json.loads(path.read_text())
    plan = empas.load_plan(path)
    assert plan.archetype == name
    assert plan.model_name == tinyllama.model_name == raw["config"]["base_model"] == MODEL
    qmap = raw["config"]["quantization_map"]
    assert plan.bits == [qmap[f"layer_{i}"] for i in range(22)]
    assert plan.predicted_loss == ORIGINAL_LOSS[name] == raw["metrics"]["predicted_loss"]

    ev = tinyllama.evaluate(plan)
    assert ev["loss"] == pytest.approx(ORIGINAL_LOSS[name], rel=1e-12)
    assert tinyllama.plan(plan.bits).predicted_loss == pytest.approx(ev["loss"], rel=1e-15)
    # The same numbers from the original profile file itself.
    orig = empas.load_profile(original_profile_path)
    assert orig.evaluate(plan)["loss"] == pytest.approx(ORIGINAL_LOSS[name], rel=1e-12)

    # Bytes counted as the original did: params x bits / 8 ...
    params = json.loads(original_profile_path.read_text())["layer_params"]
    expect = sum(params[str(i)] * b / 8 for i, b in enumerate(plan.bits))
    assert ev["bytes"] == expect
    # ... to which it added a fixed 1024 MiB.
    original_mb = raw["metrics"]["predicted_vram_mb"]
    assert plan.provenance["original_metrics"]["predicted_vram_mb"] == original_mb
    assert ev["bytes"] / 2**20 + 1024 == pytest.approx(original_mb, rel=1e-12)


def test_original_plans_are_the_originals_archetypes(tinyllama, original_plan_paths):
    ev = {n: tinyllama.evaluate(empas.load_plan(p)) for n, p in original_plan_paths.items()}
    assert ev["max_accuracy"]["loss"] < ev["balanced"]["loss"] < ev["max_compression"]["loss"]
    assert ev["max_accuracy"]["bytes"] > ev["balanced"]["bytes"] > ev["max_compression"]["bytes"]


def test_exact_beats_the_original_plans_at_their_sizes(tinyllama, exact_tl, original_plan_paths):
    for name in ("balanced", "max_compression", "max_accuracy"):
        orig = tinyllama.evaluate(empas.load_plan(original_plan_paths[name]))
        best = exact_tl.best_under(orig["bytes"])
        assert best.predicted_bytes <= orig["bytes"]
        assert best.predicted_loss <= orig["loss"]
        if name != "max_accuracy":
            assert best.predicted_loss < orig["loss"]
    # The figures: 3.3804 -> 3.3554 (balanced), 4.2714 -> 3.7149 (max_compression).
    assert exact_tl.best_under(528482304).predicted_loss == pytest.approx(3.355441927909851)
    assert exact_tl.best_under(418381824).predicted_loss == pytest.approx(3.714881420135498)


def test_original_plan_converts_to_empas_plan(tmp_path, original_plan_paths, tinyllama):
    plan = empas.load_plan(original_plan_paths["balanced"])
    path = plan.save(tmp_path / "converted.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "empas.plan/1"
    back = empas.load_plan(path)
    assert back == plan
    assert back.bits == plan.bits
    assert tinyllama.evaluate(back) == tinyllama.evaluate(plan)
