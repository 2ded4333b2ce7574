"""Real packed weights: quantize + bit-pack a weight matrix, and dequantize it.

:func:`pack` runs the C++ op ``torch.ops.empas.quantize_pack`` and :func:`dequant`
the op ``torch.ops.empas.dequant`` (CPU with OpenMP; dequant has a CUDA kernel,
pack on CUDA packs on the CPU and copies the result back);
:func:`pack_reference` / :func:`dequant_reference` are the same computations in
plain PyTorch, bit-identical, kept to test the ops against.

Storage of ``w`` ``[rows, cols]`` at ``b = bits`` (2..8), groups along ``cols`` as in
:func:`empas.fake_quant` (``ngroups = ceil(cols / g)``, ``g = cols`` when
``group_size <= 0`` or ``> cols``):

* ``qweight``: uint8, ``ceil(rows * cols * b / 8)`` bytes: one little-endian bit
  stream over the matrix in row-major order; element ``e = r * cols + c`` holds
  its code ``u`` in ``[0, 2^b)`` at stream bits ``[e * b, e * b + b)``, and stream
  bit ``k`` is bit ``k % 8`` of byte ``k // 8``. Unused high bits of the last byte
  are 0.
* ``scales``: float16 ``[rows, ngroups]``; ``zeros``: uint8 ``[rows, ngroups]``
  (asymmetric) or None (symmetric).
* symmetric: ``u = q + 2^(b-1)`` with fake_quant's ``q``, scale ``d`` (signed);
  ``out = (u - 2^(b-1)) * d``. Asymmetric: ``u = q``, scale ``s``, zero ``z``;
  ``out = (u - z) * s``. In fp32, plus ``+0.0`` (a zero is +0.0), rounded to the
  output dtype.

So ``dequant(pack(w), w.dtype) == fake_quant(w)`` bit for bit, except for the
asymmetric groups whose fp16 scale ``s`` is 0 (``max - min`` below about
``(2^b - 1) * 2^-25``: a constant group), which fake_quant leaves unchanged: such
a group is stored as scale ``fp16(min)``, zero 0 and every code 1, so it reads
back as ``fp16(min)`` everywhere (scale 0 and codes 0 when ``fp16(min)`` is 0).

Not differentiable: everything runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._native import load_ops
from .fake import NONFINITE, OVERFLOW, check_weight, quantize_groups, torch_module

if TYPE_CHECKING:
    import torch

__all__ = ["PackedWeight", "dequant", "dequant_reference", "pack", "pack_reference"]

_OUT_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class PackedWeight:
    """A packed 2-D weight: ``qweight`` (uint8 bit stream), ``scales`` (float16
    ``[rows, ngroups]``), ``zeros`` (uint8 ``[rows, ngroups]``, None when
    symmetric), and how it was packed."""

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bits: int
    group_size: int
    shape: tuple[int, int]
    symmetric: bool

    @property
    def nbytes(self) -> int:
        """Bytes of the packed form: ``ceil(rows * cols * bits / 8) + rows * ngroups
        * (2 + (0 if symmetric else 1))``."""
        n = self.qweight.numel() * self.qweight.element_size()
        n += self.scales.numel() * self.scales.element_size()
        if self.zeros is not None:
            n += self.zeros.numel() * self.zeros.element_size()
        return n

    @property
    def device(self):
        return self.qweight.device


def pack(
    w: torch.Tensor,
    bits: int,
    group_size: int = 128,
    symmetric: bool = True,
    clip_search: bool = False,
) -> PackedWeight:
    """Quantizes ``w`` (2-D, float32/float16/bfloat16, any device, need not be
    contiguous) to ``bits`` in 2..8 and packs it (the C++ op). Same quantizer as
    :func:`empas.fake_quant` (``clip_search`` included). Raises ValueError for bad
    arguments, NaN/Inf in ``w`` or a scale that overflows fp16."""
    _check_pack(w, bits, group_size)
    torch = load_ops()
    with torch.no_grad():
        try:
            q, s, z = torch.ops.empas.quantize_pack(w, bits, group_size, symmetric, clip_search)
        except RuntimeError as exc:  # the op's checks (TORCH_CHECK)
            _translate(exc)
            raise
    return PackedWeight(
        q, s, None if symmetric else z, int(bits), int(group_size), tuple(w.shape), bool(symmetric)
    )


def dequant(pw: PackedWeight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dequantized weight ``[rows, cols]`` in ``dtype`` (default float32), on
    ``pw``'s device (the C++ op). Raises ValueError for an inconsistent
    PackedWeight (wrong byte count, scales or zeros shape, dtype)."""
    torch = load_ops()
    dtype = _check_dequant(pw, dtype)
    rows, cols = pw.shape
    with torch.no_grad():
        try:
            return torch.ops.empas.dequant(
                pw.qweight, pw.scales, pw.zeros, pw.bits, rows, cols, pw.group_size, dtype
            )
        except RuntimeError as exc:
            _translate(exc)
            raise


def pack_reference(
    w: torch.Tensor,
    bits: int,
    group_size: int = 128,
    symmetric: bool = True,
    clip_search: bool = False,
) -> PackedWeight:
    """:func:`pack` in plain PyTorch (the quantizer of
    :func:`empas.fake_quant_reference`), bit-identical to the op; any device; needs
    no build."""
    _check_pack(w, bits, group_size)
    torch = torch_module()
    rows, cols = w.shape
    ng = (
        0
        if cols == 0
        else -(-cols // (cols if group_size <= 0 or group_size > cols else group_size))
    )
    dev = w.device
    with torch.no_grad():
        if w.numel() == 0:
            q = torch.zeros((rows * cols * bits + 7) // 8, dtype=torch.uint8, device=dev)
            s = torch.zeros(rows, ng, dtype=torch.float16, device=dev)
            z = None if symmetric else torch.zeros(rows, ng, dtype=torch.uint8, device=dev)
            return PackedWeight(q, s, z, bits, group_size, (rows, cols), symmetric)
        grp = quantize_groups(torch, w, bits, group_size, symmetric, clip_search)
        x, scale, special = grp["x"], grp["scale"], grp["special"]
        one = torch.tensor(1.0, dtype=torch.float32, device=dev)
        zero_f = torch.tensor(0.0, dtype=torch.float32, device=dev)
        if symmetric:
            half = 2.0 ** (bits - 1)
            q = (
                torch.clamp(torch.round(x / torch.where(special, one, scale)), -half, half - 1)
                + half
            )
            codes = torch.where(special, torch.tensor(half, device=dev), q)
            zeros = None
        else:
            qmax = 2**bits - 1
            z = grp["zero"]
            q = torch.clamp(torch.round(x / torch.where(special, one, scale)) + z, 0, qmax)
            m = grp["lo"].to(torch.float16).to(torch.float32)  # the s == 0 groups read fp16(min)
            if bool((special & torch.isinf(m)).any()):
                raise ValueError(OVERFLOW)
            nz = m != 0
            codes = torch.where(special, torch.where(nz, one, zero_f), q)
            scale = torch.where(special, torch.where(nz, m, zero_f), scale)
            zeros = torch.where(special, zero_f, z).to(torch.uint8).reshape(rows, ng)
        codes = codes.reshape(rows, -1)[:, :cols].to(torch.int64).reshape(-1)
        qweight = _pack_bits(torch, codes, bits)
        scales = scale.reshape(rows, ng).to(torch.float16)
    return PackedWeight(qweight, scales, zeros, bits, group_size, (rows, cols), symmetric)


def dequant_reference(pw: PackedWeight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """:func:`dequant` in plain PyTorch, bit-identical to the op; any device."""
    torch = torch_module()
    dtype = _check_dequant(pw, dtype)
    rows, cols = pw.shape
    dev = pw.qweight.device
    _check_layout(pw)
    with torch.no_grad():
        if rows * cols == 0:
            return torch.empty(rows, cols, dtype=dtype, device=dev)
        g = cols if pw.group_size <= 0 or pw.group_size > cols else pw.group_size
        codes = _unpack_bits(torch, pw.qweight, pw.bits, rows * cols).reshape(rows, cols)
        col_group = torch.arange(cols, device=dev) // g
        s = pw.scales.to(torch.float32)[:, col_group]
        if pw.zeros is None or pw.zeros.numel() == 0:
            off = torch.tensor(2.0 ** (pw.bits - 1), dtype=torch.float32, device=dev)
        else:
            off = pw.zeros.to(torch.float32)[:, col_group]
        return ((codes.to(torch.float32) - off) * s + 0.0).to(dtype)


# -- helpers ------------------------------------------------------------------------


def _pack_bits(torch, codes, bits: int):
    """int64 codes (1-D) -> the little-endian bit stream, ceil(n * bits / 8) bytes:
    8 codes fill exactly ``bits`` bytes, assembled as one 64-bit word."""
    n = codes.numel()
    pad = -n % 8
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad)])
    c = codes.reshape(-1, 8)
    word = c[:, 0].clone()
    for j in range(1, 8):
        word |= c[:, j] << (j * bits)  # disjoint fields (wraps into the sign bit at 8 bits)
    shifts = torch.arange(bits, device=codes.device) * 8
    out = ((word[:, None] >> shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: (n * bits + 7) // 8].contiguous()


def _unpack_bits(torch, qweight, bits: int, n: int):
    """The first n codes (int64) of the bit stream qweight."""
    nbytes = qweight.numel()
    full = -(-n // 8) * bits
    b = qweight.to(torch.int64)
    if full > nbytes:
        b = torch.cat([b, b.new_zeros(full - nbytes)])
    b = b.reshape(-1, bits)
    word = b[:, 0].clone()
    for k in range(1, bits):
        word |= b[:, k] << (8 * k)
    shifts = torch.arange(8, device=qweight.device) * bits
    codes = (word[:, None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n]


def _check_pack(w, bits, group_size) -> None:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8 for packing, got {bits}")
    check_weight(w, bits, group_size)


def _check_dequant(pw, dtype):
    torch = torch_module()
    if not isinstance(pw, PackedWeight):
        raise TypeError(f"pw must be a PackedWeight, got {type(pw).__name__}")
    if dtype is None:
        dtype = torch.float32
    if not isinstance(dtype, torch.dtype) or str(dtype).removeprefix("torch.") not in _OUT_DTYPES:
        raise ValueError(
            f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}"
        )
    if (
        isinstance(pw.bits, bool)
        or not isinstance(pw.bits, numbers.Integral)
        or not 2 <= pw.bits <= 8
    ):
        raise ValueError(f"bits must be in 2..8, got {pw.bits!r}")
    return dtype


def _check_layout(pw) -> None:
    """What the dequant op checks, for the reference (same sentences)."""
    torch = torch_module()
    rows, cols = pw.shape
    expect = (rows * cols * pw.bits + 7) // 8
    if pw.qweight.dtype != torch.uint8 or pw.qweight.dim() != 1:
        raise ValueError(
            f"qweight must be a 1-D uint8 tensor, got {pw.qweight.dtype} {tuple(pw.qweight.shape)}"
        )
    if pw.qweight.numel() != expect:
        raise ValueError(
            f"qweight has {pw.qweight.numel()} bytes, expected {expect} for {rows}x{cols} at {pw.bits} bits"
        )
    ng = (
        0
        if cols == 0
        else -(-cols // (cols if pw.group_size <= 0 or pw.group_size > cols else pw.group_size))
    )
    if pw.scales.dtype != torch.float16 or tuple(pw.scales.shape) != (rows, ng):
        raise ValueError(
            f"scales must be float16 with shape [rows, ngroups] = [{rows}, {ng}], "
            f"got {pw.scales.dtype} {tuple(pw.scales.shape)}"
        )
    if (
        pw.zeros is not None
        and pw.zeros.numel()
        and (pw.zeros.dtype != torch.uint8 or tuple(pw.zeros.shape) != (rows, ng))
    ):
        raise ValueError(
            f"zeros must be uint8 with shape [rows, ngroups] = [{rows}, {ng}], "
            f"got {pw.zeros.dtype} {tuple(pw.zeros.shape)}"
        )


def _translate(exc: RuntimeError) -> None:
    """Raises ValueError (from exc) for the ops' argument and data errors; returns
    for anything else (the caller re-raises)."""
    msg = str(exc)
    if NONFINITE in msg:
        raise ValueError(NONFINITE) from exc
    if "overflows fp16" in msg:
        raise ValueError(OVERFLOW) from exc
    for op in ("empas::quantize_pack: ", "empas::dequant: "):
        if op in msg:
            first = msg.split(op, 1)[1].splitlines()[0].strip()
            raise ValueError(first) from exc
