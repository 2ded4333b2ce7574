"""Profiling wall time with and without the block-input cache, in one run.

Profiles the offline Llama-architecture model (16 blocks by default, trained and
cached by ``empas.models.tiny_llama``) on the same calibration tokens twice per
repeat: once running every experiment from its own block on cached block
inputs (``cache=True``), once from the embedding (``cache=False``), and times
one full forward pass over the calibration tokens. Checks that both give the
same table. Prints a table and writes JSON (``--json``).

    PYTHONPATH=python .venv/bin/python benchmarks/bench_profile.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import empas
from empas.models import corpus, tiny_llama

sys.path.insert(0, str(Path(__file__).parent))
from bench_ops import cpu_model  # noqa: E402  (same folder: one machine probe)

MODEL = dict(n_layers=16, hidden=256, intermediate=688, heads=8, kv_heads=4, vocab=2048, steps=200)


def full_forward_seconds(path, windows, batch_size, repeats) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    batches = [windows[i : i + batch_size] for i in range(0, windows.shape[0], batch_size)]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                model(input_ids=b, use_cache=False)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: fewer tokens, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "profile.json"))
    a = ap.parse_args()
    if a.quick:
        a.repeats, a.n_tokens = 1, 1024
    choices = (2, 4, 8)

    path = tiny_llama(**MODEL)
    info = json.loads((path / "empas_training.json").read_text())
    texts = corpus("train")
    kw = dict(units="block", choices=choices, n_tokens=a.n_tokens, seq_len=a.seq_len)
    kw.update(batch_size=a.batch_size, progress=False)

    runs = {True: [], False: []}
    tables = {}
    for _ in range(a.repeats):
        for cache in (True, False):  # interleaved: both see the same machine state
            p = empas.profile(path, texts, cache=cache, **kw)
            runs[cache].append(p.meta["timings"])
            tables[cache] = p.delta
    t = time.perf_counter()
    est = empas.estimate_sensitivity(
        path, texts, **{k: v for k, v in kw.items() if k != "progress"}
    )
    fisher_s = time.perf_counter() - t
    rho = empas.rank_correlation(p, est)
    same = bool(np.allclose(tables[True], tables[False], rtol=0, atol=1e-5))
    max_diff = float(np.max(np.abs(tables[True] - tables[False])))

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    from empas.profile.calibration import calibration_tokens as _calibration_tokens

    windows, _ = _calibration_tokens(texts, tok, a.seq_len, a.n_tokens, 0)
    fwd = full_forward_seconds(path, windows, a.batch_size, max(3, a.repeats))

    def med(cache, key):
        return statistics.median(r[key] for r in runs[cache])

    exp_c, exp_n = med(True, "experiments_s"), med(False, "experiments_s")
    per_c, per_n = med(True, "per_experiment_s"), med(False, "per_experiment_s")
    n_blocks = MODEL["n_layers"]
    result = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "device": "cpu",
        },
        "model": {"path": str(path), "params": info["params"], "blocks": n_blocks, **MODEL},
        "calibration": {"tokens": int(windows.numel()), "seq_len": a.seq_len},
        "experiments": n_blocks * (len(choices) + 1),
        "repeats": a.repeats,
        "cached": {
            "experiments_s": exp_c,
            "per_experiment_s": per_c,
            "baseline_s": med(True, "baseline_s"),
        },
        "uncached": {
            "experiments_s": exp_n,
            "per_experiment_s": per_n,
            "baseline_s": med(False, "baseline_s"),
        },
        "full_forward_s": fwd,
        "speedup_cache": exp_n / exp_c,
        "per_experiment_over_forward": {"cached": per_c / fwd, "uncached": per_n / fwd},
        "ideal_speedup_blocks_only": 2 * n_blocks / (n_blocks + 1),
        "fisher_estimate": {"seconds": fisher_s, "spearman_vs_measured": rho},
        "same_table": same,
        "max_abs_diff": max_diff,
        "target": {"speedup_cache": 1.7, "pass": exp_n / exp_c >= 1.7},
    }
    print(
        f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(
        f"model: {n_blocks}-block Llama, {info['params'] / 1e6:.2f}M params; "
        f"{windows.numel()} calibration tokens (seq_len {a.seq_len}); "
        f"{result['experiments']} experiments; median of {a.repeats} runs"
    )
    print(f"{'':<22}{'all experiments s':>18}{'per experiment s':>18}{'/ full forward':>16}")
    for name, c in (("cache (from block)", True), ("no cache (from emb)", False)):
        e, p = (exp_c, per_c) if c else (exp_n, per_n)
        print(f"{name:<22}{e:>18.3f}{p:>18.4f}{p / fwd:>16.2f}")
    print(f"one full forward pass over the calibration tokens: {fwd:.4f} s")
    print(
        f"speedup from the cache: {exp_n / exp_c:.2f}x (target >= 1.7x: "
        f"{'PASS' if result['target']['pass'] else 'FAIL'}; blocks-only bound "
        f"{result['ideal_speedup_blocks_only']:.2f}x); same table: {same} "
        f"(max |diff| {max_diff:.2e})"
    )
    print(
        f"Fisher estimate (one backward pass per batch): {fisher_s:.2f} s; Spearman rank "
        f"correlation with the measured table (2/4/8 bits): {rho:.3f}"
    )
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
