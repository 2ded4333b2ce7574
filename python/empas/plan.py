"""Plans: one precision per unit, with predicted (and later measured) metrics.

A plan is stored as ``empas.plan/1`` JSON; it carries the model identity, the
unit -> bits map (with each unit's member modules), the quantizer settings,
metrics and provenance, so it can be loaded and applied by itself."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from ._native import core
from .util.io import atomic_write_text

__all__ = ["Plan", "as_plan", "load_plan"]


class Plan:
    """A precision assignment. ``bits`` lists one bit width per unit, in profile order."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]):
        self._data = data

    # -- construction -------------------------------------------------------
    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Parses ``empas.plan/1`` or an original EMPAS artifact; raises FormatError."""
        return cls(json.loads(core().normalize_plan(text)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls.from_json(json.dumps(data, allow_nan=False))

    # -- contents -----------------------------------------------------------
    @property
    def unit_names(self) -> list[str]:
        return [u["name"] for u in self._data["units"]]

    @property
    def bits(self) -> list[int]:
        return [int(u["bits"]) for u in self._data["units"]]

    @property
    def bits_by_unit(self) -> dict[str, int]:
        return {u["name"]: int(u["bits"]) for u in self._data["units"]}

    @property
    def modules(self) -> dict[str, list[str]]:
        """Unit name -> member module names (empty where unknown)."""
        return {u["name"]: list(u.get("modules") or []) for u in self._data["units"]}

    @property
    def model_name(self) -> str:
        return (self._data.get("model") or {}).get("name", "")

    @property
    def archetype(self) -> str | None:
        return self._data.get("archetype")

    @archetype.setter
    def archetype(self, name: str | None) -> None:
        self._data["archetype"] = name

    @property
    def quantizer(self) -> dict[str, Any]:
        return dict(self._data.get("quantizer") or {})

    @property
    def predicted(self) -> dict[str, Any]:
        return dict(self._data.get("predicted") or {})

    def set_predicted(self, key: str, value: Any) -> None:
        """Adds a predicted metric (e.g. the loss's standard error)."""
        self._data.setdefault("predicted", {})[key] = value

    @property
    def predicted_loss(self) -> float | None:
        return self.predicted.get("loss")

    @property
    def predicted_bytes(self) -> int | None:
        b = self.predicted.get("bytes")
        return None if b is None else int(b)

    @property
    def predicted_avg_bits(self) -> float | None:
        return self.predicted.get("avg_bits")

    @property
    def predicted_latency(self) -> float | None:
        return self.predicted.get("latency")

    @property
    def measured(self) -> dict[str, Any] | None:
        """What verify measured (loss, ppl, bytes, ...), or None."""
        return self._data.get("measured")

    @measured.setter
    def measured(self, record: dict[str, Any] | None) -> None:
        self._data["measured"] = None if record is None else dict(record)

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self._data.get("provenance") or {})

    def set_provenance(self, key: str, value: Any) -> None:
        """Records where the plan came from under ``provenance[key]`` (e.g. "search")."""
        self._data.setdefault("provenance", {})[key] = value

    # -- output -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._data))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self._data, indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Writes the plan atomically (temp file + rename). Returns the path."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        return atomic_write_text(path, self.to_json() + "\n")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._data == other._data

    __hash__ = None  # mutable (archetype)

    def __repr__(self) -> str:
        p = self.predicted
        parts = [f"units={len(self._data['units'])}"]
        if self.archetype:
            parts.insert(0, repr(self.archetype))
        if p.get("loss") is not None:
            parts.append(f"loss={p['loss']:.4f}")
        if p.get("bytes") is not None:
            parts.append(f"bytes={int(p['bytes']):,}")
        if p.get("avg_bits") is not None:
            parts.append(f"avg_bits={p['avg_bits']:.2f}")
        return f"Plan({', '.join(parts)})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{b}</td></tr>"
            for n, b in zip(self.unit_names, self.bits)
        )
        return (
            f"<div><b>{html.escape(repr(self))}</b><details><summary>bits per unit</summary>"
            f"<table><tr><th>unit</th><th>bits</th></tr>{rows}</table></details></div>"
        )


def load_plan(path: str | os.PathLike) -> Plan:
    """Loads an ``empas.plan/1`` file or an original EMPAS artifact
    (balanced.json, max_accuracy.json, ...). Raises FormatError on bad input."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"plan file not found: {path}") from None
    try:
        return Plan.from_json(text)
    except ValueError as exc:
        raise type(exc)(f"{path}: {exc}") from None


def as_plan(plan) -> Plan:
    """``plan`` as a :class:`Plan`: a Plan, an ``empas.plan/1`` dict or a path to a plan file."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, os.PathLike)):
        return load_plan(plan)
    if isinstance(plan, dict):
        return Plan.from_dict(plan)
    raise TypeError(f"plan must be a Plan, a dict or a path, got {type(plan).__name__}")
