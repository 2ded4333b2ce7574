"""Byte sizes: parsing "8GB" / "1.5GiB" / "800MB" and formatting for humans."""

from __future__ import annotations

import math
import re
from fractions import Fraction

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str) -> int:
    """Bytes from an int or a string such as "8GB" (10^9), "1.5GiB" (2^30), "800MB"."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"invalid size {value!r}: must be a finite number >= 0")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid size {value!r}: expected bytes or a string like '8GB'")
    m = _RE.match(value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(
            f"invalid size {value!r}: expected a number with an optional unit "
            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. '8GB' or '1.5GiB'"
        )
    # Exact decimal arithmetic: "9007199254740993B" is that many bytes, not the
    # nearest double (float() rounded integers past 2**53).
    num = m.group(1)
    if "e" in num.lower() and int(num.lower().split("e")[1]) > 30:
        raise ValueError(f"invalid size {value!r}: too large")
    return int(Fraction(num) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    """Human-readable binary size, e.g. 528482304 -> '504.0 MiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
