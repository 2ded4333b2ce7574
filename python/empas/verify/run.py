"""``empas.verify``: plans applied to the real model, measured on held-out text
against the uniform baselines and the proxy's predictions.

``empas.verify(model, plans, eval_text, profile=...)`` applies each plan (and the
uniform baselines fp16, int8, int4, int3, int2 at the plan's quantizer) to the
model, measures the loss on held-out text and the bytes of the weights, and
compares with what the additive proxy predicted::

    rep = empas.verify(model_path, result, eval_texts, profile=prof)
    print(rep)              # the table
    rep.to_pandas(); rep.plot(); rep.honesty()

The losses (causal_lm with a sliding window, embedding for encoders) are
described in :mod:`empas.verify.evaluate`. The proxy predicts the loss on the
*calibration* text (``baseline + ΣΔ``), so the comparison is made on deltas:
``error = (loss - loss_original) - (predicted - profile.baseline)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..plan import Plan, as_plan
from ..profile.table import Profile
from ..quant.apply import resolve
from ..track import TrackerSpec, log_verify, open_tracker
from ..track.stages import stage_config
from ..util.progress import progress_bar
from ..util.settings import settle
from .baselines import best_under_uniform, bits_name, uniform_plan
from .config import BASELINE_BITS, VerifyConfig
from .evaluate import Verifier
from .memory import probe_all
from .report import VerifyReport

__all__ = ["named_plans", "verify"]


def named_plans(plans) -> list[tuple[str, Plan]]:
    """``(name, plan)`` pairs of what :func:`verify` takes as ``plans``."""
    if plans is None:
        return []
    if hasattr(plans, "archetypes") and hasattr(plans, "front"):  # SearchResult
        return [(k, p) for k, p in plans.archetypes.items()]
    if isinstance(plans, (Plan, str, os.PathLike)):
        plans = [plans]
    if isinstance(plans, Mapping):
        return [(str(k), as_plan(v)) for k, v in plans.items()]
    out = []
    for i, p in enumerate(plans):
        p = as_plan(p)
        out.append((p.archetype or f"plan{i}", p))
    return out


def verify(
    model,
    plans=None,
    eval_text=None,
    *,
    profile: Profile | str | None = None,
    tokenizer=None,
    baselines: Sequence[int] = BASELINE_BITS,
    budget_plan: bool = True,
    loss: str | None = None,
    seq_len: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
    mode: str = "packed",
    clip_search: bool | None = None,
    memory: bool = False,
    speed: bool = False,
    speed_new_tokens: int = 32,
    speed_prompt_tokens: int = 16,
    speed_prefill_tokens: int | None = None,
    speed_repeats: int = 3,
    speed_activations: str = "exact",
    device: str | None = None,
    config: VerifyConfig | None = None,
    progress: bool = True,
    tracker: TrackerSpec = None,
) -> VerifyReport:
    """Measures ``plans`` (a SearchResult — its archetypes —, a Plan, a path, a
    list or a name -> plan mapping) and the uniform ``baselines`` on held-out
    ``eval_text`` (a text file, list of strings or token tensor).

    ``profile`` gives predicted deltas (for the error column) and, with a
    SearchResult and ``budget_plan``, adds ``best_under_int4``: the front's best
    plan within the bytes of uniform int4 (the honesty check). ``mode`` is
    "packed" (real packed weights; measured bytes are real) or "fake".
    ``memory=True`` also writes each plan as a packed checkpoint in a temporary
    directory and loads it in a fresh process, reporting the resident memory
    (and GPU memory on CUDA) it takes. ``speed=True`` also times each plan end
    to end in packed mode, and the original model (:mod:`empas.verify.speed`):
    decode tokens/s (batch 1, ``speed_new_tokens`` greedy steps after a prompt of
    ``speed_prompt_tokens``) and prefill tokens/s (one forward of
    ``speed_prefill_tokens``, default min(128, context)), medians of
    ``speed_repeats`` interleaved rounds (``speed_activations="int8"``: the packed
    linears run the int8-activation CPU decode kernel, see ``empas.set_activations``); with a profile that has a latency table,
    each plan's predicted latency (Σ per-unit cells) and the Spearman rank
    correlation of predicted with measured time per token (the report's
    ``speed`` section). Each plan's ``measured`` field is filled
    in. ``config``: the settings as one :class:`~empas.VerifyConfig` instead of
    keywords. ``tracker``: "wandb", "mlflow" (a new run, finished on return) or a
    tracker object (see :mod:`empas.track`): the settings, each plan's measurements,
    the report as a table and as verify.json, and the predicted-vs-measured plot.
    Returns a :class:`VerifyReport`."""
    cfg = settle(VerifyConfig, config, dict(locals()))
    with open_tracker(tracker, run_name="empas-verify") as t:
        rep = _verify(model, plans, eval_text, profile, tokenizer, cfg, progress, t)
        log_verify(t, rep)
    return rep


def _verify(model, plans, eval_text, profile, tokenizer, cfg, progress, t) -> VerifyReport:
    if eval_text is None:
        raise ValueError("eval_text is required: held-out text to measure on")
    v = Verifier(model, eval_text, cfg, profile, tokenizer)
    if cfg.speed:  # before the first plan: lengths that cannot run are refused at once
        from .speed import check_speed

        if v.data.kind != "causal_lm":
            raise ValueError("speed measures generation: it needs a causal language model")
        check_speed(
            v.model,
            v.data.stream,
            cfg.speed_new_tokens,
            cfg.speed_prompt_tokens,
            _prefill_tokens(v.model, cfg),
        )
    stage_config(t, "verify", cfg, v.profile, model=v.model_name)
    named = named_plans(plans)
    template = v.profile if v.profile is not None else (named[0][1] if named else None)
    if template is None:
        raise ValueError("verify needs plans or a profile (for the uniform baselines)")
    todo: list[tuple[str, str, Plan]] = []
    for b in cfg.baselines:
        todo.append((f"uniform-{bits_name(b)}", "uniform", uniform_plan(template, b, v.profile)))
    if cfg.budget_plan and hasattr(plans, "best_under") and v.profile is not None:
        best = best_under_uniform(plans, v.profile, 4)
        if best is not None:
            todo.append(("best_under_int4", "plan", best))
    for name, p in named:
        todo.append((name, "plan", p))
    for _, _, p in todo:  # all mismatches are reported before any measurement
        resolve(v.model, p)
    rows = [
        {
            "name": "original",
            "kind": "original",
            "loss": v.original["loss"],
            "ppl": v.original.get("ppl"),
            "bytes": v.original["bytes"],
            "delta": 0.0,
        }
    ]
    bar = progress_bar(len(todo), "verify", "plan", enabled=progress, leave=False)
    plans_out: dict[str, Plan] = {}
    try:
        for name, kind, p in todo:
            m = v.measure(p)
            rows.append(v.row(name, kind, p, m))
            p.measured = v.measured_record(m)
            plans_out[name] = p
            bar.update(1)
    finally:
        bar.close()
    if cfg.memory:
        probe_all(v, rows, plans_out)
    extra = {}
    if cfg.speed:
        extra["speed"] = _speed(v, rows, plans_out, cfg)
    return VerifyReport(rows, v.meta(), plans_out, extra)


def _prefill_tokens(model, cfg: VerifyConfig) -> int:
    from ..models.loading import context_length

    ctx = context_length(model)
    return cfg.speed_prefill_tokens or (min(128, ctx) if ctx else 128)


def _speed(v, rows, plans_out: dict[str, Plan], cfg: VerifyConfig) -> dict:
    """Times every row end to end (packed) and adds the speed columns; returns the
    report's ``speed`` section."""
    from .speed import measure_speed, speed_summary

    prefill = _prefill_tokens(v.model, cfg)
    todo = [("original", None)] + [(r["name"], plans_out[r["name"]]) for r in rows[1:]]
    sp = measure_speed(
        v.model,
        v.data.stream,
        todo,
        clip_search=v.clip_search,
        new_tokens=cfg.speed_new_tokens,
        prompt_tokens=cfg.speed_prompt_tokens,
        prefill_tokens=prefill,
        repeats=cfg.speed_repeats,
        activations=cfg.speed_activations,
    )
    lat = v.profile.latency if v.profile is not None else None
    for r in rows:
        r.update(sp[r["name"]])
        r["pred_latency"] = None
        p = plans_out.get(r["name"])
        if lat is not None and p is not None:
            try:
                r["pred_latency"] = v.profile.evaluate(p)["latency"]
            except (ValueError, RuntimeError):  # a plan of other units or choices
                r["pred_latency"] = None
    src = (v.profile.meta.get("source") or {}).get("latency") if v.profile is not None else None
    settings = {
        "mode": "packed",
        "batch": 1,
        "new_tokens": cfg.speed_new_tokens,
        "prompt_tokens": cfg.speed_prompt_tokens,
        "prefill_tokens": prefill,
        "repeats": cfg.speed_repeats,
        "activations": cfg.speed_activations,
        "statistic": "median over rounds; each round visits every plan once, seeded order",
        "latency_table": None
        if src is None
        else {k: src.get(k) for k in ("device", "batch", "tokens", "repeats", "torch_threads")},
    }
    import torch

    settings["torch_threads"] = int(torch.get_num_threads())
    return speed_summary(rows, settings)
