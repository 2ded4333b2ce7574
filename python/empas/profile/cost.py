"""What a profile will cost before it is run: :func:`profile_cost`.

The model is built on the ``meta`` device from its config (no weights are read
or allocated), so an estimate for Llama-3.1-70B is instant on a laptop. Counts
(units, cells, parameters, bytes) are exact; the time is a projection from a
short measured micro-benchmark of one block (and the head) of the same shape on
the chosen device."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..util.sizes import format_bytes
from .calibration import DEFAULT_SEQUENCES
from .config import ProfileConfig
from .distributed import cell_cost, share
from .units import build_units

__all__ = ["SHAPES", "CostEstimate", "profile_cost"]

_LLAMA31 = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    dtype="bfloat16",
    hidden_act="silu",
)

# Named shapes (the published config.json numbers; no weights): a stand-in for a
# model directory when only the size matters.
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(
        _LLAMA31,
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
    ),
    "llama-3.1-70b": dict(
        _LLAMA31,
        hidden_size=8192,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=28672,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        vocab_size=152064,
        hidden_size=3584,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        intermediate_size=18944,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
        dtype="bfloat16",
        hidden_act="silu",
    ),
}


@dataclass
class CostEstimate:
    """Counts and projected time of one profiling run (see :func:`profile_cost`)."""

    model: str
    dtype: str
    params: int
    n_blocks: int
    units: int
    unit_params: list[int]
    choices: list[int]
    cells: int
    block_passes: int  # blocks run over all cells (the head counted as one more)
    forward_equivalents: float  # cells weighted by the fraction of the blocks they run, + baseline
    n_tokens: int
    seq_len: int
    weight_bytes: int
    cache_bytes: int
    reference_bytes: int
    logits_bytes: int
    device: str
    bench: dict[str, Any] | None = None
    per_ranks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def device_bytes(self) -> int:
        """Weights, block-input cache, reference outputs and one batch of fp32
        logits: what one rank's device holds at its peak (the model resident)."""
        return self.weight_bytes + self.cache_bytes + self.reference_bytes + self.logits_bytes

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["device_bytes"] = self.device_bytes
        return d

    def __str__(self) -> str:
        lines = [
            f"{self.model}: {self.params:,} parameters ({self.dtype}), {self.n_blocks} blocks",
            f"  {self.units} units x {len(self.choices)} choices {self.choices}: {self.cells} "
            f"cells (experiments)",
            f"  {self.block_passes:,} block passes = {self.forward_equivalents:.1f} forward-pass "
            f"equivalents over {self.n_tokens:,} tokens (seq_len {self.seq_len})",
            f"  memory per rank: weights {format_bytes(self.weight_bytes)}, block-input cache "
            f"{format_bytes(self.cache_bytes)}, reference {format_bytes(self.reference_bytes)}, "
            f"one batch of logits {format_bytes(self.logits_bytes)}: "
            f"{format_bytes(self.device_bytes)}",
        ]
        if self.bench is None:
            lines.append("  time: not measured (benchmark=False)")
        else:
            b = self.bench
            lines.append(
                f"  micro-benchmark on {self.device}: one block {b['block_s_per_token'] * 1e6:.2f} "
                f"us/token, head {b['head_s_per_token'] * 1e6:.2f} us/token "
                f"({b['tokens']} tokens, best of {b['repeats']})"
            )
        for r in self.per_ranks:
            t = f", ~{_hms(r['time_s'])}" if r.get("time_s") is not None else ""
            lines.append(
                f"  {r['ranks']} rank(s): at most {r['max_cells']} cells and "
                f"{r['max_block_passes']:,} block passes per rank{t}"
            )
        return "\n".join(lines)


def _unit_params(spec) -> int:
    """A unit's weights, a shared (tied) tensor once: by object, since every
    ``meta`` tensor has the same (null) data pointer."""
    seen: dict[int, int] = {}
    for m in spec.members:
        seen[id(m.weight)] = m.weight.numel()
    return int(sum(seen.values()))


def _hms(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _config(source):
    """A transformers config from a named shape, a model directory, a
    ``config.json`` path, a dict or a config object."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(source, PretrainedConfig):
        return source, getattr(source, "name_or_path", "") or type(source).__name__
    if isinstance(source, Mapping):
        d, name = dict(source), "config"
    elif isinstance(source, (str, os.PathLike)) and str(source).lower() in SHAPES:
        d, name = dict(SHAPES[str(source).lower()]), str(source).lower()
    elif isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise FileNotFoundError(
                f"{str(source)!r} is neither a named shape ({', '.join(SHAPES)}), a model "
                "directory with a config.json, nor a config.json file"
            )
        try:
            d, name = json.loads(p.read_text()), str(source)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p} is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{p}: a config.json holds a JSON object, got {type(d).__name__}")
    else:
        raise TypeError(
            "profile_cost takes a model, a config (object, dict, config.json, model "
            f"directory) or a named shape, got {type(source).__name__}"
        )
    kind = d.pop("model_type", None)
    if kind is None:
        raise ValueError(f"{name}: the config has no model_type")
    try:
        return AutoConfig.for_model(kind, **d), name
    except Exception as exc:  # ValueError, KeyError, huggingface_hub's validation errors...
        raise ValueError(
            f"{name}: transformers cannot build a {kind!r} config ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())})"
        ) from None


def _meta_model(cfg, name: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(cfg, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    except Exception as exc:
        raise ValueError(
            f"{name}: transformers cannot build a causal LM from this config "
            f"({type(exc).__name__}: {exc})"
        ) from None


def _bench(cfg, seq_len: int, device: str, dtype, repeats: int) -> dict[str, Any]:
    """Seconds per token of one block and of the head (norm + LM head), measured
    on a one-block copy of the model with random weights on ``device``."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    small = copy.deepcopy(cfg)
    small.num_hidden_layers = 1
    if hasattr(small, "layer_types") and small.layer_types:
        small.layer_types = small.layer_types[:1]
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(small, dtype=dtype)
    m = m.to_empty(device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))
    for name, mod in list(m.named_modules()):  # rotary embeddings: rebuilt from the config
        if "inv_freq" in dict(mod.named_buffers(recurse=False)) and hasattr(mod, "config"):
            parent, _, child = name.rpartition(".")
            with torch.device(device):
                setattr(m.get_submodule(parent), child, type(mod)(config=mod.config))
    m.eval()
    _, _, blocks = build_units(m, "block", False, False)
    head = m.get_output_embeddings()
    marks: dict[str, float] = {}

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    def at(key):
        def fn(*_a, **_k):
            sync()
            marks[key] = time.perf_counter()

        return fn

    hooks = [
        blocks[0].register_forward_pre_hook(at("b0")),
        blocks[0].register_forward_hook(at("b1")),
        head.register_forward_pre_hook(at("h0")),
        head.register_forward_hook(at("h1")),
    ]
    ids = torch.randint(0, cfg.vocab_size, (1, seq_len), generator=g).to(device)
    best_b = best_h = float("inf")
    try:
        with torch.inference_mode():
            for _ in range(repeats + 1):  # the first is a warm-up
                m(input_ids=ids, use_cache=False)
                sync()
                best_b = min(best_b, marks["b1"] - marks["b0"])
                best_h = min(best_h, marks["h1"] - marks["h0"])
    finally:
        for h in hooks:
            h.remove()
    del m
    return {
        "tokens": seq_len,
        "repeats": repeats,
        "block_s_per_token": best_b / seq_len,
        "head_s_per_token": best_h / seq_len,
    }


def profile_cost(
    model_or_config_or_shape,
    units: str | Mapping[str, str | Sequence[str]] = "block",
    choices: Sequence[int] = (2, 3, 4, 8),
    n_tokens: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 4,
    loss: str = "causal_lm",
    cache: bool = True,
    embeddings: bool = False,
    head: bool = False,
    estimate: Sequence[int] = (),
    device: str = "cpu",
    ranks: Sequence[int] = (1, 2, 4, 8),
    benchmark: bool = True,
    repeats: int = 3,
) -> CostEstimate:
    """Counts and projected time of ``empas.profile`` with these settings, without
    running it. ``model_or_config_or_shape``: a model object, a model directory, a
    ``config.json``, a config (object or dict) or a named shape (:data:`SHAPES`:
    "llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b"); configs are built on the
    ``meta`` device (no weights). Returns a :class:`CostEstimate`: units, cells,
    block passes and forward-pass equivalents (each cell weighted by the fraction of
    the blocks it runs from its cached input; the baseline counts one), the bytes of
    the weights, the block-input cache ((blocks + 1) hidden states per token), the
    reference outputs (``loss="kl"``: fp32 log-probabilities per token) and one batch
    of fp32 logits; with ``benchmark`` a short measurement of one block and the head
    on ``device`` (random weights, ``repeats`` runs of one ``seq_len`` sequence)
    projects the time for each rank count in ``ranks`` (cells shared as
    :func:`empas.profile` shares them under torch.distributed)."""
    import torch
    import torch.nn as nn

    cfg_p = ProfileConfig(
        units=units,
        choices=choices,
        loss=loss,
        n_tokens=n_tokens,
        seq_len=seq_len,
        batch_size=batch_size,
        cache=cache,
        embeddings=embeddings,
        head=head,
        estimate=estimate,
    )
    if isinstance(model_or_config_or_shape, nn.Module):
        model = model_or_config_or_shape
        cfg = getattr(model, "config", None)
        name = getattr(cfg, "name_or_path", "") or type(model).__name__
    else:
        cfg, name = _config(model_or_config_or_shape)
        model = _meta_model(cfg, name)
    dtype = next(model.parameters()).dtype
    esize = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    specs, _, blocks = build_units(model, cfg_p.units, cfg_p.embeddings, cfg_p.head)
    n_blocks = len(blocks)
    ctx = getattr(cfg, "max_position_embeddings", None)
    sl = cfg_p.seq_len or (min(256, ctx) if ctx else 256)
    n_seq = (cfg_p.n_tokens // sl) if cfg_p.n_tokens else DEFAULT_SEQUENCES
    tokens = n_seq * sl
    cells = [
        spec.start
        for spec in specs
        for bits in cfg_p.choices
        if not (bits == 0 and spec.block is None) and bits not in cfg_p.estimate
    ]
    costs = [cell_cost(s, n_blocks, cfg_p.cache) for s in cells]
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    params = sum(p.numel() for p in model.parameters())
    cache_b = (n_blocks + 1) * tokens * hidden * esize if cfg_p.cache else 0
    ref_b = tokens * vocab * 4 if cfg_p.loss == "kl" else 0
    if cfg_p.loss == "embedding":
        ref_b = n_seq * hidden * 4
    bench = None
    if benchmark:
        if cfg is None:
            raise ValueError("benchmark=True needs a transformers model (with a config)")
        bench = _bench(cfg, sl, device, dtype, repeats)
    est = CostEstimate(
        model=name,
        dtype=str(dtype).replace("torch.", ""),
        params=int(params),
        n_blocks=n_blocks,
        units=len(specs),
        unit_params=[_unit_params(s) for s in specs],
        choices=list(cfg_p.choices),
        cells=len(cells),
        block_passes=int(sum(costs)),
        forward_equivalents=round(1.0 + sum((c - 1) / n_blocks for c in costs), 3),
        n_tokens=tokens,
        seq_len=sl,
        weight_bytes=int(sum(p.numel() * p.element_size() for p in model.parameters())),
        cache_bytes=int(cache_b),
        reference_bytes=int(ref_b),
        logits_bytes=int(min(cfg_p.batch_size, n_seq) * sl * vocab * 4),
        device=str(device),
        bench=bench,
    )
    for n in ranks:
        if bench is not None:  # time-weighted: a cell runs its blocks, then the head
            tb, th = bench["block_s_per_token"] * tokens, bench["head_s_per_token"] * tokens
            w = [(c - 1) * tb + th for c in costs]
            base = n_blocks * tb + th
        else:
            w = [float(c) for c in costs]
        parts = share(w, int(n))
        row = {
            "ranks": int(n),
            "max_cells": max(len(p) for p in parts),
            "max_block_passes": max(sum(costs[i] for i in p) for p in parts),
            "time_s": None,
        }
        if bench is not None:
            row["time_s"] = round(base + max(sum(w[i] for i in p) for p in parts), 3)
        est.per_ranks.append(row)
    return est
