"""Proxy-only vs noise-aware table vs the measure-and-correct loop, on a real LLM.

For each given profile of SmolLM2-135M-Instruct (``example:smollm2``, dequantized
from its Q4_1 GGUF; profiles made with ``empas profile`` on BBC News calibration
articles), at the bytes of uniform int3 and of uniform int4:

* ``proxy``: the exact front's best plan on the raw measured table;
* ``monotone``: the same on the noise-aware monotone table (``empas.fit_table``,
  the search's default);
* ``measured``: ``empas.search_measured`` (candidates measured on
  ``--selection-tokens`` calibration tokens the profile did not use, proxy
  corrected, at most ``--max-measurements`` plans);

and the uniform plans, all measured in packed mode on held-out text of two sources
the profile never saw: the Python reference manual's evaluation pages (another
source than the news calibration) and held-out BBC articles (same source, other
stories). Each plan's loss difference to uniform at the same bytes is reported
with its standard error over evaluation windows (paired, same tokens), and the
share of the uniform -> fp16 perplexity gap it recovers. Forward-pass cost:
tokens the profile ran through blocks (each experiment from its own block on) and
tokens the loop measured.

    PYTHONPATH=python .venv/bin/python benchmarks/bench_measured.py \\
        --profiles out/val/p1024_s0.json,out/val/p4096_s7.json
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import empas
from empas.util.io import write_json
from empas.verify import uniform_plan

sys.path.insert(0, str(Path(__file__).parent))
from bench_ops import cpu_model  # noqa: E402  (same folder: one machine probe)

CALIB = "example:bbc-news:calib"
EVALS = {"python-docs": None, "bbc-news": "example:bbc-news:eval"}


def eval_windows(tok, source, n_tokens: int, seq_len: int) -> torch.Tensor:
    from empas.models.text import encode_stream, texts_from

    if source is None:
        texts = empas.models.corpus("eval")
    else:
        texts, _ = texts_from(source, "eval text")
    ids = encode_stream(texts, tok)[: n_tokens - n_tokens % seq_len]
    return ids.view(-1, seq_len)


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch: int = 4) -> np.ndarray:
    """Mean next-token NLL of every window."""
    out = []
    for i in range(0, windows.shape[0], batch):
        ids = windows[i : i + batch]
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        ).view(ids.shape[0], -1)
        out.extend(nll.mean(dim=1).tolist())
    return np.array(out)


def profile_tokens(prof) -> int:
    """Tokens x blocks the profile's experiments ran (each from its own block on),
    in units of full forward passes over its calibration tokens."""
    n_blocks = (prof.meta.get("model") or {}).get("n_blocks") or prof.n_units
    toks = (prof.meta.get("calibration") or {}).get("tokens", 0)
    est = set(((prof.meta.get("source") or {}).get("estimated") or {}).get("choices", []))
    runs = 0.0
    for name in prof.unit_names:
        digits = [int(x) for x in name.split(".") if x.isdigit()]
        start = digits[0] if digits else 0
        frac = (n_blocks - start) / n_blocks
        runs += frac * sum(1 for c in prof.choices if c not in est)
    return int(round(runs * toks))


def run(path: str, a, model_path, model, tok) -> dict:
    t0 = time.perf_counter()
    prof = empas.load_profile(path)
    n = prof.n_units
    budgets = {b: uniform_plan(prof, b).predicted_bytes for b in (3, 4)}
    plans = {f"uniform-int{b}": uniform_plan(prof, b) for b in (3, 4)}
    for b, B in budgets.items():
        plans[f"proxy@int{b}"] = empas.search(prof, method="exact", table="raw").best_under(B)
        plans[f"monotone@int{b}"] = empas.search(prof, method="exact").best_under(B)
    tm = time.perf_counter()
    ms = empas.search_measured(
        model_path,
        prof,
        CALIB,
        budgets=list(budgets.values()),
        selection_tokens=a.selection_tokens,
        max_measurements=a.max_measurements,
        tokenizer=tok,
        checkpoint=Path(path).with_suffix(".measured.json"),
        progress=not a.quiet,
    )
    loop_s = time.perf_counter() - tm
    for b, B in budgets.items():
        plans[f"measured@int{b}"] = ms.recommended[f"best_under_{B}"]
    evals = {}
    for ename, src in EVALS.items():
        w = eval_windows(tok, src, a.eval_tokens, a.seq_len)
        base = window_nll(model, w)
        rows = {"uniform-fp16": {"loss": float(base.mean()), "ppl": math.exp(base.mean())}}
        per = {}
        for name, p in plans.items():
            with empas.applied(model, p, "packed"):
                per[name] = window_nll(model, w)
            rows[name] = {
                "loss": float(per[name].mean()),
                "ppl": math.exp(per[name].mean()),
                "bytes": int(p.predicted_bytes),
                "bits": p.bits,
            }
        for name in plans:
            if name.startswith("uniform"):
                continue
            b = int(name.rsplit("int", 1)[1])
            d = per[name] - per[f"uniform-int{b}"]
            u, f, q = rows[f"uniform-int{b}"]["ppl"], rows["uniform-fp16"]["ppl"], rows[name]["ppl"]
            rows[name].update(
                {
                    "vs_uniform": float(d.mean()),
                    "vs_uniform_se": float(d.std(ddof=1) / math.sqrt(d.size)),
                    "gap_recovered": (u - q) / (u - f) if u > f else None,
                }
            )
        evals[ename] = {"tokens": int(w.numel()), "windows": int(w.shape[0]), "rows": rows}
    calib = prof.meta.get("calibration") or {}
    return {
        "profile": path,
        "units": n,
        "unit_kind": prof.units[0].kind,
        "choices": prof.choices,
        "calib_tokens": calib.get("tokens"),
        "budgets": budgets,
        "forward_tokens": {
            "profile": profile_tokens(prof),
            "loop": ms.budget["measurements"] * ms.meta["selection_tokens"],
        },
        "loop": {
            "measurements": ms.budget["measurements"],
            "rounds": len(ms.rounds),
            "correction": ms.correction,
            "seconds": loop_s,
            "measured": ms.measurements,
        },
        "evals": evals,
        "seconds": time.perf_counter() - t0,
    }


def table(out: dict) -> str:
    lines = []
    for r in out["runs"]:
        lines.append(
            f"\n{r['profile']}: {r['units']} {r['unit_kind']} units, {r['calib_tokens']:,} calib "
            f"tokens; forward tokens: profile {r['forward_tokens']['profile']:,}, loop "
            f"{r['forward_tokens']['loop']:,} ({r['loop']['measurements']} plans); loop "
            f"LOO |err| proxy {r['loop']['correction']['loo_mae_proxy']:.3f} -> corrected "
            f"{r['loop']['correction']['loo_mae_corrected']:.3f}"
        )
        for ename, e in r["evals"].items():
            rows = e["rows"]
            lines.append(
                f"  {ename} ({e['tokens']:,} tokens): fp16 ppl {rows['uniform-fp16']['ppl']:.2f}"
            )
            lines.append(
                f"    {'plan':<16}{'ppl':>9}{'Δ vs uniform':>16}{'± se':>9}{'gap rec.':>10}"
            )
            for name, row in rows.items():
                if name == "uniform-fp16":
                    continue
                vs = row.get("vs_uniform")
                g = row.get("gap_recovered")
                lines.append(
                    f"    {name:<16}{row['ppl']:>9.2f}"
                    + (f"{vs:>+16.4f}{row['vs_uniform_se']:>9.4f}" if vs is not None else " " * 25)
                    + (f"{100 * g:>9.1f}%" if g is not None else "")
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", required=True, help="comma-separated profile JSON files")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--selection-tokens", type=int, default=2048)
    ap.add_argument("--max-measurements", type=int, default=16)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "measured.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    path = empas.models.resolve(empas.models.SMOLLM2, verbose=not a.quiet)
    model, tok, _, _ = empas.models.load_model(path, "cpu", None)
    model.eval()
    out = {
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(), **_plat()},
        "model": "example:smollm2 (SmolLM2-135M-Instruct, dequantized Q4_1 GGUF)",
        "settings": vars(a),
        "runs": [],
    }
    for p in a.profiles.split(","):
        out["runs"].append(run(p.strip(), a, path, model, tok))
        write_json(a.json, out)
    print(table(out))
    print(f"\nwrote {a.json}")


def _plat() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__}


if __name__ == "__main__":
    main()
