"""`empas demo` end to end on the tiny test model: every stage's files, the report,
measured plans, exports that load back, no overwrite without --force, a resumed
profile on a rerun, a config file, and clear errors (exit 2) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import empas
from empas.cli import main

pytest.importorskip("torch")
pytest.importorskip("transformers")

FAST = ["--n-tokens", "1024", "--seq-len", "64", "--max-eval-tokens", "2048"]
FAST += ["--units", "sublayer", "--bits", "2,3,4,8"]  # the settings these tests were written for
FAST += ["--pop-size", "24", "--generations", "10", "--quiet"]


@pytest.fixture(scope="module")
def demo_run(tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    args = ["demo", "--model", str(tiny_model_path), "-o", str(out), *FAST]
    return out, args


def test_demo_writes_every_stage_and_a_report(demo_run, capsys):
    out, args = demo_run
    assert main(args) == 0
    stdout = capsys.readouterr().out
    for stage in ("[1/6] model", "[2/6] profile", "[3/6] search", "[4/6] verify", "[5/6] export"):
        assert stage in stdout
    assert "uniform-int4" in stdout and "balanced" in stdout and "empas dashboard" in stdout

    rep = json.loads((out / "report.json").read_text())
    assert rep["format"] == "empas.demo/1"
    assert set(rep["plans"]) >= {"max_accuracy", "balanced", "max_compression", "best_under_int4"}
    assert set(rep["uniform"]) == {f"uniform-{b}" for b in ("fp16", "int8", "int4", "int3", "int2")}
    for d in [*rep["plans"].values(), *rep["uniform"].values()]:
        assert d["loss"] > 0 and d["bytes"] > 0 and d["pred_delta"] is not None
    assert rep["honesty"]["plan"] == "best_under_int4"
    assert 0 < rep["front"]["hypervolume_vs_exact"] <= 1 + 1e-9
    assert (out / "report.md").read_text().startswith("```\nEMPAS demo")

    prof = empas.load_profile(out / "profile.json")
    assert prof.choices == [2, 3, 4, 8, 16] and len(prof.units) == 8  # 4 blocks x attn/mlp
    doc = json.loads((out / "search" / "result.json").read_text())
    assert doc["format"] == "empas.search/1" and len(doc["front"]["loss"]) >= 3
    verify = json.loads((out / "verify.json").read_text())
    rows = {r["name"]: r for r in verify["rows"]}
    assert rows["balanced"]["delta"] == pytest.approx(rep["plans"]["balanced"]["delta"])
    assert (out / "verify.png").stat().st_size > 1000

    # the verified plans carry their measured metrics
    bal = empas.load_plan(out / "plans" / "balanced.json")
    assert bal.measured["loss"] == pytest.approx(rows["balanced"]["loss"])
    assert bal.bits == rows["balanced"]["bits"]
    for f in (out / "plans").glob("*.json"):  # named as the report's rows, all measured
        p = empas.load_plan(f)
        assert p.archetype == f.stem and p.measured["loss"] == pytest.approx(rows[f.stem]["loss"])

    # exports: a packed checkpoint that loads back at the plan's bytes, and runtime configs
    ex = out / "export"
    ckpt = empas.quant.read_manifest(ex / "packed-balanced")
    assert ckpt["tensor_bytes"] == bal.predicted_bytes
    model = empas.load_quantized(ex / "packed-balanced")
    # it is the balanced plan, packed: its weights take the plan's bytes and it runs
    assert model.empas_plan.bits == bal.bits
    assert empas.quant.weight_bytes(model) == bal.predicted_bytes
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape[:2] == (1, 4) and bool(torch.isfinite(logits).all())
    assert (ex / "balanced.tensor-types.txt").read_text().strip()
    assert json.loads((ex / "balanced.gptqmodel.json").read_text())
    assert json.loads((ex / "balanced.hqq.json").read_text())
    assert rep["exported"]["skipped"] == {
        "empas-original": rep["exported"]["skipped"]["empas-original"]
    }  # the original format holds whole blocks only: skipped with a reason
    assert "block" in rep["exported"]["skipped"]["empas-original"]


def test_demo_refuses_to_overwrite_then_reuses_the_profile(demo_run, capsys):
    out, args = demo_run
    if not (out / "report.json").exists():
        assert main(args) == 0
    before = (out / "report.json").read_bytes()
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "report.json").read_bytes() == before
    assert main([*args, "--force"]) == 0
    stdout = capsys.readouterr().out
    assert "0 experiments" in stdout  # every experiment came from the checkpoint
    rep = json.loads((out / "report.json").read_text())
    assert rep["profile"]["baseline"] == pytest.approx(
        empas.load_profile(out / "profile.json").baseline
    )


def test_demo_from_a_config_file_with_a_budget(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = tmp_path / "demo.toml"
    cfg.write_text(
        "[demo]\n"
        f'model = "{tiny_model_path}"\nout = "{out}"\nunits = "block"\nbits = [2, 4, 8]\n'
        "n_tokens = 1024\nseq_len = 64\nmax_eval_tokens = 1024\npop_size = 16\n"
        'generations = 5\nquiet = true\nbaselines = [16, 4]\nformats = ["packed", "llama.cpp"]\n'
    )
    # the budget: between the smallest and the largest plan of a block-level 2/4/8 search
    assert main(["demo", "--config", str(cfg), "--budget", "400KB"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert "best_under_budget" in rep["plans"] and rep["exported"]["plan"] == "best_under_budget"
    assert rep["plans"]["best_under_budget"]["bytes"] <= 400_000
    assert set(rep["uniform"]) == {"uniform-fp16", "uniform-int4"}
    assert sorted(p.name for p in (out / "export").iterdir()) == [
        "best_under_budget.tensor-types.txt",
        "packed-best_under_budget",
    ]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--budget", "1KB"], "no plan on the front fits"),
        (["--budget", "lots"], "lots"),
        (["--formats", "onnx"], "unknown export format 'onnx'"),
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--model", "example:gpt5"], "unknown example model"),
        (["--export-plan", "nope"], "export_plan 'nope'"),
        (["--bits", "2,x"], "comma-separated integers"),
    ],
)
def test_demo_bad_input_exits_2(tiny_model_path, tmp_path, capsys, extra, message):
    args = ["demo", "--model", str(tiny_model_path), "-o", str(tmp_path / "o"), *FAST]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_demo_api_returns_the_objects(tiny_model_path, tmp_path):
    from empas.demo import run_demo

    res = run_demo(
        tmp_path / "o",
        model=tiny_model_path,
        units="block",
        bits=(2, 4, 8),
        n_tokens=1024,
        seq_len=64,
        max_eval_tokens=1024,
        pop_size=16,
        generations=5,
        baselines=(16, 4),
        formats=(),
        progress=False,
        log=lambda _msg: None,
    )
    assert res.verify.row("uniform-int4")["loss"] > 0
    assert res.search.archetypes["balanced"].bits == res.verify.row("balanced")["bits"]
    assert "EMPAS demo" in res.text() and "<pre>" in res._repr_html_()
    assert not (Path(res.out) / "export").exists()


@pytest.mark.slow
def test_demo_on_smollm2_with_bbc_news_as_shipped(tmp_path, capsys):
    """The main job as `bash scripts/run.sh` runs it: SmolLM2-135M (from its GGUF) on
    BBC News, default settings, end to end."""
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--quiet"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["name"] == "example:smollm2"
    assert rep["model"]["source"]["quantized"] is True
    assert "Q4_1" in rep["model"]["source"]["tensor_types"]
    assert rep["profile"]["units"] == 30 and rep["profile"]["choices"] == [2, 3, 4, 16]
    # 2/3/4 bits measured, fp16 (the default --estimate-bits) estimated
    assert rep["profile"]["measured_cells"] == 90 and rep["profile"]["estimated_cells"] == 30
    assert rep["profile"]["estimated"]["choices"] == [16]
    assert rep["timings"]["total_s"] < 600  # the budget: 10 minutes on 2 cores
    assert "example:bbc-news:calib" in rep["profile"]["calib_source"]
    assert {"uniform-fp16", "uniform-int4", "uniform-int2"} <= set(rep["uniform"])
    assert "best_under_int4" in rep["plans"] and rep["honesty"]["verdict"]
    fp16 = rep["uniform"]["uniform-fp16"]["ppl"]
    assert fp16 < rep["uniform"]["uniform-int2"]["ppl"]
    lines = (out / "export" / "balanced.tensor-types.txt").read_text().splitlines()
    assert len(lines) == 210 and all(line.startswith("^blk\\.") for line in lines)
