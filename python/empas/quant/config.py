"""The quantizer: one frozen, validated :class:`QuantConfig` (group size,
symmetric or not, clip search) used by profiling, applying, packing, exporting
and the C++ side's JSON (the ``quantizer`` record of profiles and plans), and the
formats a choice stands for (:class:`QuantFormat`: bits, scales, zero-points and
so the true bits per weight).

The integer round-to-nearest formats below are what the C++ fake-quant ops
implement; a profile records the format of every choice, so that formats with
other element types (FP8, MXFP4, NVFP4: not implemented yet) fit the same table.

    >>> empas.QuantConfig(group_size=128).format(4).bits_per_weight()
    4.125
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import FormatError

__all__ = ["QuantConfig", "QuantFormat", "choice_formats", "int_format"]

SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("group", "channel")


@dataclass(frozen=True)
class QuantConfig:
    """How weights are quantized: ``group_size`` weights per fp16 scale along the
    input dimension (0 = one scale per output channel; -1 is accepted as 0),
    ``symmetric`` (else asymmetric with uint8 zero-points) and ``clip_search``
    (search a clipping ratio per group). Validated on construction."""

    group_size: int = 128
    symmetric: bool = True
    clip_search: bool = False

    def __post_init__(self) -> None:
        g = self.group_size
        if (
            isinstance(g, bool)
            or not isinstance(g, numbers.Integral)
            or not (g > 0 or g in (0, -1))
        ):
            raise ValueError(f"group_size must be > 0, or 0 / -1 for per-channel, got {g!r}")
        object.__setattr__(self, "group_size", max(int(g), 0))
        for name in ("symmetric", "clip_search"):
            v = getattr(self, name)
            if not isinstance(v, (bool, numbers.Integral)):
                raise ValueError(f"{name} must be a bool, got {v!r}")
            object.__setattr__(self, name, bool(v))

    @property
    def per_channel(self) -> bool:
        return self.group_size == 0

    @property
    def scheme(self) -> str:
        return "symmetric" if self.symmetric else "asymmetric"

    def format(self, bits: int) -> QuantFormat:
        """The format of a choice: ``bits`` in 2..8, 16 (fp16) or 0 (drop)."""
        return int_format(bits, self.group_size, self.symmetric)

    def choice_formats(self, choices) -> list[dict]:
        """The format record of each choice, as a profile stores it."""
        return [self.format(b).to_dict() for b in choices]

    def to_json(self) -> dict[str, Any]:
        """The ``quantizer`` record of profiles and plans (what the C++ side reads;
        clip search is recorded with the profile's source, not here)."""
        return {
            "scheme": self.scheme,
            "granularity": "channel" if self.per_channel else "group",
            "group_size": self.group_size,
            "scale_bytes": 2,
            "zero_bytes": 0 if self.symmetric else 1,
            "bytes_model": "packed",
        }

    @staticmethod
    def group_size_of(q: dict[str, Any] | None, target: str) -> int:
        """The group size a ``quantizer`` record gives (0: per output channel);
        FormatError naming ``target`` for another granularity."""
        q = dict(q or {})
        gran = q.get("granularity", "group")
        if gran not in GRANULARITIES:
            raise FormatError(
                f"{target} has no per-{gran} quantization: plan quantizer granularity {gran!r} "
                "is not supported (use 'group' or 'channel')"
            )
        return int(q.get("group_size", 128)) if gran == "group" else 0

    @classmethod
    def from_json(cls, q: dict[str, Any] | None, clip_search: bool = False) -> QuantConfig:
        """Reads a ``quantizer`` record; FormatError for one that the packed
        format cannot hold (other scale/zero-point sizes, an imported original
        EMPAS byte count, unknown scheme or granularity)."""
        q = dict(q or {})
        g = cls.group_size_of(q, "apply")
        scheme = q.get("scheme", "symmetric")
        if scheme not in SCHEMES:
            raise FormatError(f"plan quantizer scheme {scheme!r} is unknown")
        symmetric = scheme == "symmetric"
        zb = int(q.get("zero_bytes", 0 if symmetric else 1))
        sb = int(q.get("scale_bytes", 2))
        if sb != 2 or zb != (0 if symmetric else 1):
            raise FormatError(
                f"plan quantizer stores {sb}-byte scales and {zb}-byte zero points; the packed "
                "format has fp16 scales and (asymmetric only) uint8 zero points"
            )
        if q.get("bytes_model", "packed") != "packed":
            raise FormatError(
                "the plan's byte counts use bytes_model='params_bits' (an imported original "
                "EMPAS plan): it has no quantizer layout to apply; re-plan from an empas profile"
            )
        try:
            return cls(g, symmetric, bool(clip_search))
        except ValueError as exc:
            raise FormatError(f"plan quantizer: {exc}") from None


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
    return QuantConfig(group_size, symmetric).choice_formats(choices)
