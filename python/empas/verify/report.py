"""The verify report (``empas.verify/1``): measured vs predicted, one row per
plan, with the honesty check; written by :meth:`VerifyReport.save` and read back
by :meth:`VerifyReport.load`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..plan import Plan
from ..util.io import atomic_write_bytes, clean_json, read_json, write_json

__all__ = ["VERIFY_FORMAT", "VerifyReport", "write_json"]

VERIFY_FORMAT = "empas.verify/1"

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
    "pred_latency",
    "decode_tok_s",
    "prefill_tok_s",
]


class VerifyReport:
    """Measured vs predicted, one row per plan (see :data:`rows`)."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        meta: dict[str, Any],
        plans: dict[str, Plan],
        extra: dict[str, Any] | None = None,
    ):
        self.rows = rows
        self.meta = meta
        self.plans = plans
        self.extra = dict(extra or {})  # sections a loaded file had besides meta and rows

    # -- reading ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: Any, where: str = "verify report") -> VerifyReport:
        """Validates an ``empas.verify/1`` document; FormatError naming ``where``
        and the field. The plans themselves are not stored (rows carry their bits):
        ``plans`` is empty; ``extra`` holds the honesty and fidelity sections."""
        if not isinstance(doc, dict):
            raise FormatError(f"{where}: expected a JSON object ({VERIFY_FORMAT})")
        fmt = doc.get("format")
        if fmt != VERIFY_FORMAT:
            raise FormatError(
                f"{where}: not an EMPAS verify report (format {fmt!r}, expected {VERIFY_FORMAT!r})"
            )
        rows = doc.get("rows")
        if not isinstance(rows, list) or not rows:
            raise FormatError(f"{where}: 'rows' must be a non-empty list")
        meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
        clean = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("name"), str):
                raise FormatError(f"{where}: rows[{i}] must be an object with a 'name'")
            name = row["name"]
            loss = row.get("loss")
            if not isinstance(loss, (int, float)) or isinstance(loss, bool):
                raise FormatError(f"{where}: row {name!r} has no numeric 'loss'")
            bits = row.get("bits")
            if bits is not None:
                if not isinstance(bits, list) or not all(
                    isinstance(b, int) and not isinstance(b, bool) for b in bits
                ):
                    raise FormatError(f"{where}: row {name!r}: 'bits' must be a list of integers")
                bits = [int(b) for b in bits]
            clean.append({**row, "bits": bits})
        extra = {k: v for k, v in doc.items() if k not in ("format", "meta", "rows")}
        return cls(clean, meta, {}, extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> VerifyReport:
        """Reads ``verify.json`` (what ``empas verify -o`` and ``empas demo`` write)."""
        path = Path(path)
        return cls.from_dict(read_json(path, "verify report", FormatError), str(path))

    @property
    def honesty_check(self) -> dict[str, Any] | None:
        """The honesty section: computed when the rows allow it, else as loaded."""
        if {"uniform-int4", "uniform-fp16", "best_under_int4"} <= {r["name"] for r in self.rows}:
            return self.honesty("best_under_int4")
        return self.extra.get("honesty")

    def row(self, name: str) -> dict[str, Any]:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r['name'] for r in self.rows]}")

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([{k: r.get(k) for k in _COLUMNS} for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        return {"format": VERIFY_FORMAT, "meta": self.meta, "rows": self.rows}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(clean_json(self.to_dict()), indent=indent, allow_nan=False)

    def document(self, **extra: Any) -> dict[str, Any]:
        """to_dict() plus the honesty check (when the report holds uniform-fp16,
        uniform-int4 and best_under_int4) and ``extra`` sections: what ``empas verify``
        and ``empas demo`` write as verify.json."""
        doc = self.to_dict()
        doc.update({k: v for k, v in self.extra.items() if k != "honesty"})
        honesty = self.honesty_check
        if honesty is not None:
            doc["honesty"] = honesty
        doc.update(extra)
        return doc

    def save_plot(self, path: str | os.PathLike) -> Path:
        """Writes :meth:`plot` as an image (PNG by the suffix) and closes the figure."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        ax = self.plot()
        try:
            return atomic_write_bytes(
                path,
                lambda f: ax.figure.savefig(f, dpi=120, bbox_inches="tight", format=_fmt(path)),
            )
        finally:
            plt.close(ax.figure)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes :meth:`document` (rows, meta, the honesty check) atomically."""
        return write_json(path, self.document())

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
        speed = self.extra.get("speed")
        if speed is not None:
            lines.append("")
            lines.append(self.speed_table())
        m = self.meta
        lines.append(
            f"loss: {m['loss']} on {m['eval_tokens']:,} held-out tokens ({m['eval_source']}), "
            f"seq_len {m['seq_len']}, stride {m['stride']}; mode {m['mode']}; {m['device']}"
        )
        return "\n".join(lines)

    __str__ = table

    def speed_table(self) -> str:
        """Decode and prefill speed per row (``verify(speed=True)``), predicted
        latency and the rank correlations."""
        sp = self.extra.get("speed")
        if sp is None:
            raise ValueError("the report has no speed measurements (verify with speed=True)")

        def f(v, fmt):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        head = (
            f"{'plan':<22}{'decode tok/s':>13}{'ms/token':>10}{'prefill tok/s':>15}"
            f"{'ms/token':>10}{'pred latency':>14}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            if r.get("decode_tok_s") is None:
                continue
            lines.append(
                f"{r['name'][:21]:<22}{f(r.get('decode_tok_s'), '.1f'):>13}"
                f"{f(r.get('decode_ms_per_token'), '.3f'):>10}"
                f"{f(r.get('prefill_tok_s'), '.1f'):>15}"
                f"{f(r.get('prefill_ms_per_token'), '.4f'):>10}"
                f"{f(r.get('pred_latency'), '.4f'):>14}"
            )
        lines.append(
            f"speed: packed, batch 1; decode {sp['new_tokens']} greedy tokens after a "
            f"{sp['prompt_tokens']}-token prompt, prefill {sp['prefill_tokens']} tokens; median "
            f"of {sp['repeats']} interleaved rounds; {sp.get('torch_threads')} torch threads"
        )
        if sp.get("n_compared", 0) >= 3:
            lines.append(
                f"predicted latency (sum of the profile's per-unit cells) vs measured, Spearman "
                f"over {sp['n_compared']} plans: decode {f(sp.get('spearman_decode'), '.3f')}, "
                f"prefill {f(sp.get('spearman_prefill'), '.3f')}"
            )
        else:
            lines.append(
                "no rank correlation: fewer than 3 plans with a predicted latency (a profile "
                "with a latency table: empas latency)"
            )
        return "\n".join(lines)

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


def _fmt(path: str | os.PathLike) -> str:
    """The image format matplotlib would infer from the suffix (PNG without one)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix or "png"
