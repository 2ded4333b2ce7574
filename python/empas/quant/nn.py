"""The modules a plan puts into a model: :class:`PackedLinear` (packed codes +
fp16 scales, dequantized on the fly by the C++ op), :class:`HalfLinear` (fp16
storage) and :class:`DroppedBlock` (a removed block). Imports torch."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._native import load_ops

__all__ = ["DroppedBlock", "HalfLinear", "PackedLinear"]


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


class PackedLinear(nn.Module):
    """A linear layer stored as packed ``bits``-bit codes plus fp16 group scales
    (and uint8 zero points when asymmetric); dequantized by the C++ op on every
    forward to the input's dtype. Buffers: ``qweight`` uint8
    ``[ceil(out * in * bits / 8)]``, ``scales`` fp16 ``[out, n_groups]``,
    ``zeros`` uint8 ``[out, n_groups]`` (asymmetric only), ``bias`` (if any)."""

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
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=bias_dtype))
        else:
            self.bias = None

    @classmethod
    def from_weight(cls, w2d, bias, bits: int, group_size: int, symmetric: bool, clip_search: bool):
        """Packs a 2-D ``[out, in]`` weight (the C++ op)."""
        from .packing import pack

        pw = pack(w2d, bits, group_size=group_size, symmetric=symmetric, clip_search=clip_search)
        out, inn = (int(s) for s in w2d.shape)
        m = cls(
            inn, out, bits, group_size, symmetric, bias is not None, getattr(bias, "dtype", None)
        )
        m.qweight = pw.qweight
        m.scales = pw.scales
        if not symmetric:
            m.zeros = pw.zeros
        if bias is not None:
            m.bias = bias.detach().clone()
        return m

    def weight_dequantized(self, dtype=None):
        """The weight ``[out, in]`` dequantized to ``dtype`` (default float32)."""
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

    def forward(self, x):
        w = self.weight_dequantized(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return (
            f"in={self.in_features}, out={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, {kind}"
        )
