"""Profiling wall time with and without the block-input cache, in one run.

Profiles the offline Llama-architecture model (16 blocks by default, trained and
cached by ``empas.models.tiny_llama``) on the same calibration tokens twice per
repeat: once running every experiment from its own block on cached block
inputs (``cache=True``), once from the embedding (``cache=False``), and times
one full forward pass over the calibration tokens. Checks that both give the
same table. Prints a table and writes JSON (``--json``).

    PYTHONPATH=python .venv/bin/python benchmarks/bench_profile.py [--quick]

``--ranks``: 1 process vs ``torchrun --nproc_per_node 2`` (gloo, one torch thread
per process, so each rank has a core of its own) on a model with >= 12 blocks
(``--ranks-model``, default ``example:smollm2``, 30 blocks): wall time, speedup,
identical tables, and ``empas.profile_cost``'s projected time against the measured
one. Writes ``results/profile_ranks.json``.

    PYTHONPATH=python .venv/bin/python benchmarks/bench_profile.py --ranks [--repeats 3]

``--streaming``: instead, streamed (``stream=True``: weights read block by block
from the model's .safetensors files, one sweep for all experiments) against
resident profiling of ``--stream-model`` (default example:smollm2), each run in a
fresh subprocess: wall time, growth of the peak resident memory (VmHWM) during
the profile call, the streamed run's peak bytes of weights and hidden states, and
whether the tables are identical. Writes results/profile_streaming.json.

    PYTHONPATH=python .venv/bin/python benchmarks/bench_profile.py --streaming
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
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


# -- 1 vs 2 ranks (--ranks) ---------------------------------------------------------

RANKS_JSON = Path(__file__).parent / "results" / "profile_ranks.json"


def _ranks_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(empas.__file__).resolve().parents[1])]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # one torch thread per process: a rank per core
    return env


def _ranks_run(n: int, model: str, args: list[str], out: Path) -> dict:
    """One profile by ``empas profile`` in ``n`` processes (torchrun when n > 1):
    the process wall time, and the profile's own timings (measurement only)."""
    ck = out.with_suffix(".ck.json")
    for p in out.parent.glob(out.stem + ".*"):
        p.unlink()
    prof = ["-m", "empas", "profile", model, "-o", str(out), "--quiet", *args]
    if n == 1:
        cmd = [sys.executable, *prof]
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        cmd = [*torchrun, "--standalone", "--nproc_per_node", str(n), *prof]
    cmd += ["--checkpoint", str(ck)]  # the ranks' checkpoints are written as in real use
    t = time.perf_counter()
    r = subprocess.run(cmd, env=_ranks_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    p = empas.load_profile(out)
    t = p.meta["timings"]
    d = p.meta["source"].get("distributed")
    return {
        "command": shlex.join(["OMP_NUM_THREADS=1", *cmd]),
        "process_wall_s": round(wall, 3),
        "profile_total_s": t["total_s"],
        "baseline_s": t["baseline_s"],
        "experiments": t["experiments"],
        "ranks": d["ranks"] if d else None,
        "delta": p.delta,
        "stderr": p.stderr,
    }


def ranks_main(a) -> int:
    """1 process vs ``torchrun --nproc_per_node 2``, interleaved ``a.repeats`` times."""
    torch.set_num_threads(1)  # the projection's micro-benchmark: one thread, as each rank
    model = a.ranks_model
    bits = "2" if a.quick else "2,4"
    n_tokens = 128 if a.quick else a.n_tokens
    args = ["--bits", bits, "--units", "block", "--n-tokens", str(n_tokens)]
    args += ["--seq-len", str(a.seq_len), "--batch-size", str(a.batch_size)]
    load_before = os.getloadavg()
    est = empas.profile_cost(
        empas.models.resolve(model) if model.startswith("example:") else model,
        units="block",
        choices=[int(b) for b in bits.split(",")],
        n_tokens=n_tokens,
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        ranks=(1, 2),
        repeats=3,
    )
    if est.n_blocks < 12:
        print(f"note: {model} has {est.n_blocks} blocks; the issue's target is for >= 12")
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="empas-ranks-") as tmp:
        for _ in range(a.repeats):
            for n in (1, 2):  # interleaved: both see the same machine state
                runs[n].append(_ranks_run(n, model, args, Path(tmp) / f"r{n}.json"))
    load_after = os.getloadavg()
    d1, d2 = runs[1][-1], runs[2][-1]
    same = bool(
        np.array_equal(d1["delta"], d2["delta"], equal_nan=True)
        and np.array_equal(d1["stderr"], d2["stderr"], equal_nan=True)
    )
    med = {n: {k: statistics.median(r[k] for r in runs[n]) for k in ("process_wall_s",
           "profile_total_s")} for n in (1, 2)}  # fmt: skip
    speedup = med[1]["profile_total_s"] / med[2]["profile_total_s"]
    speedup_wall = med[1]["process_wall_s"] / med[2]["process_wall_s"]
    proj = {r["ranks"]: r["time_s"] for r in est.per_ranks}
    projection = [
        {
            "ranks": n,
            "predicted_s": proj[n],
            "measured_s": med[n]["profile_total_s"],
            "measured_over_predicted": round(med[n]["profile_total_s"] / proj[n], 3),
        }
        for n in (1, 2)
    ]
    result = {
        "benchmark": "empas.bench_profile.ranks/1",
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            "torch_threads_per_process": 1,
            "cores_split": "1 process x 1 thread vs 2 ranks x 1 thread (the OS places them; "
            "no pinning)",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
        },
        "model": {"name": model, "blocks": est.n_blocks, "params": est.params, "dtype": est.dtype},
        "settings": {
            "units": "block",
            "bits": bits,
            "n_tokens": n_tokens,
            "seq_len": a.seq_len,
            "batch_size": a.batch_size,
            "cells": est.cells,
        },  # fmt: skip
        "repeats": a.repeats,
        "runs": {
            str(n): [{k: v for k, v in r.items() if k not in ("delta", "stderr")} for r in runs[n]]
            for n in (1, 2)
        },  # fmt: skip
        "median": {str(n): med[n] for n in (1, 2)},
        "speedup_profile": round(speedup, 3),
        "speedup_process_wall": round(speedup_wall, 3),
        "same_table": same,
        "projection": {
            "micro_benchmark": est.bench,
            "rows": projection,
            "note": "profile_cost(benchmark=True) on this machine, 1 torch thread, before the runs",
        },
        "target": {"speedup_2_ranks": 1.8, "pass": speedup >= 1.8},
    }
    print(
        f"machine: {result['machine']['cpu']}, {os.cpu_count()} cores; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)"
    )
    print(
        f"model: {model}, {est.n_blocks} blocks, {est.params / 1e6:.1f}M params ({est.dtype}); "
        f"{est.cells} cells (block units, bits {bits} + 16), {est.n_tokens} tokens "
        f"(seq_len {a.seq_len}); 1 torch thread per process; median of {a.repeats}"
    )
    print(f"{'':<24}{'profile s':>12}{'process wall s':>16}{'projected s':>13}{'meas/proj':>11}")
    for n in (1, 2):
        name = "1 process" if n == 1 else "torchrun 2 ranks (gloo)"
        print(
            f"{name:<24}{med[n]['profile_total_s']:>12.2f}{med[n]['process_wall_s']:>16.2f}"
            f"{proj[n]:>13.2f}{projection[n - 1]['measured_over_predicted']:>11.2f}"
        )
    if runs[2][-1]["ranks"]:
        for r in runs[2][-1]["ranks"]:
            print(
                f"  rank {r['rank']}: {r['n_cells']} cells, {r['cost_blocks']} block passes, "
                f"{r['experiments_s']:.2f} s of experiments"
            )
    print(
        f"speedup (profile time, without imports and model load): {speedup:.2f}x (target >= "
        f"1.8x: {'PASS' if result['target']['pass'] else 'FAIL'}); process wall {speedup_wall:.2f}x;"
        f" same table: {same}"
    )
    out = Path(a.json if a.json != str(DEFAULT_JSON) else RANKS_JSON)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"JSON: {out}")
    if not same:
        print("error: the 2-rank table differs from the 1-process table", file=sys.stderr)
        return 1
    return 0


DEFAULT_JSON = Path(__file__).parent / "results" / "profile.json"


# One profile in a fresh process: prints {"seconds", "hwm_growth", "delta", ...} as JSON.
STREAM_CHILD = textwrap.dedent(
    """
    import json, sys, time, torch, empas

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(key)

    path, calib, stream = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    kw = json.loads(sys.argv[4])
    # warm-up: imports and first calls, on 8 tokens, streamed (reads one block at a time)
    empas.profile(path, calib, stream=True, choices=(4,), n_tokens=8, seq_len=8, progress=False)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := the resident memory now
    before = status("VmHWM")
    t = time.perf_counter()
    p = empas.profile(path, calib, stream=stream, progress=False, **kw)
    seconds = time.perf_counter() - t
    print(json.dumps({
        "seconds": seconds, "hwm_before": before, "hwm_growth": status("VmHWM") - before,
        "delta": p.delta.tolist(), "baseline": p.baseline, "timings": p.meta["timings"],
        "stream": p.meta["source"].get("stream"), "params": p.meta["model"]["params"],
        "source": p.meta["model"].get("source"),
    }))
    """
)


def streaming(a) -> int:
    """Streamed vs resident profile of one model, each in its own process."""
    from empas.models import default_text, resolve

    path = resolve(a.stream_model)
    calib = default_text(a.stream_model, "calib") or corpus("train")
    if not isinstance(calib, str):
        tmp = Path(a.stream_json).with_suffix(".calib.txt")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("\n\n".join(calib))
        calib = str(tmp)
    kw = dict(units="block", choices=(4,), n_tokens=a.n_tokens, seq_len=a.seq_len)
    kw["batch_size"] = a.batch_size
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # freed tensors leave the RSS
    env["PYTHONPATH"] = str(Path(empas.__file__).parent.parent)
    runs = {"resident": [], "stream": []}
    for _ in range(a.repeats):
        for mode in ("stream", "resident"):  # interleaved: both see the same machine state
            r = subprocess.run(
                [sys.executable, "-c", STREAM_CHILD, str(path), calib, str(int(mode == "stream"))]
                + [json.dumps(kw)],
                capture_output=True,
                text=True,
                env=env,
            )
            if r.returncode != 0:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            runs[mode].append(json.loads(r.stdout.strip().splitlines()[-1]))
    res, st = runs["resident"], runs["stream"]
    same = all(np.array_equal(x["delta"], y["delta"]) for x in res for y in st)
    max_diff = max(
        float(np.max(np.abs(np.asarray(x["delta"]) - np.asarray(y["delta"]))))
        for x in res
        for y in st
    )
    info = st[0]["stream"]
    n_exp = st[0]["timings"]["experiments"]
    load = os.getloadavg()

    def med(rs, key):
        return statistics.median(r[key] for r in rs)

    result = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1_5_15": [round(x, 2) for x in load],
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "device": "cpu",
        },
        "model": {
            "name": a.stream_model,
            "path": str(path),
            "params": st[0]["params"],
            "weights_from": st[0]["source"],
        },
        "settings": kw,
        "experiments": n_exp,
        "repeats": a.repeats,
        "resident": {
            "seconds": med(res, "seconds"),
            "peak_rss_growth_bytes": med(res, "hwm_growth"),
        },
        "stream": {
            "seconds": med(st, "seconds"),
            "peak_rss_growth_bytes": med(st, "hwm_growth"),
            "weights_peak_bytes": info["weights_peak_bytes"],
            "states_peak_bytes": info["states_peak_bytes"],
            "sweeps": info["sweeps"],
        },
        "same_table": same,
        "max_abs_diff": max_diff,
        "note": "seconds: the empas.profile call, model loading included; peak_rss_growth: "
        "VmHWM after the call minus the resident memory before it (after a warm-up); "
        "weights_peak_bytes: parameters materialized at once by the streamed run",
    }
    mib = 2**20
    print(
        f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )
    print(
        f"model: {a.stream_model} ({st[0]['params'] / 1e6:.1f}M params"
        + (", weights dequantized from a quantized GGUF file" if st[0]["source"] else "")
        + f"); {n_exp} experiments (block units, 4 bits + fp16), {a.n_tokens} tokens "
        f"(seq_len {a.seq_len}); median of {a.repeats}"
    )
    print(f"{'':<10}{'profile s':>12}{'peak RSS growth MiB':>22}{'weights peak MiB':>18}")
    r, s = result["resident"], result["stream"]
    print(f"{'resident':<10}{r['seconds']:>12.2f}{r['peak_rss_growth_bytes'] / mib:>22.1f}{'':>18}")
    print(
        f"{'stream':<10}{s['seconds']:>12.2f}{s['peak_rss_growth_bytes'] / mib:>22.1f}"
        f"{s['weights_peak_bytes'] / mib:>18.1f}"
    )
    print(
        f"hidden states in flight (streamed): {s['states_peak_bytes'] / mib:.1f} MiB; "
        f"identical tables: {same} (max |diff| {max_diff:.1e})"
    )
    out = Path(a.stream_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"JSON: {out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: fewer tokens, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (--ranks: 1)")
    ap.add_argument("--n-tokens", type=int, default=None, help="default 4096 (--ranks: 256)")
    ap.add_argument("--seq-len", type=int, default=None, help="default 128 (--ranks: 64)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="(--ranks: profile_ranks.json)")
    ap.add_argument("--ranks", action="store_true", help="1 process vs 2 torchrun ranks")
    ap.add_argument("--ranks-model", default="example:smollm2", help="--ranks: the model")
    ap.add_argument(
        "--streaming",
        action="store_true",
        help="only the streamed-vs-resident section (peak memory, time, identical tables)",
    )
    ap.add_argument("--stream-model", default="example:smollm2", help="--streaming: the model")
    ap.add_argument(
        "--stream-json",
        default=str(Path(__file__).parent / "results" / "profile_streaming.json"),
    )
    a = ap.parse_args()
    if a.ranks:
        a.repeats = a.repeats or 1
        a.n_tokens = a.n_tokens or 256
        a.seq_len = a.seq_len or 64
        return ranks_main(a)
    a.repeats = a.repeats or 3
    a.n_tokens = a.n_tokens or 4096
    a.seq_len = a.seq_len or 128
    if a.streaming:
        if a.quick:
            a.repeats, a.n_tokens = 1, 256
        return streaming(a)
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
