"""``empas.export``: a plan as the files and configs that other tools read.

Every exporter takes an :class:`~empas.plan.Plan` and validates it first:
dropped blocks (0 bits), bit widths the target cannot store, unit names or
modules it cannot address all raise ``ValueError`` naming the unit or module.

Formats (``export_runtime(plan, fmt)`` / ``write_export(plan, fmt, path)``):

* ``"empas-original"``: the original EMPAS tool's artifact (``balanced.json``,
  ``max_accuracy.json``, ``max_compression.json``)::

      {"archetype": "balanced",
       "metrics": {"predicted_loss": 3.38, "predicted_vram_mb": 1528.0,
                   "predicted_latency_score": 27.27},
       "config": {"base_model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
                  "quantization_map": {"layer_0": 4, "layer_1": 4, ...}}}

  One entry per decoder block, ``layer_<i>`` for i = 0..n_blocks-1 (the
  original wrote ``enumerate(genome)``), so only block-level plans export.
  ``predicted_vram_mb`` and ``predicted_latency_score`` are the original
  proxy's numbers, not EMPAS's exact bytes (those stay in ``plan.predicted``):
  vram_mb = 1024 + Σ_i params_i · bits_i / 8 / 2**20 (MiB; 1024 MiB fixed
  overhead) and latency_score = 100 · Σ_i bits_i / (16 · n_blocks) (percent of
  all-fp16). These two formulas reproduce the three shipped artifacts
  (shared/data/empas-tinyllama, layer_params 44,040,192 per block) exactly.
  The original's ``src/core/proxy_evaluator.py`` (a later revision than the
  one that wrote the artifacts) computes the score the same way but its VRAM
  term differs (256 MB overhead, ``params * bits / 0.8``); we follow the
  artifacts. Where unit ``params`` are unknown (plans imported from original
  files carry 0), the VRAM is taken from the imported file's own metrics
  (``provenance.original_metrics``) when its latency score still matches the
  bits, else from ``layer_params=``; a metric that stays unknown (also a plan
  without a predicted loss) is left out, since the importer rejects nulls. Written with
  ``json.dumps(indent=4)`` and no final newline, like the original, so an
  imported artifact re-exports byte for byte.

* ``"llama.cpp"``: the text of ``llama-quantize --tensor-type-file FILE``
  (tools/quantize/quantize.cpp: ``parse_tensor_type_file`` reads
  whitespace-separated ``pattern=type`` tokens with ``file >> arg``, so the
  file has no comments; the pattern is lowercased and, in
  src/llama-quant.cpp, compiled as a ``std::regex`` (ECMAScript) and tried
  with ``regex_search`` on each GGUF tensor name, first match wins; the type
  is matched case-insensitively against ``ggml_type_name``)::

      ^blk\\.0\\.attn_q\\.weight$=q4_K
      ^blk\\.0\\.attn_k\\.weight$=q4_K
      ...
      ^blk\\.7\\.ffn_down\\.weight$=q8_0

  One anchored line per tensor. Bits → GGML type: 2 q2_K, 3 q3_K, 4 q4_K,
  5 q5_K, 6 q6_K, 8 q8_0, 16 f16. 7 bits has no GGML type: ValueError unless
  ``round_up=True`` (then q8_0). HF → GGUF names come from gguf-py's
  ``gguf.get_tensor_name_map`` (gguf-py/gguf/tensor_mapping.py) when the
  ``gguf`` package is importable, else from a built-in Llama table
  (``model.layers.{i}.self_attn.{q,k,v,o}_proj`` → ``blk.{i}.attn_{q,k,v,output}``,
  ``mlp.{gate,up,down}_proj`` → ``blk.{i}.ffn_{gate,up,down}``,
  ``model.embed_tokens`` → ``token_embd``, ``lm_head`` → ``output``).
  llama-quantize applies overrides only when its positional type is a
  quantized one (``ggml_is_quantized(default_type)``): run e.g.
  ``llama-quantize --tensor-type-file plan.txt model-f16.gguf out.gguf Q8_0``;
  tensors the file does not name follow that type's mix. K-quants need rows
  divisible by 256 (else llama.cpp falls back, e.g. q4_K → q5_0). The plan's
  group size and scheme do not carry over (GGML types fix their own blocks).
  ``to_llama_cpp_args`` gives the same as repeated ``--tensor-type`` args.

* ``"gptqmodel"``: ``QuantizeConfig(**to_gptqmodel_config(plan))`` for
  ModelCloud/GPTQModel (README "Dynamic Quantization";
  gptqmodel/quantization/config.py ``dynamic_get``: negative ``-:`` keys are
  tried first, then ``re.match(pattern, module.full_name)``, first match
  wins; ``-:`` skips the module, i.e. keeps it fp16)::

      {"bits": 4, "group_size": 128, "sym": True,
       "dynamic": {"+:^model\\.layers\\.7\\.self_attn\\.q_proj$": {"bits": 8},
                   "-:^model\\.layers\\.1\\.mlp\\.down_proj$": {}}}

  ``bits`` is the most common quantized width (by module count; ties → the
  wider); only modules that differ from it appear in ``dynamic``, each with
  an exact anchored pattern. GPTQModel's ``bits`` choices are 2, 3, 4, 8:
  5..7 raise unless ``round_up=True`` (then 8). group_size: the plan's group
  size, or -1 for per-channel; per-tensor plans raise. Layer modules that the
  plan does not list get the base bits.

* ``"hqq"``: ``transformers.HqqConfig(**to_hqq_config_kwargs(plan))``
  (transformers 5.23 utils/quantization_config.py ``HqqConfig`` and
  integrations/hqq.py ``prepare_for_hqq_linear``: ``dynamic_config`` keys
  are *linear tags*, the module name without ``model``, ``layers`` and
  numeric parts, e.g. ``model.layers.31.self_attn.k_proj`` →
  ``self_attn.k_proj``; tags missing from ``dynamic_config`` stay
  unquantized; ``skip_modules`` lists tags to leave alone)::

      {"dynamic_config": {"self_attn.q_proj": {"nbits": 4, "group_size": 128, "axis": 1},
                          ...},
       "skip_modules": ["lm_head", "mlp.down_proj"]}

  HQQ through transformers has one setting per tag for *all* layers, so a
  plan whose bits vary across layers cannot be expressed: ValueError unless
  ``allow_approx=True``, which gives each tag the widest bits the plan uses
  for it (16 → skipped); :func:`hqq_fidelity` reports what that changes.
  nbits: hqq 0.2.8 ``Quantizer.SUPPORTED_BITS`` has 8, 6, 5, 4, 3, 2 (5 and
  6 are stored in uint8); 7 raises unless ``round_up=True``. group_size: the
  plan's (a multiple of 8), or None for per-channel; axis 1 (what
  transformers picks by default). HQQ always stores a zero-point: the plan's
  scheme does not carry over. Note: transformers 5.23 builds this HqqConfig
  (checked with hqq 0.2.8) but its ``from_pretrained`` still raises
  "QuantizationMethod.HQQ is not available yet" (quantizers/base.py
  ``get_quantize_ops``); the kwargs are for the versions that load it.

Sources (read, not copied): github.com/ggml-org/llama.cpp tools/quantize/quantize.cpp,
src/llama-quant.cpp, gguf-py/gguf/tensor_mapping.py; github.com/ModelCloud/GPTQModel
README.md and gptqmodel/quantization/config.py; github.com/mobiusml/hqq
hqq/core/quantize.py (0.2.8.post1 sdist); transformers 5.23.0 as installed; the
original EMPAS artifacts in shared/data/empas-tinyllama and its export/proxy scripts.

Plans imported from the original tool have units ``layer_<i>`` and no module
names. The runtime exports need module names; pass
``model_layers_prefix="model.layers"`` to expand each ``layer_<i>`` (or
``<prefix>.<i>`` unit without modules) to the seven Llama linears
``<prefix>.<i>.self_attn.{q,k,v,o}_proj`` and ``<prefix>.<i>.mlp.{gate,up,down}_proj``;
without it they raise.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .plan import Plan
from .quant.config import QuantConfig
from .util.io import atomic_write_text

FORMATS = ("llama.cpp", "gptqmodel", "hqq", "empas-original")

LLAMA_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)

GGML_TYPES = {2: "q2_K", 3: "q3_K", 4: "q4_K", 5: "q5_K", 6: "q6_K", 8: "q8_0", 16: "f16"}
GPTQMODEL_BITS = (2, 3, 4, 8)
HQQ_BITS = (2, 3, 4, 5, 6, 8)

# Original EMPAS proxy constants (see the module docstring).
ORIGINAL_OVERHEAD_MB = 1024.0
_MIB = 1024**2

# Built-in HF -> GGUF names for the Llama family (gguf-py tensor_mapping.py).
_LLAMA_BLOCK_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LLAMA_GLOBAL_GGUF = {"model.embed_tokens": "token_embd", "lm_head": "output"}
_LLAMA_BLOCK_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")

_NAME_RE = re.compile(r"[A-Za-z0-9_.]+")
_LAYER_RE = re.compile(r"layer_(\d+)")
_BLOCK_RE = re.compile(r"(.+)\.(\d+)")


# -- shared validation -----------------------------------------------------------------


def _check_plan(plan: Any) -> Plan:
    if not isinstance(plan, Plan):
        raise TypeError(f"expected an empas.Plan, got {type(plan).__name__}")
    return plan


def _block_index(name: str, prefix: str | None) -> int | None:
    """i for 'layer_<i>' or '<prefix>.<i>' (any prefix when prefix is None)."""
    m = _LAYER_RE.fullmatch(name)
    if m:
        return int(m.group(1))
    m = _BLOCK_RE.fullmatch(name)
    if m and (prefix is None or m.group(1) == prefix):
        return int(m.group(2))
    return None


def _module_bits(plan: Plan, model_layers_prefix: str | None) -> dict[str, tuple[str, int]]:
    """Linear module name -> (unit name, bits), in plan order. Raises on drops,
    unknown modules and modules listed twice."""
    out: dict[str, tuple[str, int]] = {}
    for unit, bits in zip(plan.unit_names, plan.bits):
        if bits == 0:
            raise ValueError(
                f"unit '{unit}' is dropped (0 bits); this format cannot remove a block"
            )
        mods = plan.modules[unit]
        if not mods:
            i = None if model_layers_prefix is None else _block_index(unit, model_layers_prefix)
            if i is None:
                hint = (
                    "pass model_layers_prefix='model.layers' to expand block units to the Llama "
                    "linears"
                    if model_layers_prefix is None
                    else f"only 'layer_<i>' or '{model_layers_prefix}.<i>' units can be expanded"
                )
                raise ValueError(f"unit '{unit}' lists no module names ({hint})")
            mods = [f"{model_layers_prefix}.{i}.{lin}" for lin in LLAMA_LINEARS]
        for m in mods:
            if not _NAME_RE.fullmatch(m):
                raise ValueError(f"unit '{unit}': module name {m!r} has unexpected characters")
            if m in out:
                raise ValueError(f"module '{m}' is in both unit '{out[m][0]}' and unit '{unit}'")
            out[m] = (unit, bits)
    return out


def _supported(bits: int, allowed: Sequence[int], what: str, where: str, round_up: bool) -> int:
    """bits if `allowed` has it (16 always passes), else the next wider allowed width
    when round_up, else ValueError."""
    if bits == 16 or bits in allowed:
        return bits
    wider = [b for b in allowed if b > bits]
    if round_up and wider:
        return min(wider)
    raise ValueError(
        f"{where} has {bits} bits, which {what} cannot store (it has "
        f"{sorted(b for b in allowed if b != 16)} and 16)"
        + ("; pass round_up=True to use the next wider width" if wider and not round_up else "")
    )


def _escape(name: str) -> str:
    """Exact-match regex for a [A-Za-z0-9_.] name (valid in Python re, PCRE and ECMAScript)."""
    return "^" + name.replace(".", r"\.") + "$"


def _group_size(plan: Plan, per_channel: Any, target: str) -> Any:
    g = QuantConfig.group_size_of(plan.quantizer, target)
    return g if g > 0 else per_channel


# -- original EMPAS artifacts ----------------------------------------------------------


def _original_units(plan: Plan) -> list[tuple[int, str, int, int]]:
    """(block index, unit name, bits, params) sorted by index; raises unless the plan
    has exactly one unit per decoder block 0..n-1."""
    rows, prefixes = [], set()
    for u in plan.to_dict()["units"]:
        unit, bits, mods = u["name"], int(u["bits"]), list(u.get("modules") or [])
        i = _block_index(unit, None)
        if i is None or any(not m.startswith(unit + ".") for m in mods):
            raise ValueError(
                f"unit '{unit}' is not a decoder block ('layer_<i>' or '<prefix>.<i>'); the "
                "original EMPAS format holds block-level plans only"
            )
        if bits == 0:
            raise ValueError(f"unit '{unit}' is dropped (0 bits); the original EMPAS cannot drop")
        prefixes.add("layer_" if _LAYER_RE.fullmatch(unit) else unit.rsplit(".", 1)[0])
        rows.append((i, unit, bits, int(u.get("params") or 0)))
    if len(prefixes) > 1:
        raise ValueError(f"units mix block prefixes {sorted(prefixes)}; expected one")
    rows.sort()
    if [r[0] for r in rows] != list(range(len(rows))):
        raise ValueError(
            f"block units must be numbered 0..{len(rows) - 1} (one per block), got "
            f"{[r[0] for r in rows]}"
        )
    return rows


def original_latency_score(bits: Sequence[int]) -> float:
    """The original proxy's latency score: 100 · Σ bits / (16 · n) (percent of all-fp16)."""
    return sum(bits) / (16 * len(bits)) * 100.0


def original_vram_mb(bits: Sequence[int], params: Sequence[int]) -> float:
    """The original proxy's VRAM in MiB: 1024 + Σ params · bits / 8 / 2**20."""
    return sum(p * (b / 8) for p, b in zip(params, bits)) / _MIB + ORIGINAL_OVERHEAD_MB


def to_original_artifact(
    plan: Plan,
    base_model: str | None = None,
    *,
    archetype: str | None = None,
    layer_params: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The plan as an original EMPAS artifact (see the module docstring).

    base_model: defaults to the plan's model name (ValueError if neither).
    archetype: defaults to ``plan.archetype`` (may be null). layer_params: the
    parameter count of each block (n_blocks ints), used when the plan's units
    do not carry it."""
    _check_plan(plan)
    rows = _original_units(plan)
    bits = [r[2] for r in rows]
    base = base_model if base_model is not None else plan.model_name
    if not isinstance(base, str) or not base:
        raise ValueError("the plan names no model; pass base_model='org/name'")
    params = [r[3] for r in rows]
    if layer_params is not None:
        if len(layer_params) != len(rows) or any(
            isinstance(p, bool) or not isinstance(p, int) or p <= 0 for p in layer_params
        ):
            raise ValueError(f"layer_params must be {len(rows)} positive ints (one per block)")
        params = list(layer_params)
    latency = original_latency_score(bits)
    vram: float | None = None
    if all(p > 0 for p in params):
        vram = original_vram_mb(bits, params)
    else:
        prov = plan.provenance
        om = prov.get("original_metrics") or {}
        old = om.get("predicted_latency_score")
        if (
            prov.get("imported_from") == "empas"
            and isinstance(old, (int, float))
            and abs(old - latency) <= 1e-9 * max(1.0, abs(latency))
        ):
            vram = om.get("predicted_vram_mb")
    metrics = {
        "predicted_loss": plan.predicted_loss,
        "predicted_vram_mb": vram,
        "predicted_latency_score": latency,
    }
    return {
        "archetype": archetype if archetype is not None else plan.archetype,
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        "config": {
            "base_model": base,
            "quantization_map": {f"layer_{i}": b for i, _, b, _ in rows},
        },
    }


def _original_text(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=4, allow_nan=False)


def _check_free(paths: Sequence[Path], force: bool) -> None:
    if force:
        return
    for p in paths:
        if p.exists():
            raise FileExistsError(f"{p} exists; pass force=True to overwrite it")


def write_original_artifacts(
    plans_by_archetype: Mapping[str, Plan], outdir: str | os.PathLike, force: bool = False
) -> dict[str, Path]:
    """Writes ``<archetype>.json`` per plan into outdir (atomically), in the original
    EMPAS format with the dict key as archetype. All plans are exported and all
    targets checked before any file is written. Returns archetype -> path."""
    if not isinstance(plans_by_archetype, Mapping) or not plans_by_archetype:
        raise ValueError("plans_by_archetype must be a non-empty {archetype: Plan} mapping")
    outdir = Path(outdir)
    texts: dict[str, tuple[Path, str]] = {}
    for name, plan in plans_by_archetype.items():
        if (
            not isinstance(name, str)
            or not re.fullmatch(r"[A-Za-z0-9_.-]+", name)
            or name[0] == "."
        ):
            raise ValueError(f"archetype {name!r} is not a plain file name")
        text = _original_text(to_original_artifact(plan, archetype=name))
        texts[name] = (outdir / f"{name}.json", text)
    _check_free([p for p, _ in texts.values()], force)
    outdir.mkdir(parents=True, exist_ok=True)
    for path, text in texts.values():
        atomic_write_text(path, text)
    return {name: path for name, (path, _) in texts.items()}


# -- llama.cpp -------------------------------------------------------------------------


def _gguf_namer(arch: str, n_blocks: int):
    """HF module name -> GGUF tensor base name (None if unknown), via gguf-py when
    importable, else the built-in Llama table."""
    try:
        import gguf
    except ImportError:
        gguf = None
    if gguf is not None:
        archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
        if arch not in archs:
            raise ValueError(f"gguf does not know arch {arch!r} (e.g. 'llama', 'qwen2')")
        tmap = gguf.get_tensor_name_map(archs[arch], n_blocks)
        return tmap.get_name
    if arch != "llama":
        raise ValueError(f"arch {arch!r} needs the gguf package; the built-in table is Llama's")
    return _llama_gguf_name


def _llama_gguf_name(name: str) -> str | None:
    """The built-in Llama table: HF module name -> GGUF tensor base name."""
    if name in _LLAMA_GLOBAL_GGUF:
        return _LLAMA_GLOBAL_GGUF[name]
    m = _LLAMA_BLOCK_RE.fullmatch(name)
    if m and m.group(2) in _LLAMA_BLOCK_GGUF:
        return f"blk.{int(m.group(1))}.{_LLAMA_BLOCK_GGUF[m.group(2)]}"
    return None


def gguf_names_of(plan: Plan) -> dict[str, str] | None:
    """HF weight name -> the source GGUF file's own tensor name, when the plan's model
    was converted from a GGUF file by EMPAS (its directory holds the conversion
    record); None otherwise."""
    from .models.gguf_files import gguf_info

    name = plan.model_name
    if not name or not Path(name).is_dir():
        return None
    info = gguf_info(name)
    return dict(info["tensor_map"]) if info else None


def _llama_cpp_pairs(
    plan: Plan,
    arch: str,
    round_up: bool,
    model_layers_prefix: str | None,
    gguf_names: Mapping[str, str] | None,
) -> list[tuple[str, str]]:
    _check_plan(plan)
    mods = _module_bits(plan, model_layers_prefix)
    if gguf_names is None:
        gguf_names = gguf_names_of(plan)
    namer = None
    pairs = []
    for m, (unit, bits) in mods.items():
        ggml = GGML_TYPES[_supported(bits, list(GGML_TYPES), "GGML", f"unit '{unit}'", round_up)]
        if gguf_names is not None:  # the file's own names: no renaming, no arch table
            tensor = gguf_names.get(f"{m}.weight")
            if not tensor:
                raise ValueError(
                    f"module '{m}' (unit '{unit}') has no tensor in the source GGUF file"
                )
            pairs.append((_escape(tensor), ggml))
            continue
        if namer is None:
            n_blocks = 1 + max(
                (int(x) for k in mods for x in re.findall(r"\.(\d+)\.", k)), default=0
            )
            namer = _gguf_namer(arch, n_blocks)
        tensor = namer(m)
        if not tensor:
            raise ValueError(f"module '{m}' (unit '{unit}') has no GGUF tensor name for {arch}")
        pairs.append((_escape(f"{tensor}.weight"), ggml))
    return pairs


def to_llama_cpp_tensor_types(
    plan: Plan,
    arch: str = "llama",
    *,
    round_up: bool = False,
    model_layers_prefix: str | None = None,
    gguf_names: Mapping[str, str] | None = None,
) -> str:
    """Text for ``llama-quantize --tensor-type-file``: one ``^tensor$=type`` line per
    planned linear, newline-terminated (see the module docstring). Tensor names are
    the source GGUF file's own when the plan's model was converted from one (or
    ``gguf_names``: HF weight name -> GGUF tensor name is given), so the file applies
    to ``llama-quantize`` of that same GGUF without renaming; else gguf-py's table for
    ``arch``."""
    return "".join(
        f"{p}={t}\n"
        for p, t in _llama_cpp_pairs(plan, arch, round_up, model_layers_prefix, gguf_names)
    )


def to_llama_cpp_args(
    plan: Plan,
    arch: str = "llama",
    *,
    round_up: bool = False,
    model_layers_prefix: str | None = None,
    gguf_names: Mapping[str, str] | None = None,
) -> list[str]:
    """The same overrides as ``["--tensor-type", "^tensor$=type", ...]`` (argv items,
    no shell quoting)."""
    out: list[str] = []
    for p, t in _llama_cpp_pairs(plan, arch, round_up, model_layers_prefix, gguf_names):
        out += ["--tensor-type", f"{p}={t}"]
    return out


# -- GPTQModel -------------------------------------------------------------------------


def _gptq_bits(plan: Plan, round_up: bool, model_layers_prefix: str | None) -> dict[str, int]:
    _check_plan(plan)
    return {
        m: _supported(b, GPTQMODEL_BITS, "GPTQModel", f"unit '{u}'", round_up)
        for m, (u, b) in _module_bits(plan, model_layers_prefix).items()
    }


def _base_bits(bits: dict[str, int]) -> int:
    counts = Counter(b for b in bits.values() if b != 16)
    if not counts:
        raise ValueError("every module of the plan is 16-bit: there is nothing to quantize")
    return max(counts, key=lambda b: (counts[b], b))


def to_gptqmodel_dynamic(
    plan: Plan,
    *,
    base_bits: int | None = None,
    round_up: bool = False,
    model_layers_prefix: str | None = None,
) -> dict[str, dict[str, int]]:
    """GPTQModel ``dynamic``: ``+:^module$`` → ``{"bits": b}`` for modules whose bits
    differ from base_bits (default: the most common), ``-:^module$`` → ``{}`` for
    16-bit modules (skipped, kept fp16)."""
    bits = _gptq_bits(plan, round_up, model_layers_prefix)
    base = _base_bits(bits) if base_bits is None else base_bits
    if base not in GPTQMODEL_BITS:
        raise ValueError(f"base_bits must be one of {GPTQMODEL_BITS}, got {base!r}")
    dyn: dict[str, dict[str, int]] = {}
    for m, b in bits.items():
        if b == 16:
            dyn[f"-:{_escape(m)}"] = {}
        elif b != base:
            dyn[f"+:{_escape(m)}"] = {"bits": b}
    return dyn


def to_gptqmodel_config(
    plan: Plan, *, round_up: bool = False, model_layers_prefix: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``gptqmodel.QuantizeConfig``: bits, group_size, sym, dynamic."""
    bits = _gptq_bits(plan, round_up, model_layers_prefix)
    base = _base_bits(bits)
    return {
        "bits": base,
        "group_size": _group_size(plan, -1, "GPTQModel"),
        "sym": plan.quantizer.get("scheme", "symmetric") == "symmetric",
        "dynamic": to_gptqmodel_dynamic(
            plan, base_bits=base, round_up=round_up, model_layers_prefix=model_layers_prefix
        ),
    }


# -- HQQ (transformers.HqqConfig) ------------------------------------------------------


def hqq_linear_tag(module_name: str) -> str:
    """transformers' HQQ linear tag: the name without 'model', 'layers' and numeric
    parts (``model.layers.3.self_attn.q_proj`` → ``self_attn.q_proj``)."""
    return ".".join(
        p for p in module_name.split(".") if p not in ("model", "layers") and not p.isdigit()
    )


def _hqq_tags(
    plan: Plan, round_up: bool, model_layers_prefix: str | None
) -> dict[str, Counter[int]]:
    _check_plan(plan)
    tags: dict[str, Counter[int]] = {}
    for m, (u, b) in _module_bits(plan, model_layers_prefix).items():
        b = _supported(b, HQQ_BITS, "HQQ", f"unit '{u}'", round_up)
        tags.setdefault(hqq_linear_tag(m), Counter())[b] += 1
    return tags


def hqq_fidelity(
    plan: Plan, *, round_up: bool = False, model_layers_prefix: str | None = None
) -> dict[str, Any]:
    """What an HQQ export changes: per linear tag, the plan's bits (bits -> module
    count) and the one width HQQ gets (the widest); ``modules_changed`` of
    ``modules`` get wider bits; ``exact`` when none does."""
    tags = _hqq_tags(plan, round_up, model_layers_prefix)
    report = {
        t: {"plan_bits": dict(sorted(c.items())), "hqq_bits": max(c)} for t, c in tags.items()
    }
    changed = sum(n for c in tags.values() for b, n in c.items() if b != max(c))
    total = sum(sum(c.values()) for c in tags.values())
    return {"exact": changed == 0, "modules_changed": changed, "modules": total, "tags": report}


def to_hqq_config_kwargs(
    plan: Plan,
    *,
    allow_approx: bool = False,
    round_up: bool = False,
    model_layers_prefix: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``transformers.HqqConfig``: ``dynamic_config`` (linear tag
    -> {nbits, group_size, axis}) and ``skip_modules`` (16-bit tags, plus lm_head
    unless the plan quantizes it). Raises when bits vary across layers for a tag,
    unless allow_approx (widest bits per tag; see :func:`hqq_fidelity`)."""
    tags = _hqq_tags(plan, round_up, model_layers_prefix)
    mixed = {t: sorted(c) for t, c in tags.items() if len(c) > 1}
    if mixed and not allow_approx:
        few = "; ".join(f"{t}: {b}" for t, b in list(mixed.items())[:4])
        raise ValueError(
            "HQQ (transformers HqqConfig) sets one precision per linear tag for all layers, but "
            f"this plan varies it across layers ({few}); pass allow_approx=True to use the "
            "widest bits of each tag (see hqq_fidelity)"
        )
    gs = _group_size(plan, None, "HQQ")
    if gs is not None and gs % 8:
        raise ValueError(f"HQQ needs a group size that is a multiple of 8, got {gs}")
    dyn = {
        t: {"nbits": max(c), "group_size": gs, "axis": 1} for t, c in tags.items() if max(c) != 16
    }
    if not dyn:
        raise ValueError("every module of the plan is 16-bit: there is nothing to quantize")
    skip = [t for t, c in tags.items() if max(c) == 16]
    if "lm_head" not in tags:
        skip.insert(0, "lm_head")
    return {"dynamic_config": dyn, "skip_modules": skip}


# -- dispatcher ------------------------------------------------------------------------


def export_runtime(plan: Plan, fmt: str, **options: Any) -> str | dict[str, Any]:
    """The plan in format fmt (one of FORMATS); options go to that format's exporter:
    llama.cpp → text, gptqmodel → QuantizeConfig kwargs, hqq → HqqConfig kwargs,
    empas-original → artifact dict."""
    _check_plan(plan)
    if fmt == "llama.cpp":
        return to_llama_cpp_tensor_types(plan, **options)
    if fmt == "gptqmodel":
        return to_gptqmodel_config(plan, **options)
    if fmt == "hqq":
        return to_hqq_config_kwargs(plan, **options)
    if fmt == "empas-original":
        return to_original_artifact(plan, **options)
    raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")


def write_export(
    plan: Plan, fmt: str, path: str | os.PathLike, force: bool = False, **options: Any
) -> Path:
    """Writes export_runtime(plan, fmt) to path atomically: text as is, dicts as JSON
    (indent 2 and a final newline; empas-original exactly like the original tool).
    Refuses to overwrite unless force. Returns the path."""
    out = export_runtime(plan, fmt, **options)
    path = Path(path)
    _check_free([path], force)
    if isinstance(out, str):
        text = out
    elif fmt == "empas-original":
        text = _original_text(out)
    else:
        text = json.dumps(out, indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path
