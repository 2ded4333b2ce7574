"""Where one greedy decode step of SmolLM2-135M spends its time (torch.profiler,
CPU): the packed linears' op, the dense tied head (``aten::mm``), and the rest,
for packed int4 (rest bf16) with exact or int8 activations, with the tied
embedding + head packed at 8 bits too (``+h8``: the head then runs the packed op)
and for the dense bf16 model. Explains why the end-to-end decode speedup of bench_matmul.py --decode is
smaller than the per-linear one.

    PYTHONPATH=python .venv/bin/python benchmarks/profile_decode.py   # ~1 min

Prints a table; writes JSON (--json, default benchmarks/results/decode_profile.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import empas

sys.path.insert(0, str(Path(__file__).parent))
from bench_matmul import greedy, packed_copy  # noqa: E402  (same folder)

OPS = {
    "packed linears": ("empas::packed_linear", "empas::packed_linear_a8"),
    "dense linears (aten::linear)": ("aten::linear",),
}


def breakdown(model, ids, steps: int) -> dict:
    greedy(model, ids, 4)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        greedy(model, ids, steps + 1)
    ev = {e.key: e for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in ev.values()) / 1e3
    packed = sum(ev[k].cpu_time_total for k in OPS["packed linears"] if k in ev) / 1e3
    # the head: the one aten::mm call per step on [1, hidden] x [hidden, vocab]
    # (dense linears all go through aten::linear -> aten::mm/addmm)
    mm = ev["aten::mm"].cpu_time_total / 1e3 if "aten::mm" in ev else 0.0
    lin = ev["aten::linear"].cpu_time_total / 1e3 if "aten::linear" in ev else 0.0
    n = steps + 1  # the prompt's forward is included once
    return {
        "steps_profiled": n,
        "ms_per_step_total": total / n,
        "ms_per_step_packed_linears": packed / n,
        "ms_per_step_aten_linear": lin / n,
        "ms_per_step_aten_mm": mm / n,
        "ms_per_step_other": (total - packed - lin) / n,
        "note": "self CPU time summed over all ops / steps; aten::linear covers the dense "
        "linears including the tied head (its aten::mm inside it)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument(
        "--json", default=str(Path(__file__).parent / "results" / "decode_profile.json")
    )
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = empas.models.resolve("example:smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    exact = packed_copy(dense, 4)
    a8 = packed_copy(dense, 4)
    empas.set_activations(a8, "int8")
    h8 = packed_copy(dense, 4, 8)
    empas.set_activations(h8, "int8")
    ids = tok("The history of the city begins in the", return_tensors="pt")["input_ids"]
    res = {}
    for name, m in (
        ("dense bf16", dense),
        ("packed int4 bf16", exact),
        ("packed int4 bf16 int8-x", a8),
        ("packed int4+h8 bf16 int8-x", h8),
    ):
        res[name] = breakdown(m, ids, a.steps)
    print(
        f"{'model':28} {'total':>8} {'packed':>8} {'aten::linear':>13} {'(mm)':>8} {'other':>8}  ms/step"
    )
    for k, r in res.items():
        print(
            f"{k:28} {r['ms_per_step_total']:8.1f} {r['ms_per_step_packed_linears']:8.1f} "
            f"{r['ms_per_step_aten_linear']:13.1f} {r['ms_per_step_aten_mm']:8.1f} "
            f"{r['ms_per_step_other']:8.1f}"
        )
    out = {
        "benchmark": "empas.profile_decode/1",
        "model": "example:smollm2, bf16; packed = every decoder-block nn.Linear at 4 bits, "
                 "g=128; +h8: the tied embedding + head at 8 bits",
        "machine": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg": os.getloadavg(), "torch": torch.__version__},
        "results": res,
    }  # fmt: skip
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
