"""EMPAS on a real pretrained LLM: SmolLM2-135M-Instruct (dequantized from its Q4_1
GGUF, ``example:smollm2``) profiled on BBC News calibration articles and verified on
held-out BBC articles (split by story, ``example:bbc-news``).

For each (units, loss) asked for:

1. profile at ``--bits`` (+16) on ``--calib-tokens`` calibration tokens;
2. the exact loss-vs-bytes front;
3. ``empas.verify`` in packed mode on ``--eval-tokens`` held-out tokens: uniform fp16,
   int8, int4, int3, int2, the archetypes, and the front's best plan within the bytes
   of uniform int4 and of uniform int3;
4. ``empas.fidelity`` (fake mode: the same weights) over ``--n-random`` random plans
   plus ``--n-front`` front plans: Spearman / Kendall of predicted vs measured Δloss.

Reported: perplexity of every row; for the plans at int3's / int4's bytes, the share
of the uniform -> fp16 perplexity gap they recover (target: >= 50% at int3's bytes),
and ρ (target >= 0.9). The weights come from a Q4_1 file: deltas at >= 4 bits
understate what the fp16 original would show. Prints a table and writes JSON.

    PYTHONPATH=python .venv/bin/python benchmarks/bench_real.py --units sublayer --loss causal_lm
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import empas
from empas.util.io import write_json
from empas.verify import VerifyConfig, best_under_uniform

sys.path.insert(0, str(Path(__file__).parent))
from bench_ops import cpu_model  # noqa: E402  (same folder: one machine probe)

CALIB, EVAL = "example:bbc-news:calib", "example:bbc-news:eval"


def recovered(rows: dict, plan: str, uniform: str) -> float | None:
    """Share of the uniform -> fp16 perplexity gap that ``plan`` closes."""
    if plan not in rows or uniform not in rows:
        return None
    u, f, p = rows[uniform]["ppl"], rows["uniform-fp16"]["ppl"], rows[plan]["ppl"]
    return (u - p) / (u - f) if u > f else None


def run(path, units: str, loss: str, a) -> dict:
    t0 = time.perf_counter()
    prof = empas.profile(
        path,
        CALIB,
        units=units,
        choices=a.bits,
        loss=loss,
        n_tokens=a.calib_tokens,
        seq_len=a.seq_len,
        batch_size=4,
        progress=not a.quiet,
    )
    t_prof = time.perf_counter() - t0
    res = empas.search(prof, method="exact")
    plans = dict(res.archetypes)
    for bits in (4, 3):
        best = best_under_uniform(res, prof, bits)
        if best is not None:
            plans[best.archetype] = best
    cfg = VerifyConfig(seq_len=a.seq_len, max_tokens=a.eval_tokens, budget_plan=False)
    t0 = time.perf_counter()
    rep = empas.verify(path, plans, EVAL, profile=prof, config=cfg, progress=not a.quiet)
    t_ver = time.perf_counter() - t0
    rows = {r["name"]: r for r in rep.rows}
    t0 = time.perf_counter()
    fid = empas.fidelity(
        path,
        prof,
        EVAL,
        n_random=a.n_random,
        front=res,
        max_front=a.n_front,
        config=VerifyConfig(seq_len=a.seq_len, max_tokens=a.eval_tokens, mode="fake"),
        progress=not a.quiet,
    )
    t_fid = time.perf_counter() - t0
    keep = ("loss", "ppl", "bytes", "pred_delta", "delta", "avg_bits")
    return {
        "units": units,
        "loss": loss,
        "n_units": prof.n_units,
        "choices": prof.choices,
        "calib_tokens": prof.meta["calibration"]["tokens"],
        "eval_tokens": rep.meta["eval_tokens"],
        "rows": {k: {f: r.get(f) for f in keep} for k, r in rows.items()},
        "recovered_at_int3_bytes": recovered(rows, "best_under_int3", "uniform-int3"),
        "recovered_at_int4_bytes": recovered(rows, "best_under_int4", "uniform-int4"),
        "fidelity": {"spearman": fid.spearman, "kendall": fid.kendall, "mae": fid.mae, "n": fid.n},
        "seconds": {"profile": t_prof, "verify": t_ver, "fidelity": t_fid},
        "model_source": (prof.meta.get("model") or {}).get("source", {}).get("note"),
    }


def table(r: dict) -> str:
    lines = [
        f"SmolLM2-135M (Q4_1 GGUF) {r['units']} x {r['n_units']}, loss {r['loss']}, "
        f"{r['calib_tokens']:,} calib / {r['eval_tokens']:,} held-out BBC tokens",
        f"{'plan':<22}{'avg bits':>9}{'MiB':>9}{'pred Δ':>9}{'Δ':>9}{'ppl':>12}",
    ]
    for name, d in r["rows"].items():
        ab = "-" if d.get("avg_bits") is None else f"{d['avg_bits']:.2f}"
        pd_ = "-" if d.get("pred_delta") is None else f"{d['pred_delta']:+.3f}"
        ppl = "-" if d.get("ppl") is None else f"{d['ppl']:.4g}"
        lines.append(
            f"{name[:21]:<22}{ab:>9}{d['bytes'] / 2**20:>9.1f}{pd_:>9}{d['delta']:>+9.3f}{ppl:>12}"
        )

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    f = r["fidelity"]
    lines.append(
        f"recovered (perplexity gap to fp16): at int3's bytes {pct(r['recovered_at_int3_bytes'])}"
        f", at int4's bytes {pct(r['recovered_at_int4_bytes'])}; fidelity over {f['n']} plans: "
        f"Spearman {f['spearman']:.3f}, Kendall {f['kendall']:.3f}"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", default="sublayer", help="comma-separated: block,sublayer,linear")
    ap.add_argument("--loss", default="causal_lm", help="comma-separated: causal_lm,kl")
    ap.add_argument("--bits", default="2,3,4,8")
    ap.add_argument("--calib-tokens", type=int, default=1024)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--n-random", type=int, default=12)
    ap.add_argument("--n-front", type=int, default=12)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "real.json"))
    a = ap.parse_args()
    a.bits = [int(b) for b in a.bits.split(",")]
    torch.manual_seed(0)
    path = empas.models.resolve(empas.models.SMOLLM2)
    out = {
        "machine": {
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "os": platform.platform(),
        },
        "torch": torch.__version__,
        "runs": [],
    }
    for units in a.units.split(","):
        for loss in a.loss.split(","):
            r = run(path, units, loss, a)
            out["runs"].append(r)
            print(table(r), flush=True)
            write_json(a.json, out)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
