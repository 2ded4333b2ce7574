"""Fake quantization (quantize -> dequantize) of weight matrices.

:func:`fake_quant` runs the C++ op ``torch.ops.empas.fake_quant`` (CPU with
OpenMP/SIMD, CUDA when compiled); :func:`fake_quant_reference` is the same
computation in plain PyTorch, bit-identical, kept to test the op against.

``w`` is a 2-D weight ``[out_features, in_features]`` (float32, float16 or
bfloat16); groups run along the last dim: ``group_size > 0`` splits each row into
``ceil(cols / group_size)`` groups (the last one shorter when it does not divide
the row), ``group_size <= 0`` gives one group per row (per output channel). All
arithmetic is fp32; the result is rounded back to ``w.dtype`` (to nearest even).
Per group, with ``b = bits``:

* symmetric (``2^b`` levels, llama.cpp style): ``m`` = the element of largest
  ``|w|`` (signed, first on ties); ``d = fp16(m / -2^(b-1))``, zeros when ``d ==
  0``; ``q = clamp(round(w / d), -2^(b-1), 2^(b-1) - 1)``; ``out = q * d``.
* asymmetric: ``s = fp16((max - min) / (2^b - 1))``, the input unchanged when
  ``s == 0``; ``z = clamp(round(-min / s), 0, 2^b - 1)``; ``q = clamp(round(w / s) + z,
  0, 2^b - 1)``; ``out = (q - z) * s``.

``fp16(x)`` rounds the scale to float16 and back (scales are stored as fp16),
``round`` is half to even, divisions are true IEEE divisions, and a zero result is
+0.0. ``clip_search=True`` tries the ratios ``r = 1 - k/20``, ``k = 0..10``, on ``m``
(symmetric) or on min and max (asymmetric) and keeps, per group, the one with
the smallest squared error (fp32 differences, squares summed in float64; the
largest ``r`` on ties). ``bits=16`` means fp16 storage:
``w.to(torch.float16).to(w.dtype)``.

Not differentiable: both functions run under ``torch.no_grad()``.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

from .._native import load_ops

if TYPE_CHECKING:
    import torch

__all__ = ["fake_quant", "fake_quant_reference"]

NONFINITE = "weight contains NaN or Inf"
OVERFLOW = "a group's quantization scale overflows fp16 (|scale| > 65504): weight values too large"
_N_RATIOS = 11


def fake_quant(
    w: torch.Tensor,
    bits: int,
    group_size: int = 128,
    symmetric: bool = True,
    clip_search: bool = False,
    inplace: bool = False,
) -> torch.Tensor:
    """Quantizes ``w`` to ``bits`` and dequantizes it (the C++ op).

    Returns a new contiguous tensor of ``w``'s shape and dtype, or ``w`` itself,
    overwritten, with ``inplace=True`` (non-contiguous ``w`` such as ``conv.weight.t()``
    works: the result is written back into its storage). Loads the ops library on
    first use (NativeBuildError if this build has none). Raises ValueError for
    bad arguments, NaN/Inf in ``w`` or a scale that overflows fp16; with
    ``inplace=True`` such an error may leave ``w`` partly quantized (groups holding
    NaN/Inf are never written)."""
    check_weight(w, bits, group_size)
    torch = torch_module()
    with torch.no_grad():
        if bits == 16:
            return _fp16(w, inplace)
        torch = load_ops()
        try:
            if inplace:
                torch.ops.empas.fake_quant_(w, bits, group_size, symmetric, clip_search)
                return w
            return torch.ops.empas.fake_quant(w, bits, group_size, symmetric, clip_search)
        except RuntimeError as exc:  # the op's checks (TORCH_CHECK)
            for msg in (NONFINITE, "overflows fp16"):
                if msg in str(exc):
                    raise ValueError(NONFINITE if msg == NONFINITE else OVERFLOW) from exc
            raise


def fake_quant_reference(
    w: torch.Tensor,
    bits: int,
    group_size: int = 128,
    symmetric: bool = True,
    clip_search: bool = False,
    inplace: bool = False,
) -> torch.Tensor:
    """:func:`fake_quant` in plain PyTorch, vectorized over groups (the last group
    of a row is padded by repeating the row's last element, and masked out of
    the clip-search error). Bit-identical to the op; any device; needs no build."""
    check_weight(w, bits, group_size)
    torch = torch_module()
    with torch.no_grad():
        if bits == 16:
            return _fp16(w, inplace)
        if w.numel() == 0:
            return w if inplace else torch.empty(w.shape, dtype=w.dtype, device=w.device)
        out = _reference(torch, w, bits, group_size, symmetric, clip_search)
        if inplace:
            w.copy_(out)
            return w
        return out


# -- helpers ------------------------------------------------------------------------


def torch_module():
    try:
        import torch
    except ImportError as exc:
        raise ImportError("empas fake quantization needs PyTorch: pip install torch") from exc
    return torch


def check_weight(w, bits, group_size) -> None:
    torch = torch_module()
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ValueError(f"bits must be an int in 2..8 or 16, got {bits!r}")
    if not (2 <= bits <= 8 or bits == 16):
        raise ValueError(f"bits must be in 2..8 or 16, got {bits}")
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral):
        raise ValueError(
            f"group_size must be an int (<= 0: per output channel), got {group_size!r}"
        )
    if w.dim() != 2:
        raise ValueError(
            f"w must be a 2-D weight [out_features, in_features], got shape {tuple(w.shape)}"
        )
    if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"w must be float32, float16 or bfloat16, got {w.dtype}")


def _fp16(w, inplace: bool):
    """bits = 16: fp16 storage, w.to(float16).to(w.dtype)."""
    import torch

    q = w.to(torch.float16).to(w.dtype)
    if inplace:
        w.copy_(q)
        return w
    return q.clone() if q.data_ptr() == w.data_ptr() else q


def _reference(torch, w, bits: int, group_size: int, symmetric: bool, clip_search: bool):
    rows, cols = w.shape
    y = quantize_groups(torch, w, bits, group_size, symmetric, clip_search)["y"]
    return y.reshape(rows, -1)[:, :cols].to(w.dtype).contiguous()


def quantize_groups(torch, w, bits: int, group_size: int, symmetric: bool, clip_search: bool):
    """The reference quantizer on the groups of a non-empty ``w``, as a dict of
    ``[rows, ngroups, g]`` / ``[rows, ngroups, 1]`` fp32 tensors: ``x`` (the groups,
    the last one padded), ``y`` (dequantized at the chosen ratio), and the chosen
    quantizer per group: ``scale`` (``d`` or ``s``; +0.0 where ``special``), ``zero``
    (asymmetric ``z``; None when symmetric), ``special`` (bool: symmetric ``d == 0``,
    the group is zeros; asymmetric ``s == 0``, the group is kept as it is) and
    ``lo`` (the group's minimum). Shared with :mod:`empas.packing`."""
    rows, cols = w.shape
    g = cols if group_size <= 0 or group_size > cols else int(group_size)
    ng = -(-cols // g)
    pad = ng * g - cols
    x = w.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(NONFINITE)
    if pad:  # repeat the row's last element: min, max and the first argmax keep
        x = torch.cat([x, x[:, -1:].expand(rows, pad)], dim=1)
    x = x.reshape(rows, ng, g)
    mask = (torch.arange(ng * g, device=w.device) < cols).reshape(ng, g)
    dev = w.device

    def f32(v: float):
        # 0-dim tensors on w's device: true division by them on every backend
        # (a Python-scalar divisor may become a multiplication by its reciprocal).
        return torch.tensor(v, dtype=torch.float32, device=dev)

    lo = x.amin(dim=-1, keepdim=True)
    if symmetric:
        half = 2.0 ** (bits - 1)
        m = x.gather(-1, x.abs().argmax(dim=-1, keepdim=True))  # first on ties
    else:
        qmax = f32(2**bits - 1)
        hi = x.amax(dim=-1, keepdim=True)

    def at_ratio(r):
        """(y, scale, zero, special) at clipping ratio r (a 0-dim fp32 tensor)."""
        if symmetric:
            d = ((m * r) / f32(-half)).to(torch.float16).to(torch.float32)
            if bool(torch.isinf(d).any()):
                raise ValueError(OVERFLOW)
            zero = d == 0
            d = torch.where(zero, f32(1.0), d)
            q = torch.clamp(torch.round(x / d), -half, half - 1)
            y = q * d + 0.0  # + 0.0: zeros are +0.0
            return torch.where(zero, f32(0.0), y), torch.where(zero, f32(0.0), d), None, zero
        lor, hir = lo * r, hi * r
        s = ((hir - lor) / qmax).to(torch.float16).to(torch.float32)
        if bool(torch.isinf(s).any()):
            raise ValueError(OVERFLOW)
        same = s == 0
        s1 = torch.where(same, f32(1.0), s)
        z = torch.clamp(torch.round(-lor / s1), 0, 2**bits - 1)
        q = torch.clamp(torch.round(x / s1) + z, 0, 2**bits - 1)
        y = (q - z) * s1 + 0.0
        return torch.where(same, x, y), torch.where(same, f32(0.0), s), z, same

    best = at_ratio(f32(1.0))
    if clip_search:
        maskd = mask.to(torch.float64)

        def error(y):
            e = (y - x).to(torch.float64)  # the fp32 difference, squared in float64
            return (e * e * maskd).sum(dim=-1, keepdim=True)

        best_err = error(best[0])
        for k in range(1, _N_RATIOS):
            cand = at_ratio(f32(1.0 - k / 20.0))
            err = error(cand[0])
            better = err < best_err  # strict: the largest ratio wins ties
            best = tuple(
                None if b is None else torch.where(better, c, b) for c, b in zip(cand, best)
            )
            best_err = torch.where(better, err, best_err)
    y, scale, zero, special = best
    return {"x": x, "y": y, "scale": scale, "zero": zero, "special": special, "lo": lo}


def quantize_member_(m, bits: int, config) -> None:
    """Quantize-dequantizes a :class:`empas.models.structure.Member`'s weight in
    place with ``config`` (a :class:`empas.QuantConfig`; ``m.view2d()`` is the
    [out, in] view); 16 bits rounds it to fp16 and back."""
    import torch

    w = m.weight.data
    with torch.no_grad():
        if bits == 16:
            w.copy_(w.to(torch.float16).to(w.dtype))
        else:
            fake_quant(
                m.view2d(),
                bits,
                group_size=config.group_size,
                symmetric=config.symmetric,
                clip_search=config.clip_search,
                inplace=True,
            )
