"""The whole pipeline in one call: ``empas demo`` / :func:`run_demo`.

model (the offline default: SmolLM2-135M-Instruct from its GGUF file, converted once
and cached; ``example:tiny-llama`` for the small model EMPAS trains) → profile (Δloss
per unit and precision, measured on BBC News articles) → search (NSGA-II front + the exact front) → verify (the
archetypes, the best plan within uniform int4's bytes and the uniform baselines,
measured with packed weights on held-out text) → export (packed checkpoint and
runtime configs) → a short report, and everything on disk:

    OUT/profile.json            the measured sensitivity table (empas.sensitivity/1)
    OUT/search/                 result.json, front.csv, plans/ (the NSGA-II search)
    OUT/plans/*.json            the verified plans, with their measured metrics
    OUT/verify.json, verify.png predicted vs measured, uniform baselines, honesty
    OUT/export/                 packed checkpoint, llama.cpp / GPTQModel / HQQ configs
    OUT/report.json, report.md  the report printed at the end
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .track import TrackerSpec, check_tracker, open_tracker
from .track.stages import stage_config
from .util.io import atomic_write_text
from .util.sizes import format_bytes

__all__ = ["DemoResult", "run_demo"]

RUNTIME_FORMATS = ("llama.cpp", "gptqmodel", "hqq")
FORMATS = ("packed", *RUNTIME_FORMATS, "empas-original")
_EXT = {
    "llama.cpp": "tensor-types.txt",
    "gptqmodel": "gptqmodel.json",
    "hqq": "hqq.json",
    "empas-original": "empas-original.json",
}
_MARKERS = ("report.json", "profile.json", "verify.json", "search")


@dataclass
class DemoResult:
    """What :func:`run_demo` made: the objects, the report and the files written."""

    out: Path
    profile: Any
    search: Any
    exact: Any
    verify: Any
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    def text(self) -> str:
        return report_text(self.report)

    def __repr__(self) -> str:
        return f"DemoResult(out={str(self.out)!r}, plans={list(self.report['plans'])})"

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(self.text())}</pre>"


def _stage(log: Callable[[str], None], i: int, n: int, what: str) -> float:
    log(f"[{i}/{n}] {what}")
    return time.perf_counter()


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if out.is_dir() and any((out / m).exists() for m in _MARKERS) and not force:
        raise FileExistsError(
            f"{out} holds the results of an earlier run; pass --force (force=True) to replace "
            "them (the profile checkpoint there is reused when the settings match)"
        )


def run_demo(
    out: str | os.PathLike = "out/demo",
    *,
    model: str | os.PathLike = "example:smollm2",
    calib=None,
    eval_text=None,
    units: str = "block",
    bits: Sequence[int] = (2, 3, 4),
    estimate: Sequence[int] = (16,),
    n_tokens: int | None = 1024,
    seq_len: int | None = None,
    batch_size: int = 4,
    method: str = "nsga2",
    pop_size: int = 100,
    generations: int = 50,
    seed: int = 0,
    threads: int | None = None,
    budget: int | str | None = None,
    baselines: Sequence[int] = (16, 8, 4, 3, 2),
    max_eval_tokens: int | None = 2048,
    measure: int = 10,
    selection_tokens: int = 1024,
    memory: bool = False,
    export_plan: str | None = None,
    formats: Sequence[str] = FORMATS,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    tracker: TrackerSpec = None,
) -> DemoResult:
    """Runs profile → search → verify → export on ``model`` and writes everything
    under ``out`` (see the module docstring). ``model``: a local HuggingFace
    directory, a ``.gguf`` file, ``"example:smollm2"`` (the default: a real pretrained
    LLM, 30 blocks) or ``"example:tiny-llama"`` (the small model EMPAS trains, for fast
    runs). ``calib`` / ``eval_text``: text files, lists of strings or text aliases
    (default: ``example:bbc-news:calib`` / ``:eval``, BBC News articles split by
    article; the Python docs corpus for the tiny model). The defaults (block units at
    2/3/4 bits measured, fp16 estimated, 1,024 calibration tokens, 2,048 held-out
    tokens) keep the demo within 10 minutes on 2 CPU cores. ``estimate``: the bit
    widths whose cells come from the one-backward-pass Fisher estimate instead of a
    forward pass each (default fp16, whose Δ is tiny and costs as much to measure as
    any other cell; ``()`` measures everything); the report counts both. ``measure``:
    how many plans :func:`empas.search_measured` may measure (on ``selection_tokens``
    calibration tokens the profile did not use) to pick ``best_under_int4``; 0 takes
    the proxy's best plan under uniform int4's bytes instead. ``budget``: a
    memory budget ("8MB", bytes): its best plan is verified and exported too.
    ``export_plan``: which plan to export (default: the budget plan when a budget
    is given, else ``balanced``). ``tracker``: "wandb", "mlflow" (one run for the whole
    demo, finished on return) or a tracker object (see :mod:`empas.track`): every
    stage's settings and progress, the front, the plans, the verify report and plot,
    and report.json / report.md."""
    if isinstance(tracker, str):
        given = dict(locals())
        with open_tracker(tracker, run_name="empas-demo") as t:
            given["tracker"] = t
            return run_demo(**given)
    if tracker is not None:
        check_tracker(tracker)
        settings = {k: v for k, v in locals().items() if k not in ("tracker", "log")}
        stage_config(tracker, "demo", settings)
    import empas
    from empas.verify import best_under_uniform, uniform_plan, write_json

    log = log or print
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    outp = Path(out)
    bits = [int(b) for b in bits]
    for f in formats:
        if f not in FORMATS:
            raise ValueError(f"unknown export format {f!r}; formats: {', '.join(FORMATS)}")
    if method not in ("nsga2", "exact"):
        raise ValueError(f"method must be 'nsga2' or 'exact', got {method!r}")
    if budget is not None:
        budget = empas.parse_size(budget)
    _check_out(outp, force)
    outp.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    timings: dict[str, float] = {}
    n = 6
    t_all = time.perf_counter()

    # 1. the model -----------------------------------------------------------
    t = _stage(log, 1, n, f"model: {model}")
    model_label = str(model)
    path = Path(empas.models.resolve(str(model), verbose=progress))
    tiny = str(model) == empas.models.EXAMPLE
    if tiny:
        log(f"      the offline Llama model (trained once, cached): {path}")
    elif str(model) == empas.models.SMOLLM2:
        log(f"      SmolLM2-135M-Instruct, dequantized from its Q4_1 GGUF (cached): {path}")
    elif not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    if calib is None:  # the model's own corpus when EMPAS trained it, else BBC News
        calib = empas.models.default_text(path, "calib") or f"{empas.models.BBC_NEWS}:calib"
    if eval_text is None:
        eval_text = empas.models.default_text(path, "eval") or f"{empas.models.BBC_NEWS}:eval"
    timings["model_s"] = time.perf_counter() - t

    # 2. profile ---------------------------------------------------------------
    t = _stage(log, 2, n, f"profile: {units} units at {','.join(map(str, bits))} bits")
    ckpt = outp / "profile.checkpoint.json"
    config = empas.ProfileConfig(
        units=units,
        choices=bits,
        estimate=estimate,
        n_tokens=n_tokens,
        seq_len=seq_len,
        batch_size=batch_size,
        device=device,
        seed=seed,
    )
    prof = empas.profile(
        path,
        calib,
        checkpoint=ckpt,
        config=config,
        on_stale="restart",
        progress=progress,
        tracker=tracker,
    )
    files["profile"] = prof.save(outp / "profile.json")
    tm = prof.meta.get("timings", {})
    log(
        f"      {len(prof.units)} units x {len(prof.choices)} precisions, baseline loss "
        f"{prof.baseline:.4f}; {tm.get('experiments', '?')} experiments in "
        f"{tm.get('experiments_s', float('nan')):.1f} s"
    )
    timings["profile_s"] = time.perf_counter() - t

    # 3. search ----------------------------------------------------------------
    t = _stage(log, 3, n, f"search: {method} (pop {pop_size} x {generations}) and the exact front")
    res = empas.search(
        prof,
        method=method,
        pop_size=pop_size,
        generations=generations,
        seed=seed,
        threads=threads,
        progress=progress and method == "nsga2",
        tracker=tracker,
    )
    exact = res if method == "exact" else empas.search(prof, method="exact")
    paths = res.save(outp / "search", overwrite=True)
    files["search"] = paths["result"]
    hv_ratio = res.hypervolume_ratio(exact) if method != "exact" else 1.0
    log(
        f"      {len(res.front)} front plans; hypervolume {100 * hv_ratio:.3f}% of the exact "
        f"front ({len(exact.front)} plans)"
    )
    timings["search_s"] = time.perf_counter() - t

    # 4. verify ----------------------------------------------------------------
    t = _stage(log, 4, n, "verify: the plans and uniform baselines on held-out text (packed)")
    plans: dict[str, Any] = dict(res.archetypes)
    measured = None
    u4 = uniform_plan(prof, 4) if 4 in prof.choices else None
    if measure and u4 is not None:
        # the recommendation at int4's bytes: measured candidates on calibration
        # windows the profile did not use, the proxy corrected (empas.search_measured)
        measured = empas.search_measured(
            path,
            prof,
            calib,
            budgets=[u4.predicted_bytes],
            selection_tokens=selection_tokens,
            max_measurements=measure,
            seed=seed,
            device=device,
            checkpoint=outp / "measured.checkpoint.json",
            progress=progress,
        )
        files["measured"] = measured.save(outp / "measured.json")
        plans["best_under_int4"] = next(iter(measured.recommended.values()))
        log(f"      {str(measured).splitlines()[0]}")
    else:
        best = best_under_uniform(exact, prof, 4)
        if best is not None:
            plans["best_under_int4"] = best
    if budget is not None:
        plans["best_under_budget"] = exact.best_under(budget)  # InfeasibleError: clear message
    rep = empas.verify(
        path,
        plans,
        eval_text,
        profile=prof,
        baselines=[b for b in baselines],
        budget_plan=False,
        max_tokens=max_eval_tokens,
        memory=memory,
        device=device,
        progress=progress,
        tracker=tracker,
    )
    doc = rep.document()
    honesty = doc.get("honesty")
    files["verify"] = write_json(outp / "verify.json", doc)
    for name, p in rep.plans.items():
        # named as in the report (best_under_int4 comes from best_under(), which labels
        # its plans best_under_budget), so that serve and dashboard match the rows
        p.archetype = name
        files[f"plan:{name}"] = p.save(outp / "plans" / f"{name}.json")
    try:
        files["verify_plot"] = rep.save_plot(outp / "verify.png")
    except ImportError:
        log("      note: no matplotlib; verify.png not written")
    timings["verify_s"] = time.perf_counter() - t

    # 5. export ----------------------------------------------------------------
    chosen = export_plan or ("best_under_budget" if budget is not None else "balanced")
    if chosen not in rep.plans:
        raise ValueError(f"export_plan {chosen!r} is not one of {', '.join(rep.plans)}")
    t = _stage(log, 5, n, f"export: {chosen} as {', '.join(formats) or 'nothing'}")
    plan = rep.plans[chosen]
    ex = outp / "export"
    skipped: dict[str, str] = {}
    if formats:
        from empas.export import write_export

        dropped = [u for u, b in plan.bits_by_unit.items() if b == 0]
        for fmt in formats:
            if fmt == "packed":
                m, tok, _, _ = empas.models.load_model(path, "cpu", None)
                files["export:packed"] = empas.save_quantized(
                    m, plan, ex / f"packed-{chosen}", tokenizer=tok, force=True
                )
                del m
                continue
            if fmt in RUNTIME_FORMATS and dropped:
                skipped[fmt] = f"the plan drops {len(dropped)} unit(s); {fmt} cannot"
                continue
            opts = {"allow_approx": True} if fmt == "hqq" else {}
            if fmt in RUNTIME_FORMATS:
                opts["round_up"] = True
            try:
                files[f"export:{fmt}"] = write_export(
                    plan, fmt, ex / f"{chosen}.{_EXT[fmt]}", force=True, **opts
                )
            except ValueError as exc:  # e.g. a model layout the runtime has no names for
                skipped[fmt] = str(exc)
        for fmt, why in skipped.items():
            log(f"      note: no {fmt} export: {why}")
    timings["export_s"] = time.perf_counter() - t

    # 6. report ----------------------------------------------------------------
    _stage(log, 6, n, "report")
    timings["total_s"] = time.perf_counter() - t_all
    report = _report(
        model_label, path, prof, res, exact, hv_ratio, rep, honesty, chosen, skipped, timings
    )
    if measured is not None:
        report["measured_search"] = {
            "measurements": measured.budget["measurements"],
            "selection_tokens": measured.meta["selection_tokens"],
            "correction": measured.correction,
            "recommended": {
                k: {"bits": p.bits, **(p.measured or {})} for k, p in measured.recommended.items()
            },
        }
    files["report"] = rj = outp / "report.json"
    files["report_md"] = rm = outp / "report.md"
    report["files"] = {k: str(v) for k, v in files.items()}
    write_json(rj, report)
    text = report_text(report)
    atomic_write_text(rm, "```\n" + text + "\n```\n")
    if tracker is not None:
        tracker.log_artifact(rj, "demo-report")
        tracker.log_artifact(rm, "demo-report-md")
    return DemoResult(outp, prof, res, exact, rep, report, files)


def _report(model_label, path, prof, res, exact, hv_ratio, rep, honesty, chosen, skipped, timings):
    rows = {r["name"]: r for r in rep.rows}
    plans = {}
    for name in rep.plans:
        r = rows[name]
        if r["kind"] != "plan":
            continue
        plans[name] = {
            "bits": r.get("bits"),
            "avg_bits": r.get("avg_bits"),
            "bytes": r["bytes"],
            "pred_delta": r.get("pred_delta"),
            "delta": r["delta"],
            "error": r.get("error"),
            "loss": r["loss"],
            "ppl": r.get("ppl"),
            "rss_mb": r.get("rss_mb"),
        }
    uniform = {
        r["name"]: {
            "bytes": r["bytes"],
            "pred_delta": r.get("pred_delta"),
            "delta": r["delta"],
            "loss": r["loss"],
            "ppl": r.get("ppl"),
            "rss_mb": r.get("rss_mb"),
        }
        for r in rep.rows
        if r["kind"] == "uniform"
    }
    f = res.front
    est = (prof.meta.get("source") or {}).get("estimated") or {}
    n_est = int(est.get("cells", 0))
    return {
        "format": "empas.demo/1",
        "model": {
            "name": model_label,
            "path": str(path),
            "source": (prof.meta.get("model") or {}).get("source"),
        },
        "profile": {
            "units": len(prof.units),
            "unit_kinds": _kinds(prof),
            "choices": list(prof.choices),
            "baseline": prof.baseline,
            "calib_tokens": (prof.meta.get("calibration") or {}).get("tokens"),
            "calib_source": (prof.meta.get("calibration") or {}).get("source"),
            "measured_cells": int(np.isfinite(prof.delta).sum()) - n_est,
            "estimated_cells": n_est,
            "estimated": est or None,
        },
        "front": {
            "method": res.method,
            "plans": len(f),
            "bytes_min": int(f.bytes.min()),
            "bytes_max": int(f.bytes.max()),
            "pred_delta_min": float(f.loss.min()) - prof.baseline,
            "pred_delta_max": float(f.loss.max()) - prof.baseline,
            "hypervolume_vs_exact": hv_ratio,
            "exact_plans": len(exact.front),
        },
        "original": {"loss": rows["original"]["loss"], "ppl": rows["original"].get("ppl")},
        "eval": {"tokens": rep.meta["eval_tokens"], "loss": rep.meta["loss"]},
        "plans": plans,
        "uniform": uniform,
        "honesty": honesty,
        "exported": {"plan": chosen, "skipped": skipped},
        "timings": timings,
    }


def _kinds(prof) -> str:
    counts: dict[str, int] = {}
    for u in prof.units:
        counts[u.kind] = counts.get(u.kind, 0) + 1
    return " + ".join(f"{c} {k}" for k, c in counts.items())


def _f(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, fmt)


def _ppl(v) -> str:
    """Perplexity: 2 decimals, or 4 significant digits when it is huge (uniform int2)."""
    return _f(v, ".2f" if v is None or abs(v) < 1e6 else ".4g")


def report_text(r: dict[str, Any]) -> str:
    """The demo's report as readable text (what ``empas demo`` prints)."""
    fr, pr = r["front"], r["profile"]
    src = r["model"].get("source") or {}
    lines = [f"EMPAS demo: {r['model']['name']}"]
    if src.get("quantized"):
        lines.append(f"model     {src.get('note') or 'dequantized from a quantized GGUF file'}")
    lines += [
        f"profile   {pr['units']} units ({pr['unit_kinds']}) x bits {pr['choices']}; "
        f"calibration loss {pr['baseline']:.4f} on {_f(pr.get('calib_tokens'), ',')} tokens; "
        f"{_f(pr.get('measured_cells'), 'd')} cells measured, "
        f"{_f(pr.get('estimated_cells'), 'd')} estimated",
        f"front     {fr['plans']} plans ({fr['method']}), {format_bytes(fr['bytes_min'])} .. "
        f"{format_bytes(fr['bytes_max'])}, predicted Δ {fr['pred_delta_min']:.4f} .. "
        f"{fr['pred_delta_max']:.4f}; {100 * fr['hypervolume_vs_exact']:.3f}% of the exact "
        f"front's hypervolume",
        f"held-out  {r['eval']['tokens']:,} tokens ({r['eval']['loss']}); original model loss "
        f"{r['original']['loss']:.4f}, ppl {_f(r['original']['ppl'], '.2f')}",
    ]
    ms = r.get("measured_search")
    if ms:
        c = ms["correction"]
        lines.append(
            f"measured  best_under_int4 picked from {ms['measurements']} plans measured on "
            f"{ms['selection_tokens']:,} unused calibration tokens (proxy corrected: "
            f"leave-one-out |error| {_f(c.get('loo_mae_proxy'), '.4f')} -> "
            f"{_f(c.get('loo_mae_corrected'), '.4f')})"
        )
    lines.append("")
    mem = any(d.get("rss_mb") is not None for d in [*r["plans"].values(), *r["uniform"].values()])
    lines.append(
        f"{'plan':<20}{'avg bits':>9}{'size':>12}{'pred Δ':>10}{'measured Δ':>12}{'ppl':>11}"
        + (f"{'loaded MB':>11}" if mem else "")
    )

    def row(name, d):
        return (
            f"{name[:19]:<20}{_f(d.get('avg_bits'), '.2f'):>9}{format_bytes(d['bytes']):>12}"
            f"{_f(d.get('pred_delta'), '+.4f'):>10}{_f(d['delta'], '+.4f'):>12}"
            f"{_ppl(d.get('ppl')):>11}" + (f"{_f(d.get('rss_mb'), '.1f'):>11}" if mem else "")
        )

    for name, d in r["plans"].items():
        lines.append(row(name, d))
    lines.append("uniform baselines:")
    for name, d in r["uniform"].items():
        lines.append(row(name, {**d, "avg_bits": None}))
    if r.get("honesty"):
        lines += ["", r["honesty"]["verdict"]]
    ex = r["exported"]
    lines.append("")
    lines.append(
        f"exported: {ex['plan']}"
        + (f" (skipped: {', '.join(ex['skipped'])})" if ex["skipped"] else "")
    )
    t = r["timings"]
    lines.append(
        "time: "
        + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items() if k != "total_s")
        + f"; total {t['total_s']:.1f} s"
    )
    return "\n".join(lines)
