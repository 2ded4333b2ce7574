"""`empas verify` and `empas export` end to end on the tiny test model: outputs,
exit codes, no overwrite without --force, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import empas
from empas.cli import main

pytest.importorskip("torch")
pytest.importorskip("transformers")

FAST = ["--seq-len", "64", "--max-tokens", "1024", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def searched(tiny_profile, tmp_path_factory):
    """The tiny profile on disk and an exact search over it without drops (the runtime
    formats cannot remove a block)."""
    root = tmp_path_factory.mktemp("cli")
    prof = tiny_profile.save(root / "profile.json")
    out = root / "search"
    assert (
        main(["search", str(prof), "-o", str(out), "--method", "exact", "--bits", "2,3,4,8"]) == 0
    )
    return prof, out


@pytest.fixture(scope="module")
def eval_file(eval_texts, tmp_path_factory):
    f = tmp_path_factory.mktemp("eval") / "held_out.txt"
    f.write_text("\n\n".join(eval_texts), encoding="utf-8")
    return f


def test_verify_writes_report_and_plot(searched, eval_file, tiny_model_path, tmp_path, capsys):
    prof, out = searched
    rep, png = tmp_path / "v.json", tmp_path / "v.png"
    args = ["verify", str(tiny_model_path), "--profile", str(prof), "--plans", str(out / "plans")]
    args += ["--eval", str(eval_file), "-o", str(rep), "--plot", str(png), "--baselines", "16,4,2"]
    assert main(args + FAST) == 0
    stdout = capsys.readouterr().out
    assert "uniform-int4" in stdout and "balanced" in stdout
    doc = json.loads(rep.read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    assert {"uniform-fp16", "uniform-int4", "uniform-int2", "balanced", "max_accuracy"} <= set(rows)
    for r in rows.values():  # measured, finite, and bytes really stored by the packed model
        assert r["loss"] > 0 and r["ppl"] > 1 and r["bytes"] > 0
    assert rows["uniform-int2"]["loss"] > rows["uniform-int4"]["loss"]
    assert (
        rows["uniform-int2"]["bytes"]
        < rows["uniform-int4"]["bytes"]
        < rows["uniform-fp16"]["bytes"]
    )
    assert rows["balanced"]["pred_loss"] is not None
    # the honesty check: the best plan within int4's bytes, measured against it
    assert rows["best_under_int4"]["pred_bytes"] <= rows["uniform-int4"]["pred_bytes"]
    assert doc["honesty"]["plan"] == "best_under_int4" and "int4" in doc["honesty"]["verdict"]
    assert png.read_bytes()[:4] == b"\x89PNG"

    before = rep.read_bytes()  # no overwrite without --force: exit 2, file untouched
    assert main(args + FAST) == 2
    assert "--force" in capsys.readouterr().err
    assert rep.read_bytes() == before


def test_verify_rejects_a_plan_for_another_model(tiny_model_path, eval_file, tmp_path, capsys):
    other = Path(__file__).parent / "data" / "empas_tinyllama" / "balanced.json"  # TinyLlama-1.1B
    args = ["verify", str(tiny_model_path), "--plans", str(other), "--eval", str(eval_file)]
    assert main(args + ["-o", str(tmp_path / "v.json")] + FAST) == 2
    err = capsys.readouterr().err
    assert "error" in err and "22" in err  # names the block-count mismatch (22 vs 4)
    assert not (tmp_path / "v.json").exists()


def test_export_packed_checkpoint(searched, tiny_model_path, tmp_path, capsys):
    _, out = searched
    plan = out / "plans" / "balanced.json"
    ck = tmp_path / "ckpt"
    args = [
        "export",
        str(plan),
        "--format",
        "packed",
        "--model",
        str(tiny_model_path),
        "-o",
        str(ck),
    ]
    assert main(args) == 0
    assert "tensor bytes" in capsys.readouterr().out
    m = empas.quant.read_manifest(ck)
    assert m["tensor_bytes"] == m["predicted_bytes"] == empas.load_plan(plan).predicted_bytes
    model = empas.load_quantized(ck)
    assert type(model).__name__ == "LlamaForCausalLM"
    stamp = (ck / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 2  # exists: refused, untouched
    assert "--force" in capsys.readouterr().err
    assert (ck / "model.safetensors").stat().st_mtime_ns == stamp
    assert main(args + ["--force"]) == 0


def test_export_packed_needs_a_model(searched, tmp_path, capsys):
    _, out = searched
    args = ["export", str(out / "plans" / "balanced.json"), "--format", "packed", "-o", "x"]
    assert main(args) == 2
    assert "--model" in capsys.readouterr().err


def test_export_runtime_formats(searched, tmp_path, capsys):
    _, out = searched
    plan_path = out / "plans" / "max_compression.json"
    plan = empas.load_plan(plan_path)

    def export(fmt, *extra):
        dest = tmp_path / f"out.{fmt}"
        rc = main(["export", str(plan_path), "--format", fmt, "-o", str(dest), *extra])
        return rc, dest

    rc, f = export("llama.cpp")
    assert rc == 0
    lines = f.read_text().splitlines()
    assert len(lines) == 4 * 7 and all(line.startswith("^blk\\.") for line in lines)

    rc, f = export("gptqmodel")
    assert rc == 0
    cfg = json.loads(f.read_text())
    assert set(cfg) == {"bits", "group_size", "sym", "dynamic"} and cfg["bits"] in (2, 3, 4, 8)

    rc, f = export("empas-original")
    assert rc == 0
    art = json.loads(f.read_text())
    assert len(art["config"]["quantization_map"]) == 4

    rc, f = export("plan")
    assert rc == 0 and empas.load_plan(f).bits == plan.bits

    capsys.readouterr()
    mixed = len(set(plan.bits)) > 1
    rc, f = export("hqq")
    if mixed:  # HQQ has one precision per linear tag: refused unless --allow-approx
        assert rc == 2 and "allow_approx" in capsys.readouterr().err and not f.exists()
        rc, f = export("hqq", "--allow-approx")
        assert "wider bits" in capsys.readouterr().out
    assert rc == 0
    assert "dynamic_config" in json.loads(f.read_text())

    assert export("llama.cpp")[0] == 2  # exists
    assert "--force" in capsys.readouterr().err
    assert export("gptqmodel", "--allow-approx", "--force")[0] == 2
    assert "hqq only" in capsys.readouterr().err


def test_export_original_plan_needs_layers_prefix(tmp_path, capsys):
    orig = Path(__file__).parent / "data" / "empas_tinyllama" / "balanced.json"
    dest = tmp_path / "types.txt"
    assert main(["export", str(orig), "--format", "llama.cpp", "-o", str(dest)]) == 2
    assert "model_layers_prefix" in capsys.readouterr().err
    args = ["export", str(orig), "--format", "llama.cpp", "-o", str(dest)]
    assert main(args + ["--layers-prefix", "model.layers"]) == 0
    assert len(dest.read_text().splitlines()) == 22 * 7


def test_verify_missing_eval_file(searched, tiny_model_path, tmp_path, capsys):
    _, out = searched
    args = ["verify", str(tiny_model_path), "--plans", str(out / "plans")]
    args += ["--eval", str(tmp_path / "none.txt"), "-o", str(tmp_path / "v.json")]
    assert main(args + FAST) == 2
    assert "eval text file" in capsys.readouterr().err
    assert not (tmp_path / "v.json").exists()
