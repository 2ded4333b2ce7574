"""Latency as a measured objective: the profile's ``latency`` table.

``empas.measure_latency(model, profile, device="cpu", batch=1, tokens=1)`` times
every (unit, choice) cell with the modules a plan would put there, on the target
device, and returns a :class:`LatencyTable` (milliseconds); ``table.into(profile)``
writes it into the profile (``empas.sensitivity/1``'s optional ``latency`` table),
which ``empas.search(..., latency=True)`` reads as a third objective.

What a cell covers. ``latency[u, c]`` is the time to run the **linear layers of
unit u** (its member modules) once on an input ``[batch, tokens, in_features]``
when the unit is stored at ``choices[c]``:

* 2..8 bits: the ``empas.nn.PackedLinear`` that ``empas.apply(mode="packed")``
  builds (the same code path: :func:`empas.quant.apply.pack_member`), whose
  forward is the fused packed matmul ``torch.ops.empas.packed_linear``;
* 16: the ``empas.nn.HalfLinear`` (fp16 storage, cast to the input's dtype);
* 0 (drop): 0 ms, not timed (the ``DroppedBlock`` returns its input);
* an embedding member: 0 ms at every choice (a lookup, whose cost does not depend
  on how its rows are stored; packed mode cannot hold an embedding anyway).

Norms, attention math (softmax, RoPE, the KV cache), embeddings and the head
outside any unit are the same whatever the plan, so they are left out: a plan's
predicted latency ``Σ_u latency[u, c_u]`` is its end-to-end time **minus a
constant** (the search only compares plans, so the constant drops out). Dropping a
block also removes its non-linear work, which the table does not count: the table
under-states what a drop saves.

Noise. Each unit is timed in rounds (``warmup`` discarded, then ``repeats``); a
round runs every choice of the unit once, in an order shuffled by one RNG seeded
with ``seed`` (:func:`schedule`), so a slow spell of a shared machine hits all bit
widths alike; the cell is the median of its ``repeats`` samples. The order is
deterministic for a seed; the timings, of course, are not.
"""

from __future__ import annotations

import math
import numbers
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError
from .table import Profile, Unit

__all__ = ["LATENCY_COVERS", "LatencyTable", "measure_latency", "schedule", "with_latency"]

LATENCY_COVERS = (
    "linear layers of each unit only (packed/fp16 modules as apply(mode='packed') builds them; "
    "drop = 0; embeddings = 0); norms, attention math, embeddings and head are a constant "
    "outside the table: predicted latency = sum of cells + a constant"
)


def schedule(n_units: int, n_choices: int, rounds: int, seed: int) -> list[tuple[int, int, int]]:
    """The measurement order: ``(unit, round, choice)`` triples. Units one after
    the other; within a unit ``rounds`` rounds, each a permutation of all choices
    drawn from one ``numpy`` RNG seeded with ``seed`` (the same order for the same
    arguments; every cell appears once per round)."""
    for name, v, lo in (
        ("n_units", n_units, 1),
        ("n_choices", n_choices, 1),
        ("rounds", rounds, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    rng = np.random.default_rng(_seed(seed))
    out = []
    for u in range(n_units):
        for r in range(rounds):
            for c in rng.permutation(n_choices):
                out.append((u, r, int(c)))
    return out


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _positive_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


@dataclass
class LatencyTable:
    """Measured latency per (unit, choice), milliseconds (NaN: not measured, a
    choice the profile does not allow for that unit). ``samples[u, c]`` holds the
    ``repeats`` timings the median came from; ``order`` the (unit, round, choice)
    schedule that ran; ``meta`` the provenance (device, batch, tokens, repeats,
    warmup, seed, torch threads, machine, what a cell covers)."""

    unit_names: list[str]
    choices: list[int]
    ms: np.ndarray
    samples: np.ndarray
    order: list[tuple[int, int, int]] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.unit_names), len(self.choices))

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.ms, index=self.unit_names, columns=self.choices)

    def text(self) -> str:
        """The table as aligned text (ms per cell)."""
        w = max(8, *(len(n) for n in self.unit_names)) + 2
        head = f"{'unit':<{w}}" + "".join(f"{_label(c):>10}" for c in self.choices)
        lines = [head, "-" * len(head)]
        for name, row in zip(self.unit_names, self.ms):
            cells = "".join(f"{'-' if math.isnan(v) else format(v, '.4f'):>10}" for v in row)
            lines.append(f"{name:<{w}}{cells}")
        m = self.meta
        lines.append(
            f"ms per unit forward at batch {m.get('batch')} x {m.get('tokens')} tokens on "
            f"{m.get('device')} ({m.get('torch_threads')} torch threads), median of "
            f"{m.get('repeats')} interleaved repeats after {m.get('warmup')} warm-up rounds"
        )
        return "\n".join(lines)

    __str__ = text

    def into(self, profile: Profile) -> Profile:
        """``profile`` with this table as its ``latency`` (see :func:`with_latency`)."""
        return with_latency(profile, self)


def _label(c: int) -> str:
    return "drop" if c == 0 else ("fp16" if c == 16 else f"int{c}")


def with_latency(profile: Profile, table: LatencyTable) -> Profile:
    """A copy of ``profile`` holding ``table`` as its latency table and its
    provenance as ``meta["source"]["latency"]``. The units and choices must be the
    profile's, in its order, and every cell the profile measured (finite Δ) must
    have been timed. The profile's fingerprint covers the latency table: results
    and plans made from the profile before must be searched again (their
    fingerprint no longer matches). A fitted view (``source.table``) is refused:
    add the table to the measured profile, then fit."""
    if not isinstance(profile, Profile):
        raise TypeError(f"with_latency needs an empas.Profile, got {type(profile).__name__}")
    if list(table.unit_names) != profile.unit_names:
        raise FormatError(
            "the latency table's units differ from the profile's (measure it with the profile: "
            "measure_latency(model, profile))"
        )
    if list(table.choices) != profile.choices:
        raise FormatError(
            f"the latency table covers choices {list(table.choices)}, the profile has "
            f"{profile.choices}: every choice must be timed to write the table"
        )
    src = profile.meta.get("source") or {}
    if src.get("table"):
        raise FormatError(
            "this profile is a fitted view (source.table); add the latency table to the measured "
            "profile and fit again"
        )
    delta = profile.delta
    need = np.isfinite(delta)
    missing = need & ~np.isfinite(table.ms)
    if missing.any():
        u, c = (int(i) for i in np.argwhere(missing)[0])
        raise FormatError(
            f"the latency table has no time for unit {profile.unit_names[u]!r} at "
            f"{profile.choices[c]} bits, a cell the profile measured"
        )
    doc = profile.to_dict()
    doc["latency"] = [
        [float(v) if ok else None for v, ok in zip(row, okrow)]
        for row, okrow in zip(table.ms, need)
    ]
    doc["source"] = {**(doc.get("source") or {}), "latency": dict(table.meta)}
    out = Profile.from_dict(doc, negative="keep")
    out.path = profile.path
    return out


# ----------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------


def _units_of(model, profile_or_units, choices):
    """(units as (name, modules, params), choices, quantizer record, allowed mask)."""
    from .units import build_units

    if isinstance(profile_or_units, (str, os.PathLike)) and not (
        isinstance(profile_or_units, str) and profile_or_units in ("block", "sublayer", "linear")
    ):
        from .table import load_profile

        profile_or_units = load_profile(profile_or_units)
    if isinstance(profile_or_units, Profile):
        prof = profile_or_units
        units = [(u.name, list(u.modules), u.params) for u in prof.units]
        if choices is None:
            choices = prof.choices
        choices = _choices(choices)
        bad = [c for c in choices if c not in prof.choices]
        if bad:
            raise ValueError(f"choice(s) {bad} are not among the profile's choices {prof.choices}")
        cols = [prof.choices.index(c) for c in choices]
        allowed = np.isfinite(prof.delta[:, cols])
        return units, choices, prof.quantizer, allowed, prof
    if choices is None:
        raise ValueError("choices are required when units are not given as a profile")
    choices = _choices(choices)
    if isinstance(profile_or_units, str):
        specs, _, _ = build_units(model, profile_or_units, False, False)
        units = [(s.name, [m.name for m in s.members], s.params) for s in specs]
    else:
        units = []
        for u in profile_or_units:
            if isinstance(u, Unit):
                units.append((u.name, list(u.modules), u.params))
            elif isinstance(u, Sequence) and len(u) == 2 and isinstance(u[0], str):
                units.append((u[0], list(u[1]), 0))
            else:
                raise ValueError(
                    "units must be a Profile, 'block'/'sublayer'/'linear', or a list of "
                    f"empas.Unit or (name, [module names]) pairs; got an item {u!r}"
                )
        if not units:
            raise ValueError("no units to time")
    allowed = np.ones((len(units), len(choices)), dtype=bool)
    return units, choices, None, allowed, None


def _choices(choices) -> list[int]:
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
        raise ValueError(f"choices must be a list of bit widths, got {choices!r}")
    out = []
    for c in choices:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral):
            raise ValueError(f"choices must be integer bit widths, got {c!r}")
        if not (c == 0 or c == 16 or 2 <= c <= 8):
            raise ValueError(f"choice {c} is not a known format (0 = drop, 2..8, 16 = fp16)")
        out.append(int(c))
    if not out:
        raise ValueError("choices is empty")
    if len(set(out)) != len(out):
        raise ValueError(f"choices repeat a bit width: {out}")
    return out


def _resolve(model, units):
    """Members of each unit (PlanMismatchError / ValueError naming the unit)."""
    from ..plan import Plan
    from ..quant.apply import resolve

    plan = Plan(
        {
            "format": "empas.plan/1",
            "model": {},
            "units": [
                {"name": n, "bits": 16, "modules": list(mods), "params": int(p or 0)}
                for n, mods, p in units
            ],
        }
    )
    return [t.members for t in resolve(model, plan, allow_partial=True)]


def _variant(model, member, bits: int, qs, device, activations: str = "exact"):
    """The module ``apply(mode="packed", activations=...)`` would put at ``member``
    for ``bits``, built by the same function, then the model is put back."""
    from ..quant.apply import Undo, pack_member
    from ..quant.nn import set_activations

    undo = Undo(save_weights=False)
    try:
        pack_member(model, member, bits, qs, undo)
        new = model.get_submodule(member.name)
    finally:
        undo.restore()
    set_activations(new, activations)
    return new.to(device).eval()


def measure_latency(
    model,
    profile_or_units,
    choices: Sequence[int] | None = None,
    *,
    device: str | None = None,
    batch: int = 1,
    tokens: int = 1,
    repeats: int = 7,
    warmup: int = 2,
    seed: int = 0,
    dtype=None,
    quantizer: dict[str, Any] | None = None,
    clip_search: bool | None = None,
    progress: bool = False,
    activations: str = "exact",
) -> LatencyTable:
    """Times every (unit, choice) cell (see the module docstring for what a cell
    covers and how noise is handled) and returns a :class:`LatencyTable` in ms.

    ``model``: a model object or a path (loaded onto ``device``).
    ``profile_or_units``: a :class:`Profile` (its units, quantizer and choices; cells
    the profile did not measure are NaN), a profile path, ``"block"`` /
    ``"sublayer"`` / ``"linear"``, or a list of :class:`Unit` or ``(name, [modules])``.
    ``choices``: bit widths (default: the profile's; each must be one of them).
    ``device``: where the modules run (default: the model's device). Input:
    random ``[batch, tokens, in_features]`` in ``dtype`` (default: the model's
    dtype) from a generator seeded with ``seed``. ``quantizer``: the quantizer
    record for units given without a profile (default group 128, symmetric).
    ``clip_search`` (default: the profile's) only changes the packed values, not
    the time. ``repeats`` samples per cell after ``warmup`` rounds; the cell is
    their median. ``activations``: how the packed modules treat their input
    (``"int8"``: the int8-activation CPU decode kernel, as ``empas.set_activations``),
    recorded in the table's provenance."""
    import torch

    from ..models.loading import load_model, model_device
    from ..models.structure import distinct
    from ..quant.config import QuantConfig
    from ..quant.nn import check_activations

    check_activations(activations)
    batch = _positive_int("batch", batch)
    tokens = _positive_int("tokens", tokens)
    repeats = _positive_int("repeats", repeats)
    warmup = _positive_int("warmup", warmup, 0)
    seed = _seed(seed)
    if isinstance(model, (str, os.PathLike)):
        model, _, _, _ = load_model(model, device)
    units, choices, qrec, allowed, prof = _units_of(model, profile_or_units, choices)
    if quantizer is not None:
        qrec = quantizer
    if clip_search is None:
        clip_search = bool(((prof.meta.get("source") or {}) if prof else {}).get("clip_search"))
    qs = QuantConfig.from_json(qrec, bool(clip_search))
    dev = torch.device(device) if device is not None else model_device(model)
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    members = _resolve(model, units)
    for (name, _, _), ms_ in zip(units, members):
        for m in ms_:
            if m.kind != "embedding" and not bool(torch.isfinite(m.weight).all()):
                raise ValueError(f"unit {name!r}: {m.name!r} weight contains NaN or Inf")
    n_u, n_c = len(units), len(choices)
    rounds = warmup + repeats
    order = schedule(n_u, n_c, rounds, seed)
    samples = np.full((n_u, n_c, repeats), np.nan)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    from ..util.progress import progress_bar

    bar = progress_bar(n_u, "latency", "unit", enabled=progress, leave=False)
    t_start = time.perf_counter()
    try:
        with torch.inference_mode():
            pos = 0
            for u in range(n_u):
                lin = [m for m in distinct(members[u]) if m.kind != "embedding"]
                inputs = {}
                for m in lin:
                    k = m.shape[1]
                    if k not in inputs:
                        x = torch.randn(batch, tokens, k, generator=gen, dtype=torch.float32)
                        inputs[k] = x.to(device=dev, dtype=dtype)
                mods: list[list[tuple[Any, Any]] | None] = []
                for c, bits in enumerate(choices):
                    if not allowed[u, c] or bits == 0 or not lin:
                        mods.append(None)
                        continue
                    mods.append(
                        [
                            (_variant(model, m, bits, qs, dev, activations), inputs[m.shape[1]])
                            for m in lin
                        ]
                    )
                for _ in range(rounds * n_c):
                    uu, r, c = order[pos]
                    pos += 1
                    assert uu == u
                    if mods[c] is None:
                        if allowed[u, c] and r >= warmup:
                            samples[u, c, r - warmup] = 0.0
                        continue
                    sync()
                    t0 = time.perf_counter_ns()
                    for mod, x in mods[c]:
                        mod(x)
                    sync()
                    dt = (time.perf_counter_ns() - t0) / 1e6
                    if r >= warmup:
                        samples[u, c, r - warmup] = dt
                del mods
                bar.update(1)
    finally:
        bar.close()
    ms = np.median(samples, axis=2)
    ms[~allowed] = np.nan
    meta = {
        "unit": "ms",
        "covers": LATENCY_COVERS,
        "device": str(dev),
        "device_name": _device_name(dev),
        "batch": batch,
        "tokens": tokens,
        "activations": activations,
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "statistic": "median",
        "order": "interleaved: per unit, rounds of all choices in a seeded random order",
        "dtype": str(dtype).replace("torch.", ""),
        "torch_threads": int(torch.get_num_threads()),
        "torch": torch.__version__,
        "machine": {
            "host": platform.node(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(time.perf_counter() - t_start, 3),
    }
    return LatencyTable([u[0] for u in units], list(choices), ms, samples, order, meta)


def _device_name(dev) -> str:
    if dev.type == "cuda":
        import torch

        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine()
