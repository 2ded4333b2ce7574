"""Sensitivity profiles (``empas.sensitivity/1``): the measured Δloss table.

``delta[u, c]`` is the change in loss when unit ``u`` alone is stored at
``choices[c]`` bits (NaN where the unit does not allow that choice);
``bytes_table[u, c]`` is the exact bytes it then takes."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .._native import core
from ..errors import FormatError
from ..plan import Plan

__all__ = ["NEGATIVE_POLICIES", "Profile", "Unit", "example_profile", "load_profile"]

NEGATIVE_POLICIES = ("error", "clamp", "keep")


@dataclass(frozen=True)
class Unit:
    """A searchable unit: name, kind (block/attn/mlp/linear/embedding), weights, modules."""

    name: str
    kind: str
    params: int
    modules: tuple[str, ...]


class Profile:
    """A validated sensitivity profile. Load with :func:`load_profile`."""

    def __init__(self, native: Any, path: str | None = None):
        self._p = native
        self.path = path
        self._fingerprint: str | None = None

    @classmethod
    def from_json(cls, text: str, negative: str | None = None) -> Profile:
        """Parses ``empas.sensitivity/1`` or the original EMPAS format."""
        _check_negative(negative)
        if negative is None:
            negative = _auto_negative(text)
        return cls(core().Profile.from_json(text, negative))

    @classmethod
    def from_dict(cls, data: dict[str, Any], negative: str | None = None) -> Profile:
        try:
            text = json.dumps(data, allow_nan=False)
        except RecursionError:
            raise FormatError("profile is nested too deeply to be an EMPAS profile") from None
        except ValueError:
            raise FormatError(
                "profile holds NaN or infinity; every delta must be a finite number "
                "(use None for a choice a unit does not allow)"
            ) from None
        return cls.from_json(text, negative)

    # -- contents -----------------------------------------------------------
    @property
    def n_units(self) -> int:
        return self._p.n_units

    @property
    def n_choices(self) -> int:
        return self._p.n_choices

    @property
    def choices(self) -> list[int]:
        """Bits of each choice (16 = untouched, 0 = unit dropped)."""
        return list(self._p.choices)

    @property
    def baseline(self) -> float:
        """Loss of the unquantized model on the calibration tokens."""
        return self._p.baseline

    @property
    def loss_kind(self) -> str:
        return self._p.loss_kind

    @property
    def unit_names(self) -> list[str]:
        return list(self._p.unit_names)

    @property
    def units(self) -> list[Unit]:
        return [
            Unit(n, k, int(p), tuple(m))
            for n, k, p, m in zip(
                self._p.unit_names, self._p.unit_kinds, self._p.unit_params, self._p.unit_modules
            )
        ]

    @property
    def delta(self) -> np.ndarray:
        """Δloss, float64 array n_units x n_choices (NaN = not allowed)."""
        return self._p.delta

    @property
    def stderr(self) -> np.ndarray | None:
        """Standard error of each delta (n_units x n_choices), if measured."""
        return self._p.stderr

    @property
    def latency(self) -> np.ndarray | None:
        return self._p.latency

    @property
    def bytes_table(self) -> np.ndarray:
        """Exact bytes of each unit at each choice, int64 n_units x n_choices."""
        return self._p.bytes_table

    @property
    def unsearched_bytes(self) -> int:
        """Bytes of tensors that are not searched (embeddings, norms, head)."""
        return self._p.unsearched_bytes

    @property
    def model_name(self) -> str:
        return self._p.model_name

    @property
    def fingerprint(self) -> str:
        """Hash of the units, choices, tables and quantizer (hex)."""
        if self._fingerprint is None:
            # a fitted table (source.table) is a view of the measured profile: it keeps
            # the measured profile's identity, so results and plans match either
            t = (self.meta.get("source") or {}).get("table") or {}
            self._fingerprint = t.get("raw_fingerprint") or self._p.fingerprint
        return self._fingerprint

    @property
    def quantizer(self) -> dict[str, Any]:
        q = self._p.quantizer
        return {
            k: getattr(q, k)
            for k in (
                "scheme",
                "granularity",
                "group_size",
                "scale_bytes",
                "zero_bytes",
                "bytes_model",
            )
        }

    @property
    def meta(self) -> dict[str, Any]:
        """model, calibration, timings and source (provenance) records."""
        return dict(self._p.meta)

    # -- evaluation ---------------------------------------------------------
    def problem(
        self,
        max_bytes: int | None = None,
        max_avg_bits: float | None = None,
        pinned: dict[str, int] | None = None,
        allowed_bits: list[int] | None = None,
        latency: bool = False,
    ):
        """The native search problem (lookup tables + constraints)."""
        return self._p.to_problem(
            -1 if max_bytes is None else int(max_bytes),
            -1.0 if max_avg_bits is None else float(max_avg_bits),
            dict(pinned or {}),
            list(allowed_bits or []),
            bool(latency),
        )

    def genome(self, plan: Plan | dict[str, int] | list[int]) -> np.ndarray:
        """Choice indices of a plan, validated: same model and units, allowed bits."""
        return self._p.plan_genome(self._plan_json(plan))

    def plan(self, bits: Plan | dict[str, int] | list[int], archetype: str | None = None) -> Plan:
        """A plan from bits (profile order) or a {unit: bits} map, with predicted metrics."""
        return self.plan_from_genome(self.problem(), self.genome(bits), archetype)

    def plan_from_genome(
        self, problem: Any, genome: np.ndarray, archetype: str | None = None
    ) -> Plan:
        """The plan of ``genome`` (choice index per unit) with the proxy's predictions
        under ``problem`` (:meth:`problem`)."""
        plan = Plan(json.loads(self._p.make_plan(problem, genome, self.fingerprint)))
        plan.archetype = archetype
        if self.stderr is not None:
            from .fit import plan_stderr

            se = float(plan_stderr(self, np.asarray(genome)[None, :])[0])
            plan.set_predicted("loss_stderr", se)
            t = (self.meta.get("source") or {}).get("table")
            if t:
                plan.set_predicted("table", t["kind"])
        return plan

    def _plan_json(self, plan: Plan | dict[str, int] | list[int]) -> str:
        if isinstance(plan, Plan):
            return plan.to_json(None)
        if isinstance(plan, dict):
            unknown = sorted(set(plan) - set(self.unit_names))
            if unknown:
                raise FormatError(f"units unknown to the profile: {unknown[:5]}")
            missing = [n for n in self.unit_names if n not in plan]
            if missing:
                raise FormatError(f"plan is missing units: {missing[:5]}")
            seq = [plan[n] for n in self.unit_names]
        else:
            seq = list(plan)
        if len(seq) != self.n_units:
            raise FormatError(
                f"a plan needs {self.n_units} bit widths (one per unit), got {len(seq)}"
            )
        if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in seq):
            raise FormatError("bit widths must be integers")
        doc = {
            "format": "empas.plan/1",
            "model": {"name": self.model_name},
            "units": [{"name": n, "bits": int(b)} for n, b in zip(self.unit_names, seq)],
        }
        return json.dumps(doc)

    def evaluate(self, plan: Plan | dict[str, int] | list[int]) -> dict[str, float]:
        """Proxy metrics of a plan: loss, bytes, avg_bits (and latency if tabulated)."""
        prob = self.problem(latency=self.latency is not None)
        r = prob.evaluate(self.genome(plan)[None, :])
        out = {
            "loss": float(r["loss"][0]),
            "bytes": int(r["bytes"][0]),
            "avg_bits": float(r["avg_bits"][0]),
        }
        if self.latency is not None:
            out["latency"] = float(r["latency"][0])
        return out

    # -- output -------------------------------------------------------------
    def to_json(self, indent: int | None = 2) -> str:
        return self._p.to_json(-1 if indent is None else indent)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self._p.to_json(-1))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``empas.sensitivity/1`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._p.save(str(path))
        return path

    def to_pandas(self):
        """Δloss table as a DataFrame (units x bits)."""
        pd = _pandas()
        return pd.DataFrame(self.delta, index=self.unit_names, columns=self.choices)

    def __repr__(self) -> str:
        return (
            f"Profile(model={self.model_name!r}, units={self.n_units}, choices={self.choices}, "
            f"baseline={self.baseline:.4f})"
        )

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{b} bits</th>" for b in self.choices)
        rows = []
        for name, row in zip(self.unit_names, self.delta):
            cells = "".join("<td>–</td>" if np.isnan(v) else f"<td>{v:.4g}</td>" for v in row)
            rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
        return (
            f"<div><b>{html.escape(repr(self))}</b><details><summary>Δloss table</summary>"
            f"<table><tr><th>unit</th>{head}</tr>{''.join(rows)}</table></details></div>"
        )


def load_profile(path: str | os.PathLike, negative: str | None = None) -> Profile:
    """Loads a profile: ``empas.sensitivity/1`` or the original EMPAS format
    (``layer_params`` + ``sensitivity``). ``path`` may also be ``"example:tinyllama"``.

    ``negative`` says what to do with negative deltas: "error" (values within 3
    standard errors of zero are measurement noise and kept raw), "clamp" (to 0)
    or "keep". The default (None) keeps them in a table that ``empas.profile``
    measured (stored raw with its standard errors: a quantized unit can lower the
    loss, and that is a measurement) and is "error" for any other file."""
    _check_negative(negative)
    spath = str(path)
    if spath.startswith("example:"):
        return example_profile(spath.split(":", 1)[1], negative=negative)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"profile file not found: {p}")
    try:
        if negative is None:
            text = p.read_text(encoding="utf-8", errors="replace")
            native = core().Profile.from_json(text, _auto_negative(text))
        else:
            native = core().Profile.load(str(p), negative)
    except ValueError as exc:
        raise type(exc)(f"{p}: {exc}") from None
    return Profile(native, str(p))


EXAMPLES = {"tinyllama": "tinyllama_sensitivity.json"}


def example_profile(name: str = "tinyllama", negative: str | None = None) -> Profile:
    """A profile shipped with EMPAS. ``"tinyllama"``: the original EMPAS project's
    measured TinyLlama-1.1B-Chat profile (22 blocks x {2, 4, 8} bits, MIT)."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example profile {name!r}; available: {sorted(EXAMPLES)}")
    ref = resources.files("empas") / "data" / EXAMPLES[name]
    prof = Profile.from_json(ref.read_text(), negative)
    prof.path = f"example:{name}"
    return prof


def _auto_negative(text: str) -> str:
    """'keep' for a table measured by empas.profile, else 'error'."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return "error"  # the native parser names the problem
    src = doc.get("source") if isinstance(doc, dict) else None
    measured = isinstance(src, dict) and src.get("generator") == "empas.profile"
    return "keep" if measured else "error"


def _check_negative(negative: str | None) -> None:
    if negative is not None and negative not in NEGATIVE_POLICIES:
        raise ValueError(f"negative must be one of {NEGATIVE_POLICIES}, got {negative!r}")


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_pandas() needs pandas: pip install pandas") from None
    return pd
