"""Packed embeddings and tied heads: an embedding unit in packed mode becomes a
PackedEmbedding (HalfEmbedding at 16 bits) and a head tied to it a PackedLinear
sharing its buffers (stored once, as the profile counts the tensor). Before, packed
mode refused both ("packed mode stores linear layers" / "cannot split it"), so a
plan with the embedding or a tied head could not be deployed packed, and a tied
model's head (a fifth of SmolLM2's weights) stayed dense on the decode path."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import empas  # noqa: E402
from empas.errors import CheckpointError, PlanMismatchError  # noqa: E402
from empas.quant import weight_bytes  # noqa: E402
from empas.quant.nn import HalfEmbedding, HalfLinear, PackedEmbedding, PackedLinear  # noqa: E402

VOCAB = 300
IDS = torch.arange(7, 7 + 64).view(2, 32) * 13 % VOCAB


def _model(tied: bool = True, hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg).eval()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def tied():
    return _model(tied=True)


@pytest.fixture(scope="module")
def tied_profile(tied):
    calib = torch.arange(16 * 32).view(16, 32) * 7 % VOCAB
    return empas.profile(
        tied, calib, embeddings=True, head=True, choices=(2, 4, 8), seq_len=32, batch_size=8,
        progress=False, symmetric=False,
    )  # fmt: skip


def _plan(profile, emb_bits: int):
    names = profile.unit_names
    assert names[-1] == "model.embed_tokens+lm_head"  # one unit: one shared tensor
    return profile.plan([4] * (len(names) - 1) + [emb_bits])


@pytest.mark.parametrize("emb_bits", [2, 4, 8, 16])
def test_tied_pair_packs_once_and_matches_fake_mode(tied, tied_profile, emb_bits):
    plan = _plan(tied_profile, emb_bits)
    fake = empas.apply(copy.deepcopy(tied), plan, mode="fake")
    packed = empas.apply(copy.deepcopy(tied), plan, mode="packed")
    emb, head = packed.model.embed_tokens, packed.lm_head
    if emb_bits == 16:
        assert isinstance(emb, HalfEmbedding) and isinstance(head, HalfLinear)
        assert head.weight is emb.weight
    else:
        assert isinstance(emb, PackedEmbedding) and isinstance(head, PackedLinear)
        assert head.qweight is emb.qweight and head.scales is emb.scales
        assert head.zeros is emb.zeros  # asymmetric profile: zero points shared too
        assert torch.equal(emb.weight_dequantized(), fake.model.embed_tokens.weight)
    # stored once: the bytes are the plan's prediction, exactly
    assert weight_bytes(packed) == plan.predicted_bytes
    # embeddings are the fake-quantized rows bit for bit; logits within fp32 rounding
    # (the fused head kernel sums in another order than F.linear)
    with torch.no_grad():
        assert torch.equal(packed.model.embed_tokens(IDS), fake.model.embed_tokens(IDS))
    torch.testing.assert_close(_logits(packed), _logits(fake), rtol=1e-4, atol=1e-4)


def test_tied_pair_round_trips_through_a_checkpoint(tied, tied_profile, tmp_path):
    plan = _plan(tied_profile, 8)
    packed = empas.apply(copy.deepcopy(tied), plan, mode="packed")
    path = empas.save_quantized(packed, plan, tmp_path / "ck")
    m = json.loads((path / "empas_quantized.json").read_text())
    assert m["modules"]["model.embed_tokens"]["kind"] == "packed_embedding"
    assert m["modules"]["model.embed_tokens"]["dtype"] == "float32"
    assert m["tied"]["lm_head.qweight"] == "model.embed_tokens.qweight"
    assert m["tensor_bytes"] == plan.predicted_bytes
    loaded = empas.load_quantized(path)
    assert loaded.lm_head.qweight is loaded.model.embed_tokens.qweight
    assert torch.equal(_logits(loaded), _logits(packed))


def test_applied_restores_the_tied_pair(tied, tied_profile):
    model = copy.deepcopy(tied)
    before = _logits(model)
    with empas.applied(model, _plan(tied_profile, 2), mode="packed"):
        assert isinstance(model.lm_head, PackedLinear)
    assert isinstance(model.model.embed_tokens, torch.nn.Embedding)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(_logits(model), before)


@pytest.mark.parametrize("which", ["head", "embeddings"])
def test_a_unit_with_one_side_of_a_tied_tensor_packs_both(tied, which):
    """The profile quantizes the shared tensor (both sides) in place, so packed mode
    packs both sides too (before: FormatError 'cannot split it')."""
    calib = torch.arange(8 * 32).view(8, 32) * 5 % VOCAB
    prof = empas.profile(
        tied, calib, choices=(4,), seq_len=32, batch_size=8, progress=False,
        head=which == "head", embeddings=which == "embeddings",
    )  # fmt: skip
    plan = prof.plan([4] * prof.n_units)
    packed = empas.apply(copy.deepcopy(tied), plan, mode="packed")
    fake = empas.apply(copy.deepcopy(tied), plan, mode="fake")
    assert packed.lm_head.qweight is packed.model.embed_tokens.qweight
    assert weight_bytes(packed) == plan.predicted_bytes
    torch.testing.assert_close(_logits(packed), _logits(fake), rtol=1e-4, atol=1e-4)


def test_two_precisions_for_one_tied_tensor_are_refused(tied, tied_profile):
    d = _plan(tied_profile, 8).to_dict()
    unit = d["units"][-1]
    d["units"][-1] = {**unit, "name": "emb", "modules": ["model.embed_tokens"]}
    d["units"].append({**unit, "name": "head", "modules": ["lm_head"], "bits": 4})
    model = copy.deepcopy(tied)
    for mode in ("packed", "fake"):
        with pytest.raises(PlanMismatchError, match="share one tied tensor"):
            empas.apply(model, d, mode=mode, allow_partial=True)
    assert isinstance(model.model.embed_tokens, torch.nn.Embedding)  # nothing changed
    assert torch.equal(_logits(model), _logits(tied))


def test_an_untied_embedding_packs_alone():
    model = _model(tied=False)
    calib = torch.arange(8 * 32).view(8, 32) * 3 % VOCAB
    prof = empas.profile(
        model, calib, choices=(4,), seq_len=32, batch_size=8, progress=False, embeddings=True
    )
    plan = prof.plan([4] * prof.n_units)
    packed = empas.apply(copy.deepcopy(model), plan, mode="packed")
    assert isinstance(packed.model.embed_tokens, PackedEmbedding)
    assert isinstance(packed.lm_head, torch.nn.Linear)  # not in the plan: untouched
    assert weight_bytes(packed) == plan.predicted_bytes
    fake = empas.apply(copy.deepcopy(model), plan, mode="fake")
    assert torch.equal(_logits(packed), _logits(fake))


@pytest.mark.parametrize(("bits", "dim"), [(3, 60), (4, 64), (3, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_embedding_rows_equal_the_dequantized_table(bits, dim, dtype):
    """Rows not starting on a byte (3 bits x 60) take the whole-table path; both
    give the dequantized table's rows, in the table's dtype."""
    torch.manual_seed(1)
    w = torch.randn(50, dim).to(dtype)
    e = PackedEmbedding.from_weight(w, bits, 32, False, False)
    ids = torch.tensor([[0, 49, 7], [7, 3, 3]])
    got = e(ids)
    assert got.dtype == dtype and got.shape == (2, 3, dim)
    assert torch.equal(got, e.weight_dequantized(dtype)[ids])


def test_packed_embedding_bad_ids_name_the_module():
    e = PackedEmbedding.from_weight(torch.randn(10, 64), 4, 32, True, False)
    e.module_name = "model.embed_tokens"
    with pytest.raises(IndexError, match=r"'model.embed_tokens'.*\[0, 10\)"):
        e(torch.tensor([3, 10]))
    with pytest.raises(IndexError, match="in \\[0, 10\\)"):
        e(torch.tensor([-1]))
    with pytest.raises(TypeError, match="ids must be int64 or int32"):
        e(torch.tensor([1.0]))


def test_a_corrupt_packed_embedding_in_a_checkpoint_is_an_error(tied, tied_profile, tmp_path):
    from safetensors.torch import load_file, save_file

    from empas.util.io import sha256_file

    path = empas.save_quantized(copy.deepcopy(tied), _plan(tied_profile, 4), tmp_path / "ck")
    sd = load_file(str(path / "model.safetensors"))
    sd["model.embed_tokens.scales"] = sd["model.embed_tokens.scales"][:-1].clone()
    save_file(sd, str(path / "model.safetensors"))
    mf = json.loads((path / "empas_quantized.json").read_text())
    mf["files"]["model.safetensors"]["sha256"] = sha256_file(path / "model.safetensors")
    mf["files"]["model.safetensors"]["bytes"] = (path / "model.safetensors").stat().st_size
    (path / "empas_quantized.json").write_text(json.dumps(mf))
    with pytest.raises(CheckpointError, match="model.embed_tokens"):
        empas.load_quantized(path)


def test_a_manifest_embedding_without_dtype_is_refused(tied, tied_profile, tmp_path):
    path = empas.save_quantized(copy.deepcopy(tied), _plan(tied_profile, 4), tmp_path / "ck")
    mf = json.loads((path / "empas_quantized.json").read_text())
    del mf["modules"]["model.embed_tokens"]["dtype"]
    (path / "empas_quantized.json").write_text(json.dumps(mf))
    with pytest.raises(
        CheckpointError, match=r"modules\['model.embed_tokens'\] is missing 'dtype'"
    ):
        empas.load_quantized(path)
