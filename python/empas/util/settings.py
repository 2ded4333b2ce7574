"""One config object per step: a step's function takes its settings either as
one config dataclass (``config=``) or as keywords, and builds the config once."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

__all__ = ["settle"]

T = TypeVar("T")


def settle(cls: type[T], config: T | None, given: dict[str, Any]) -> T:
    """``config``, or ``cls`` built from the keyword settings in ``given`` (a
    function's ``locals()``). Keywords that differ from their defaults next to a
    ``config`` are an error: one place decides each setting."""
    init = [f for f in fields(cls) if f.init]
    if config is None:
        return cls(**{f.name: given[f.name] for f in init if f.name in given})
    if not isinstance(config, cls):
        raise TypeError(f"config must be an empas.{cls.__name__}, got {type(config).__name__}")
    clash = [
        f.name
        for f in init
        if f.name in given and f.default is not MISSING and _differs(given[f.name], f.default)
    ]
    if clash:
        raise ValueError(
            f"pass the settings either in config= or as keywords, not both (also given: "
            f"{', '.join(clash)})"
        )
    return config


def _differs(value: Any, default: Any) -> bool:
    if isinstance(default, tuple) and not isinstance(value, (str, bytes)):
        try:
            return tuple(value) != default
        except TypeError:
            return True
    return value is not default and value != default
