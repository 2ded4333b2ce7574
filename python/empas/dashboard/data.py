"""Data layer of the EMPAS dashboard: reads a results directory into tables.

The files are read by their own classes: result.json (``empas.search/1``) by
:meth:`empas.search.SearchResult.load`, which also finds its profile
(``empas.sensitivity/1``), and verify.json (``empas.verify/1``) by
:meth:`empas.verify.VerifyReport.load`; this module checks that they belong
together and turns them into tables. Nothing here imports streamlit, so it can be
unit-tested and reused.

Scales: a search predicts the loss on the *calibration* text (profile baseline +
Σ Δ), ``verify`` measures the loss on *held-out* text. The two losses are not
comparable, their changes are: predicted Δloss = predicted loss − profile
baseline, measured Δloss = measured loss − the original model's measured loss.
Every overlay here uses Δloss.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..plan import Plan
from ..profile.table import load_profile
from ..search.result import SearchResult, profile_candidates
from ..verify.report import VerifyReport

MIB = 2**20


class DashboardError(ValueError):
    """Bad dashboard input: names the file and what is wrong with it."""


@dataclass
class PlanView:
    """One plan as the dashboard shows it (an archetype, a front point or a verified plan)."""

    key: str
    label: str
    bits: list[int]
    front_index: int | None
    pred_loss: float | None
    pred_delta: float | None
    pred_bytes: int | None
    avg_bits: float | None
    measured: dict[str, Any] | None  # the verify row of this plan, if verified


@dataclass
class Results:
    """Everything the dashboard shows, read from one results directory.

    ``front``: one row per front plan (ascending predicted bytes) with columns
    ``index, pred_loss, pred_delta, bytes, mib, avg_bits, archetypes, bits,
    bits_str, verified, measured_delta``. ``verify``: one row per verify.json row
    (``name, kind, loss, ppl, bytes, delta, pred_loss, pred_bytes, pred_delta,
    error, avg_bits, bits, rss_mb, front_index, x_bytes, x_mib``) or None.
    ``baseline``: the profile's calibration loss (None when no profile or verify
    meta gives it; predicted Δloss is then unavailable). ``search`` and ``report``:
    the loaded :class:`SearchResult` and :class:`VerifyReport` (or None)."""

    result_path: Path
    root: Path
    model: str
    method: str
    exact: bool
    hypervolume: float | None
    units: list[str]
    choices: list[int]
    front: pd.DataFrame
    archetypes: dict[str, int]
    archetype_plans: dict[str, dict[str, Any]]
    baseline: float | None = None
    baseline_source: str | None = None
    unit_info: pd.DataFrame | None = None
    verify: pd.DataFrame | None = None
    verify_meta: dict[str, Any] | None = None
    honesty: dict[str, Any] | None = None
    verify_path: Path | None = None
    profile_path: str | None = None
    warnings: list[str] = field(default_factory=list)
    search: SearchResult | None = None
    report: VerifyReport | None = None
    model_path: str = ""  # the identity as recorded (often a cache path); ``model`` is its name
    hv_vs_exact: float | None = None  # hypervolume / the exact front's (None: unknown)
    hv_source: str | None = None  # where hv_vs_exact comes from
    speed: dict[str, Any] | None = None  # verify.json's speed section (verify --speed)

    @property
    def has_latency(self) -> bool:
        """Whether the front has a third objective (predicted latency)."""
        return "latency" in self.front.columns

    @property
    def has_speed(self) -> bool:
        """Whether the verify report has end-to-end speed (``empas verify --speed``)."""
        return self.speed is not None

    @property
    def has_delta(self) -> bool:
        """Whether predicted Δloss is known (a profile baseline was found)."""
        return self.baseline is not None

    @property
    def n_units(self) -> int:
        return len(self.units)


# ----------------------------------------------------------------------------
# locating files
# ----------------------------------------------------------------------------


def locate(results: str | os.PathLike) -> tuple[Path, Path]:
    """``(result.json, base directory)`` for ``results``: a result.json file, a
    directory holding result.json, or a directory holding search/result.json."""
    if results is None or not str(results).strip():
        raise DashboardError("no results directory given")
    p = Path(os.path.expanduser(str(results).strip()))
    if p.is_file():
        return p, p.parent
    if not p.exists():
        raise DashboardError(f"results directory not found: {p}")
    if not p.is_dir():
        raise DashboardError(f"{p} is neither a directory nor a result.json file")
    for cand in (p / "result.json", p / "search" / "result.json"):
        if cand.is_file():
            return cand, p
    raise DashboardError(
        f"no result.json in {p} (looked for {p / 'result.json'} and "
        f"{p / 'search' / 'result.json'}); write one with `empas search ... --out DIR`"
    )


def _candidates(result_path: Path, base: Path, name: str, up: bool = True) -> list[Path]:
    """Where ``name`` may sit: the given directory, result.json's, and (``up``) its parent."""
    seen: list[Path] = []
    dirs = (base, result_path.parent) + ((result_path.parent.parent,) if up else ())
    for d in dirs:
        c = d / name
        if c not in seen:
            seen.append(c)
    return seen


def input_stamp(
    results: str | os.PathLike,
    verify: str | os.PathLike | None = None,
    profile: str | os.PathLike | None = None,
) -> tuple:
    """A cache key that changes when any file the loader may read changes."""
    stamp: list[Any] = [str(results), str(verify), str(profile)]
    try:
        rp, base = locate(results)
    except DashboardError:
        return tuple(stamp)
    files = [rp, *_candidates(rp, base, "verify.json", up=False)]
    files += _candidates(rp, base, "profile.json")
    files += [Path(str(x)) for x in (verify, profile) if x]
    for f in files:
        try:
            st = f.stat()
            stamp.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append((str(f), None))
    return tuple(stamp)


def _num(v: Any) -> float:
    """A float (NaN for None / non-numbers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


def _opt(v: Any) -> float | None:
    x = _num(v)
    return None if math.isnan(x) else x


def _read(load, path: Path, *args):
    """``load(path, *args)``, its errors as DashboardError naming ``path``."""
    try:
        return load(path, *args)
    except (ValueError, OSError) as exc:
        msg = str(exc)
        raise DashboardError(msg if str(path) in msg else f"{path}: {msg}") from None


# ----------------------------------------------------------------------------
# result.json and its profile
# ----------------------------------------------------------------------------


def _load_search(
    result_path: Path, profile: str | os.PathLike | None, warnings: list[str]
) -> SearchResult:
    """The search result with its profile: ``profile`` (which must match), else the one
    :meth:`SearchResult.load` finds; a warning for each candidate it had to skip."""
    if profile is None or not str(profile).strip():
        sr = _read(SearchResult.load, result_path)
        if sr.profile is None:
            for spec in profile_candidates(result_path, sr.source):
                try:
                    why = sr.profile_mismatch(load_profile(spec))
                except (ValueError, OSError) as exc:
                    warnings.append(f"{spec}: skipped, cannot load the profile ({exc})")
                    continue
                warnings.append(f"{spec}: skipped, not this result's profile ({why})")
        return sr
    spec = str(profile).strip()
    if not spec.startswith("example:") and not Path(spec).is_file():
        raise DashboardError(f"profile file not found: {spec}")
    try:
        prof = load_profile(spec)
    except (ValueError, OSError) as exc:
        raise DashboardError(f"{spec}: cannot load the profile: {exc}") from None
    try:
        return SearchResult.load(result_path, prof)
    except (ValueError, OSError):
        pass  # the file, or the profile: the file's own errors come first
    why = _read(SearchResult.load, result_path).profile_mismatch(prof)
    if why:
        raise DashboardError(f"{spec}: not the profile of {result_path}: {why}")
    return _read(SearchResult.load, result_path, prof)


def _front_table(sr: SearchResult, baseline: float | None) -> pd.DataFrame:
    f = sr.front
    labels: dict[int, list[str]] = {}
    for name, i in sr.archetype_index.items():
        labels.setdefault(i, []).append(name)
    bits = [f.bits(i) for i in range(len(f))]
    return pd.DataFrame(
        {
            "index": np.arange(len(f)),
            "pred_loss": f.loss,
            "pred_delta": f.loss - baseline if baseline is not None else np.full(len(f), np.nan),
            "bytes": f.bytes,
            "mib": f.bytes.astype(float) / MIB,
            "avg_bits": f.avg_bits,
            "archetypes": [", ".join(labels.get(i, [])) for i in range(len(f))],
            "bits": bits,
            "bits_str": [" ".join(map(str, b)) for b in bits],
            **({} if f.latency is None else {"latency": f.latency}),
        }
    )


def _unit_table(sr: SearchResult) -> pd.DataFrame:
    """Per unit: name, kind, params, modules (the kind is known from the profile only)."""
    if sr.profile is not None:
        us = sr.profile.units
        return pd.DataFrame(
            {
                "unit": [u.name for u in us],
                "kind": [u.kind for u in us],
                "params": [u.params for u in us],
                "modules": [len(u.modules) for u in us],
            }
        )
    us = sr.front[0].to_dict()["units"]
    return pd.DataFrame(
        {
            "unit": sr.unit_names,
            "kind": [None] * len(us),
            "params": [u.get("params") for u in us],
            "modules": [len(u.get("modules") or []) for u in us],
        }
    )


# ----------------------------------------------------------------------------
# verify.json
# ----------------------------------------------------------------------------


def _load_verify(vpath: Path, sr: SearchResult, result_path: Path) -> VerifyReport:
    report = _read(VerifyReport.load, vpath)
    n = len(sr.unit_names)
    for row in report.rows:
        if row["bits"] is not None and len(row["bits"]) != n:
            raise DashboardError(
                f"{vpath}: row {row['name']!r} has {len(row['bits'])} bit widths but "
                f"{result_path} has {n} units; is this verify.json from another model or search?"
            )
    return report


def _verify_frame(report: VerifyReport, res: Results) -> pd.DataFrame:
    meta = report.meta
    orig = meta.get("original") if isinstance(meta.get("original"), dict) else {}
    orig_loss = _opt(orig.get("loss"))
    if orig_loss is None:
        for row in report.rows:
            if row.get("kind") == "original":
                orig_loss = _opt(row.get("loss"))
    by_bits = {tuple(b): i for i, b in enumerate(res.front["bits"])}
    out = []
    for row in report.rows:
        loss = _num(row.get("loss"))
        delta = _opt(row.get("delta"))
        if delta is None and orig_loss is not None:
            delta = loss - orig_loss
        bits = row.get("bits")
        fi = by_bits.get(tuple(bits)) if bits is not None else None
        pred_loss = _opt(row.get("pred_loss"))
        pred_delta = _opt(row.get("pred_delta"))
        if pred_delta is None and pred_loss is not None and res.baseline is not None:
            pred_delta = pred_loss - res.baseline
        if fi is not None:
            f = res.front.iloc[fi]
            pred_loss = float(f["pred_loss"]) if pred_loss is None else pred_loss
            if pred_delta is None and res.has_delta:
                pred_delta = float(f["pred_delta"])
        pred_bytes = _opt(row.get("pred_bytes"))
        pred_bytes = None if pred_bytes is None else int(pred_bytes)
        if fi is not None:
            x_bytes = int(res.front["bytes"].iloc[fi])
        elif pred_bytes is not None:
            x_bytes = pred_bytes
        else:
            x_bytes = int(_num(row.get("bytes"))) if _opt(row.get("bytes")) is not None else None
        error = _opt(row.get("error"))
        if error is None and delta is not None and pred_delta is not None:
            error = delta - pred_delta
        out.append(
            {
                "name": row["name"],
                "kind": str(row.get("kind") or "plan"),
                "loss": loss,
                "ppl": _opt(row.get("ppl")),
                "bytes": _opt(row.get("bytes")),
                "delta": delta,
                "pred_loss": pred_loss,
                "pred_bytes": pred_bytes,
                "pred_delta": pred_delta,
                "error": error,
                "avg_bits": _opt(row.get("avg_bits")),
                "bits": bits,
                "rss_mb": _opt(row.get("rss_mb")),
                "pred_latency": _opt(row.get("pred_latency")),
                "decode_tok_s": _opt(row.get("decode_tok_s")),
                "prefill_tok_s": _opt(row.get("prefill_tok_s")),
                "front_index": fi,
                "x_bytes": x_bytes,
                "x_mib": None if x_bytes is None else x_bytes / MIB,
            }
        )
    df = pd.DataFrame(out)
    df["front_index"] = df["front_index"].astype("Int64")
    return df


# ----------------------------------------------------------------------------
# the model's name, the hypervolume against the exact front
# ----------------------------------------------------------------------------

_CACHE_KEY = re.compile(r"-[0-9a-f]{12}$")  # empas' cache directories: <name>-<12 hex>
_GGUF_QUANT = re.compile(r"[.-](?:[QqFf]\d[\w]*|IQ\d\w*|BF16|bf16|fp16|fp32)$")


def model_label(identity: str, source: dict[str, Any] | None = None) -> str:
    """A readable model name for a profile's identity: a Hub id as it is
    (``TinyLlama/TinyLlama-1.1B-Chat-v1.0``); for a GGUF file converted to a cached
    model, the file's name without its quantization (``SmolLM2-135M-Instruct``); for
    another path, its last component without empas' cache key (``tiny-llama``)."""
    name = str(identity or "").strip()
    src = source if isinstance(source, dict) else {}
    file = src.get("file")
    if src.get("format") == "gguf" and isinstance(file, str) and file:
        stem = Path(file).name
        stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
        return _GGUF_QUANT.sub("", stem) or stem
    if not name:
        return ""
    p = Path(os.path.expanduser(name))
    if p.is_absolute() or name.startswith(("./", "../", "~")) or p.exists():
        base = p.name or name
        return _CACHE_KEY.sub("", base) or base
    return name


def _demo_report(result_path: Path, base: Path, sr: SearchResult) -> tuple[float, Path] | None:
    """``(hypervolume / the exact front's, report.json)`` from the report ``empas demo``
    writes beside its search (``front.hypervolume_vs_exact``), when that report is of
    this result (the same method, number of plans and size range)."""
    import json

    f = sr.front
    if not len(f):
        return None
    for cand in _candidates(result_path, base, "report.json"):
        try:
            doc = json.loads(cand.read_text())
        except (OSError, ValueError):
            continue
        fr = doc.get("front") if isinstance(doc, dict) else None
        if not isinstance(fr, dict) or doc.get("format") != "empas.demo/1":
            continue
        ratio = _opt(fr.get("hypervolume_vs_exact"))
        same = (
            fr.get("method") == sr.method
            and fr.get("plans") == len(f)
            and fr.get("bytes_min") == int(f.bytes.min())
            and fr.get("bytes_max") == int(f.bytes.max())
        )
        if ratio is not None and same:
            return ratio, cand
    return None


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------


def load_results(
    results: str | os.PathLike,
    verify: str | os.PathLike | None = None,
    profile: str | os.PathLike | None = None,
) -> Results:
    """Reads a results directory (``DIR/result.json`` or ``DIR/search/result.json``),
    its verify.json (``verify``, else ``DIR/verify.json`` or one next to result.json)
    and its profile (``profile``, else a ``profile.json`` next to result.json or
    above it, or the result's own profile path, when present and matching the
    result's units and fingerprint). Raises :class:`DashboardError` naming the
    file and the problem."""
    result_path, base = locate(results)
    warnings: list[str] = []
    sr = _load_search(result_path, profile, warnings)
    prof = sr.profile
    baseline = float(prof.baseline) if prof is not None else None
    source = f"profile {prof.path}" if prof is not None else None

    vpath: Path | None = None
    if verify is not None and str(verify).strip():
        vpath = Path(os.path.expanduser(str(verify).strip()))
        if not vpath.is_file():
            raise DashboardError(f"verify file not found: {vpath}")
    else:
        vpath = next(
            (c for c in _candidates(result_path, base, "verify.json", up=False) if c.is_file()),
            None,
        )
    report = _load_verify(vpath, sr, result_path) if vpath is not None else None
    if report is not None:
        vb = _opt(report.meta.get("profile_baseline"))
        if baseline is None and vb is not None:
            baseline, source = vb, f"{vpath.name} meta.profile_baseline"
        elif baseline is not None and vb is not None and not math.isclose(vb, baseline):
            warnings.append(
                f"{vpath}: its profile baseline {vb:.6g} differs from {prof.path}'s "
                f"{baseline:.6g}; predicted Δloss uses the profile's"
            )
        vm, rm = report.meta.get("model"), sr.source.get("model")
        if vm and rm and Path(str(vm)).name != Path(str(rm)).name:
            warnings.append(f"{vpath}: measured model {vm!r}, the search's profile is of {rm!r}")
    if baseline is None:
        warnings.append(
            "no profile found (pass --profile or put profile.json next to result.json): "
            "predicted Δloss is unknown, the front shows predicted loss and measured "
            "results cannot be overlaid"
        )

    front = _front_table(sr, baseline)
    identity = sr.model_name or (prof.model_name if prof is not None else "")
    model_meta = prof.meta.get("model") if prof is not None else None
    src = model_meta.get("source") if isinstance(model_meta, dict) else None
    hv_ratio, hv_source = None, None
    if sr.exact and sr.hypervolume is not None:
        hv_ratio, hv_source = 1.0, "the result is the exact front"
    elif (rep := _demo_report(result_path, base, sr)) is not None:
        hv_ratio, hv_source = rep[0], f"{rep[1]} (front.hypervolume_vs_exact)"
    res = Results(
        result_path=result_path,
        root=base,
        model=model_label(identity, src),
        model_path=identity,
        hv_vs_exact=hv_ratio,
        hv_source=hv_source,
        method=sr.method,
        exact=bool(sr.exact),
        hypervolume=_opt(sr.hypervolume),
        units=list(sr.unit_names),
        choices=list(sr.choices),
        front=front,
        archetypes=dict(sr.archetype_index),
        archetype_plans={name: p.to_dict() for name, p in sr.archetypes.items()},
        baseline=baseline,
        baseline_source=source,
        unit_info=_unit_table(sr),
        verify_path=vpath,
        profile_path=prof.path if prof is not None else None,
        warnings=warnings,
        search=sr,
        report=report,
    )
    verified = [None] * len(front)
    measured = [math.nan] * len(front)
    if report is not None:
        res.verify = _verify_frame(report, res)
        res.verify_meta = report.meta
        honesty = report.extra.get("honesty")
        res.honesty = honesty if isinstance(honesty, dict) else None
        speed = report.extra.get("speed")
        res.speed = speed if isinstance(speed, dict) else None
        for _, row in res.verify.iterrows():
            fi = row["front_index"]
            if not pd.isna(fi) and verified[int(fi)] is None:
                verified[int(fi)] = row["name"]
                measured[int(fi)] = math.nan if row["delta"] is None else row["delta"]
    front["verified"] = verified
    front["measured_delta"] = measured
    return res


# ----------------------------------------------------------------------------
# queries
# ----------------------------------------------------------------------------


def best_under(res: Results, budget_bytes: int) -> int | None:
    """Front index of the lowest predicted loss with bytes <= ``budget_bytes``
    (ties: the smaller plan), None when even the smallest plan is larger."""
    f = res.front
    ok = f[f["bytes"] <= budget_bytes]
    if ok.empty:
        return None
    return int(ok.sort_values(["pred_loss", "bytes"], kind="mergesort")["index"].iloc[0])


def mib_to_bytes(mib: float) -> int:
    """A budget in MiB (the slider's unit) as whole bytes."""
    return int(math.floor(mib * MIB + 1e-6))


def budget_slider_range(res: Results) -> tuple[float, float, float]:
    """``(min, max, step)`` in MiB for the budget slider: the front's size range,
    widened to whole steps; the minimum lies just below the smallest plan, so the
    slider's left end shows what happens when nothing fits."""
    lo, hi = float(res.front["mib"].min()), float(res.front["mib"].max())
    span = max(hi - lo, 1e-3)
    step = 10 ** math.floor(math.log10(span / 200))
    step = float(f"{step:.10g}")
    lo_s = math.floor(lo / step) * step
    if mib_to_bytes(lo_s) >= int(res.front["bytes"].min()):
        lo_s -= step
    lo_s = max(lo_s, 0.0)
    hi_s = math.ceil(hi / step) * step
    if hi_s <= lo_s:
        hi_s = lo_s + step
    nd = max(0, -int(math.floor(math.log10(step))))
    return round(lo_s, nd), round(hi_s, nd), step


def _verify_row_for(res: Results, name: str | None, bits: list[int]) -> dict[str, Any] | None:
    if res.verify is None:
        return None
    v = res.verify
    t = list(bits)
    if name is not None:  # the row of that name, if it measured these bits
        for _, row in v[v["name"] == name].iterrows():
            if row["bits"] is None or list(row["bits"]) == t:
                return row.to_dict()
    for _, row in v.iterrows():
        if row["bits"] is not None and list(row["bits"]) == t and row["kind"] != "original":
            return row.to_dict()
    return None


def plan_options(res: Results) -> dict[str, str]:
    """Select-box options, key -> label: archetypes, verified plans, every front point."""
    opts: dict[str, str] = {}
    for name, i in res.archetypes.items():
        opts[f"archetype:{name}"] = f"archetype {name} (front #{i})"
    if res.verify is not None:
        for _, row in res.verify.iterrows():
            if row["bits"] is None:
                continue
            where = (
                f"front #{int(row['front_index'])}"
                if not pd.isna(row["front_index"])
                else "off the front"
            )
            opts[f"verify:{row['name']}"] = f"verified {row['kind']} {row['name']} ({where})"
    for i, a in zip(res.front["index"], res.front["archetypes"]):
        opts[f"front:{int(i)}"] = f"front #{int(i)}" + (f" ({a})" if a else "")
    return opts


def _front_view(res: Results, i: int, key: str, label: str, name: str | None) -> PlanView:
    f = res.front.iloc[i]
    bits = list(f["bits"])
    return PlanView(
        key=key,
        label=label,
        bits=bits,
        front_index=i,
        pred_loss=float(f["pred_loss"]),
        pred_delta=float(f["pred_delta"]) if res.has_delta else None,
        pred_bytes=int(f["bytes"]),
        avg_bits=float(f["avg_bits"]),
        measured=_verify_row_for(res, name, bits),
    )


def plan_view(res: Results, key: str) -> PlanView:
    """The plan behind a :func:`plan_options` key (or ``best:<index>``)."""
    kind, _, name = key.partition(":")
    if kind == "archetype" and name in res.archetypes:
        return _front_view(res, res.archetypes[name], key, f"archetype {name}", name)
    if kind in ("front", "best"):
        try:
            i = int(name)
        except ValueError:
            raise DashboardError(f"bad plan key {key!r}") from None
        if not 0 <= i < len(res.front):
            raise DashboardError(f"front index {i} out of range ({len(res.front)} plans)")
        a = res.front["archetypes"].iloc[i]
        label = f"front #{i}" + (f" ({a})" if a else "")
        return _front_view(res, i, key, label, None)
    if kind == "verify" and res.verify is not None:
        hit = res.verify[res.verify["name"] == name]
        if not hit.empty and hit.iloc[0]["bits"] is not None:
            row = hit.iloc[0]
            if not pd.isna(row["front_index"]):
                return _front_view(
                    res, int(row["front_index"]), key, f"verified {row['name']}", row["name"]
                )
            return PlanView(
                key=key,
                label=f"verified {row['name']}",
                bits=list(row["bits"]),
                front_index=None,
                pred_loss=row["pred_loss"],
                pred_delta=row["pred_delta"],
                pred_bytes=row["pred_bytes"],
                avg_bits=row["avg_bits"],
                measured=row.to_dict(),
            )
    raise DashboardError(f"unknown plan {key!r}")


def _plan(res: Results, key: str) -> Plan:
    kind, _, name = key.partition(":")
    sr = res.search
    if kind == "archetype" and name in sr.archetypes:
        return Plan(sr.archetypes[name].to_dict())
    view = plan_view(res, key)
    if view.front_index is not None:
        plan = Plan(sr.front[view.front_index].to_dict())
    else:  # verified off the front: a front plan's units with its bits and predictions
        d = sr.front[0].to_dict()
        for u, b in zip(d["units"], view.bits):
            u["bits"] = int(b)
        pred = {"avg_bits": view.avg_bits, "bytes": view.pred_bytes, "loss": view.pred_loss}
        d["predicted"] = {k: v for k, v in pred.items() if _opt(v) is not None}
        plan = Plan(d)
    if kind == "best":
        plan.archetype = "best_under_budget"
    elif kind == "verify":
        plan.archetype = name
        m = view.measured
        if m is not None:
            meta = res.verify_meta or {}
            orig = meta.get("original") if isinstance(meta.get("original"), dict) else {}
            plan.measured = {
                "loss": _opt(m.get("loss")),
                "ppl": _opt(m.get("ppl")),
                "bytes": None if _opt(m.get("bytes")) is None else int(m["bytes"]),
                "loss_kind": meta.get("loss"),
                "eval_tokens": meta.get("eval_tokens"),
                "original_loss": orig.get("loss"),
            }
    return plan


def plan_dict(res: Results, key: str) -> dict[str, Any]:
    """The ``empas.plan/1`` dict of a plan key: an archetype's stored plan, a front
    point's plan (``SearchResult.front[i]``; ``best:<i>`` is labelled
    ``best_under_budget`` like ``SearchResult.best_under``), a verified plan with the
    verify row's measured numbers (off the front: its bits and predicted numbers)."""
    return _plan(res, key).to_dict()


def plan_json(res: Results, key: str) -> str:
    """The plan of ``key`` as validated ``empas.plan/1`` JSON (the download payload)."""
    d = plan_dict(res, key)
    try:
        return Plan.from_dict(d).to_json() + "\n"
    except ValueError as exc:
        raise DashboardError(f"cannot build plan {key!r}: {exc}") from None


# ----------------------------------------------------------------------------
# tables for the views
# ----------------------------------------------------------------------------

_BLOCK_COMPONENT = re.compile(r"^(?:[A-Za-z]+[_-]?)?(\d+)$")


def parse_unit(name: str) -> tuple[int, str] | None:
    """``(block index, sub-unit)`` of names like ``model.layers.3.mlp`` (3, "mlp"),
    ``model.layers.3`` (3, "block") or ``layer_3`` (3, "block"); None otherwise."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        m = _BLOCK_COMPONENT.match(p)
        if m:
            return int(m.group(1)), ".".join(parts[i + 1 :]) or "block"
    return None


def precision_map(res: Results, bits: list[int]) -> tuple[pd.DataFrame, str]:
    """Per-unit table (order, unit, bits, block, sub, kind, params) and the layout
    to draw: ``"heatmap"`` (block × sub-unit, one row when the units are whole
    blocks) when every name parses into a distinct (block, sub-unit), else ``"bar"``."""
    parsed = [parse_unit(n) for n in res.units]
    info = res.unit_info
    df = pd.DataFrame(
        {
            "order": np.arange(len(res.units)),
            "unit": res.units,
            "bits": [int(b) for b in bits],
            "block": [p[0] if p else None for p in parsed],
            "sub": [p[1] if p else None for p in parsed],
            "kind": list(info["kind"]) if info is not None else None,
            "params": list(info["params"]) if info is not None else None,
        }
    )
    layout = "bar"
    if all(parsed):
        pairs = {(b, s) for b, s in parsed}  # type: ignore[misc]
        if len(pairs) == len(parsed):
            layout = "heatmap"
    return df, layout


def comparison_table(res: Results) -> pd.DataFrame:
    """Archetypes, other verified plans, uniform baselines and the original model:
    predicted loss/Δ/bytes/avg bits next to measured loss/ppl/Δ/bytes."""
    rows = []
    used: set[str] = set()
    for name, i in res.archetypes.items():
        f = res.front.iloc[i]
        m = _verify_row_for(res, name, list(f["bits"]))
        if m is not None:
            used.add(m["name"])
        rows.append(
            {
                "plan": name,
                "kind": "archetype",
                "front #": i,
                "pred loss": float(f["pred_loss"]),
                "pred Δloss": float(f["pred_delta"]) if res.has_delta else None,
                "pred MiB": float(f["mib"]),
                "avg bits": float(f["avg_bits"]),
                "loss": None if m is None else m["loss"],
                "ppl": None if m is None else m["ppl"],
                "Δloss": None if m is None else m["delta"],
                "MiB": None if m is None or m["bytes"] is None else m["bytes"] / MIB,
                "error (Δ − pred Δ)": None if m is None else m["error"],
                **_speed_cells(res, float(f["latency"]) if res.has_latency else None, m),
            }
        )
    if res.verify is not None:
        order = {"plan": 0, "random": 1, "uniform": 2, "original": 3}
        rest = [r for _, r in res.verify.iterrows() if r["name"] not in used]
        rest.sort(key=lambda r: order.get(r["kind"], 1))
        for r in rest:
            fi = r["front_index"]
            rows.append(
                {
                    "plan": r["name"],
                    "kind": r["kind"],
                    "front #": None if pd.isna(fi) else int(fi),
                    "pred loss": r["pred_loss"],
                    "pred Δloss": r["pred_delta"],
                    "pred MiB": None if r["pred_bytes"] is None else r["pred_bytes"] / MIB,
                    "avg bits": r["avg_bits"],
                    "loss": r["loss"],
                    "ppl": r["ppl"],
                    "Δloss": r["delta"],
                    "MiB": None if r["bytes"] is None else r["bytes"] / MIB,
                    "error (Δ − pred Δ)": r["error"],
                    **_speed_cells(res, r.get("pred_latency"), r),
                }
            )
    df = pd.DataFrame(rows)
    df["front #"] = df["front #"].astype("Int64")
    for c in df.columns:
        if c not in ("plan", "kind", "front #"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def _speed_cells(res: Results, pred_latency, m) -> dict[str, Any]:
    """The latency columns of a comparison row: predicted latency (a latency
    search, or verify's Σ per-unit cells) and measured decode/prefill tokens/s
    (verify --speed); none when neither is known."""
    out: dict[str, Any] = {}
    has_pred = res.has_latency or (
        res.verify is not None and res.verify["pred_latency"].notna().any()
    )
    if has_pred:
        if pred_latency is None and m is not None:
            pred_latency = m.get("pred_latency")
        out["pred latency (ms)"] = pred_latency
    if res.has_speed:
        out["decode tok/s"] = None if m is None else m.get("decode_tok_s")
        out["prefill tok/s"] = None if m is None else m.get("prefill_tok_s")
    return out


def plan_speed_text(res: Results, view: PlanView) -> str | None:
    """Predicted latency of a plan (a latency search's front, or verify's Σ per-unit
    cells) and its measured decode/prefill tokens/s (verify --speed), or None."""
    parts = []
    pred = None
    if res.has_latency and view.front_index is not None:
        pred = float(res.front["latency"].iloc[view.front_index])
    m = view.measured
    if pred is None and m is not None:
        pred = _opt(m.get("pred_latency"))
    if pred is not None:
        parts.append(f"predicted latency {pred:.4g} ms (Σ per-unit cells, + a constant)")
    if m is not None and _opt(m.get("decode_tok_s")) is not None:
        parts.append(
            f"measured decode {m['decode_tok_s']:.1f} tok/s, prefill "
            f"{_num(m.get('prefill_tok_s')):.1f} tok/s"
        )
    return "; ".join(parts) if parts else None


def speed_text(res: Results) -> str | None:
    """One line on verify --speed: settings and the predicted-vs-measured rank
    correlation (None without speed measurements)."""
    sp = res.speed
    if sp is None:
        return None

    def num(v):
        return "–" if v is None else f"{v:.3f}"

    text = (
        f"Speed (packed, batch 1): decode {sp.get('new_tokens', '?')} greedy tokens, prefill "
        f"{sp.get('prefill_tokens', '?')} tokens, median of {sp.get('repeats', '?')} "
        f"interleaved rounds."
    )
    if sp.get("n_compared", 0) >= 3:
        text += (
            f" Predicted latency (Σ per-unit table cells) vs measured time per token, "
            f"Spearman over {sp['n_compared']} plans: decode {num(sp.get('spearman_decode'))}, "
            f"prefill {num(sp.get('spearman_prefill'))}."
        )
    else:
        text += " No rank correlation: the profile has no latency table (empas latency)."
    return text


def front_overlay(res: Results) -> pd.DataFrame:
    """Points to draw over the predicted front: archetypes (predicted), verified
    plans (measured Δloss), uniform baselines (predicted and measured Δloss). One row
    per point: series, name, mib, y, and tooltip fields."""
    pts = []
    for name, i in res.archetypes.items():
        f = res.front.iloc[i]
        pts.append(
            {
                "series": "archetype (predicted)",
                "name": name,
                "mib": float(f["mib"]),
                "y": float(f["pred_delta"]) if res.has_delta else float(f["pred_loss"]),
                "front #": i,
            }
        )
    if res.verify is not None and res.has_delta:
        for _, r in res.verify.iterrows():
            if r["kind"] == "original" or r["x_mib"] is None or pd.isna(r["x_mib"]):
                continue
            fi = None if pd.isna(r["front_index"]) else int(r["front_index"])
            common = {"name": r["name"], "mib": float(r["x_mib"]), "front #": fi}
            if r["kind"] == "uniform" and r["pred_delta"] is not None:
                pts.append({**common, "series": "uniform (predicted)", "y": r["pred_delta"]})
            if r["delta"] is not None:
                series = "uniform (measured)" if r["kind"] == "uniform" else "verified (measured)"
                pts.append({**common, "series": series, "y": r["delta"]})
    df = pd.DataFrame(pts, columns=["series", "name", "mib", "y", "front #"])
    df["front #"] = df["front #"].astype("Int64")
    return df
