"""Streamed profiling (``stream=True``): one sweep over the blocks, weights read
block by block from the model's .safetensors files. The table must equal the
resident run's bit for bit on the CPU (same operations on the same tensors), and
the memory of materialized weights must stay at one block (or the embeddings/head)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("accelerate")

import empas  # noqa: E402
from empas import ProfileError  # noqa: E402

FAST = dict(n_tokens=512, seq_len=64, batch_size=4, progress=False)


def _same(a, b):
    """Bit-identical tables: deltas, stderrs and baseline (np.array_equal, no tolerance)."""
    assert a.unit_names == b.unit_names
    assert a.baseline == b.baseline
    np.testing.assert_array_equal(np.asarray(a.delta, float), np.asarray(b.delta, float))
    np.testing.assert_array_equal(
        np.asarray(a.stderr, dtype=float), np.asarray(b.stderr, dtype=float)
    )
    assert a.meta["model"] == b.meta["model"]  # fingerprint, params, dtype: file == loaded
    assert a.unsearched_bytes == b.unsearched_bytes
    assert [u.params for u in a.units] == [u.params for u in b.units]


def _param_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in params}.values())


@pytest.mark.parametrize(
    "units, choices, extra",
    [
        ("block", (0, 2, 4, 8), {}),
        ("sublayer", (2, 4), {}),
        ("linear", (3,), {}),
        ("block", (2,), {"embeddings": True, "head": True, "loss": "kl"}),
        ("block", (4,), {"loss": "embedding"}),
        ({"attn_all": r".*self_attn\.o_proj", "mlp1": r".*\.1\.mlp\..*"}, (2,), {}),
    ],
    ids=["block-drop", "sublayer", "linear", "emb-head-kl", "embedding-loss", "groups"],
)
def test_streamed_table_equals_resident(tiny_model_path, calib_texts, units, choices, extra):
    kw = dict(units=units, choices=choices, **extra, **FAST)
    resident = empas.profile(tiny_model_path, calib_texts, **kw)
    streamed = empas.profile(tiny_model_path, calib_texts, stream=True, **kw)
    _same(resident, streamed)
    st = streamed.meta["source"]["stream"]
    assert st["weights"] == "lazy-safetensors" and st["sweeps"] == 1
    assert st["states_peak_bytes"] > 0 and st["weights_peak_bytes"] > 0
    assert "stream" not in resident.meta["source"]


def test_resident_weights_chunks_and_state_device(tiny_model_path, calib_texts):
    """A model object is streamed where it is (left bit-exact); chunks of 3
    experiments (several sweeps) give the same table."""
    from transformers import AutoModelForCausalLM

    kw = dict(choices=(0, 2, 8), **FAST)
    resident = empas.profile(tiny_model_path, calib_texts, **kw)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = empas.profile(model, calib_texts, stream=True, cache_device="cpu", **kw)
    _same(resident, obj)
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k
    st = obj.meta["source"]["stream"]
    assert st["weights"] == "resident" and st["weight_loads"] == 0
    assert st["weights_peak_bytes"] == _param_bytes(model.parameters())
    chunked = empas.profile(tiny_model_path, calib_texts, stream=True, stream_chunk=3, **kw)
    _same(resident, chunked)
    n_cells = 4 * 3 + 4  # 4 blocks x (0, 2, 8, 16)
    assert chunked.meta["source"]["stream"]["sweeps"] == -(-n_cells // 3)
    # fewer experiments per sweep: fewer hidden states in flight
    assert (
        chunked.meta["source"]["stream"]["states_peak_bytes"]
        < obj.meta["source"]["stream"]["states_peak_bytes"]
    )


def test_materialized_weights_are_one_block_or_the_outer_parts(tiny_model_path, calib_texts):
    """The lazy loader's count of bytes materialized at once peaks at exactly the
    larger of (the largest block, the embeddings/norm/head), never the model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    blocks = [_param_bytes(b.parameters()) for b in model.model.layers]
    in_blocks = {id(p) for b in model.model.layers for p in b.parameters()}
    outer = _param_bytes(p for p in model.parameters() if id(p) not in in_blocks)
    total = _param_bytes(model.parameters())
    p = empas.profile(tiny_model_path, calib_texts, stream=True, choices=(2,), **FAST)
    st = p.meta["source"]["stream"]
    assert st["weights_peak_bytes"] == max(max(blocks), outer)
    assert st["weights_peak_bytes"] < total / 2
    # every block read once, the outer parts twice (embedding, then norm + head)
    n_outer = sum(1 for p in model.parameters() if id(p) not in in_blocks)
    n_block = sum(len(list(b.parameters())) for b in model.model.layers)
    assert st["weight_loads"] == n_block + 2 * n_outer


def test_sharded_safetensors_and_resume(tiny_model_path, calib_texts, tmp_path):
    """A sharded checkpoint (model.safetensors.index.json) streams the same table;
    a checkpoint missing some cells is resumed: only those are measured again."""
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model_path).save_pretrained(
        sharded, max_shard_size="300KB"
    )
    for f in Path(tiny_model_path).glob("tokenizer*"):
        (sharded / f.name).write_bytes(f.read_bytes())
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    kw = dict(choices=(2, 4), **FAST)
    ck = tmp_path / "ck.json"
    # the resident run loads the same directory (a re-saved config.json is another
    # model fingerprint, and the checkpoint would be refused as another run's)
    resident = empas.profile(sharded, calib_texts, checkpoint=ck, **kw)
    doc = json.loads(ck.read_text())
    dropped = [k for k in doc["done"] if k.startswith("model.layers.1|")]
    for k in dropped:
        del doc["done"][k]
    ck.write_text(json.dumps(doc))
    streamed = empas.profile(sharded, calib_texts, stream=True, checkpoint=ck, **kw)
    _same(resident, streamed)
    t = streamed.meta["timings"]
    assert t["experiments"] == len(dropped) == 3 and t["resumed"] == 4 * 3 - 3


def test_adaptive_rounds_streamed(tiny_model_path, calib_texts):
    """Adaptive measurement: each refinement round is one sweep on the new windows;
    the cells, their tokens and the table equal the resident run's."""
    kw = dict(choices=(2, 3, 4), target_stderr=1e-9, token_budget=1024, **FAST)
    resident = empas.profile(tiny_model_path, calib_texts, **kw)
    streamed = empas.profile(tiny_model_path, calib_texts, stream=True, **kw)
    assert resident.meta["source"]["adaptive"]["rounds"] >= 1
    assert streamed.meta["source"]["adaptive"] == resident.meta["source"]["adaptive"]
    _same(resident, streamed)


def test_gpt2_tuple_blocks_conv1d_tied_embeddings(tmp_path):
    """GPT-2: Conv1D weights, a tied embedding/head unit (changed before block 0
    and in the head), position embeddings outside the blocks."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=3, n_head=2)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    ids = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(1))
    kw = dict(units="sublayer", choices=(2, 8), embeddings=True, head=True, progress=False)
    resident = empas.profile(tmp_path / "gpt2", ids, **kw)
    streamed = empas.profile(tmp_path / "gpt2", ids, stream=True, **kw)
    assert resident.unit_names[-1] == "transformer.wte+lm_head"
    _same(resident, streamed)


def test_cli_stream(tiny_model_path, tmp_path, capsys):
    from empas.cli import main

    calib = tmp_path / "calib.txt"
    from empas.models import corpus

    calib.write_text("\n\n".join(corpus("train")))
    out = tmp_path / "p.json"
    args = ["profile", str(tiny_model_path), "--calib", str(calib), "-o", str(out), "--quiet"]
    args += ["--bits", "2", "--n-tokens", "512", "--seq-len", "64", "--stream"]
    assert main(args + ["--stream-chunk", "2", "--cache-device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "streamed (lazy-safetensors weights): 4 sweep(s)" in text
    prof = empas.load_profile(out)
    assert prof.meta["source"]["stream"]["experiments_per_sweep"] == 2
    assert main(args + ["--no-cache", "--force"]) == 2
    assert "cache=False" in capsys.readouterr().err
    assert main(args + ["--estimate", "--force"]) == 2
    assert "not streamed" in capsys.readouterr().err


def test_bad_streaming_input(tiny_model_path, calib_texts, tmp_path):
    with pytest.raises(ValueError, match="cache=False"):
        empas.profile(tiny_model_path, calib_texts, stream=True, cache=False, **FAST)
    with pytest.raises(ValueError, match="Fisher"):
        empas.profile(tiny_model_path, calib_texts, stream=True, estimate=(16,), **FAST)
    with pytest.raises(ValueError, match="stream_chunk must be"):
        empas.profile(tiny_model_path, calib_texts, stream=True, stream_chunk=0, **FAST)
    with pytest.raises(ValueError, match="applies to stream=True"):
        empas.profile(tiny_model_path, calib_texts, stream_chunk=2, **FAST)
    with pytest.raises(ValueError, match="not streamed"):
        empas.estimate_sensitivity(tiny_model_path, calib_texts, stream=True, n_tokens=512)

    def copy(name):
        d = tmp_path / name
        d.mkdir()
        for f in Path(tiny_model_path).iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        return d

    # no .safetensors file
    d = copy("nofile")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(ProfileError, match=r"safetensors.*has none.*pytorch_model\.bin"):
        empas.profile(d, calib_texts, stream=True, **FAST)
    # config.json that does not describe the weights
    d = copy("shape")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 160
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ProfileError, match=r"gate_proj\.weight.*shape \[176, 64\].*\[160, 64\]"):
        empas.profile(d, calib_texts, stream=True, **FAST)
    # a tensor missing from the file
    from safetensors.torch import load_file, save_file

    d = copy("missing")
    sd = load_file(d / "model.safetensors")
    del sd["model.layers.2.mlp.up_proj.weight"]
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ProfileError, match=r"model\.layers\.2\.mlp\.up_proj\.weight"):
        empas.profile(d, calib_texts, stream=True, **FAST)
    # a broken shard index
    d = copy("index")
    (d / "model.safetensors.index.json").write_text('{"weight_map": {"x": "gone.safetensors"}}')
    with pytest.raises(ProfileError, match="gone.safetensors"):
        empas.profile(d, calib_texts, stream=True, **FAST)


# -- peak memory under a limit, in a subprocess ----------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys, torch, empas

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(key)

    path, stream = sys.argv[1], sys.argv[2] == "1"
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    empas.profile(path, ids[:2, :8], choices=(4,), stream=True, progress=False)  # imports
    import gc; gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (the peak RSS) to now
        f.write("5")
    before = status("VmHWM")
    p = empas.profile(path, ids, choices=(4,), batch_size=2, stream=stream, progress=False)
    print(json.dumps({"growth": status("VmHWM") - before, "before": before,
                      "stream": p.meta["source"].get("stream"), "delta": p.delta.tolist()}))
    """
)


def test_peak_rss_streamed_under_a_limit_resident_over(tmp_path):
    """A 16-block model of ~8.9 MB per block (~142 MB of weights), profiled in a
    subprocess each way: the streamed run's peak resident memory (VmHWM) grows by
    less than half the weights (measured: ~3 blocks: the block, the file pages of
    one tensor, a saved linear, allocator slack), the resident run's by more than
    3/4 of them. Both give the same table."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256, hidden_size=384, intermediate_size=1536, num_hidden_layers=16,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    block = sum(p.numel() * 4 for p in model.model.layers[0].parameters())
    total = sum(p.numel() * 4 for p in model.parameters())
    model.save_pretrained(tmp_path / "m")
    del model
    env = {**os.environ, "PYTHONPATH": str(Path(empas.__file__).parent.parent)}
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # big tensors mmapped: freed memory leaves RSS
    out = {}
    for stream in ("1", "0"):
        r = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path / "m"), stream],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        out[stream] = json.loads(r.stdout.strip().splitlines()[-1])
    streamed, resident = out["1"], out["0"]
    assert streamed["delta"] == resident["delta"]
    assert streamed["stream"]["weights_peak_bytes"] == block
    assert streamed["growth"] < total / 2, (streamed["growth"], block, total)
    assert resident["growth"] > 0.75 * total, (resident["growth"], block, total)
