"""What EMPAS quantizes in a model: its 2-D weights (``nn.Linear``, transformers'
``Conv1D``, embeddings) as :class:`Member`, and the stack of identical decoder
(or encoder) blocks they live in. Shared by profiling (units) and by applying
plans (matching a plan's modules to a model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ProfileError

__all__ = ["Member", "distinct", "find_blocks", "quantizable", "tensor_key"]


@dataclass
class Member:
    """One weight matrix of a unit: its module name, the module, and its kind
    ("linear", "conv1d" — transformers' transposed linear — or "embedding")."""

    name: str
    module: Any
    kind: str

    @property
    def weight(self):
        return self.module.weight

    def view2d(self):
        """The weight as [out, in] (groups run along `in`); a view, never a copy."""
        w = self.module.weight.data
        return w.t() if self.kind == "conv1d" else w

    @property
    def shape(self) -> list[int]:
        return [int(s) for s in self.view2d().shape]


def tensor_key(t) -> int:
    """What tells tensors apart for sharing: the data pointer (a tied embedding/head
    shares it), or for a ``meta`` tensor (no data: every pointer is 0) its identity."""
    return id(t) if t.is_meta else t.data_ptr()


def distinct(members: list[Member]) -> list[Member]:
    """Members with distinct weight tensors (a tied embedding/head counts once)."""
    seen, out = set(), []
    for m in members:
        if tensor_key(m.weight) not in seen:
            seen.add(tensor_key(m.weight))
            out.append(m)
    return out


def _is_conv1d(mod) -> bool:
    return type(mod).__name__ == "Conv1D" and getattr(mod, "weight", None) is not None


def quantizable(model) -> dict[str, Member]:
    """Module name -> Member for every ``nn.Linear`` and 2-D ``Conv1D`` of ``model``."""
    import torch.nn as nn

    out: dict[str, Member] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            out[name] = Member(name, mod, "linear")
        elif _is_conv1d(mod) and mod.weight.dim() == 2:
            out[name] = Member(name, mod, "conv1d")
    return out


def find_blocks(model, quant: dict[str, Member]) -> tuple[str, list[Any]]:
    """The decoder (or encoder) stack: the ModuleList of same-class modules that
    holds the most quantizable weights, as (its module name, its blocks)."""
    import torch.nn as nn

    best, best_n = None, 0
    for name, ml in model.named_modules():
        if not isinstance(ml, nn.ModuleList) or len(ml) == 0:
            continue
        if len({type(b) for b in ml}) != 1:
            continue
        n = sum(m.weight.numel() for k, m in quant.items() if k.startswith(name + "."))
        if n > best_n:
            best, best_n = name, n
    if best is None:
        raise ProfileError(
            f"{type(model).__name__} has no stack of identical blocks (nn.ModuleList) holding "
            "quantizable layers (nn.Linear / Conv1D); EMPAS profiles transformer models"
        )
    return best, list(model.get_submodule(best))
