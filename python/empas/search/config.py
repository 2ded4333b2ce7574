"""Settings of one search, validated once: :class:`SearchConfig`."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..util.sizes import parse_size

__all__ = ["METHODS", "SearchConfig", "available_cores"]

METHODS = ("nsga2", "exact")


@dataclass
class SearchConfig:
    """Validated settings of one search (see :func:`search` for meanings)."""

    method: str = "nsga2"
    pop_size: int = 100
    generations: int = 50
    seed: int = 0
    max_bytes: int | None = None
    max_avg_bits: float | None = None
    threads: int | None = None
    latency: bool = False
    pinned: dict[str, int] | None = field(default_factory=dict)
    allowed_bits: list[int] | None = None
    crossover_prob: float = 0.7
    mutation_prob: float | None = None
    eliminate_duplicates: bool = True
    seed_uniform: bool = True
    sampling: str = "stratified"
    mutation: str = "neighbor"
    checkpoint: str | None = None
    checkpoint_every: int = 10
    max_points: int = 2_000_000
    resolution: int | None = None
    table: str = "monotone"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        self.pop_size = _int("pop_size", self.pop_size, 4, "a population needs at least 4 members")
        self.generations = _int("generations", self.generations, 1, "run at least one generation")
        self.seed = _int("seed", self.seed, 0, "seeds are integers >= 0", hi=None)
        if self.seed >= 2**64:
            raise ValueError("seed must be < 2**64")
        if self.threads is not None:
            self.threads = _int("threads", self.threads, 1, "use threads=None for all cores")
            # More threads than cores only adds overhead, and a huge count crashes
            # the OpenMP runtime; the native core caps it the same way.
            self.threads = min(self.threads, available_cores())
        if self.max_bytes is not None:
            self.max_bytes = parse_size(self.max_bytes)
            if self.max_bytes > _INT64_MAX:
                raise ValueError(
                    f"max_bytes must be at most {_INT64_MAX} bytes, got {self.max_bytes}"
                )
        if self.max_avg_bits is not None:
            v = self.max_avg_bits
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v <= 0
            ):
                raise ValueError(f"max_avg_bits must be a positive number, got {v!r}")
        for name in ("crossover_prob",) + (
            ("mutation_prob",) if self.mutation_prob is not None else ()
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
        self.checkpoint_every = _int("checkpoint_every", self.checkpoint_every, 1, "")
        self.max_points = _int("max_points", self.max_points, 1, "", hi=_INT64_MAX)
        if self.resolution is not None:
            self.resolution = parse_size(self.resolution)
            if not 1 <= self.resolution <= _INT64_MAX:
                raise ValueError(f"resolution must be between 1 and {_INT64_MAX} bytes")
        if self.method == "exact" and self.latency:
            raise ValueError("method='exact' covers loss vs bytes; latency needs method='nsga2'")
        if self.method == "exact" and self.max_avg_bits is not None:
            raise ValueError("method='exact' supports max_bytes only; max_avg_bits needs 'nsga2'")
        if self.table not in ("monotone", "raw"):
            raise ValueError(f"table must be 'monotone' or 'raw', got {self.table!r}")
        if self.sampling not in ("stratified", "uniform"):
            raise ValueError(f"sampling must be 'stratified' or 'uniform', got {self.sampling!r}")
        if self.mutation not in ("neighbor", "uniform"):
            raise ValueError(f"mutation must be 'neighbor' or 'uniform', got {self.mutation!r}")
        try:
            pinned = dict(self.pinned or {})
        except (TypeError, ValueError):
            raise ValueError(
                f"pinned must be a {{unit_name: bits}} dict, got {self.pinned!r}"
            ) from None
        self.pinned = {str(k): _bits(f"pinned[{k!r}]", v) for k, v in pinned.items()}
        if self.allowed_bits is not None:
            if isinstance(self.allowed_bits, (str, bytes)) or not isinstance(
                self.allowed_bits, Iterable
            ):
                raise ValueError(
                    f"allowed_bits must be a list of bit widths, got {self.allowed_bits!r}"
                )
            self.allowed_bits = [_bits("allowed_bits", b) for b in self.allowed_bits]
        if self.checkpoint is not None:
            self.checkpoint = os.fspath(self.checkpoint)


def available_cores() -> int:
    """Cores this process may run on: the cap on ``threads``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_INT32_MAX = 2**31 - 1  # C++ int arguments
_INT64_MAX = 2**63 - 1  # C++ int64_t arguments


def _int(name: str, v: Any, lo: int, hint: str, hi: int | None = _INT32_MAX) -> int:
    """``v`` as a plain int (numpy integers too) in [lo, hi], else ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(
            f"{name} must be an integer >= {lo}, got {v!r}" + (f" ({hint})" if hint else "")
        )
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be at most {hi}, got {v!r}")
    return int(v)


def _bits(name: str, v: Any) -> int:
    """A bit width: an integer (numpy integers too), never a float or string."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name}: bit widths must be integers, got {v!r}")
    return int(v)
