"""Serving throughput and latency of packed plans vs fp16 over HTTP (empas.serve).

Starts the real plan server (``empas.serve``: FastAPI + uvicorn, in a background
thread of this process, on a free loopback port) on the offline model
``empas.models.tiny_llama()`` with the plans fp16, uniform int8, int4 and int2 (from
``out/tiny-llama/profile.json`` when it profiles this model, else from a quick block
profile; ``--plans DIR`` adds plan files). For each plan, ``--requests`` greedy
requests of ``--max-new-tokens`` tokens on fixed prompts from the held-out corpus
(``empas.models.corpus("eval")``) come from ``--concurrency`` client threads (the
server runs ``--server-concurrency`` generations at once, queues the rest).

Reported per plan: packed weight bytes, aggregate tokens/s (all generated tokens /
wall time of the plan's run), per-request tokens/s (median), client latency p50/p95
and the server's generation time p50, the ratio of aggregate tokens/s to fp16's, and
the count of non-200 answers. Prints a table; writes JSON (``--json``, default
``benchmarks/results/serve.json``).

    PYTHONPATH=python .venv/bin/python benchmarks/bench_serve.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

import empas
from empas.models import corpus, tiny_llama
from empas.serve import Limits, PlanServer, serve_in_thread
from empas.util.io import clean_json as _clean
from empas.verify import uniform_plan

sys.path.insert(0, str(Path(__file__).parent))
from bench_ops import cpu_model  # noqa: E402  (same folder: one machine probe)

PROFILE = Path("out/tiny-llama/profile.json")


def make_plans(path: Path, a) -> dict:
    """fp16 comes from the server; uniform int8/int4/int2 from a profile of the model."""
    prof = None
    if PROFILE.is_file():
        p = empas.load_profile(PROFILE)
        if p.model_name == str(path) and {2, 4, 8} <= set(p.choices):
            prof = p
    if prof is None:
        print("profiling the model (block units, 2/4/8 bits, 1024 tokens)...")
        prof = empas.profile(
            path, corpus("train"), units="block", choices=(2, 4, 8), n_tokens=1024, progress=False
        )
    plans = {f"int{b}": uniform_plan(prof, b) for b in (8, 4, 2)}
    if a.plans:
        for f in sorted(Path(a.plans).glob("*.json")):
            p = empas.load_plan(f)
            plans.setdefault(p.archetype or f.stem, p)
    return plans


def prompts(tokenizer, n: int, max_tokens: int) -> list[str]:
    """n fixed prompts: the opening words of held-out pages, at most max_tokens each."""
    out = []
    for page in corpus("eval"):
        words = " ".join(page.split()).split(" ")
        text = " ".join(words[:40])
        while len(tokenizer(text)["input_ids"]) > max_tokens:
            text = text.rsplit(" ", 1)[0]
        out.append(text)
    return [out[i % len(out)] for i in range(n)]


def load(url: str, plan: str, texts: list[str], concurrency: int, max_new: int) -> dict:
    """``len(texts)`` requests from ``concurrency`` client threads; per-request records."""
    todo = list(enumerate(texts))
    lock = threading.Lock()
    rows: list[dict] = []

    def client():
        with httpx.Client(base_url=url, timeout=300) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    i, text = todo.pop(0)
                body = {"prompt": text, "max_new_tokens": max_new, "plan": plan}
                t0 = time.perf_counter()
                r = c.post("/generate", json=body)
                dt = time.perf_counter() - t0
                row = {"i": i, "status": r.status_code, "client_ms": 1000 * dt}
                if r.status_code == 200:
                    j = r.json()
                    row.update({k: j[k] for k in ("tokens", "latency_ms", "queue_ms")})
                    row["tokens_per_s"] = j["tokens_per_s"]
                with lock:
                    rows.append(row)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in rows if r["status"] == 200]
    tokens = sum(r["tokens"] for r in ok)
    lat = np.array([r["client_ms"] for r in ok])
    return {
        "requests": len(rows),
        "errors": len(rows) - len(ok),
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "per_request_tokens_per_s_median": float(np.median([r["tokens_per_s"] for r in ok])),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "server_ms_p50": float(np.median([r["latency_ms"] for r in ok])),
        "queue_ms_p50": float(np.median([r["queue_ms"] for r in ok])),
        "rows": sorted(rows, key=lambda r: r["i"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=24, help="requests per plan")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads")
    ap.add_argument("--server-concurrency", type=int, default=2, help="generations at once")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--plans", help="a directory of plan files to serve as well")
    ap.add_argument("--quick", action="store_true", help="smoke test: 6 requests of 8 tokens")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "serve.json"))
    a = ap.parse_args()
    if a.quick:
        a.requests, a.max_new_tokens = 6, 8
    path = tiny_llama(verbose=False)
    plans = make_plans(path, a)
    from transformers import AutoModelForCausalLM

    from empas.quant import weight_bytes

    fp32_bytes = weight_bytes(AutoModelForCausalLM.from_pretrained(str(path)))
    t0 = time.perf_counter()
    limits = Limits(
        max_concurrency=a.server_concurrency,
        max_queue=max(8, a.concurrency),
        max_new_tokens=max(256, a.max_new_tokens),
    )
    server = PlanServer(str(path), plans, limits=limits, device="cpu")
    load_s = time.perf_counter() - t0
    names = ["fp16"] + [n for n in server.plan_names if n != "fp16"]
    info = {i["name"]: i for i in server.plans_info()}
    ctx = server.context or 128
    texts = prompts(server.tokenizer, a.requests, ctx - a.max_new_tokens)
    results = {}
    with serve_in_thread(server, port=0, log_level="warning") as bg:
        for name in names:  # warm-up: one request per plan, untimed
            httpx.post(bg.url + "/generate", json={"prompt": texts[0], "plan": name,
                       "max_new_tokens": 4}, timeout=300).raise_for_status()  # fmt: skip
        for name in names:
            r = load(bg.url, name, texts, a.concurrency, a.max_new_tokens)
            r.update(
                packed_bytes=info[name]["packed_bytes"],
                own_bytes=info[name]["own_bytes"],
                avg_bits=info[name]["predicted"]["avg_bits"],
                bits=sorted(set(info[name]["bits"].values())),
            )
            results[name] = r
            print(f"  {name}: {r['tokens_per_s']:.1f} tok/s", flush=True)
        health = httpx.get(bg.url + "/health").json()
    base = results["fp16"]["tokens_per_s"]
    for r in results.values():
        r["vs_fp16"] = r["tokens_per_s"] / base
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "empas": empas.__version__,
        "build": empas.build_info(),
    }
    print(
        f"\n== serving {path.name} over HTTP: {a.requests} requests x {a.max_new_tokens} new tokens "
        f"(greedy) per plan, {a.concurrency} clients, server concurrency {a.server_concurrency}"
    )
    print(f"   {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}")
    head = (
        f"{'plan':<10}{'weights MiB':>12}{'tok/s':>8}{'x fp16':>8}{'req tok/s':>10}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'server p50':>11}{'errors':>7}"
    )
    print(head)
    for name in names:
        r = results[name]
        print(
            f"{name:<10}{r['packed_bytes'] / 2**20:>12.2f}{r['tokens_per_s']:>8.1f}"
            f"{r['vs_fp16']:>8.2f}{r['per_request_tokens_per_s_median']:>10.1f}"
            f"{r['latency_ms_p50']:>9.0f}{r['latency_ms_p95']:>9.0f}{r['server_ms_p50']:>11.0f}"
            f"{r['errors']:>7}"
        )
    print(
        f"all plans held at once: {health['weight_bytes'] / 2**20:.2f} MiB of weights; the fp32 "
        f"model alone: {fp32_bytes / 2**20:.2f} MiB (load + pack {load_s:.1f} s)"
    )
    out = {
        "machine": machine,
        "settings": {**vars(a), "model": str(path), "context": ctx, "limits": health["limits"]},
        "load_s": load_s,
        "weight_bytes_all_plans": health["weight_bytes"],
        "weight_bytes_fp32_model": fp32_bytes,
        "plans": results,
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(_clean(out), indent=2) + "\n")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
