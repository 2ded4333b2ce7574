"""Quantization formats: what a choice in a profile means.

A choice is a format: a name, the integer bits of each weight, how scales (and
zero-points) are stored, and so the true bits per weight including them. The
integer round-to-nearest formats below are what the C++ fake-quant ops
implement; a profile records the format of every choice, so that formats with
other element types (FP8, MXFP4, NVFP4: not implemented yet) fit the same table.

    >>> empas.qformats.int_format(4, group_size=128).bits_per_weight
    4.125
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["QuantFormat", "choice_formats", "int_format"]


@dataclass(frozen=True)
class QuantFormat:
    """One precision choice. ``bits_per_weight`` counts scales and zero-points."""

    name: str
    bits: int  # stored bits per weight element (0 = dropped, 16 = fp16)
    scheme: str  # "symmetric" | "asymmetric" | "fp16" | "drop"
    group_size: int  # weights per scale along the input dim; 0 = per output channel
    scale_bytes: int = 2  # fp16 scales
    zero_bytes: int = 0

    def bits_per_weight(self, in_features: int | None = None) -> float:
        """Bits per weight including scales (per-channel formats need ``in_features``)."""
        if self.scheme in ("fp16", "drop"):
            return float(self.bits)
        per = self.group_size if self.group_size > 0 else in_features
        if not per:
            raise ValueError(f"{self.name}: per-channel bits per weight needs in_features")
        return self.bits + 8.0 * (self.scale_bytes + self.zero_bytes) / per

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.group_size > 0 or self.scheme in ("fp16", "drop"):
            d["bits_per_weight"] = self.bits_per_weight()
        return d


def int_format(bits: int, group_size: int = 128, symmetric: bool = True) -> QuantFormat:
    """The round-to-nearest integer format of the C++ ops (2..8 bits), fp16 (16) or
    drop (0)."""
    if bits == 0:
        return QuantFormat("drop", 0, "drop", 0, 0, 0)
    if bits == 16:
        return QuantFormat("fp16", 16, "fp16", 0, 0, 0)
    if not 2 <= bits <= 8:
        raise ValueError(f"bit width {bits} is not supported: use 2..8, 16 (fp16) or 0 (drop)")
    g = group_size if group_size > 0 else 0
    scheme = "symmetric" if symmetric else "asymmetric"
    name = f"int{bits}-{'g' + str(g) if g else 'ch'}-{'sym' if symmetric else 'asym'}"
    return QuantFormat(name, bits, scheme, g, 2, 0 if symmetric else 1)


def choice_formats(choices, group_size: int = 128, symmetric: bool = True) -> list[dict]:
    """The format record of each choice, as a profile stores it."""
    return [int_format(b, group_size, symmetric).to_dict() for b in choices]
