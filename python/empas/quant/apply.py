"""Applying a plan to a real model.

``empas.apply(model, plan, mode="fake")`` quantize-dequantizes every planned
weight in place with the plan's quantizer (the C++ fake-quant op): the model
keeps its dtype and its memory, and computes what the quantized model computes.

``mode="packed"`` replaces every quantized linear with a ``empas.nn.PackedLinear``
that stores the packed integer codes (a bit stream of ``ceil(rows * cols * bits /
8)`` bytes), fp16 scales (and uint8 zero points for asymmetric plans) and
multiplies straight from the codes on each forward with the fused C++ op
``empas::packed_linear`` (CPU and CUDA; on the CPU the weight is never dequantized whole);
16-bit units become an ``empas.nn.HalfLinear`` holding an fp16 weight. An
embedding unit becomes an ``empas.nn.PackedEmbedding`` (``HalfEmbedding`` at 16
bits) that dequantizes only the looked-up rows; a head tied to it (one tensor, as
the profile counts it) becomes a ``PackedLinear`` sharing its buffers, so the pair
is stored once and the head runs the fused kernel. The model's weights then take
exactly the plan's predicted bytes.

Both modes drop the blocks planned at 0 bits (an ``empas.nn.DroppedBlock`` returns its
input). Fake and packed outputs agree bit for bit in the weights: dequantizing
the packed codes reproduces the fake-quantized weight exactly (except asymmetric
groups whose fp16 scale is 0, i.e. constant groups, which packing stores as the
fp16 value of the constant); the logits then differ only by the rounding of the
different matmul kernels (``F.linear`` on the same weights: identical on CPU in
practice, see tests).

A plan must match the model: its units' member modules must exist and have the
parameter counts the plan records, or :class:`PlanMismatchError` names the first
difference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import FormatError, PlanMismatchError
from ..models.structure import Member, distinct, find_blocks, quantizable, tensor_key
from ..plan import Plan, as_plan
from .config import QuantConfig

__all__ = [
    "PlanMismatchError",
    "Undo",
    "apply",
    "applied",
    "quantize_members",
    "replace_module",
    "resolve",
    "weight_bytes",
]

MODES = ("fake", "packed")


# ----------------------------------------------------------------------------
# resolving a plan against a model
# ----------------------------------------------------------------------------


@dataclass
class _Target:
    unit: str
    bits: int
    members: list[Member]
    block: tuple[str, int] | None  # (stack prefix, index) for a dropped block


def _fnv1a64_hex(text: str) -> str:
    """64-bit FNV-1a of the UTF-8 bytes, 16 hex digits (as the C++ core's)."""
    h = 1469598103934665603
    for b in text.encode():
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def check_coverage(plan: Plan) -> None:
    """Raises PlanMismatchError when ``plan`` names fewer (or other) units than the
    profile it was made from (recorded by the search as ``provenance.profile``):
    the missing units would silently stay at full precision, and the plan's
    predicted bytes and loss would not describe the model."""
    prof = (plan.provenance or {}).get("profile") or {}
    n, names = prof.get("n_units"), [u["name"] for u in plan.to_dict()["units"]]
    if isinstance(n, int) and not isinstance(n, bool) and n != len(names):
        raise PlanMismatchError(
            f"the plan names {len(names)} units but was made from a profile of {n} "
            f"(fingerprint {prof.get('fingerprint')}): {abs(n - len(names))} unit(s) "
            f"{'missing' if n > len(names) else 'added'}; a plan must name every unit of "
            "its profile (pass allow_partial=True, CLI --allow-partial, to apply it anyway)"
        )
    h = prof.get("units_hash")
    if isinstance(h, str) and isinstance(n, int):
        if _fnv1a64_hex("".join(name + "\n" for name in names)) != h:
            raise PlanMismatchError(
                "the plan's unit names differ from those of the profile it was made from "
                f"(fingerprint {prof.get('fingerprint')}); a plan must name every unit of its "
                "profile (pass allow_partial=True, CLI --allow-partial, to apply it anyway)"
            )


def resolve(model, plan: Plan, allow_partial: bool = False) -> list[_Target]:
    """Matches the plan's units to the model's modules; raises PlanMismatchError,
    also for a plan that lacks units of its profile unless ``allow_partial``."""
    if not allow_partial:
        check_coverage(plan)
    quant = quantizable(model)
    named = dict(model.named_modules())
    data = plan.to_dict()
    blocks_prefix = (data.get("model") or {}).get("blocks")
    n_blocks_plan = (data.get("model") or {}).get("n_blocks")
    if not blocks_prefix:
        blocks_prefix, _ = find_blocks(model, quant)
    stack = named.get(blocks_prefix)
    if stack is None:
        raise PlanMismatchError(
            f"the plan was made for a model whose blocks are {blocks_prefix!r}; this "
            f"{type(model).__name__} has no such module"
        )
    if n_blocks_plan is not None and int(n_blocks_plan) != len(stack):
        raise PlanMismatchError(
            f"the plan was made for a model with {n_blocks_plan} blocks; this "
            f"{type(model).__name__} has {len(stack)} in {blocks_prefix!r}"
        )
    layer_units = [
        u["name"]
        for u in data["units"]
        if not u.get("modules") and re.fullmatch(r"layer_\d+", u["name"])
    ]
    if layer_units and len(layer_units) != len(stack):  # original EMPAS plans: one per block
        raise PlanMismatchError(
            f"the plan has {len(layer_units)} block units (layer_<i>); this "
            f"{type(model).__name__} has {len(stack)} blocks in {blocks_prefix!r}"
        )
    targets: list[_Target] = []
    seen: dict[str, str] = {}
    for u in data["units"]:
        name, bits = u["name"], int(u["bits"])
        mods = list(u.get("modules") or [])
        if not mods:
            m = re.fullmatch(r"layer_(\d+)", name)
            if m is None:
                raise PlanMismatchError(
                    f"unit {name!r} lists no modules; only original-EMPAS units 'layer_<i>' "
                    "can be mapped to a model without them"
                )
            name_block = f"{blocks_prefix}.{m.group(1)}"
            mods = [k for k in quant if k.startswith(name_block + ".")]
            if not mods:
                raise PlanMismatchError(f"unit {name!r}: the model has no block {name_block!r}")
        members = []
        for k in mods:
            mod = named.get(k)
            if mod is None:
                raise PlanMismatchError(
                    f"unit {name!r}: module {k!r} is not in this {type(model).__name__} (a plan "
                    "for another model?)"
                )
            if k in seen:
                raise PlanMismatchError(f"module {k!r} is in two units: {seen[k]!r} and {name!r}")
            seen[k] = name
            if k in quant:
                members.append(quant[k])
            elif type(mod).__name__ == "Embedding" or (
                hasattr(mod, "weight") and getattr(mod.weight, "dim", lambda: 0)() == 2
            ):
                members.append(Member(k, mod, "embedding"))
            else:
                raise PlanMismatchError(f"unit {name!r}: module {k!r} has no 2-D weight")
        params = u.get("params")
        distinct = {m.weight.data_ptr(): m.weight.numel() for m in members}
        if params and int(params) != sum(distinct.values()):  # 0/None: not recorded
            raise PlanMismatchError(
                f"unit {name!r}: the plan counts {int(params):,} parameters, the model's modules "
                f"have {sum(distinct.values()):,} (a plan for another model?)"
            )
        block = None
        if bits == 0:
            idx = None
            if name.startswith(blocks_prefix + "."):
                rest = name[len(blocks_prefix) + 1 :]
                if rest.isdigit():
                    idx = int(rest)
            m = re.fullmatch(r"layer_(\d+)", name)
            if m:
                idx = int(m.group(1))
            if idx is None or idx >= len(stack):
                raise PlanMismatchError(
                    f"unit {name!r} is planned at 0 bits (dropped) but is not a block of "
                    f"{blocks_prefix!r}"
                )
            block = (blocks_prefix, idx)
        targets.append(_Target(name, bits, members, block))
    return targets


# ----------------------------------------------------------------------------
# applying
# ----------------------------------------------------------------------------


class Undo:
    """What to put back, newest first: saved weight copies (``save_weights``),
    replaced modules and any other restore callbacks (:meth:`add`)."""

    def __init__(self, save_weights: bool = True):
        self.save_weights = save_weights
        self.weights: list[tuple[Any, Any]] = []  # (tensor, saved copy)
        self.modules: list[tuple[Any, str, Any]] = []  # (parent, attr, original)
        self.callbacks: list[Any] = []

    def save(self, tensor) -> None:
        """Keeps a copy of ``tensor`` to restore (when ``save_weights``)."""
        if self.save_weights:
            self.weights.append((tensor, tensor.clone()))

    def add(self, restore) -> None:
        """Registers a callable that undoes a change."""
        self.callbacks.append(restore)

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for t, saved in reversed(self.weights):
                t.copy_(saved)
        for parent, attr, orig in reversed(self.modules):
            _set_child(parent, attr, orig)
        for fn in reversed(self.callbacks):
            fn()
        self.weights.clear()
        self.modules.clear()
        self.callbacks.clear()

    __call__ = restore


def quantize_members(members: list[Member], bits: int, config: QuantConfig, undo: Undo | None):
    """Fake-quantizes each distinct weight of ``members`` in place (a tied tensor
    once), saving it in ``undo`` first; on error everything done is put back."""
    from .fake import quantize_member_

    try:
        for m in distinct(members):
            if undo is not None:
                undo.save(m.weight.data)
            quantize_member_(m, bits, config)
    except BaseException:
        if undo is not None:
            undo.restore()
        raise


def _parent(model, name: str):
    if "." in name:
        p, attr = name.rsplit(".", 1)
        return model.get_submodule(p), attr
    return model, name


def _set_child(parent, attr: str, mod) -> None:
    import torch.nn as nn

    if attr.isdigit() and isinstance(parent, nn.ModuleList):
        parent[int(attr)] = mod
    else:
        setattr(parent, attr, mod)


def replace_module(model, name: str, new, undo: Undo | None) -> None:
    """Puts ``new`` where module ``name`` is, recording the old one in ``undo``."""
    parent, attr = _parent(model, name)
    old = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
    if undo is not None:
        undo.modules.append((parent, attr, old))
    if hasattr(new, "module_name"):  # PackedLinear: named in its error messages
        new.module_name = name
    _set_child(parent, attr, new)


def _check_bits(unit: str, bits: int) -> None:
    if not (bits == 0 or bits == 16 or 2 <= bits <= 8):
        raise FormatError(f"unit {unit!r}: {bits} bits is not a known format (0, 2..8, 16)")


def _apply(
    model, plan: Plan, mode: str, clip_search: bool, undo: Undo | None, allow_partial: bool = False
) -> None:
    import torch

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    qs = QuantConfig.from_json(plan.quantizer, clip_search)
    targets = resolve(model, plan, allow_partial)
    tie = _tied_pair(model)
    tied_bits: dict[int, tuple[str, int]] = {}  # tensor key -> (unit, bits)
    for t in targets:
        _check_bits(t.unit, t.bits)
        for m in t.members:
            if t.bits != 0 and tie is not None and m.module in (tie[1], tie[3]):
                key = tensor_key(m.weight)
                if key in tied_bits and tied_bits[key][1] != t.bits:
                    u, b = tied_bits[key]
                    raise PlanMismatchError(
                        f"units {u!r} ({b} bits) and {t.unit!r} ({t.bits} bits) share one tied "
                        f"tensor ({tie[0]!r} and {tie[2]!r}): it can have one precision"
                    )
                tied_bits[key] = (t.unit, t.bits)
            if mode == "packed" and t.bits != 0 and m.kind == "embedding":
                w = m.weight
                if w.dim() != 2 or not w.dtype.is_floating_point:
                    raise FormatError(
                        f"unit {t.unit!r}: {m.name!r} is not a 2-D floating-point embedding table"
                    )
            if t.bits not in (0, 16) and not bool(torch.isfinite(m.weight).all()):
                raise ValueError(f"unit {t.unit!r}: {m.name!r} weight contains NaN or Inf")
    from .nn import DroppedBlock

    try:
        with torch.no_grad():
            packed: set[int] = set()  # tensor keys already packed (a tied pair once)
            for t in targets:
                if t.bits == 0:
                    prefix, idx = t.block
                    replace_module(model, f"{prefix}.{idx}", DroppedBlock(idx), undo)
                    continue
                if mode == "fake":
                    quantize_members(t.members, t.bits, qs, undo)
                    continue
                for m in distinct(t.members):
                    key = tensor_key(m.weight)
                    if key in packed:
                        continue
                    packed.add(key)
                    if tie is not None and m.module in (tie[1], tie[3]):
                        pack_tied(model, tie, t.bits, qs, undo)
                    elif m.kind == "embedding":
                        pack_embedding(model, m, t.bits, qs, undo)
                    else:
                        pack_member(model, m, t.bits, qs, undo)
    except BaseException:
        if undo is not None:
            undo.restore()
        raise


def _tied_pair(model) -> tuple[str, Any, str, Any] | None:
    """(embedding name, embedding, head name, head) when the input embedding and
    the output head share one weight tensor, else None."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return None
    try:
        emb, head = get_in(), get_out()
    except (AttributeError, NotImplementedError):
        return None
    w = getattr(emb, "weight", None)
    if w is None or head is None or getattr(head, "weight", None) is not w:
        return None
    names = {id(mod): name for name, mod in model.named_modules()}
    if id(emb) not in names or id(head) not in names:
        return None
    return names[id(emb)], emb, names[id(head)], head


def pack_embedding(model, m, bits: int, qs: QuantConfig, undo: Undo | None) -> None:
    """Replaces the embedding member ``m`` by a PackedEmbedding (2..8 bits) or a
    HalfEmbedding (16), recording the change in ``undo``."""
    replace_module(model, m.name, _embedding_at(m.weight.data, bits, qs), undo)


def _embedding_at(w, bits: int, qs: QuantConfig):
    import torch

    from .nn import HalfEmbedding, PackedEmbedding

    if bits == 16:
        e = HalfEmbedding(w.shape[0], w.shape[1], w.dtype)
        e.weight = w.to(torch.float16).contiguous().clone()
        return e
    return PackedEmbedding.from_weight(w, bits, qs.group_size, qs.symmetric, qs.clip_search)


def pack_tied(model, tie, bits: int, qs: QuantConfig, undo: Undo | None) -> None:
    """Packs a tied input embedding and output head once: a PackedEmbedding (or
    HalfEmbedding at 16 bits) and a PackedLinear (HalfLinear) that share its
    buffers, so the tensor is stored once, as the profile counts it."""
    from .nn import HalfLinear, PackedLinear

    emb_name, emb, head_name, head = tie
    e = _embedding_at(emb.weight.data, bits, qs)
    bias = getattr(head, "bias", None)
    bias = None if bias is None else bias.data
    n, dim = e.num_embeddings, e.embedding_dim
    bias_dtype = getattr(bias, "dtype", None)
    if bits == 16:
        h = HalfLinear(dim, n, bias is not None, bias_dtype)
        h.weight = e.weight
    else:
        h = PackedLinear(dim, n, bits, qs.group_size, qs.symmetric, bias is not None, bias_dtype)
        h.share_packed(e)
    if bias is not None:
        h.bias = bias.clone()
    replace_module(model, emb_name, e, undo)
    replace_module(model, head_name, h, undo)


def pack_member(model, m, bits: int, qs: QuantConfig, undo: Undo | None) -> None:
    """Replaces member ``m`` of ``model`` by the module a plan puts there at ``bits``
    (``PackedLinear`` for 2..8, ``HalfLinear`` for 16), recording the change in
    ``undo``. Also what :func:`empas.measure_latency` times."""
    import torch

    from .nn import HalfLinear, PackedLinear

    w2d = m.view2d()
    bias = getattr(m.module, "bias", None)
    bias = None if bias is None else bias.data
    if bits == 16:
        out, inn = (int(s) for s in w2d.shape)
        new = HalfLinear(inn, out, bias is not None, getattr(bias, "dtype", None))
        new.weight = w2d.to(torch.float16).contiguous().clone()
        if bias is not None:
            new.bias = bias.clone()
    else:
        new = PackedLinear.from_weight(w2d, bias, bits, qs.group_size, qs.symmetric, qs.clip_search)
    replace_module(model, m.name, new, undo)


def apply(
    model,
    plan,
    mode: str = "fake",
    *,
    clip_search: bool = False,
    allow_partial: bool = False,
    activations: str = "exact",
):
    """Applies ``plan`` (a Plan, dict or path) to ``model`` in place and returns it.

    ``mode="fake"``: weights are quantize-dequantized in place (same memory).
    ``mode="packed"``: quantized linears become ``empas.nn.PackedLinear`` (packed
    codes + fp16 scales, multiplied straight from the codes by the fused C++ op),
    16-bit units ``empas.nn.HalfLinear``, embeddings ``empas.nn.PackedEmbedding``
    (a tied head: a PackedLinear sharing its buffers); the weights then take the
    plan's predicted bytes.
    Blocks planned at 0 bits are replaced by ``empas.nn.DroppedBlock`` in both modes.
    ``clip_search`` must match the profile's (``profile.meta["source"]``).
    ``activations="int8"`` (packed mode): the packed linears run the int8-activation
    CPU decode kernel (see ``empas.set_activations``).

    Raises PlanMismatchError for a plan made for another model, one that lacks
    units of its profile (unless ``allow_partial``) or one that gives a tied
    embedding and head two precisions, FormatError for formats the quantizer does
    not know. Nothing is changed on error."""
    plan = as_plan(plan)
    _check_activations(mode, activations)
    # Everything is validated (names, sizes, formats, finite weights) before the
    # first change; replaced modules are put back if packing fails part-way.
    _apply(model, plan, mode, clip_search, Undo(save_weights=False), allow_partial)
    if activations != "exact":
        set_activations(model, activations)
    return model


@contextmanager
def applied(
    model,
    plan,
    mode: str = "fake",
    *,
    clip_search: bool = False,
    allow_partial: bool = False,
    activations: str = "exact",
) -> Iterator[Any]:
    """``with empas.applied(model, plan): ...`` applies the plan and restores the
    original weights and modules (bit-exactly) on exit."""
    plan = as_plan(plan)
    _check_activations(mode, activations)
    undo = Undo()
    _apply(model, plan, mode, clip_search, undo, allow_partial)
    if activations != "exact":
        set_activations(model, activations)
    try:
        yield model
    finally:
        undo.restore()


def _check_activations(mode: str, activations: str) -> None:
    from .nn import check_activations

    check_activations(activations)
    if activations != "exact" and mode != "packed":
        raise ValueError(f"activations={activations!r} needs mode='packed' (got mode={mode!r})")


def set_activations(model, mode: str) -> int:
    """Sets how the packed linears of ``model`` treat their input (``"exact"`` or
    ``"int8"``; see :func:`empas.quant.nn.set_activations`); returns how many."""
    from .nn import set_activations as _set

    return _set(model, mode)


def weight_bytes(model) -> int:
    """Bytes of the model's distinct parameters and persistent buffers, as a
    checkpoint stores them (the quantity plans predict)."""
    seen, n = set(), 0
    for t in model.state_dict(keep_vars=True).values():
        if t.device.type == "meta":
            n += t.numel() * t.element_size()
            continue
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        n += t.numel() * t.element_size()
    return int(n)
