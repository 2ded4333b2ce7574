"""Settings of one verification, validated once: :class:`VerifyConfig`."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..quant.apply import MODES

__all__ = ["BASELINE_BITS", "LOSSES", "VerifyConfig"]

BASELINE_BITS = (16, 8, 4, 3, 2)
LOSSES = ("causal_lm", "embedding")
_REQUIRED_INTS = ("batch_size", "speed_new_tokens", "speed_prompt_tokens", "speed_repeats")


@dataclass(frozen=True)
class VerifyConfig:
    """How :func:`empas.verify` (and :func:`~empas.fidelity`, :func:`~empas.refine`)
    measure (see :func:`empas.verify` for the meanings). ``loss`` and
    ``clip_search`` None: the profile's. Raises ValueError naming the bad setting."""

    loss: str | None = None
    seq_len: int | None = None
    stride: int | None = None
    max_tokens: int | None = None
    batch_size: int = 8
    mode: str = "packed"
    clip_search: bool | None = None
    device: str | None = None
    baselines: Sequence[int] = BASELINE_BITS
    budget_plan: bool = True
    memory: bool = False
    speed: bool = False
    speed_new_tokens: int = 32
    speed_prompt_tokens: int = 16
    speed_prefill_tokens: int | None = None
    speed_repeats: int = 3
    speed_activations: str = "exact"

    def __post_init__(self) -> None:
        if self.loss is not None and self.loss not in LOSSES:
            raise ValueError(f"verify measures loss 'causal_lm' or 'embedding', got {self.loss!r}")
        if self.speed_activations not in ("exact", "int8"):
            raise ValueError(
                f"speed_activations must be 'exact' or 'int8', got {self.speed_activations!r}"
            )
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name, lo in (
            ("seq_len", 2),
            ("stride", 1),
            ("max_tokens", 2),
            ("batch_size", 1),
            ("speed_new_tokens", 1),
            ("speed_prompt_tokens", 1),
            ("speed_prefill_tokens", 1),
            ("speed_repeats", 1),
        ):
            v = getattr(self, name)
            if v is None and name not in _REQUIRED_INTS:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
            object.__setattr__(self, name, int(v))
        if isinstance(self.baselines, (str, bytes)):
            raise ValueError(f"baselines must be a list of bit widths, got {self.baselines!r}")
        bl = []
        for b in self.baselines:
            if isinstance(b, bool) or not isinstance(b, numbers.Integral):
                raise ValueError(f"baselines must be integer bit widths, got {b!r}")
            if not (b == 16 or 2 <= b <= 8):
                raise ValueError(f"baseline bit width {b} is not supported: use 2..8 or 16")
            bl.append(int(b))
        object.__setattr__(self, "baselines", tuple(bl))
        if self.clip_search is not None:
            object.__setattr__(self, "clip_search", bool(self.clip_search))
        object.__setattr__(self, "budget_plan", bool(self.budget_plan))
        object.__setattr__(self, "memory", bool(self.memory))
        object.__setattr__(self, "speed", bool(self.speed))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["baselines"] = list(self.baselines)
        return d
