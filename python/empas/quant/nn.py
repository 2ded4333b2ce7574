"""The modules a plan puts into a model: :class:`PackedLinear` (packed codes +
fp16 scales, multiplied straight from the codes by the fused C++ op),
:class:`HalfLinear` (fp16 storage), :class:`PackedEmbedding` /
:class:`HalfEmbedding` (an embedding table, packed or fp16; a tied LM head shares
its buffers) and :class:`DroppedBlock` (a removed block).
Imports torch."""

from __future__ import annotations

import warnings
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._native import load_ops
from ..errors import FormatError

__all__ = [
    "ACTIVATIONS",
    "DroppedBlock",
    "HalfEmbedding",
    "HalfLinear",
    "PackedEmbedding",
    "PackedLinear",
    "set_activations",
]

#: How a PackedLinear treats its input in the CPU decode kernel: ``"exact"`` (fp32
#: products, equal to dequant + matmul within fp32 rounding) or ``"int8"`` (x
#: quantized per block of 64 to int8, integer dot products: faster, with the
#: error bound of ``torch.ops.empas.packed_linear_a8``).
ACTIVATIONS = ("exact", "int8")


class DroppedBlock(nn.Module):
    """A decoder block removed by the plan (0 bits): returns its hidden-state input."""

    def __init__(self, index: int = -1):
        super().__init__()
        self.index = int(index)

    def forward(self, hidden_states=None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = kwargs.get("hidden_states")
        return hidden_states

    def extra_repr(self) -> str:
        return f"index={self.index}"


class HalfLinear(nn.Module):
    """A linear layer whose weight is stored in fp16 (the plan's 16-bit choice),
    cast to the input's dtype on each forward."""

    def __init__(self, in_features: int, out_features: int, bias: bool, bias_dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.float16))
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=bias_dtype))
        else:
            self.bias = None

    def forward(self, x):
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), b)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits=16"


_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_warned: set[str] = set()  # fallback reasons already warned about (once per process)


def _warn_fallback(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"PackedLinear: {reason}; using dequant + F.linear instead of the fused kernel "
            "(same result, slower; warned once)",
            RuntimeWarning,
            stacklevel=3,
        )


def _ops_features() -> tuple[bool, bool]:
    """(the ops library has packed_linear, it was built with CUDA)."""
    global _features
    if _features is None:
        import json

        torch_ = load_ops()
        has = hasattr(torch_.ops.empas, "packed_linear")
        cuda = bool(json.loads(torch_.ops.empas.build_info()).get("cuda"))
        if has:
            _OPS[:] = [torch_.ops.empas.packed_linear, torch_.ops.empas.packed_linear_a8]
        _features = (has, cuda)
    return _features


_features: tuple[bool, bool] | None = None
_OPS: list = []  # [packed_linear, packed_linear_a8] once the ops library is loaded


def _validated(c, q, s, z) -> bool:
    """Whether the weak references c (PackedLinear._checked) still point at these
    exact buffers, so that check() has nothing to do."""
    return (
        c is not None
        and c[0]() is q
        and c[1]() is s
        and (c[2] is None if z is None else c[2] is not None and c[2]() is z)
    )


class _PackedBuffers(nn.Module):
    """The packed weight ``[out, in]`` shared by PackedLinear and PackedEmbedding:
    ``qweight`` uint8 ``[ceil(out * in * bits / 8)]`` (the bit stream, row-major),
    ``scales`` fp16 ``[out, n_groups]``, ``zeros`` uint8 ``[out, n_groups]``
    (asymmetric only); groups of ``group_size`` run along ``in``."""

    def __init__(
        self, in_features: int, out_features: int, bits: int, group_size: int, symmetric: bool
    ):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bits, self.group_size, self.symmetric = int(bits), int(group_size), bool(symmetric)
        g = self.in_features if group_size <= 0 or group_size > in_features else group_size
        n_groups = -(-self.in_features // g)
        nbytes = -(-(self.in_features * self.out_features * self.bits) // 8)
        self.register_buffer("qweight", torch.empty(nbytes, dtype=torch.uint8))
        self.register_buffer("scales", torch.empty(out_features, n_groups, dtype=torch.float16))
        if symmetric:
            self.zeros = None
        else:
            self.register_buffer("zeros", torch.empty(out_features, n_groups, dtype=torch.uint8))
        self.n_groups, self.nbytes = n_groups, nbytes
        self.module_name = ""  # the qualified name in its model, for error messages
        self._checked: tuple | None = None  # weak references to the buffers last validated

    def _describe(self) -> str:
        name = f" {self.module_name!r}" if self.module_name else ""
        kind = "sym" if self.symmetric else "asym"
        return (
            f"{type(self).__name__}{name} (out={self.out_features}, in={self.in_features}, "
            f"bits={self.bits}, group_size={self.group_size}, {kind})"
        )

    def check(self) -> None:
        """Raises FormatError (naming the module) when the packed buffers do not
        fit its shape: ``qweight`` not ``ceil(out * in * bits / 8)`` uint8 bytes,
        ``scales``/``zeros`` not ``[out, n_groups]`` fp16/uint8."""
        q, s, z = self.qweight, self.scales, self.zeros
        if _validated(self._checked, q, s, z):
            return
        bad = None
        want = (self.out_features, self.n_groups)
        if q.dtype != torch.uint8 or q.dim() != 1 or q.numel() != self.nbytes:
            bad = (
                f"qweight is {q.dtype} {tuple(q.shape)}, expected uint8 ({self.nbytes},) "
                f"(ceil(out * in * bits / 8) bytes)"
            )
        elif s.dtype != torch.float16 or tuple(s.shape) != want:
            bad = f"scales is {s.dtype} {tuple(s.shape)}, expected float16 {want}"
        elif not self.symmetric and (z is None or z.dtype != torch.uint8 or tuple(z.shape) != want):
            got = "missing" if z is None else f"{z.dtype} {tuple(z.shape)}"
            bad = f"zeros is {got}, expected uint8 {want}"
        elif self.symmetric and z is not None and z.numel() != 0:
            bad = f"zeros {tuple(z.shape)} given for a symmetric weight"
        if bad is not None:
            raise FormatError(f"{self._describe()}: corrupt packed weight: {bad}")
        # weak references: a validated buffer that is replaced is not kept alive
        self._checked = (weakref.ref(q), weakref.ref(s), None if z is None else weakref.ref(z))

    def _set_packed(self, pw) -> None:
        self.qweight = pw.qweight
        self.scales = pw.scales
        if not self.symmetric:
            self.zeros = pw.zeros

    def share_packed(self, other: _PackedBuffers) -> None:
        """Uses ``other``'s buffers (the same tensors: a tied embedding and head
        stored once). Shapes must match."""
        if (
            other.out_features,
            other.in_features,
            other.bits,
            other.group_size,
            other.symmetric,
        ) != (
            self.out_features,
            self.in_features,
            self.bits,
            self.group_size,
            self.symmetric,
        ):
            raise FormatError(f"{self._describe()} cannot share the buffers of {other._describe()}")
        self._set_packed(other)

    def weight_dequantized(self, dtype=None):
        """The weight ``[out, in]`` dequantized to ``dtype`` (default float32)."""
        self.check()
        return load_ops().ops.empas.dequant(
            self.qweight,
            self.scales,
            self.zeros,
            self.bits,
            self.out_features,
            self.in_features,
            self.group_size,
            dtype if dtype is not None else torch.float32,
        )


class PackedLinear(_PackedBuffers):
    """A linear layer stored as packed ``bits``-bit codes plus fp16 group scales
    (and uint8 zero points when asymmetric). ``forward`` runs the fused op
    ``torch.ops.empas.packed_linear`` (``x @ dequant(W)^T + bias`` straight from
    the codes, fp32 arithmetic, the result in ``x``'s dtype) on CPU and CUDA for
    float32/float16/bfloat16 inputs; anything else (another dtype or device,
    autograd through ``x``) falls back to dequant + ``F.linear`` with a one-time
    warning. Buffers: ``qweight`` uint8 ``[ceil(out * in * bits / 8)]``,
    ``scales`` fp16 ``[out, n_groups]``, ``zeros`` uint8 ``[out, n_groups]``
    (asymmetric only), ``bias`` (if any). Buffers of the wrong size or dtype (a
    corrupt packed tensor) raise FormatError naming the module."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        symmetric: bool,
        bias: bool,
        bias_dtype=None,
    ):
        super().__init__(in_features, out_features, bits, group_size, symmetric)
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=bias_dtype))
        else:
            self.bias = None
        self.activations = "exact"  # ACTIVATIONS; set_activations() changes it

    @classmethod
    def from_weight(cls, w2d, bias, bits: int, group_size: int, symmetric: bool, clip_search: bool):
        """Packs a 2-D ``[out, in]`` weight (the C++ op)."""
        from .packing import pack

        pw = pack(w2d, bits, group_size=group_size, symmetric=symmetric, clip_search=clip_search)
        out, inn = (int(s) for s in w2d.shape)
        m = cls(
            inn, out, bits, group_size, symmetric, bias is not None, getattr(bias, "dtype", None)
        )
        m._set_packed(pw)
        if bias is not None:
            m.bias = bias.detach().clone()
        return m

    def _fallback_reason(self, x) -> str | None:
        """Why the fused op cannot run on x (None: it can)."""
        if x.dtype not in _FUSED_DTYPES:
            return f"no fused kernel for {x.dtype} inputs"
        has, cuda = _ops_features()
        if not has:
            return "the EMPAS ops library has no packed_linear (rebuild EMPAS)"
        dev = x.device.type
        if dev == "cuda" and not cuda:
            return "the EMPAS ops library was built without CUDA"
        if dev not in ("cpu", "cuda", "meta"):
            return f"no fused kernel for {dev} tensors"
        if x.requires_grad and torch.is_grad_enabled():
            return "the fused kernel has no autograd (input requires grad)"
        return None

    @property
    def activations(self) -> str:
        """How the CPU decode kernel treats the input: ``"exact"`` or ``"int8"``
        (ACTIVATIONS); ValueError for anything else."""
        return self.__dict__["_activations"]

    @activations.setter
    def activations(self, mode: str) -> None:
        self.__dict__["_activations"] = check_activations(mode)

    def forward(self, x):
        # The decode hot path (hundreds of calls per token): buffers and settings read
        # straight from __dict__ (nn.Module.__getattr__ costs ~1 us per lookup), the
        # fused CPU op called directly once check() has validated these very buffers
        # (weak references: a replaced buffer is neither trusted nor kept alive).
        d = self.__dict__
        b = d["_buffers"]
        q, s = b.get("qweight"), b.get("scales")
        z = b["zeros"] if "zeros" in b else d.get("zeros")
        if (
            _OPS
            and _validated(d["_checked"], q, s, z)
            and x.is_cpu
            and x.dtype in _FUSED_DTYPES
            and not (x.requires_grad and torch.is_grad_enabled())
        ):
            return _OPS[d["_activations"] == "int8"](
                x,
                q,
                s,
                z,
                b["bias"] if "bias" in b else d.get("bias"),
                d["bits"],
                d["out_features"],
                d["in_features"],
                d["group_size"],
            )
        return self._forward_checked(x)

    def _forward_checked(self, x):
        reason = self._fallback_reason(x)
        if reason is None:
            self.check()
            # int8 activations: the CPU kernel (decode rows; prefill stays exact). On
            # other devices the exact kernel runs.
            a8 = self.activations == "int8" and x.device.type == "cpu"
            return _OPS[a8](
                x,
                self.qweight,
                self.scales,
                self.zeros,
                self.bias,
                self.bits,
                self.out_features,
                self.in_features,
                self.group_size,
            )
        _warn_fallback(reason)
        dt = x.dtype if x.dtype.is_floating_point else torch.float32
        w = self.weight_dequantized(dt if dt in _FUSED_DTYPES else torch.float32).to(dt)
        b = None if self.bias is None else self.bias.to(dt)
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        act = ", activations=int8" if self.activations == "int8" else ""
        return (
            f"in={self.in_features}, out={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, {kind}{act}"
        )


class PackedEmbedding(_PackedBuffers):
    """An embedding table ``[num_embeddings, embedding_dim]`` stored as packed
    ``bits``-bit codes plus fp16 group scales (groups along ``embedding_dim``: the
    layout of a PackedLinear with ``out = num_embeddings``, ``in = embedding_dim``).
    ``forward(ids)`` dequantizes only the looked-up rows (the C++ dequant op) and
    returns them in ``dtype`` (the original table's). A tied LM head is a
    PackedLinear that shares these buffers (stored once). Ids out of range raise
    IndexError, as ``nn.Embedding``."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        bits: int,
        group_size: int,
        symmetric: bool,
        dtype=torch.float32,
    ):
        super().__init__(embedding_dim, num_embeddings, bits, group_size, symmetric)
        self.num_embeddings, self.embedding_dim = self.out_features, self.in_features
        self.dtype = dtype
        # rows start on a byte when in * bits is a multiple of 8: gather their bytes
        row_bits = self.in_features * self.bits
        self._row_bytes = row_bits // 8 if row_bits % 8 == 0 else None

    @classmethod
    def from_weight(cls, w2d, bits: int, group_size: int, symmetric: bool, clip_search: bool):
        """Packs a 2-D ``[num_embeddings, embedding_dim]`` table (the C++ op); the
        output dtype is the table's."""
        from .packing import pack

        pw = pack(w2d, bits, group_size=group_size, symmetric=symmetric, clip_search=clip_search)
        n, dim = (int(s) for s in w2d.shape)
        m = cls(n, dim, bits, group_size, symmetric, w2d.dtype)
        m._set_packed(pw)
        return m

    def forward(self, ids):
        self.check()
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{self._describe()}: ids must be int64 or int32, got {ids.dtype}")
        flat = ids.reshape(-1)
        n = int(flat.numel())
        dt = self.dtype if self.dtype in _FUSED_DTYPES else torch.float32
        if n and (flat.min() < 0 or flat.max() >= self.num_embeddings):
            raise IndexError(
                f"{self._describe()}: ids must be in [0, {self.num_embeddings}), got "
                f"[{int(flat.min())}, {int(flat.max())}]"
            )
        if self._row_bytes is None:  # rows not byte-aligned: dequantize all, then gather
            rows = self.weight_dequantized(dt).index_select(0, flat)
        else:
            q = self.qweight.view(self.out_features, self._row_bytes).index_select(0, flat)
            z = None if self.zeros is None else self.zeros.index_select(0, flat)
            rows = load_ops().ops.empas.dequant(
                q.reshape(-1),
                self.scales.index_select(0, flat),
                z,
                self.bits,
                n,
                self.in_features,
                self.group_size,
                dt,
            )
        return rows.to(self.dtype).view(*ids.shape, self.in_features)

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, "
            f"group_size={self.group_size}, {kind}, dtype={str(self.dtype).replace('torch.', '')}"
        )


class HalfEmbedding(nn.Module):
    """An embedding table stored in fp16 (the plan's 16-bit choice); ``forward``
    returns the rows in ``dtype`` (the original table's). A tied LM head is a
    HalfLinear that shares the ``weight`` buffer."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=torch.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.dtype = dtype
        self.register_buffer(
            "weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.float16)
        )

    def forward(self, ids):
        return F.embedding(ids, self.weight).to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits=16, dtype={str(self.dtype).replace('torch.', '')}"


def check_activations(mode: str) -> str:
    """``mode`` if it is one of ACTIVATIONS, else ValueError naming the choices."""
    if mode not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATIONS)}; got {mode!r}")
    return mode


def set_activations(model, mode: str) -> int:
    """Sets how every PackedLinear of ``model`` treats its input: ``"int8"`` runs
    the int8-activation CPU decode kernel (``torch.ops.empas.packed_linear_a8``:
    2/4/8-bit layers whose in_features and group size are multiples of 64, 128 for
    2-bit; others, prefill and non-CPU devices stay exact), ``"exact"`` the fp32
    kernel. Returns the number of PackedLinear modules set; ValueError for an
    unknown mode (nothing changed)."""
    check_activations(mode)
    n = 0
    for mod in model.modules():
        if isinstance(mod, PackedLinear):
            mod.activations = mode
            n += 1
    return n
