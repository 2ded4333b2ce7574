"""empas.profile_cost and `empas profile --dry-run` (issue 16): exact counts of
an 8B-shaped model built on the meta device, checked against hand-computed
figures; a measured estimate on the tiny model; configs transformers can't build."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

import empas  # noqa: E402
from empas.profile.cost import SHAPES, profile_cost  # noqa: E402

# Llama-3.1-8B by hand: hidden 4096, 32 heads of 128, 8 kv heads, MLP 14336, vocab 128256
Q = OPROJ = 4096 * 4096  # 16,777,216
K = V = 4096 * 8 * 128  # 4,194,304
GATE = UP = DOWN = 4096 * 14336  # 58,720,256
BLOCK = Q + K + V + OPROJ + GATE + UP + DOWN  # 218,103,808
EMB = HEAD = 128256 * 4096  # 525,336,576 each (not tied)
NORMS = 32 * 2 * 4096 + 4096
TOTAL = 32 * BLOCK + EMB + HEAD + NORMS


def test_llama_8b_block_counts_by_hand():
    assert TOTAL == 8_030_261_248  # the published "8.03B"
    e = profile_cost("llama-3.1-8b", benchmark=False)
    assert e.params == TOTAL and e.dtype == "bfloat16" and e.n_blocks == 32
    assert e.units == 32 and e.unit_params == [BLOCK] * 32
    assert e.choices == [2, 3, 4, 8, 16] and e.cells == 32 * 5
    # a cell on block b runs blocks b..31 and the head: 5 * sum_{b}(33 - b)
    assert e.block_passes == 5 * sum(33 - b for b in range(32)) == 2800
    assert e.forward_equivalents == 1 + 5 * sum((32 - b) / 32 for b in range(32)) == 83.5
    tokens = 32 * 256  # the default: 32 sequences of min(256, context)
    assert e.n_tokens == tokens and e.seq_len == 256
    assert e.weight_bytes == 2 * TOTAL
    assert e.cache_bytes == 33 * tokens * 4096 * 2  # 32 block inputs + the output, bf16
    assert e.logits_bytes == 4 * 256 * 128256 * 4  # one batch of fp32 logits
    assert e.reference_bytes == 0
    assert e.device_bytes == e.weight_bytes + e.cache_bytes + e.logits_bytes
    rows = {r["ranks"]: r for r in e.per_ranks}
    assert rows[1]["max_block_passes"] == 2800 and rows[1]["time_s"] is None
    assert rows[2]["max_block_passes"] == 1400  # LPT splits this one exactly
    assert rows[8]["max_cells"] >= 20


def test_llama_8b_linear_and_kl_counts_by_hand():
    e = profile_cost(
        "llama-3.1-8b", units="linear", choices=(2, 3, 4, 8), n_tokens=4096,
        seq_len=512, loss="kl", benchmark=False, ranks=(1,),
    )  # fmt: skip
    assert e.units == 7 * 32 and e.cells == 7 * 32 * 5 == 1120
    assert e.unit_params[:7] == [Q, K, V, OPROJ, GATE, UP, DOWN]
    assert sum(e.unit_params) == 32 * BLOCK
    assert e.reference_bytes == 4096 * 128256 * 4  # fp32 log-probabilities per token
    assert e.cache_bytes == 33 * 4096 * 4096 * 2
    assert "1120 cells" in str(e)


def test_shapes_have_the_published_numbers():
    s = SHAPES["llama-3.1-8b"]
    assert (s["hidden_size"], s["num_hidden_layers"], s["num_attention_heads"]) == (4096, 32, 32)
    assert (s["num_key_value_heads"], s["intermediate_size"], s["vocab_size"]) == (8, 14336, 128256)
    e = profile_cost("llama-3.1-70b", benchmark=False, ranks=())
    assert e.n_blocks == 80 and abs(e.params - 70.55e9) < 0.01e9


def test_measured_estimate_on_the_tiny_model(tiny_model_path):
    e = empas.profile_cost(
        tiny_model_path, choices=(0, 2, 4), n_tokens=256, seq_len=64, repeats=2, ranks=(1, 2)
    )
    assert e.n_blocks == 4 and e.units == 4 and e.cells == 4 * 4
    assert e.bench["block_s_per_token"] > 0 and e.bench["head_s_per_token"] > 0
    t1, t2 = (r["time_s"] for r in e.per_ranks)
    assert 0 < t2 < t1  # two ranks share the cells, each still runs the baseline
    assert json.loads(json.dumps(e.to_dict()))["cells"] == 16


def test_a_config_transformers_cannot_build(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "no-such-architecture", "hidden_size": 8}))
    with pytest.raises(ValueError, match="cannot build"):
        profile_cost(p, benchmark=False)
    with pytest.raises(FileNotFoundError, match="named shape"):
        profile_cost(tmp_path / "missing", benchmark=False)


def test_cli_dry_run(capsys):
    from empas.cli import main

    assert main(["profile", "llama-3.1-8b", "--dry-run", "--no-benchmark", "--ranks", "1,4"]) == 0
    out = capsys.readouterr().out
    assert "160 cells" in out and "8,030,261,248 parameters" in out
    assert "4 rank(s): at most 40 cells" in out


def test_cli_dry_run_of_a_config_transformers_cannot_build(tmp_path, capsys):
    from empas.cli import main

    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "no-such-architecture", "hidden_size": 8}))
    assert main(["profile", str(bad), "--dry-run", "--no-benchmark"]) == 2  # an error, no traceback
    err = capsys.readouterr().err
    assert err.startswith("empas profile: error: ") and "cannot build" in err
    assert "no-such-architecture" in err and "Traceback" not in err
    # a known architecture whose numbers cannot make a model
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(
        json.dumps({"model_type": "llama", "hidden_size": 30, "num_attention_heads": 7,
                    "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 10})
    )  # fmt: skip
    assert main(["profile", str(broken), "--dry-run", "--no-benchmark"]) == 2
    err = capsys.readouterr().err
    assert "empas profile: error: " in err and "cannot build" in err, err
    for text in ("{not json", "[1, 2]"):
        (broken / "config.json").write_text(text)
        assert main(["profile", str(broken), "--dry-run", "--no-benchmark"]) == 2
        err = capsys.readouterr().err
        assert "config.json" in err and ("not valid JSON" in err or "JSON object" in err), err
