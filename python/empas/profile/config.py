"""Settings of one profiling run, validated once: :class:`ProfileConfig`."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ..quant.config import QuantConfig

__all__ = ["LOSSES", "UNIT_MODES", "ProfileConfig"]

LOSSES = ("causal_lm", "kl", "embedding")
UNIT_MODES = ("block", "sublayer", "linear")


@dataclass(frozen=True)
class ProfileConfig:
    """What :func:`empas.profile` measures and how (see it for the meanings).

    ``choices`` is normalized: sorted, without repeats, with 16 (fp16) added.
    ``estimate``: the choices whose cells are Fisher estimates instead of
    measurements (a subset of ``choices``, never 0), sorted. ``target_stderr`` /
    ``token_budget``: adaptive measurement (see :func:`empas.profile`).
    ``stream`` / ``stream_chunk``: streamed profile (see :func:`empas.profile`).
    ``quant`` is the :class:`~empas.QuantConfig` of ``group_size``, ``symmetric``
    and ``clip_search``. Raises ValueError naming the bad setting."""

    units: str | Mapping[str, str | Sequence[str]] = "block"
    choices: Sequence[int] = (2, 3, 4, 8)
    loss: str | Callable = "causal_lm"
    n_tokens: int | None = None
    seq_len: int | None = None
    batch_size: int = 4
    device: str | None = None
    seed: int = 0
    group_size: int = 128
    symmetric: bool = True
    clip_search: bool = False
    embeddings: bool = False
    head: bool = False
    cache: bool = True
    cache_device: str | None = None
    estimate: Sequence[int] = ()
    target_stderr: float | None = None
    token_budget: int | None = None
    stream: bool = False
    stream_chunk: int | None = None
    quant: QuantConfig = field(init=False, repr=False, compare=False)  # from the three above

    def __post_init__(self) -> None:
        for name, v, lo in (("batch_size", self.batch_size, 1), ("seed", self.seed, 0)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
            object.__setattr__(self, name, int(v))
        for name in ("n_tokens", "seq_len"):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 2:
                    raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
                object.__setattr__(self, name, int(v))
        if isinstance(self.units, str):
            if self.units not in UNIT_MODES:
                raise ValueError(
                    f"units must be one of {UNIT_MODES} or a mapping of unit name -> module names "
                    f"or regexes, got {self.units!r}"
                )
        elif not isinstance(self.units, Mapping):
            raise ValueError(
                f"units must be a string or a mapping, got {type(self.units).__name__}"
            )
        if not callable(self.loss) and self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES} or a callable, got {self.loss!r}")
        object.__setattr__(self, "choices", _check_choices(self.choices, self.units == "block"))
        object.__setattr__(self, "estimate", _check_estimate(self.estimate, self.choices))
        if self.target_stderr is not None:
            v = self.target_stderr
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
                raise ValueError(f"target_stderr must be a number > 0, got {v!r}")
            if v != v or v == float("inf"):
                raise ValueError(f"target_stderr must be finite, got {v!r}")
            object.__setattr__(self, "target_stderr", float(v))
        if self.token_budget is not None:
            v = self.token_budget
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 2:
                raise ValueError(f"token_budget must be an integer >= 2, got {v!r}")
            object.__setattr__(self, "token_budget", int(v))
        object.__setattr__(
            self, "quant", QuantConfig(self.group_size, self.symmetric, self.clip_search)
        )
        object.__setattr__(self, "group_size", self.quant.group_size)
        object.__setattr__(self, "symmetric", self.quant.symmetric)
        object.__setattr__(self, "clip_search", self.quant.clip_search)
        for name in ("embeddings", "head", "cache", "stream"):
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.stream_chunk is not None:
            v = self.stream_chunk
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"stream_chunk must be an integer >= 1, got {v!r}")
            if not self.stream:
                raise ValueError("stream_chunk applies to stream=True (a streamed profile)")
            object.__setattr__(self, "stream_chunk", int(v))
        if self.stream and not self.cache:
            raise ValueError(
                "stream=True runs every experiment from its own block's cached input; "
                "cache=False (every experiment from the embedding) does not apply to it"
            )
        if self.stream and self.estimate:
            raise ValueError(
                f"estimate={list(self.estimate)}: the Fisher estimate needs a backward pass "
                "through the whole resident model; measure every cell with stream=True, or "
                "profile without stream"
            )

    @property
    def loss_name(self) -> str:
        """The loss as a name (a callable's ``__name__``)."""
        if callable(self.loss):
            return getattr(self.loss, "__name__", "callable")
        return self.loss

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (a callable loss by its name)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        d["loss"] = self.loss_name
        d["choices"] = list(self.choices)
        d["estimate"] = list(self.estimate)
        if isinstance(self.units, Mapping):
            d["units"] = {k: v if isinstance(v, str) else list(v) for k, v in self.units.items()}
        return d


def _check_choices(choices, units_kind_block: bool) -> tuple[int, ...]:
    if isinstance(choices, (str, bytes)):
        raise ValueError(f"choices must be a list of integer bit widths, got {choices!r}")
    out = []
    for b in choices:
        if isinstance(b, bool) or not isinstance(b, numbers.Integral):
            raise ValueError(f"choices must be integer bit widths, got {b!r}")
        b = int(b)
        if not (b in (0, 16) or 2 <= b <= 8):
            raise ValueError(f"bit width {b} is not supported: use 2..8, 16 (fp16) or 0 (drop)")
        if b == 0 and not units_kind_block:
            raise ValueError('choice 0 (drop) applies to whole blocks: use units="block"')
        if b not in out:
            out.append(b)
    if 16 not in out:
        out.append(16)
    return tuple(sorted(out))


def _check_estimate(estimate, choices: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(estimate, (str, bytes)) or not isinstance(estimate, (Sequence, set, frozenset)):
        raise ValueError(f"estimate must be a list of bit widths, got {estimate!r}")
    out = set()
    for b in estimate:
        if isinstance(b, bool) or not isinstance(b, numbers.Integral):
            raise ValueError(f"estimate must hold integer bit widths, got {b!r}")
        b = int(b)
        if b == 0:
            raise ValueError("estimate: choice 0 (drop) cannot be estimated, only measured")
        if b not in choices:
            raise ValueError(f"estimate: {b} bits is not one of the choices {list(choices)}")
        out.add(b)
    return tuple(sorted(out))
