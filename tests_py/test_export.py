"""empas.export: original EMPAS artifacts, llama.cpp tensor types, GPTQModel dynamic,
transformers HqqConfig kwargs, the dispatcher and atomic, non-clobbering writes."""

from __future__ import annotations

import json
import re
import sys

import pytest

import empas
from empas import export as E

TL_PARAMS = 44_040_192  # per TinyLlama block (original layer_params)


def make_plan(units, *, quantizer=None, model="org/model", archetype=None, predicted=None):
    q = {
        "scheme": "symmetric",
        "granularity": "group",
        "group_size": 128,
        "scale_bytes": 2,
        "zero_bytes": 0,
        "bytes_model": "packed",
    }
    q.update(quantizer or {})
    d = {"format": "empas.plan/1", "model": {"name": model}, "units": units, "quantizer": q}
    if archetype:
        d["archetype"] = archetype
    if predicted:
        d["predicted"] = predicted
    return empas.Plan.from_dict(d)


def block_plan(bits, prefix="model.layers", params=1000, **kw):
    """One unit per Llama block with its seven linears."""
    return make_plan(
        [
            {
                "name": f"{prefix}.{i}",
                "bits": b,
                "params": params,
                "modules": [f"{prefix}.{i}.{lin}" for lin in E.LLAMA_LINEARS],
            }
            for i, b in enumerate(bits)
        ],
        **kw,
    )


def linear_plan(bits_by_tag, n_blocks=2, **kw):
    """One unit per linear; the same bits for a tag in every block."""
    return make_plan(
        [
            {"name": f"model.layers.{i}.{t}", "bits": b, "modules": [f"model.layers.{i}.{t}"]}
            for i in range(n_blocks)
            for t, b in bits_by_tag.items()
        ],
        **kw,
    )


@pytest.fixture(scope="module")
def example_plans():
    return empas.search(empas.load_profile("example:tinyllama"), method="exact").archetypes


# -- original EMPAS artifacts ------------------------------------------------------------


def test_original_reexport_is_byte_identical(original_plan_paths):
    for name, path in original_plan_paths.items():
        text = path.read_text()
        art = E.to_original_artifact(empas.load_plan(path))
        assert art == json.loads(text)
        assert json.dumps(art, indent=4) == text, name


def test_original_metrics_formulas_reproduce_the_shipped_files(original_plan_paths):
    for path in original_plan_paths.values():
        orig = json.loads(path.read_text())
        qm = orig["config"]["quantization_map"]
        units = [{"name": k, "bits": b, "params": TL_PARAMS} for k, b in qm.items()]
        plan = make_plan(
            units,
            model=orig["config"]["base_model"],
            archetype=orig["archetype"],
            predicted={"loss": orig["metrics"]["predicted_loss"]},
        )
        assert E.to_original_artifact(plan) == orig
        # the same from explicit layer_params on the imported plan (its params are 0)
        imported = empas.load_plan(path)
        art = E.to_original_artifact(imported, layer_params=[TL_PARAMS] * len(qm))
        assert art["metrics"] == orig["metrics"]


def test_original_roundtrip_of_search_archetypes(example_plans):
    for name, plan in example_plans.items():
        art = E.to_original_artifact(plan)
        assert list(art) == ["archetype", "metrics", "config"]
        assert list(art["metrics"]) == [
            "predicted_loss",
            "predicted_vram_mb",
            "predicted_latency_score",
        ]
        assert art["archetype"] == name
        assert art["config"]["base_model"] == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
        assert art["metrics"]["predicted_loss"] == plan.predicted_loss
        back = empas.Plan.from_json(json.dumps(art))
        assert back.bits == plan.bits and back.unit_names == plan.unit_names
        assert art["metrics"]["predicted_vram_mb"] == pytest.approx(
            1024 + sum(TL_PARAMS * b / 8 for b in plan.bits) / 2**20
        )


def test_original_block_plan_with_module_names():
    plan = block_plan([4, 16, 2], params=2**20, model="m")
    art = E.to_original_artifact(plan, base_model="org/other", archetype="mine")
    assert art == {
        "archetype": "mine",
        "metrics": {
            "predicted_vram_mb": 1024 + (4 + 16 + 2) / 8,
            "predicted_latency_score": 22 / 48 * 100,
        },
        "config": {
            "base_model": "org/other",
            "quantization_map": {"layer_0": 4, "layer_1": 16, "layer_2": 2},
        },
    }
    assert empas.Plan.from_json(json.dumps(art)).bits == [4, 16, 2]


def test_original_vram_unknown_without_params():
    units = [{"name": f"layer_{i}", "bits": 4} for i in range(3)]
    art = E.to_original_artifact(make_plan(units, predicted={"loss": 2.5}))
    assert art["metrics"] == {"predicted_loss": 2.5, "predicted_latency_score": 25.0}
    assert empas.Plan.from_json(json.dumps(art)).predicted_loss == 2.5


@pytest.mark.parametrize(
    "units, match",
    [
        ([{"name": "model.layers.0.mlp", "bits": 4, "modules": ["model.layers.0.mlp.up_proj"]}],
         "not a decoder block"),
        ([{"name": "model.layers.0.self_attn.q_proj", "bits": 4}], "not a decoder block"),
        ([{"name": "layer_0", "bits": 4}, {"name": "layer_2", "bits": 4}], "numbered 0..1"),
        ([{"name": "layer_0", "bits": 4}, {"name": "model.layers.1", "bits": 4}], "mix block"),
        ([{"name": "layer_0", "bits": 4}, {"name": "layer_1", "bits": 0}], "'layer_1' is dropped"),
        ([{"name": "model.layers.0", "bits": 4, "modules": ["lm_head"]}], "not a decoder block"),
    ],
)  # fmt: skip
def test_original_rejects_non_block_plans(units, match):
    with pytest.raises(ValueError, match=match):
        E.to_original_artifact(make_plan(units))


def test_original_bad_arguments():
    plan = make_plan([{"name": "layer_0", "bits": 4}], model="")
    with pytest.raises(ValueError, match="base_model"):
        E.to_original_artifact(plan)
    with pytest.raises(ValueError, match="layer_params must be 1 positive"):
        E.to_original_artifact(plan, "x", layer_params=[1, 2])
    with pytest.raises(TypeError, match="empas.Plan"):
        E.to_original_artifact({"units": []})


def test_write_original_artifacts(tmp_path, example_plans, original_plan_paths):
    out = tmp_path / "artifacts"
    paths = E.write_original_artifacts(example_plans, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "balanced.json",
        "max_accuracy.json",
        "max_compression.json",
    ]  # and no temp files
    for name, path in paths.items():
        assert empas.load_plan(path).bits == example_plans[name].bits
        assert json.loads(path.read_text())["archetype"] == name

    # one existing target: nothing is written, the error names it
    (out / "balanced.json").write_text("keep")
    (out / "max_accuracy.json").unlink()
    with pytest.raises(FileExistsError, match="balanced.json"):
        E.write_original_artifacts(example_plans, out)
    assert (out / "balanced.json").read_text() == "keep"
    assert not (out / "max_accuracy.json").exists()

    E.write_original_artifacts(example_plans, out, force=True)
    assert empas.load_plan(out / "balanced.json").bits == example_plans["balanced"].bits
    assert len(list(out.iterdir())) == 3

    imported = {n: empas.load_plan(p) for n, p in original_plan_paths.items()}
    again = E.write_original_artifacts(imported, tmp_path / "again")
    for n, p in again.items():
        assert p.read_text() == original_plan_paths[n].read_text()


def test_write_original_artifacts_bad_input(tmp_path, example_plans):
    with pytest.raises(ValueError, match="not a plain file name"):
        E.write_original_artifacts({"../x": example_plans["balanced"]}, tmp_path)
    with pytest.raises(ValueError, match="non-empty"):
        E.write_original_artifacts({}, tmp_path)
    bad = {"balanced": example_plans["balanced"], "x": linear_plan({"mlp.up_proj": 4})}
    with pytest.raises(ValueError, match="not a decoder block"):
        E.write_original_artifacts(bad, tmp_path / "o")
    assert not (tmp_path / "o").exists()


# -- llama.cpp ---------------------------------------------------------------------------

GGML_NAMES = {"q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0", "f16"}


def gguf_llama_tensors(n_blocks):
    """Every tensor name of a Llama GGUF with n_blocks blocks."""
    names = ["token_embd.weight", "output_norm.weight", "output.weight"]
    for i in range(n_blocks):
        for t in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                  "ffn_gate", "ffn_up", "ffn_down"):  # fmt: skip
            names.append(f"blk.{i}.{t}.weight")
    return names


def parse_tensor_type_file(text):
    """As tools/quantize/quantize.cpp does: whitespace-separated tokens, each split at
    the first '=', the pattern lowercased, the type matched case-insensitively."""
    out = []
    for tok in text.split():
        pat, sep, typ = tok.partition("=")
        assert sep and pat and typ, tok
        assert typ.lower() in GGML_NAMES, typ
        out.append((pat.lower(), typ.lower()))
    return out


def resolve(pairs, tensor):
    """llama-quant.cpp: first pattern whose regex_search hits the tensor name."""
    return next((t for p, t in pairs if re.search(p, tensor)), None)


def test_llama_cpp_exact_text():
    plan = block_plan([4, 8])
    text = E.to_llama_cpp_tensor_types(plan)
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 14
    assert lines[:7] == [
        r"^blk\.0\.attn_q\.weight$=q4_K",
        r"^blk\.0\.attn_k\.weight$=q4_K",
        r"^blk\.0\.attn_v\.weight$=q4_K",
        r"^blk\.0\.attn_output\.weight$=q4_K",
        r"^blk\.0\.ffn_gate\.weight$=q4_K",
        r"^blk\.0\.ffn_up\.weight$=q4_K",
        r"^blk\.0\.ffn_down\.weight$=q4_K",
    ]
    assert lines[13] == r"^blk\.1\.ffn_down\.weight$=q8_0"
    args = E.to_llama_cpp_args(plan)
    assert args[:2] == ["--tensor-type", r"^blk\.0\.attn_q\.weight$=q4_K"]
    assert args[1::2] == lines and set(args[0::2]) == {"--tensor-type"}


def test_llama_cpp_patterns_hit_exactly_their_tensor():
    bits = [2, 3, 4, 5, 6, 8, 16, 4, 4, 4, 4, 2]  # 12 blocks: blk.1 vs blk.10/11
    plan = block_plan(bits)
    pairs = parse_tensor_type_file(E.to_llama_cpp_tensor_types(plan))
    want = {2: "q2_k", 3: "q3_k", 4: "q4_k", 5: "q5_k", 6: "q6_k", 8: "q8_0", 16: "f16"}
    for tensor in gguf_llama_tensors(len(bits)):
        hits = [p for p, _ in pairs if re.search(p, tensor)]
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", tensor)
        if m and "norm" not in m.group(2):
            assert len(hits) == 1, tensor
            assert resolve(pairs, tensor) == want[bits[int(m.group(1))]]
        else:
            assert hits == [], tensor


def test_llama_cpp_embeddings_head_and_sub_block_units():
    plan = make_plan(
        [
            {"name": "model.embed_tokens", "bits": 8, "modules": ["model.embed_tokens"]},
            {"name": "model.layers.0.self_attn", "bits": 4,
             "modules": [f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"]},
            {"name": "model.layers.0.mlp", "bits": 3,
             "modules": [f"model.layers.0.mlp.{p}_proj" for p in ("gate", "up", "down")]},
            {"name": "lm_head", "bits": 6, "modules": ["lm_head"]},
        ]
    )  # fmt: skip
    pairs = parse_tensor_type_file(E.to_llama_cpp_tensor_types(plan))
    assert resolve(pairs, "token_embd.weight") == "q8_0"
    assert resolve(pairs, "output.weight") == "q6_k"
    assert resolve(pairs, "output_norm.weight") is None
    assert resolve(pairs, "blk.0.attn_output.weight") == "q4_k"
    assert resolve(pairs, "blk.0.ffn_down.weight") == "q3_k"


def test_llama_cpp_bad_input():
    with pytest.raises(ValueError, match="unit 'model.layers.1' has 7 bits.*round_up=True"):
        E.to_llama_cpp_tensor_types(block_plan([4, 7]))
    text = E.to_llama_cpp_tensor_types(block_plan([4, 7]), round_up=True)
    assert text.splitlines()[7] == r"^blk\.1\.attn_q\.weight$=q8_0"
    with pytest.raises(ValueError, match="unit 'model.layers.1' is dropped"):
        E.to_llama_cpp_tensor_types(block_plan([4, 0]))
    odd = make_plan([{"name": "u", "bits": 4, "modules": ["model.layers.0.mlp.act_fn"]}])
    with pytest.raises(ValueError, match="'model.layers.0.mlp.act_fn'.*no GGUF tensor name"):
        E.to_llama_cpp_tensor_types(odd)
    with pytest.raises(ValueError, match="gguf does not know arch 'nope'"):
        E.to_llama_cpp_tensor_types(block_plan([4]), arch="nope")
    weird = make_plan([{"name": "u", "bits": 4, "modules": ["model.layers.0.q proj"]}])
    with pytest.raises(ValueError, match="unexpected characters"):
        E.to_llama_cpp_tensor_types(weird)
    twice = make_plan(
        [{"name": n, "bits": 4, "modules": ["model.layers.0.mlp.up_proj"]} for n in ("a", "b")]
    )
    with pytest.raises(ValueError, match="in both unit 'a' and unit 'b'"):
        E.to_llama_cpp_tensor_types(twice)


def test_original_tool_plans_need_a_layers_prefix(original_plan_paths):
    plan = empas.load_plan(original_plan_paths["balanced"])
    for fn in (E.to_llama_cpp_tensor_types, E.to_gptqmodel_config, E.to_hqq_config_kwargs):
        with pytest.raises(ValueError, match="unit 'layer_0' lists no module names.*model_layers"):
            fn(plan)
    pairs = parse_tensor_type_file(
        E.to_llama_cpp_tensor_types(plan, model_layers_prefix="model.layers")
    )
    assert len(pairs) == 22 * 7
    qm = json.loads(original_plan_paths["balanced"].read_text())["config"]["quantization_map"]
    for i in range(22):
        assert resolve(pairs, f"blk.{i}.ffn_up.weight") == (
            "q8_0" if qm[f"layer_{i}"] == 8 else "q4_k"
        )
    odd = make_plan([{"name": "block_a", "bits": 4}])
    with pytest.raises(ValueError, match="only 'layer_<i>' or 'model.layers.<i>'"):
        E.to_llama_cpp_tensor_types(odd, model_layers_prefix="model.layers")


def test_builtin_llama_table_agrees_with_gguf(monkeypatch):
    import gguf

    n = 12
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n)
    names = ["model.embed_tokens", "lm_head"] + [
        f"model.layers.{i}.{lin}" for i in range(n) for lin in E.LLAMA_LINEARS
    ]
    for name in names:
        assert E._llama_gguf_name(name) == tmap.get_name(name), name
    assert E._llama_gguf_name("model.norm") is None
    # without gguf the built-in table gives the same file; other archs need gguf
    plan = block_plan([4, 8, 2] * 4)
    with_gguf = E.to_llama_cpp_tensor_types(plan)
    monkeypatch.setitem(sys.modules, "gguf", None)
    assert E.to_llama_cpp_tensor_types(plan) == with_gguf
    with pytest.raises(ValueError, match="arch 'qwen2' needs the gguf package"):
        E.to_llama_cpp_tensor_types(plan, arch="qwen2")


# -- GPTQModel ---------------------------------------------------------------------------


def gptq_resolve(config, module):
    """gptqmodel QuantizeConfig: '-:' keys first, then re.match on the module's full
    name, first hit wins; False = skipped (fp16), else the bits it gets."""
    dyn = config["dynamic"]
    for key in [k for k in dyn if k.startswith("-")] + [k for k in dyn if not k.startswith("-")]:
        if key.startswith("-:"):
            if re.match(key[2:], module):
                return False
        elif re.match(key.removeprefix("+:"), module):
            return dyn[key].get("bits", config["bits"])
    return config["bits"]


def test_gptqmodel_config_exact():
    cfg = E.to_gptqmodel_config(block_plan([4, 8, 4, 16]))
    assert cfg["bits"] == 4 and cfg["group_size"] == 128 and cfg["sym"] is True
    dyn = cfg["dynamic"]
    assert len(dyn) == 14
    assert dyn[r"+:^model\.layers\.1\.self_attn\.q_proj$"] == {"bits": 8}
    assert dyn[r"-:^model\.layers\.3\.mlp\.down_proj$"] == {}
    assert E.to_gptqmodel_dynamic(block_plan([4, 8, 4, 16])) == dyn
    assert E.to_gptqmodel_dynamic(block_plan([4, 8]), base_bits=8) == {
        rf"+:^model\.layers\.0\.{lin.replace('.', chr(92) + '.')}$": {"bits": 4}
        for lin in E.LLAMA_LINEARS
    }


def test_gptqmodel_every_module_resolves_to_its_bits():
    bits = [2, 3, 4, 8, 16, 4, 4, 4, 4, 4, 8, 2]  # 12 blocks: layers.1 vs layers.10/11
    cfg = E.to_gptqmodel_config(block_plan(bits, quantizer={"scheme": "asymmetric"}))
    assert cfg["bits"] == 4 and cfg["sym"] is False
    for i, b in enumerate(bits):
        for lin in E.LLAMA_LINEARS:
            assert gptq_resolve(cfg, f"model.layers.{i}.{lin}") == (False if b == 16 else b)
    assert gptq_resolve(cfg, "model.layers.12.mlp.up_proj") == 4  # not in the plan: base


def test_gptqmodel_base_bits_tie_takes_the_wider():
    assert E.to_gptqmodel_config(block_plan([2, 8]))["bits"] == 8


def test_gptqmodel_bad_input():
    with pytest.raises(ValueError, match="unit 'model.layers.0' has 5 bits.*GPTQModel"):
        E.to_gptqmodel_config(block_plan([5, 4]))
    cfg = E.to_gptqmodel_config(block_plan([5, 6, 7, 4]), round_up=True)
    assert cfg["bits"] == 8 and len(cfg["dynamic"]) == 7
    with pytest.raises(ValueError, match="dropped"):
        E.to_gptqmodel_config(block_plan([0, 4]))
    with pytest.raises(ValueError, match="nothing to quantize"):
        E.to_gptqmodel_config(block_plan([16, 16]))
    with pytest.raises(ValueError, match="base_bits must be one of"):
        E.to_gptqmodel_dynamic(block_plan([4]), base_bits=5)
    with pytest.raises(ValueError, match="no per-tensor"):
        E.to_gptqmodel_config(block_plan([4], quantizer={"granularity": "tensor"}))
    chan = block_plan([4], quantizer={"granularity": "channel"})
    assert E.to_gptqmodel_config(chan)["group_size"] == -1


def test_gptqmodel_original_tool_plan(original_plan_paths):
    plan = empas.load_plan(original_plan_paths["max_accuracy"])
    cfg = E.to_gptqmodel_config(plan, model_layers_prefix="model.layers")
    qm = json.loads(original_plan_paths["max_accuracy"].read_text())["config"]["quantization_map"]
    assert cfg["bits"] == 8
    for i in range(22):
        b = qm[f"layer_{i}"]
        assert gptq_resolve(cfg, f"model.layers.{i}.mlp.gate_proj") == (False if b == 16 else b)


# -- HQQ ---------------------------------------------------------------------------------

TAG_BITS = {
    "self_attn.q_proj": 8,
    "self_attn.k_proj": 4,
    "self_attn.v_proj": 16,
    "self_attn.o_proj": 3,
    "mlp.gate_proj": 2,
    "mlp.up_proj": 5,
    "mlp.down_proj": 6,
}


def test_hqq_kwargs_exact():
    kw = E.to_hqq_config_kwargs(linear_plan(TAG_BITS, quantizer={"group_size": 64}))
    assert kw == {
        "dynamic_config": {
            t: {"nbits": b, "group_size": 64, "axis": 1} for t, b in TAG_BITS.items() if b != 16
        },
        "skip_modules": ["lm_head", "self_attn.v_proj"],
    }
    assert E.hqq_fidelity(linear_plan(TAG_BITS))["exact"] is True
    chan = linear_plan({"mlp.up_proj": 4}, quantizer={"granularity": "channel"})
    assert E.to_hqq_config_kwargs(chan)["dynamic_config"]["mlp.up_proj"]["group_size"] is None
    head = make_plan(
        [
            {"name": "model.layers.0.mlp.up_proj", "bits": 4, "modules": ["model.layers.0.mlp.up_proj"]},
            {"name": "lm_head", "bits": 8, "modules": ["lm_head"]},
        ]
    )  # fmt: skip
    kw = E.to_hqq_config_kwargs(head)
    assert kw["skip_modules"] == [] and kw["dynamic_config"]["lm_head"]["nbits"] == 8


def test_hqq_tags_match_transformers():
    from transformers.integrations.hqq import name_to_linear_tag

    names = [f"model.layers.{i}.{lin}" for i in (0, 7, 31) for lin in E.LLAMA_LINEARS]
    names += ["lm_head", "model.embed_tokens", "transformer.h.3.attn.c_attn"]
    for n in names:
        assert E.hqq_linear_tag(n) == name_to_linear_tag(n)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # hqq's own torch.jit use
def test_hqq_config_with_transformers():
    """Real HqqConfig when hqq is installed (each linear of a Llama gets its bits through
    transformers' own prepare_for_hqq_linear); without hqq, HqqConfig refuses for that
    reason alone and transformers' tag function routes every module to its bits."""
    import torch
    from transformers import HqqConfig
    from transformers.integrations.hqq import name_to_linear_tag
    from transformers.utils import is_hqq_available

    plan = linear_plan(TAG_BITS, quantizer={"group_size": 32})
    kw = E.to_hqq_config_kwargs(plan)
    if not is_hqq_available():
        with pytest.raises(ImportError, match="HQQ"):
            HqqConfig(**kw)
        for i in range(2):
            for tag, b in TAG_BITS.items():
                t = name_to_linear_tag(f"model.layers.{i}.{tag}")
                got = kw["dynamic_config"].get(t, {}).get("nbits", 16)
                assert got == b and (t in kw["skip_modules"]) == (b == 16)
        return
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations.hqq import prepare_for_hqq_linear

    cfg = HqqConfig(**kw)
    model = LlamaForCausalLM(
        LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, vocab_size=64)
    )  # fmt: skip
    prepare_for_hqq_linear(model, quantization_config=cfg)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            qc = getattr(mod, "quant_config", None)
            want = TAG_BITS.get(name_to_linear_tag(name), 16)
            assert (16 if qc is None else qc["weight_quant_params"]["nbits"]) == want, name


def test_hqq_mixed_bits_need_allow_approx(original_plan_paths):
    plan = empas.load_plan(original_plan_paths["balanced"])  # 4 bits, layers 7 and 12 at 8
    with pytest.raises(ValueError, match="one precision per linear tag.*allow_approx=True"):
        E.to_hqq_config_kwargs(plan, model_layers_prefix="model.layers")
    kw = E.to_hqq_config_kwargs(plan, model_layers_prefix="model.layers", allow_approx=True)
    assert {v["nbits"] for v in kw["dynamic_config"].values()} == {8}
    fid = E.hqq_fidelity(plan, model_layers_prefix="model.layers")
    assert fid["exact"] is False and fid["modules"] == 154 and fid["modules_changed"] == 140
    assert fid["tags"]["mlp.up_proj"] == {"plan_bits": {4: 20, 8: 2}, "hqq_bits": 8}
    with pytest.raises(ValueError, match="nothing to quantize"):  # widest is 16 everywhere
        E.to_hqq_config_kwargs(block_plan([4, 16]), allow_approx=True)


def test_hqq_bad_input():
    with pytest.raises(ValueError, match="7 bits, which HQQ cannot store"):
        E.to_hqq_config_kwargs(linear_plan({"mlp.up_proj": 7}))
    kw = E.to_hqq_config_kwargs(linear_plan({"mlp.up_proj": 7}), round_up=True)
    assert kw["dynamic_config"]["mlp.up_proj"]["nbits"] == 8
    with pytest.raises(ValueError, match="dropped"):
        E.to_hqq_config_kwargs(block_plan([0]))
    with pytest.raises(ValueError, match="nothing to quantize"):
        E.to_hqq_config_kwargs(linear_plan({"mlp.up_proj": 16}))
    with pytest.raises(ValueError, match="multiple of 8"):
        E.to_hqq_config_kwargs(linear_plan({"mlp.up_proj": 4}, quantizer={"group_size": 12}))
    with pytest.raises(ValueError, match="no per-tensor"):
        E.to_hqq_config_kwargs(linear_plan({"mlp.up_proj": 4}, quantizer={"granularity": "tensor"}))


# -- dispatcher and files ----------------------------------------------------------------


def test_export_runtime_dispatch(example_plans):
    plan = block_plan([4, 8])
    assert E.export_runtime(plan, "llama.cpp") == E.to_llama_cpp_tensor_types(plan)
    assert E.export_runtime(plan, "gptqmodel") == E.to_gptqmodel_config(plan)
    assert E.export_runtime(plan, "hqq", allow_approx=True) == E.to_hqq_config_kwargs(
        plan, allow_approx=True
    )
    p = example_plans["balanced"]
    assert E.export_runtime(p, "empas-original") == E.to_original_artifact(p)
    with pytest.raises(
        ValueError,
        match="unknown export format 'gguf'; known: llama.cpp, gptqmodel, hqq, empas-original",
    ):
        E.export_runtime(plan, "gguf")
    with pytest.raises(TypeError):
        E.export_runtime("plan.json", "hqq")


def test_write_export(tmp_path, original_plan_paths):
    plan = block_plan([4, 4, 8])
    txt = E.write_export(plan, "llama.cpp", tmp_path / "sub" / "types.txt")
    assert txt.read_text() == E.to_llama_cpp_tensor_types(plan)
    js = E.write_export(plan, "gptqmodel", tmp_path / "gptq.json")
    assert json.loads(js.read_text()) == E.to_gptqmodel_config(plan)
    assert js.read_text().endswith("}\n")
    with pytest.raises(FileExistsError, match="gptq.json"):
        E.write_export(block_plan([8]), "gptqmodel", js)
    assert json.loads(js.read_text())["bits"] == 4
    E.write_export(block_plan([8]), "gptqmodel", js, force=True)
    assert json.loads(js.read_text())["bits"] == 8
    orig = E.write_export(
        empas.load_plan(original_plan_paths["balanced"]), "empas-original", tmp_path / "b.json"
    )
    assert orig.read_text() == original_plan_paths["balanced"].read_text()
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "b.json",
        "gptq.json",
        "sub",
        "types.txt",
    ]
    with pytest.raises(ValueError, match="dropped"):
        E.write_export(block_plan([0, 4]), "llama.cpp", tmp_path / "never.txt")
    assert not (tmp_path / "never.txt").exists()


HQQ_CHECK = r"""
import json, sys
import torch
from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
from hqq.models.hf.base import AutoHQQHFModel
from transformers import AutoModelForCausalLM, HqqConfig

path, kw = sys.argv[1], json.loads(sys.argv[2])
HqqConfig(**kw)  # transformers validates the config
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
x = torch.randint(0, model.config.vocab_size, (1, 32))
quant = {t: BaseQuantizeConfig(**c) for t, c in kw["dynamic_config"].items()}
AutoHQQHFModel.quantize_model(model, quant_config=quant, compute_dtype=torch.float32, device="cpu")
bits = {n: m.meta["nbits"] for n, m in model.named_modules() if isinstance(m, HQQLinear)}
finite = bool(torch.isfinite(model(x).logits).all())
print("RESULT " + json.dumps({"bits": bits, "finite": finite,
                              "head": type(model.lm_head).__name__}))
"""


def test_hqq_export_quantizes_the_model_with_hqq(tiny_profile, tiny_model_path):
    """The HqqConfig kwargs of a real plan: transformers accepts them, and the hqq
    library quantizes the model on the CPU with exactly the exported bits per tag
    (transformers 5.23 cannot load HQQ models itself: "not available yet"). hqq
    lives in .venv/hqq (scripts/setup.sh --dev), used in a subprocess only."""
    import os
    import subprocess
    from pathlib import Path

    hqq_dir = Path(sys.prefix) / "hqq"
    if not (hqq_dir / "hqq").is_dir():
        pytest.skip("hqq not installed: scripts/setup.sh --dev puts it in .venv/hqq")
    res = empas.search(tiny_profile, method="exact", allowed_bits=[2, 3, 4, 8])
    plan = res.archetypes["balanced"]
    kw = E.to_hqq_config_kwargs(plan, allow_approx=True)
    fid = E.hqq_fidelity(plan)
    assert set(kw["dynamic_config"]) == set(fid["tags"]) and kw["skip_modules"] == ["lm_head"]
    env = dict(os.environ, PYTHONPATH=str(hqq_dir))
    proc = subprocess.run(
        [sys.executable, "-c", HQQ_CHECK, str(tiny_model_path), json.dumps(kw)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    expected = {
        name: kw["dynamic_config"][E.hqq_linear_tag(name)]["nbits"]
        for mods in plan.modules.values()
        for name in mods
    }
    assert out["bits"] == expected
    assert out["finite"] and out["head"] == "Linear"
