"""Packed mode and packed checkpoints: fake == packed, save -> load_quantized
round trip, predicted bytes == stored bytes, and corrupt or mismatched files."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import empas  # noqa: E402
from empas.quant import weight_bytes  # noqa: E402
from empas.quant.checkpoint import MANIFEST, WEIGHTS  # noqa: E402

IDS = torch.arange(3, 3 + 48).view(2, 24) % 500


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def mixed(tiny_profile):
    """A plan with every kind of choice except drop: 2, 3, 8 and 16 bits."""
    return tiny_profile.plan([2, 3, 8, 16], archetype="mixed")


@pytest.fixture(scope="module")
def saved(tiny_model_path, mixed, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "mixed"
    empas.save_quantized(_load(tiny_model_path), mixed, path)
    return path


def test_fake_and_packed_outputs_agree(tiny_model_path, mixed):
    from empas.quant.nn import HalfLinear, PackedLinear

    fake = empas.apply(_load(tiny_model_path), mixed, mode="fake")
    packed = empas.apply(_load(tiny_model_path), mixed, mode="packed")
    assert isinstance(packed.model.layers[0].self_attn.q_proj, PackedLinear)
    assert isinstance(packed.model.layers[3].mlp.up_proj, HalfLinear)
    # the dequantized weights are the fake-quantized weights, bit for bit ...
    for name, m in packed.named_modules():
        if isinstance(m, PackedLinear):
            assert torch.equal(m.weight_dequantized(), fake.get_submodule(name).weight), name
    # ... so the logits are identical (tolerance 0 on the CPU)
    assert torch.equal(_logits(fake), _logits(packed))


def test_packed_memory_is_the_predicted_bytes(tiny_model_path, mixed):
    model = _load(tiny_model_path)
    before = weight_bytes(model)
    empas.apply(model, mixed, mode="packed")
    assert weight_bytes(model) == mixed.predicted_bytes < before


def test_save_load_round_trip_identical_logits(tiny_model_path, mixed, saved):
    packed = empas.apply(_load(tiny_model_path), mixed, mode="packed")
    loaded = empas.load_quantized(saved)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded.empas_plan.bits == mixed.bits
    assert torch.equal(_logits(loaded), _logits(packed))
    assert weight_bytes(loaded) == mixed.predicted_bytes


def test_stored_bytes_equal_predicted_bytes(saved, mixed):
    from safetensors import safe_open

    m = json.loads((saved / MANIFEST).read_text())
    n = 0
    with safe_open(str(saved / WEIGHTS), "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            n += t.numel() * t.element_size()
    assert n == m["tensor_bytes"] == mixed.predicted_bytes == m["predicted_bytes"]
    assert (saved / WEIGHTS).stat().st_size == n + m["header_bytes"]
    assert m["format"] == "empas.quantized/1" and m["model_class"] == "LlamaForCausalLM"
    q = m["modules"]["model.layers.0.self_attn.q_proj"]
    assert q == {
        "kind": "packed",
        "bits": 2,
        "group_size": 128,
        "symmetric": True,
        "in_features": 64,
        "out_features": 64,
        "bias": None,
    }
    assert m["modules"]["model.layers.3.mlp.down_proj"]["kind"] == "fp16"
    assert (saved / "config.json").is_file()


def test_dropped_block_checkpoint(tiny_model_path, tiny_profile, tmp_path):
    plan = tiny_profile.plan([4, 0, 4, 8])
    model = _load(tiny_model_path)
    path = empas.save_quantized(model, plan, tmp_path / "d")
    m = json.loads((path / MANIFEST).read_text())
    assert m["dropped_blocks"] == ["model.layers.1"]
    # the dropped block's norms are counted by the profile but not stored
    blk = model.model.layers[1]
    leftover = sum(p.numel() * p.element_size() for n, p in blk.named_parameters() if "norm" in n)
    assert m["tensor_bytes"] == plan.predicted_bytes - leftover
    loaded = empas.load_quantized(path)
    ref = empas.apply(_load(tiny_model_path), plan, mode="packed")
    assert torch.equal(_logits(loaded), _logits(ref))


def test_asymmetric_plan_packs_zero_points(tiny_model_path, calib_texts):
    prof = empas.profile(
        tiny_model_path,
        calib_texts,
        choices=(3, 4),
        symmetric=False,
        group_size=32,
        n_tokens=512,
        seq_len=64,
        progress=False,
    )
    plan = prof.plan([3, 4, 3, 16])
    assert plan.quantizer["zero_bytes"] == 1
    fake = empas.apply(_load(tiny_model_path), plan, mode="fake")
    packed = empas.apply(_load(tiny_model_path), plan, mode="packed")
    assert packed.model.layers[0].self_attn.q_proj.zeros.dtype == torch.uint8
    assert torch.equal(_logits(fake), _logits(packed))
    assert weight_bytes(packed) == plan.predicted_bytes


def test_no_overwrite_without_force_and_atomic(tiny_model_path, mixed, saved, tmp_path):
    model = _load(tiny_model_path)
    with pytest.raises(FileExistsError, match="force"):
        empas.save_quantized(model, mixed, saved)
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        empas.save_quantized(model, mixed, out)
    assert (out / "keep.txt").read_text() == "user data"
    empas.save_quantized(model, mixed, out, force=True)
    assert not (out / "keep.txt").exists() and (out / MANIFEST).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no temporary leftovers
    # the original model was left unchanged by saving
    assert torch.equal(_logits(model), _logits(_load(tiny_model_path)))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_checkpoints_are_clear_errors(saved, tmp_path):
    from empas import CheckpointError

    with pytest.raises(FileNotFoundError, match="not found"):
        empas.load_quantized(tmp_path / "nope")
    d = _copy(saved, tmp_path / "flip")
    data = bytearray((d / WEIGHTS).read_bytes())
    data[-100] ^= 0xFF
    (d / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        empas.load_quantized(d)
    d = _copy(saved, tmp_path / "trunc")
    with open(d / WEIGHTS, "r+b") as f:
        f.truncate(os.path.getsize(d / WEIGHTS) - 10)
    with pytest.raises(CheckpointError, match="truncated"):
        empas.load_quantized(d)
    d = _copy(saved, tmp_path / "nomanifest")
    (d / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="not an EMPAS packed checkpoint"):
        empas.load_quantized(d)
    d = _copy(saved, tmp_path / "badjson")
    (d / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        empas.load_quantized(d)
    d = _copy(saved, tmp_path / "fmt")
    m = json.loads((d / MANIFEST).read_text())
    m["format"] = "empas.quantized/9"
    (d / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="empas.quantized/9"):
        empas.load_quantized(d)


def test_missing_scales_is_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    from empas import CheckpointError
    from empas.util.io import sha256_file as _sha256

    d = _copy(saved, tmp_path / "noscales")
    sd = load_file(str(d / WEIGHTS))
    del sd["model.layers.1.mlp.up_proj.scales"]
    save_file(sd, str(d / WEIGHTS))
    m = json.loads((d / MANIFEST).read_text())
    m["files"][WEIGHTS] = {"bytes": (d / WEIGHTS).stat().st_size, "sha256": _sha256(d / WEIGHTS)}
    (d / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=r"missing scales|up_proj\.scales"):
        empas.load_quantized(d)
    # a scales tensor of the wrong shape
    sd = load_file(str(saved / WEIGHTS))
    sd["model.layers.1.mlp.up_proj.scales"] = sd["model.layers.1.mlp.up_proj.scales"][:-1]
    save_file(sd, str(d / WEIGHTS))
    m["files"][WEIGHTS] = {"bytes": (d / WEIGHTS).stat().st_size, "sha256": _sha256(d / WEIGHTS)}
    (d / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="do not fit"):
        empas.load_quantized(d)


def test_corrupt_packed_tensor_names_the_module(saved, tmp_path):
    """A qweight of the right size but the wrong dtype fits load_state_dict; the
    PackedLinear check after loading refuses it, naming the module."""
    from safetensors.torch import load_file, save_file

    from empas import CheckpointError
    from empas.util.io import sha256_file as _sha256

    d = _copy(saved, tmp_path / "int8codes")
    sd = load_file(str(d / WEIGHTS))
    key = "model.layers.1.mlp.up_proj.qweight"
    sd[key] = sd[key].view(torch.int8)
    save_file(sd, str(d / WEIGHTS))
    m = json.loads((d / MANIFEST).read_text())
    m["files"][WEIGHTS] = {"bytes": (d / WEIGHTS).stat().st_size, "sha256": _sha256(d / WEIGHTS)}
    (d / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(
        CheckpointError,
        match=r"'model.layers.1.mlp.up_proj'.*corrupt packed weight: qweight is torch.int8",
    ):
        empas.load_quantized(d)


def test_verify_packed_equals_fake(tiny_model_path, tiny_profile, mixed, eval_texts):
    kw = dict(profile=tiny_profile, baselines=(4,), seq_len=64, max_tokens=2048, progress=False)
    a = empas.verify(tiny_model_path, [mixed], eval_texts, mode="fake", **kw)
    b = empas.verify(tiny_model_path, [mixed], eval_texts, mode="packed", **kw)
    for ra, rb in zip(a.rows, b.rows):
        assert ra["loss"] == rb["loss"], ra["name"]
    assert b.row("mixed")["bytes"] == mixed.predicted_bytes
    assert b.row("uniform-int4")["bytes"] == b.row("uniform-int4")["pred_bytes"]


def test_verify_memory_probe_loads_in_a_fresh_process(tiny_model_path, tiny_profile, eval_texts):
    rep = empas.verify(
        tiny_model_path,
        None,
        eval_texts,
        profile=tiny_profile,
        baselines=(16, 2),
        seq_len=64,
        max_tokens=512,
        memory=True,
        progress=False,
    )
    for name in ("uniform-fp16", "uniform-int2"):
        r = rep.row(name)
        assert r["loaded_bytes"] == r["pred_bytes"] and r["rss_mb"] > 0
    assert rep.row("uniform-int2")["loaded_bytes"] < rep.row("uniform-fp16")["loaded_bytes"]


@pytest.mark.gpu
def test_packed_on_cuda_matches_cpu(tiny_model_path, mixed):
    cpu = empas.apply(_load(tiny_model_path), mixed, mode="packed")
    gpu = empas.apply(_load(tiny_model_path).cuda(), mixed, mode="packed")
    for name, m in cpu.named_modules():
        if hasattr(m, "weight_dequantized"):
            g = gpu.get_submodule(name).weight_dequantized().cpu()
            assert torch.equal(g, m.weight_dequantized()), name
    with torch.no_grad():
        lg = gpu(input_ids=IDS.cuda()).logits.cpu()
    torch.testing.assert_close(lg, _logits(cpu), atol=1e-3, rtol=1e-3)


def test_plan_missing_a_unit_is_refused_then_allowed(tiny_model_path, tiny_profile, tmp_path):
    """A plan with one unit removed exported a checkpoint larger than its predicted
    bytes, with no warning (the missing block silently stayed full precision)."""
    plan = empas.search(tiny_profile, method="exact").archetypes["balanced"]
    d = plan.to_dict()
    d["units"] = d["units"][1:]
    partial = empas.Plan.from_dict(d)
    model = _load(tiny_model_path)
    with pytest.raises(empas.PlanMismatchError, match="names 3 units but was made from .* of 4"):
        empas.save_quantized(model, partial, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
    with pytest.raises(empas.PlanMismatchError, match="allow_partial"):
        empas.apply(model, partial, mode="packed")
    empas.save_quantized(model, partial, tmp_path / "ck", allow_partial=True)
    m = empas.quant.read_manifest(tmp_path / "ck")
    assert m["tensor_bytes"] > partial.predicted_bytes  # what the check guards against
