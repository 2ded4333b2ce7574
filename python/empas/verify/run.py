"""Verification on the real model: measured loss, perplexity and bytes of plans.

``empas.verify(model, plans, eval_text, profile=...)`` applies each plan (and the
uniform baselines fp16, int8, int4, int3, int2 at the plan's quantizer) to the
model, measures the loss on held-out text and the bytes of the weights, and
compares with what the additive proxy predicted::

    rep = empas.verify(model_path, result, eval_texts, profile=prof)
    print(rep)              # the table
    rep.to_pandas(); rep.plot(); rep.honesty()

Losses:

* ``causal_lm``: token-level cross-entropy over the evaluation token stream with a
  sliding window of ``seq_len`` tokens (default: min(256, the model's context))
  moved by ``stride`` (default ``seq_len //
  2``): each window scores only the tokens the previous one did not, so every
  token after the first is scored once, with at least ``seq_len - stride`` tokens
  of context (``stride = seq_len``: disjoint windows, whose first tokens go
  unscored). Perplexity = exp(loss).
* ``embedding``: mean over windows of ``1 - cos(e_q, e_ref)`` between the mean-pooled
  last hidden states of the quantized and the original model (encoders such as
  all-MiniLM); no perplexity.

The proxy predicts the loss on the *calibration* text (``baseline + ΣΔ``), so the
comparison is made on deltas: ``error = (loss - loss_original) - (predicted -
profile.baseline)``. Fidelity (:func:`fidelity`) is the rank correlation between
predicted and measured losses over random plans and the front; :func:`refine`
measures front candidates, picks the archetypes by measured loss and fits
corrections to the proxy, reporting their effect on held-out plans.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .apply import _as_plan, applied, resolve, weight_bytes
from .errors import InfeasibleError
from .plan import Plan
from .sensitivity import Profile, load_profile

__all__ = [
    "FidelityReport",
    "RefineReport",
    "VerifyReport",
    "fidelity",
    "kendall_tau",
    "refine",
    "spearman",
    "uniform_plan",
    "verify",
]

BASELINE_BITS = (16, 8, 4, 3, 2)


# ----------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ (Pearson correlation of average ranks); nan if either is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b) or len(a) < 3:
        raise ValueError(f"need two sequences of equal length >= 3, got {len(a)} and {len(b)}")
    from .profiling import _ranks

    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b (ties accounted for); O(n²), fine for the plan counts here."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b) or len(a) < 3:
        raise ValueError(f"need two sequences of equal length >= 3, got {len(a)} and {len(b)}")
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    conc = float((da * db).sum())
    n1, n2 = float((da != 0).sum()), float((db != 0).sum())
    return conc / math.sqrt(n1 * n2) if n1 > 0 and n2 > 0 else float("nan")


# ----------------------------------------------------------------------------
# evaluation data and loss
# ----------------------------------------------------------------------------


@dataclass
class _EvalData:
    kind: str
    seq_len: int
    stride: int
    windows: list[tuple[int, int, int]]  # (begin, end, n_target) for causal_lm
    stream: Any  # 1-D token tensor (causal_lm) or 2-D windows (embedding)
    batch_size: int
    reference: list[Any] = field(default_factory=list)  # embedding: original's embeddings
    source: str = ""

    @property
    def n_tokens(self) -> int:
        return int(self.stream.numel())


def _eval_data(eval_text, tokenizer, kind, seq_len, stride, max_tokens, batch_size) -> _EvalData:
    import torch

    from .profiling import _encode_stream, _texts_from

    if isinstance(eval_text, torch.Tensor):
        if eval_text.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"an eval tensor holds token ids (int64), got {eval_text.dtype}")
        stream, source = eval_text.reshape(-1).long(), f"tensor [{eval_text.numel()}]"
    else:
        texts, source = _texts_from(eval_text, "eval text")
        if tokenizer is None:
            raise ValueError("text evaluation needs a tokenizer (tokenizer=...)")
        stream = _encode_stream(texts, tokenizer)
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        stream = stream[: int(max_tokens)]
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    stride = max(1, seq_len // 2) if stride is None else int(stride)
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    n = stream.numel()
    if kind == "embedding":
        w = n // seq_len
        if w == 0:
            raise ValueError(f"eval text has {n} tokens, fewer than one window of {seq_len}")
        return _EvalData(
            kind,
            seq_len,
            seq_len,
            [],
            stream[: w * seq_len].view(w, seq_len),
            batch_size,
            [],
            source,
        )
    if n < 2:
        raise ValueError(f"eval text has {n} tokens; at least 2 are needed")
    windows, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + seq_len, n)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == n:
            break
        begin += stride
    return _EvalData(kind, seq_len, stride, windows, stream, batch_size, [], source)


def _model_device(model):
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    import torch

    return torch.device("cpu")


def _forward(model, ids):
    out = model(input_ids=ids)
    for attr in ("logits", "last_hidden_state"):
        v = getattr(out, attr, None)
        if v is not None:
            return v
    return out[0]


def _evaluate(model, data: _EvalData) -> dict[str, float]:
    """Loss (and perplexity for causal_lm) of the model as it is now."""
    import torch
    import torch.nn.functional as F

    dev = _model_device(model)
    with torch.inference_mode():
        if data.kind == "embedding":
            vals = []
            for i in range(0, data.stream.shape[0], data.batch_size):
                ids = data.stream[i : i + data.batch_size].to(dev)
                e = _forward(model, ids).float().mean(dim=1)
                if len(data.reference) <= i // data.batch_size:
                    data.reference.append(e.clone())
                r = data.reference[i // data.batch_size]
                vals.append(1.0 - F.cosine_similarity(e, r, dim=-1).double())
            loss = float(torch.cat(vals).mean())
            if not math.isfinite(loss):
                raise FloatingPointError("the embedding loss is not finite")
            return {"loss": loss, "ppl": None, "tokens": int(data.stream.numel())}
        nll, count = 0.0, 0
        # windows of the same length are batched; the last may be shorter
        groups: dict[int, list[tuple[int, int, int]]] = {}
        for w in data.windows:
            groups.setdefault(w[1] - w[0], []).append(w)
        for length, ws in groups.items():
            if length < 2:
                continue
            for i in range(0, len(ws), data.batch_size):
                chunk = ws[i : i + data.batch_size]
                ids = torch.stack([data.stream[b:e] for b, e, _ in chunk]).to(dev)
                logits = _forward(model, ids)[:, :-1].float()
                ce = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
                ).view(len(chunk), -1)
                pos = torch.arange(1, length, device=dev)
                for j, (_, _, trg) in enumerate(chunk):
                    keep = pos >= length - trg
                    nll += float(ce[j][keep].double().sum())
                    count += int(keep.sum())
    if count == 0:
        raise ValueError("the evaluation scored no tokens")
    loss = nll / count
    if not math.isfinite(loss):
        raise FloatingPointError("the evaluation loss is not finite (a plan broke the model?)")
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count}


# ----------------------------------------------------------------------------
# plans to verify
# ----------------------------------------------------------------------------


def uniform_plan(template: Plan | Profile, bits: int, profile: Profile | None = None) -> Plan:
    """Every unit of ``template`` (a plan or a profile) at ``bits``, with predicted
    metrics from ``profile`` (or the template profile) when it has that choice."""
    prof = template if isinstance(template, Profile) else profile
    if prof is not None and bits in prof.choices:
        p = prof.plan([bits] * prof.n_units, archetype=f"uniform-{_bits_name(bits)}")
        return p
    if isinstance(template, Profile):
        raise ValueError(f"the profile has no {bits}-bit choice (choices: {template.choices})")
    d = template.to_dict()
    for u in d["units"]:
        u["bits"] = int(bits)
    d["predicted"] = {}
    d["measured"] = None
    d["archetype"] = f"uniform-{_bits_name(bits)}"
    return Plan.from_dict(d)


def _bits_name(bits: int) -> str:
    return "fp16" if bits == 16 else ("drop" if bits == 0 else f"int{bits}")


def _named_plans(plans) -> list[tuple[str, Plan]]:
    if plans is None:
        return []
    if hasattr(plans, "archetypes") and hasattr(plans, "front"):  # SearchResult
        return [(k, p) for k, p in plans.archetypes.items()]
    if isinstance(plans, (Plan, str, os.PathLike)):
        plans = [plans]
    if isinstance(plans, Mapping):
        return [(str(k), _as_plan(v)) for k, v in plans.items()]
    out = []
    for i, p in enumerate(plans):
        p = _as_plan(p)
        out.append((p.archetype or f"plan{i}", p))
    return out


# ----------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------

_COLUMNS = [
    "name",
    "kind",
    "avg_bits",
    "pred_loss",
    "loss",
    "ppl",
    "pred_delta",
    "delta",
    "error",
    "pred_bytes",
    "bytes",
    "rss_mb",
    "gpu_mb",
]


class VerifyReport:
    """Measured vs predicted, one row per plan (see :data:`rows`)."""

    def __init__(self, rows: list[dict[str, Any]], meta: dict[str, Any], plans: dict[str, Plan]):
        self.rows = rows
        self.meta = meta
        self.plans = plans

    def row(self, name: str) -> dict[str, Any]:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r['name'] for r in self.rows]}")

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([{k: r.get(k) for k in _COLUMNS} for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        return {"format": "empas.verify/1", "meta": self.meta, "rows": self.rows}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(_clean(self.to_dict()), indent=indent, allow_nan=False)

    def document(self, **extra: Any) -> dict[str, Any]:
        """to_dict() plus the honesty check (when the report holds uniform-fp16,
        uniform-int4 and best_under_int4) and ``extra`` sections: what ``empas verify``
        and ``empas demo`` write as verify.json."""
        doc = self.to_dict()
        if {"uniform-int4", "uniform-fp16", "best_under_int4"} <= {r["name"] for r in self.rows}:
            doc["honesty"] = self.honesty("best_under_int4")
        doc.update(extra)
        return doc

    def save_plot(self, path: str | os.PathLike) -> Path:
        """Writes :meth:`plot` as an image (PNG by the suffix) and closes the figure."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        ax = self.plot()
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        return Path(path)

    def save(self, path: str | os.PathLike) -> Path:
        from ._native import core

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        core().write_file_atomic(str(path), self.to_json() + "\n")
        return path

    def honesty(self, plan: str = "best_under_int4") -> dict[str, Any]:
        """At (at most) the bytes of uniform int4: does ``plan`` beat uniform int4?
        ``recovered`` = the share of the int4 → fp16 loss gap that the plan closes."""
        i4, f16, p = self.row("uniform-int4"), self.row("uniform-fp16"), self.row(plan)

        def size(r):  # the plan's bytes (predicted = packed bytes; fake mode keeps the model's)
            return r.get("pred_bytes") if r.get("pred_bytes") is not None else r["bytes"]

        gap = i4["loss"] - f16["loss"]
        rec = (i4["loss"] - p["loss"]) / gap if gap > 0 else float("nan")
        beats = p["loss"] < i4["loss"]
        return {
            "plan": plan,
            "plan_loss": p["loss"],
            "plan_bytes": size(p),
            "int4_loss": i4["loss"],
            "int4_bytes": size(i4),
            "fp16_loss": f16["loss"],
            "recovered": rec,
            "beats_int4": bool(beats),
            "verdict": (
                f"{plan} {'beats' if beats else 'does NOT beat'} uniform int4 at "
                f"{size(p):,} vs {size(i4):,} bytes: loss {p['loss']:.4f} vs "
                f"{i4['loss']:.4f} (fp16 {f16['loss']:.4f}); it recovers "
                f"{100 * rec:.1f}% of the int4 -> fp16 gap"
            ),
        }

    def table(self) -> str:
        def f(v, fmt):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        head = (
            f"{'plan':<22}{'avg bits':>9}{'pred loss':>11}{'loss':>9}{'ppl':>10}"
            f"{'pred Δ':>9}{'Δ':>9}{'error':>9}{'bytes':>13}{'pred bytes':>13}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r['name'][:21]:<22}{f(r.get('avg_bits'), '.2f'):>9}"
                f"{f(r.get('pred_loss'), '.4f'):>11}{f(r['loss'], '.4f'):>9}"
                f"{f(r.get('ppl'), '.2f'):>10}{f(r.get('pred_delta'), '.4f'):>9}"
                f"{f(r.get('delta'), '.4f'):>9}{f(r.get('error'), '+.4f'):>9}"
                f"{r['bytes']:>13,}{f(r.get('pred_bytes'), ','):>13}"
            )
        m = self.meta
        lines.append(
            f"loss: {m['loss']} on {m['eval_tokens']:,} held-out tokens ({m['eval_source']}), "
            f"seq_len {m['seq_len']}, stride {m['stride']}; mode {m['mode']}; {m['device']}"
        )
        return "\n".join(lines)

    __str__ = table

    def __repr__(self) -> str:
        return f"VerifyReport({len(self.rows)} rows, loss={self.meta['loss']})"

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(self.table())}</pre>"

    def plot(self, ax=None):
        """Predicted vs measured Δloss, one point per plan, with the y = x line."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("plot() needs matplotlib: pip install matplotlib") from None
        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 5))
        pts = [r for r in self.rows if r.get("pred_delta") is not None]
        if not pts:
            raise ValueError("no row has a predicted loss (pass profile= to verify)")
        x = [r["pred_delta"] for r in pts]
        y = [r["delta"] for r in pts]
        ax.scatter(x, y, s=30, zorder=3)
        for r in pts:
            ax.annotate(r["name"], (r["pred_delta"], r["delta"]), fontsize=7, alpha=0.8)
        lo, hi = min(x + y), max(x + y)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.set_xlabel("predicted Δloss (additive proxy)")
        ax.set_ylabel("measured Δloss (held-out text)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return ax


def write_json(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Writes a report document atomically (non-finite numbers as null)."""
    from ._native import core

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    core().write_file_atomic(str(path), json.dumps(_clean(doc), indent=2) + "\n")
    return path


def _clean(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


# ----------------------------------------------------------------------------
# the verifier
# ----------------------------------------------------------------------------


class _Verifier:
    def __init__(
        self,
        model,
        eval_text,
        *,
        tokenizer,
        profile,
        loss,
        seq_len,
        stride,
        max_tokens,
        batch_size,
        mode,
        clip_search,
        device,
    ):
        from .profiling import _load

        self.model, self.tokenizer, _, self.model_name = _load(model, device, tokenizer)
        self.model.eval()
        self.profile = load_profile(profile) if isinstance(profile, (str, os.PathLike)) else profile
        if loss is None:
            loss = self.profile.loss_kind if self.profile is not None else "causal_lm"
        if loss not in ("causal_lm", "embedding"):
            raise ValueError(f"verify measures loss 'causal_lm' or 'embedding', got {loss!r}")
        if clip_search is None:
            src = (self.profile.meta.get("source") or {}) if self.profile is not None else {}
            clip_search = bool(src.get("clip_search", False))
        self.clip_search = clip_search
        self.mode = mode
        cfg = getattr(self.model, "config", None)
        ctx = None
        for attr in ("max_position_embeddings", "n_positions"):
            ctx = ctx or getattr(cfg, attr, None)
        if seq_len is None:
            seq_len = min(256, int(ctx)) if ctx else 256
        elif ctx and seq_len > ctx:
            raise ValueError(f"seq_len={seq_len} exceeds the model's context of {ctx} tokens")
        self.data = _eval_data(
            eval_text, self.tokenizer, loss, seq_len, stride, max_tokens, batch_size
        )
        t = time.perf_counter()
        self.original = _evaluate(self.model, self.data)  # also fills the embedding reference
        self.original["bytes"] = weight_bytes(self.model)
        self.eval_s = time.perf_counter() - t

    def measure(self, plan: Plan) -> dict[str, Any]:
        with applied(self.model, plan, self.mode, clip_search=self.clip_search):
            r = _evaluate(self.model, self.data)
            r["bytes"] = weight_bytes(self.model)
        return r

    def row(self, name: str, kind: str, plan: Plan | None, m: dict[str, Any]) -> dict[str, Any]:
        row = {
            "name": name,
            "kind": kind,
            "loss": m["loss"],
            "ppl": m.get("ppl"),
            "bytes": m["bytes"],
        }
        row["delta"] = m["loss"] - self.original["loss"]
        if plan is not None:
            pred = plan.predicted
            row["avg_bits"] = pred.get("avg_bits")
            row["pred_loss"] = pred.get("loss")
            row["pred_bytes"] = pred.get("bytes")
            if self.profile is not None and pred.get("loss") is not None:
                row["pred_delta"] = pred["loss"] - self.profile.baseline
                row["error"] = row["delta"] - row["pred_delta"]
            row["bits"] = plan.bits
        return row

    def meta(self) -> dict[str, Any]:
        d = self.data
        return {
            "model": self.model_name,
            "loss": d.kind,
            "eval_tokens": d.n_tokens,
            "eval_source": d.source,
            "seq_len": d.seq_len,
            "stride": d.stride,
            "mode": self.mode,
            "device": str(_model_device(self.model)),
            "original": {k: v for k, v in self.original.items()},
            "profile_baseline": None if self.profile is None else self.profile.baseline,
            "clip_search": self.clip_search,
        }


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
    device: str | None = None,
    progress: bool = True,
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
    (and GPU memory on CUDA) it takes. Each plan's ``measured`` field is filled
    in. Returns a :class:`VerifyReport`."""
    if eval_text is None:
        raise ValueError("eval_text is required: held-out text to measure on")
    v = _Verifier(
        model,
        eval_text,
        tokenizer=tokenizer,
        profile=profile,
        loss=loss,
        seq_len=seq_len,
        stride=stride,
        max_tokens=max_tokens,
        batch_size=batch_size,
        mode=mode,
        clip_search=clip_search,
        device=device,
    )
    named = _named_plans(plans)
    template = v.profile if v.profile is not None else (named[0][1] if named else None)
    if template is None:
        raise ValueError("verify needs plans or a profile (for the uniform baselines)")
    todo: list[tuple[str, str, Plan]] = []
    for b in baselines:
        todo.append((f"uniform-{_bits_name(b)}", "uniform", uniform_plan(template, b, v.profile)))
    if (
        budget_plan
        and hasattr(plans, "best_under")
        and v.profile is not None
        and 4 in v.profile.choices
    ):
        i4 = uniform_plan(v.profile, 4)
        try:
            todo.append(("best_under_int4", "plan", plans.best_under(i4.predicted_bytes)))
        except InfeasibleError:
            pass
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
    bar = _bar(len(todo), progress, "verify")
    plans_out: dict[str, Plan] = {}
    try:
        for name, kind, p in todo:
            m = v.measure(p)
            rows.append(v.row(name, kind, p, m))
            p._data["measured"] = _clean(
                {
                    "loss": m["loss"],
                    "ppl": m.get("ppl"),
                    "bytes": m["bytes"],
                    "loss_kind": v.data.kind,
                    "eval_tokens": v.data.n_tokens,
                    "original_loss": v.original["loss"],
                }
            )
            plans_out[name] = p
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if memory:
        _probe_all(v, rows, plans_out)
    return VerifyReport(rows, v.meta(), plans_out)


def _bar(total, progress, desc):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="plan", leave=False)


# ----------------------------------------------------------------------------
# memory when loaded (a fresh process per plan)
# ----------------------------------------------------------------------------


def _probe_all(v: _Verifier, rows, plans: dict[str, Plan]) -> None:
    from .checkpoint import save_quantized

    dev = str(_model_device(v.model))
    with tempfile.TemporaryDirectory(prefix="empas-mem-") as tmp:
        for r in rows:
            if r["name"] not in plans:
                continue
            d = Path(tmp) / r["name"]
            save_quantized(v.model, plans[r["name"]], d, clip_search=v.clip_search)
            m = probe_memory(d, dev)
            r["rss_mb"] = m["rss_delta"] / 2**20
            r["gpu_mb"] = None if m.get("cuda_bytes") is None else m["cuda_bytes"] / 2**20
            r["loaded_bytes"] = m["weight_bytes"]
            shutil_rm(d)


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def probe_memory(checkpoint: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """Loads a packed checkpoint in a fresh Python process and returns
    ``{"rss_delta": bytes of resident memory the load added, "weight_bytes":
    bytes of the loaded tensors, "cuda_bytes": GPU bytes allocated or None}``."""
    proc = subprocess.run(
        [sys.executable, "-m", "empas._memprobe", str(checkpoint), device],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------
# proxy fidelity
# ----------------------------------------------------------------------------


@dataclass
class FidelityReport:
    """Predicted vs measured over random plans and front plans."""

    spearman: float
    kendall: float
    mae: float  # mean |measured Δ - predicted Δ|
    n: int
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return _clean(
            {
                "spearman": self.spearman,
                "kendall": self.kendall,
                "mae": self.mae,
                "n": self.n,
                "rows": self.rows,
                "meta": self.meta,
            }
        )

    def __str__(self) -> str:
        return (
            f"proxy fidelity over {self.n} plans: Spearman ρ = {self.spearman:.3f}, "
            f"Kendall τ = {self.kendall:.3f}, mean |error| = {self.mae:.4f}"
        )


def random_plans(profile: Profile, n: int, seed: int = 0, include_drop: bool = False) -> list[Plan]:
    """``n`` random plans spread over the size range: each plan draws a mix
    weight t ~ U(0, 1) and each unit takes a choice with probability ∝ exp(-κ·|i -
    t·(k-1)|) over the k sorted choices (so plans go from mostly-2-bit to
    mostly-16-bit). Choice 0 (drop) is left out unless ``include_drop``."""
    rng = np.random.default_rng(seed)
    choices = sorted(c for c in profile.choices if include_drop or c != 0)
    k = len(choices)
    out = []
    for _ in range(n):
        t = rng.uniform(0, 1)
        w = np.exp(-1.5 * np.abs(np.arange(k) - t * (k - 1)))
        w /= w.sum()
        bits = [int(choices[rng.choice(k, p=w)]) for _ in range(profile.n_units)]
        out.append(profile.plan(bits, archetype="random"))
    return out


def _measure_plans(v: _Verifier, plans: list[Plan], progress: bool, desc: str) -> list[dict]:
    out = []
    bar = _bar(len(plans), progress, desc)
    try:
        for p in plans:
            m = v.measure(p)
            out.append(
                {
                    "bits": p.bits,
                    "pred_loss": p.predicted_loss,
                    "pred_delta": p.predicted_loss - v.profile.baseline,
                    "pred_bytes": p.predicted_bytes,
                    "loss": m["loss"],
                    "delta": m["loss"] - v.original["loss"],
                    "bytes": m["bytes"],
                    "archetype": p.archetype,
                }
            )
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def _fid(rows: list[dict]) -> tuple[float, float, float]:
    x = [r["pred_delta"] for r in rows]
    y = [r["delta"] for r in rows]
    mae = float(np.mean(np.abs(np.asarray(y) - np.asarray(x))))
    return spearman(x, y), kendall_tau(x, y), mae


def _verifier(model, eval_text, profile, kw) -> _Verifier:
    if profile is None:
        raise ValueError("a profile is required (predictions come from it)")
    return _Verifier(
        model,
        eval_text,
        tokenizer=kw.get("tokenizer"),
        profile=profile,
        loss=kw.get("loss"),
        seq_len=kw.get("seq_len"),
        stride=kw.get("stride"),
        max_tokens=kw.get("max_tokens"),
        batch_size=kw.get("batch_size", 8),
        mode=kw.get("mode", "fake"),
        clip_search=kw.get("clip_search"),
        device=kw.get("device"),
    )


def fidelity(
    model,
    profile: Profile | str,
    eval_text,
    *,
    n_random: int = 30,
    front=None,
    max_front: int | None = 30,
    seed: int = 0,
    include_drop: bool = False,
    progress: bool = True,
    **kw,
) -> FidelityReport:
    """Rank correlation (Spearman, Kendall) and mean error between predicted and
    measured Δloss over ``n_random`` random plans (:func:`random_plans`) plus the
    plans of ``front`` (a SearchResult or a list of plans; at most ``max_front`` of
    them, evenly spread). Measures with
    ``mode="fake"`` by default (same weights as packed, faster). Extra keywords
    (seq_len, stride, max_tokens, batch_size, tokenizer, device, mode, loss) as
    for :func:`verify`."""
    v = _verifier(model, eval_text, profile, kw)
    plans = random_plans(v.profile, n_random, seed, include_drop)
    fplans = list(front.front) if hasattr(front, "front") else list(front or [])
    if max_front is not None and len(fplans) > max_front:  # evenly spread over the front
        keep = np.unique(np.linspace(0, len(fplans) - 1, max_front).round().astype(int))
        fplans = [fplans[i] for i in keep]
    for p in fplans:
        p.archetype = p.archetype or "front"
    rows = _measure_plans(v, plans + [_as_plan(p) for p in fplans], progress, "fidelity")
    for r in rows[:n_random]:
        r["set"] = "random"
    for r in rows[n_random:]:
        r["set"] = "front"
    rho, tau, mae = _fid(rows)
    return FidelityReport(rho, tau, mae, len(rows), rows, v.meta())


# ----------------------------------------------------------------------------
# refinement: measured archetypes and a corrected proxy
# ----------------------------------------------------------------------------


def _features(profile: Profile, bits: list[int], kind: str) -> np.ndarray:
    """Features of a plan for the corrected proxy: [ΣΔ, 1] (recalibration) or
    [ΣΔ, Σ_neighbours Δ_i·Δ_j, Σ max(Δ_i, 0)², 1] (pairwise interactions of
    adjacent units and a convexity term)."""
    d = profile.delta
    col = {c: j for j, c in enumerate(profile.choices)}
    deltas = np.array([d[u, col[b]] for u, b in enumerate(bits)], dtype=float)
    s = deltas.sum()
    if kind == "recalibrated":
        return np.array([s, 1.0])
    pair = float((deltas[:-1] * deltas[1:]).sum()) if len(deltas) > 1 else 0.0
    sq = float((np.clip(deltas, 0, None) ** 2).sum())
    return np.array([s, pair, sq, 1.0])


@dataclass
class ProxyCorrection:
    """A fitted correction: measured Δ ≈ features · coef (ridge least squares)."""

    kind: str
    coef: list[float]

    def predict(self, profile: Profile, bits: list[int]) -> float:
        return float(_features(profile, bits, self.kind) @ np.asarray(self.coef))


def fit_correction(
    profile: Profile, rows: list[dict], kind: str = "interaction", ridge: float = 1e-6
):
    """Fits a :class:`ProxyCorrection` ("recalibrated" or "interaction") to
    measured rows (``bits`` and ``delta``)."""
    if kind not in ("recalibrated", "interaction"):
        raise ValueError(f"kind must be 'recalibrated' or 'interaction', got {kind!r}")
    X = np.array([_features(profile, r["bits"], kind) for r in rows])
    y = np.array([r["delta"] for r in rows])
    scale = np.maximum(np.abs(X).max(axis=0), 1e-12)
    Xs = X / scale
    coef = np.linalg.solve(Xs.T @ Xs + ridge * np.eye(X.shape[1]), Xs.T @ y) / scale
    return ProxyCorrection(kind, coef.tolist())


@dataclass
class RefineReport:
    """Archetypes picked by measured loss among the front's candidates, and the
    held-out effect of proxy corrections."""

    archetypes: dict[str, Plan]
    measured_front: list[dict[str, Any]]
    corrections: dict[str, dict[str, Any]]  # kind -> {coef, heldout: {spearman, kendall, mae}}
    additive_heldout: dict[str, float]
    meta: dict[str, Any]

    def improved(self, kind: str = "interaction") -> bool:
        """Whether the correction lowers the held-out mean error and keeps ρ."""
        c = self.corrections[kind]["heldout"]
        a = self.additive_heldout
        return c["mae"] < a["mae"] and c["spearman"] >= a["spearman"] - 1e-9

    def to_dict(self) -> dict[str, Any]:
        return _clean(
            {
                "archetypes": {k: p.to_dict() for k, p in self.archetypes.items()},
                "measured_front": self.measured_front,
                "corrections": self.corrections,
                "additive_heldout": self.additive_heldout,
                "meta": self.meta,
            }
        )

    def __str__(self) -> str:
        a = self.additive_heldout
        lines = [
            f"held-out ({self.meta['n_heldout']} plans): additive ρ={a['spearman']:.3f} "
            f"τ={a['kendall']:.3f} |err|={a['mae']:.4f}"
        ]
        for k, c in self.corrections.items():
            h = c["heldout"]
            lines.append(
                f"  {k:<13} ρ={h['spearman']:.3f} τ={h['kendall']:.3f} |err|={h['mae']:.4f} "
                f"({'better' if self.improved(k) else 'not better'})"
            )
        for name, p in self.archetypes.items():
            m = p.measured or {}
            lines.append(
                f"  {name:<16} measured loss {m.get('loss', float('nan')):.4f}, "
                f"{p.predicted_bytes:,} bytes"
            )
        return "\n".join(lines)


def refine(
    model,
    result,
    profile: Profile | str,
    eval_text,
    *,
    top_k: int = 12,
    n_random: int = 30,
    seed: int = 0,
    budget: int | str | None = None,
    progress: bool = True,
    **kw,
) -> RefineReport:
    """Measures ``top_k`` plans of ``result``'s front (evenly spread over its
    bytes, the archetypes always included), re-picks the archetypes by measured
    loss (max_accuracy, balanced knee and max_compression on the measured front;
    best_under_budget when ``budget`` is given), and fits proxy corrections on
    those measurements plus half of ``n_random`` random plans; the other half is
    held out to report whether the corrections improve the rank correlation and
    the error. Extra keywords as for :func:`fidelity`."""
    from ._native import core
    from .sizes import parse_size

    v = _verifier(model, eval_text, profile, kw)
    front = list(result.front)
    if not front:
        raise ValueError("the result's front is empty")
    k = min(top_k, len(front))
    idx = set(np.linspace(0, len(front) - 1, k).round().astype(int).tolist())
    for p in result.archetypes.values():
        for i, q in enumerate(front):
            if q.bits == p.bits:
                idx.add(i)
    cands = [front[i] for i in sorted(idx)]
    crow = _measure_plans(v, cands, progress, "refine")
    rnd = _measure_plans(v, random_plans(v.profile, n_random, seed), progress, "held-out")
    train = crow + rnd[: n_random // 2]
    test = rnd[n_random // 2 :]
    if len(test) < 3:
        raise ValueError("n_random must be >= 6 to hold out at least 3 plans")
    add = dict(zip(("spearman", "kendall", "mae"), _fid(test)))
    corr = {}
    for kind in ("recalibrated", "interaction"):
        c = fit_correction(v.profile, train, kind)
        pred = [c.predict(v.profile, r["bits"]) for r in test]
        y = [r["delta"] for r in test]
        corr[kind] = {
            "coef": c.coef,
            "heldout": {
                "spearman": spearman(pred, y),
                "kendall": kendall_tau(pred, y),
                "mae": float(np.mean(np.abs(np.asarray(pred) - np.asarray(y)))),
            },
        }
    # archetypes on the measured front
    loss = [r["loss"] for r in crow]
    size = [float(r["pred_bytes"]) for r in crow]
    nd = [
        i
        for i in range(len(crow))
        if not any(
            (loss[j] <= loss[i] and size[j] <= size[i]) and (loss[j] < loss[i] or size[j] < size[i])
            for j in range(len(crow))
        )
    ]
    nd.sort(key=lambda i: size[i])
    sel = dict(core().select_archetypes([loss[i] for i in nd], [size[i] for i in nd]))
    arche: dict[str, Plan] = {}
    for name, j in sel.items():
        if j >= 0:
            arche[name] = _pick(cands[nd[j]], crow[nd[j]], name, v)
    if budget is not None:
        b = float(parse_size(budget))
        fit = [i for i in range(len(crow)) if size[i] <= b]
        if fit:
            i = min(fit, key=lambda i: loss[i])
            arche["best_under_budget"] = _pick(cands[i], crow[i], "best_under_budget", v)
    meta = v.meta()
    meta.update({"n_candidates": len(cands), "n_train": len(train), "n_heldout": len(test)})
    return RefineReport(arche, crow, corr, add, meta)


def _pick(plan: Plan, row: dict, name: str, v: _Verifier) -> Plan:
    p = Plan.from_dict(plan.to_dict())
    p.archetype = name
    p._data["measured"] = _clean(
        {
            "loss": row["loss"],
            "bytes": row["bytes"],
            "loss_kind": v.data.kind,
            "eval_tokens": v.data.n_tokens,
            "original_loss": v.original["loss"],
        }
    )
    return p
