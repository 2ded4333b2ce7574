"""Units: the parts of a model that a profile measures and a plan sets, one
precision each: decoder blocks, attention/MLP sub-blocks, single linears, or
groups of modules named by the user (plus, optionally, embeddings and head)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ProfileError
from ..models.structure import Member, distinct, find_blocks, quantizable, tensor_key
from .config import UNIT_MODES

__all__ = ["UnitSpec", "build_units", "unsearched_bytes"]


@dataclass
class UnitSpec:
    """A unit as profiling sees it: its members and the first block it changes."""

    name: str
    kind: str
    members: list[Member]
    start: int  # first block whose output changes; -1 = embedding; n_blocks = head only
    block: int | None = None  # the block this unit is (for choice 0)

    @property
    def params(self) -> int:
        return sum(m.weight.numel() for m in distinct(self.members))


def _sublayer_kind(child: str) -> str:
    c = child.lower()
    if "attn" in c or "attention" in c:
        return "attn"
    return "mlp"


def build_units(model, units, embeddings: bool, head: bool):
    """``(unit specs, block stack prefix, blocks)`` of ``model`` for ``units``
    ("block", "sublayer", "linear" or {name: module names or regexes})."""
    quant = quantizable(model)
    head_mod = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb_mod = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head_name = next((k for k, m in quant.items() if m.module is head_mod), None)
    body = {k: m for k, m in quant.items() if k != head_name}
    if not body:
        raise ProfileError(
            f"{type(model).__name__} has no quantizable layers (nn.Linear or transformers "
            "Conv1D) outside the output head"
        )
    prefix, blocks = find_blocks(model, body)
    n_blocks = len(blocks)

    def block_of(name: str) -> int | None:
        if name.startswith(prefix + "."):
            return int(name[len(prefix) + 1 :].split(".", 1)[0])
        return None

    specs: list[UnitSpec] = []
    if isinstance(units, str):
        if units not in UNIT_MODES:
            raise ValueError(
                f"units must be one of {UNIT_MODES} or a mapping of unit name -> module names or "
                f"regexes, got {units!r}"
            )
        in_blocks = {k: m for k, m in body.items() if block_of(k) is not None}
        if units == "block":
            for i in range(n_blocks):
                ms = [m for k, m in in_blocks.items() if block_of(k) == i]
                if ms:
                    specs.append(UnitSpec(f"{prefix}.{i}", "block", ms, i, i))
        elif units == "sublayer":
            groups: dict[str, list[Member]] = {}
            for k, m in in_blocks.items():
                i = block_of(k)
                child = k[len(prefix) + 1 :].split(".")[1]
                groups.setdefault(f"{prefix}.{i}.{child}", []).append(m)
            for g, ms in groups.items():
                i = block_of(g)
                specs.append(UnitSpec(g, _sublayer_kind(g.rsplit(".", 1)[1]), ms, i))
        else:
            for k, m in in_blocks.items():
                specs.append(UnitSpec(k, "linear", [m], block_of(k)))
    elif isinstance(units, Mapping):
        taken: dict[str, str] = {}
        allq = dict(body)
        if head_name is not None:
            allq[head_name] = quant[head_name]
        for uname, pats in units.items():
            if isinstance(pats, str):
                pats = [pats]
            ms = []
            for k, m in allq.items():
                if any(k == p or re.fullmatch(p, k) for p in pats):
                    if k in taken:
                        raise ValueError(
                            f"module {k!r} is in two units: {taken[k]!r} and {uname!r}"
                        )
                    taken[k] = str(uname)
                    ms.append(m)
            if not ms:
                sample = ", ".join(list(allq)[:4])
                raise ValueError(
                    f"unit {uname!r}: {list(pats)!r} matches no quantizable module "
                    f"(names look like: {sample}, ...)"
                )
            starts = [block_of(m.name) for m in ms]
            start = min(n_blocks if s is None else s for s in starts)
            specs.append(UnitSpec(str(uname), "group", ms, start))
    else:
        raise ValueError(f"units must be a string or a mapping, got {type(units).__name__}")

    if embeddings:
        if emb_mod is None or getattr(emb_mod, "weight", None) is None:
            raise ProfileError("embeddings=True but the model has no input embedding")
        ename = next(k for k, m in model.named_modules() if m is emb_mod)
        tied = head_mod is not None and head_mod.weight is emb_mod.weight
        kind = "embedding"
        members = [Member(ename, emb_mod, "embedding")]
        if tied and head:
            members.append(quant[head_name])  # one shared tensor: one unit
        specs.append(
            UnitSpec(ename + ("+" + head_name if tied and head else ""), kind, members, -1)
        )
    if head and head_name is not None:
        tied = emb_mod is not None and head_mod.weight is emb_mod.weight
        if tied and not embeddings:
            specs.append(UnitSpec(head_name, "head", [quant[head_name]], -1))
        elif not tied:
            specs.append(UnitSpec(head_name, "head", [quant[head_name]], n_blocks))
    elif head and head_name is None:
        raise ProfileError("head=True but the model has no linear output head")
    return specs, prefix, blocks


def unsearched_bytes(model, specs) -> int:
    """Bytes of what a checkpoint stores besides the searched weights: distinct
    parameters and persistent buffers (the state dict) at their stored dtype.
    Non-persistent buffers (e.g. rotary inv_freq) are recomputed, not stored."""
    searched = {tensor_key(m.weight) for s in specs for m in s.members}
    seen, n = set(), 0
    for p in model.state_dict(keep_vars=True).values():
        if tensor_key(p) in seen or tensor_key(p) in searched:
            continue
        seen.add(tensor_key(p))
        n += p.numel() * p.element_size()
    return int(n)
