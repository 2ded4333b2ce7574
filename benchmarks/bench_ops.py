"""Fake-quant op benchmark: the C++ op (``empas.fake_quant``) vs the same
quantize -> dequantize in plain PyTorch (``empas.fake_quant_reference``), and both
vs the machine's memory bandwidth, in one run.

* Memory bandwidth: median time of ``torch.Tensor.copy_`` of a 256 MiB buffer
  (torch's threads) and of ``numpy.copyto``; read + write bytes / time.
* Per case (matrix shape x dtype x scheme x group size): median time of the op
  (out of place, and in place: no output allocation) and of the reference;
  throughput = bytes read + written (2 x numel x element size) / time; the ratio
  reference / op (both out of place); the op's throughput as % of the copy
  bandwidth. Out of place, a fresh output larger than glibc's mmap threshold
  (32 MiB) is page-faulted in on every call, which costs as much as the kernel;
  a matrix that fits the last-level cache can beat the DRAM copy bandwidth.
* On CUDA (when torch sees a GPU and the ops have CUDA kernels): the GPU op vs the
  GPU's ``copy_`` bandwidth, timed with CUDA events. The GPU op reads a status
  word back after each call (NaN/Inf check), which synchronizes; it is included.
  The packed dequant too (bytes of codes and scales read + output written).
  ``--gpu-only``: this section alone (``scripts/gpu_check.sh``).

* Packed dequant (``empas.packing.dequant``, the op behind a packed linear's
  forward pass) vs the pure-PyTorch ``dequant_reference``, 4096 x 4096 at 2, 3, 4
  and 8 bits, g = 128, fp16 and fp32 output: median time; throughput = bytes of
  output written per second (each call allocates a fresh output, page faults
  included, as in a forward pass).

Targets (issue 3): CPU op >= 3x the PyTorch version and >= 50% of the memory
bandwidth; GPU op >= 70% of the HBM bandwidth.

    python benchmarks/bench_ops.py            # ~1-2 minutes on 2 cores
    python benchmarks/bench_ops.py --quick    # smoke test
    python benchmarks/bench_ops.py --large    # adds 4096 x 11008 (Llama-7B MLP)

Prints a table and writes JSON (--json, default benchmarks/results/ops.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import empas

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_bandwidth(repeats: int) -> dict:
    n = 256 * 2**20 // 4
    a = torch.randn(n)
    b = torch.empty_like(a)
    t_torch = median_time(lambda: b.copy_(a), repeats)
    an, bn = a.numpy(), b.numpy()
    t_np = median_time(lambda: np.copyto(bn, an), repeats)
    nbytes = 2 * a.numel() * 4
    return {
        "buffer_bytes": a.numel() * 4,
        "torch_copy_gbps": nbytes / t_torch / 1e9,
        "numpy_copy_gbps": nbytes / t_np / 1e9,
    }


def cpu_cases(shapes, repeats: int, ref_repeats: int, bandwidth: float) -> list[dict]:
    rows = []
    for shape in shapes:
        base = torch.randn(shape) * 0.02
        for dname, dtype in DTYPES.items():
            w = base.to(dtype)
            nbytes = 2 * w.numel() * w.element_size()
            for symmetric in (True, False):
                for g in (128, 0):
                    args = (4, g, symmetric, False)
                    t_op = median_time(lambda w=w, a=args: empas.fake_quant(w, *a), repeats)
                    v = w.clone()  # in place: no output allocation (re-quantizing is the same work)
                    t_in = median_time(
                        lambda v=v, a=args: empas.fake_quant(v, *a, inplace=True), repeats
                    )
                    t_ref = median_time(
                        lambda w=w, a=args: empas.fake_quant_reference(w, *a), ref_repeats
                    )
                    rows.append(
                        {
                            "shape": list(shape),
                            "dtype": dname,
                            "scheme": "sym" if symmetric else "asym",
                            "group_size": g,
                            "bits": 4,
                            "op_s": t_op,
                            "reference_s": t_ref,
                            "op_inplace_s": t_in,
                            "op_gbps": nbytes / t_op / 1e9,
                            "op_inplace_gbps": nbytes / t_in / 1e9,
                            "reference_gbps": nbytes / t_ref / 1e9,
                            "speedup": t_ref / t_op,
                            "op_pct_of_bandwidth": 100 * nbytes / t_op / 1e9 / bandwidth,
                            "op_inplace_pct_of_bandwidth": 100 * nbytes / t_in / 1e9 / bandwidth,
                        }
                    )
                    r = rows[-1]
                    print(
                        f"  {shape[0]:>5}x{shape[1]:<5} {dname:<4} {r['scheme']:<4} "
                        f"g={'ch' if g == 0 else g:<4} op {r['op_gbps']:5.1f} GB/s "
                        f"({r['op_pct_of_bandwidth']:4.0f}%)  in place {r['op_inplace_gbps']:5.1f} GB/s "
                        f"({r['op_inplace_pct_of_bandwidth']:4.0f}%)  ref {r['reference_gbps']:5.2f} GB/s  "
                        f"op/ref x{r['speedup']:5.1f}",
                        flush=True,
                    )
    return rows


def clip_cases(shape, repeats: int) -> list[dict]:
    """The clip search (11 ratios per group): op vs reference, fp32 sym g=128."""
    w = torch.randn(shape) * 0.02
    args = (4, 128, True, True)
    t_op = median_time(lambda: empas.fake_quant(w, *args), repeats)
    t_ref = median_time(lambda: empas.fake_quant_reference(w, *args), max(1, repeats // 3))
    nbytes = 2 * w.numel() * 4
    row = {
        "shape": list(shape),
        "dtype": "fp32",
        "scheme": "sym",
        "group_size": 128,
        "clip_search": True,
        "op_s": t_op,
        "reference_s": t_ref,
        "op_gbps": nbytes / t_op / 1e9,
        "speedup": t_ref / t_op,
    }
    print(
        f"  clip search {shape[0]}x{shape[1]} fp32 sym g=128: op {row['op_gbps']:.2f} GB/s, "
        f"reference {t_ref * 1e3:.0f} ms, x{row['speedup']:.1f}",
        flush=True,
    )
    return [row]


def dequant_cases(shape, repeats: int, ref_repeats: int) -> list[dict]:
    """Packed dequant: op vs reference, GB/s of output."""
    from empas.quant.packing import dequant, dequant_reference, pack

    w = torch.randn(shape) * 0.02
    rows = []
    for bits in (2, 3, 4, 8):
        pw = pack(w, bits, 128)
        for dname in ("fp16", "fp32"):
            dtype = DTYPES[dname]
            out_bytes = w.numel() * torch.empty(0, dtype=dtype).element_size()
            t_op = median_time(lambda pw=pw, d=dtype: dequant(pw, d), repeats)
            t_ref = median_time(lambda pw=pw, d=dtype: dequant_reference(pw, d), ref_repeats)
            rows.append(
                {
                    "shape": list(shape),
                    "bits": bits,
                    "group_size": 128,
                    "out_dtype": dname,
                    "packed_bytes": pw.nbytes,
                    "op_s": t_op,
                    "reference_s": t_ref,
                    "op_out_gbps": out_bytes / t_op / 1e9,
                    "reference_out_gbps": out_bytes / t_ref / 1e9,
                    "speedup": t_ref / t_op,
                }
            )
            r = rows[-1]
            print(
                f"  dequant {shape[0]}x{shape[1]} {bits} bits -> {dname}: op {t_op * 1e3:6.2f} ms "
                f"{r['op_out_gbps']:5.1f} GB/s  ref {t_ref * 1e3:7.1f} ms "
                f"{r['reference_out_gbps']:5.2f} GB/s  op/ref x{r['speedup']:5.1f}",
                flush=True,
            )
    return rows


def cuda_section(shapes, repeats: int) -> dict | None:
    if not torch.cuda.is_available():
        return None
    if not empas.build_info().get("cuda"):
        print("CUDA device present, but the ops were built without CUDA kernels")
        return {"device": torch.cuda.get_device_name(), "skipped": "no CUDA kernels in the build"}

    def cuda_time(fn) -> float:
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        return statistics.median(times)

    src = torch.empty(1024 * 2**20 // 4, device="cuda")
    dst = torch.empty_like(src)
    hbm = 2 * src.numel() * 4 / cuda_time(lambda: dst.copy_(src)) / 1e9
    rows = []
    for shape in shapes:
        base = torch.randn(shape, device="cuda") * 0.02
        for dname, dtype in DTYPES.items():
            w = base.to(dtype)
            nbytes = 2 * w.numel() * w.element_size()
            for symmetric in (True, False):
                for g in (128, 0):
                    args = (4, g, symmetric, False)
                    t = cuda_time(lambda w=w, a=args: empas.fake_quant(w, *a))
                    t_ref = cuda_time(lambda w=w, a=args: empas.fake_quant_reference(w, *a))
                    rows.append(
                        {
                            "shape": list(shape),
                            "dtype": dname,
                            "scheme": "sym" if symmetric else "asym",
                            "group_size": g,
                            "op_gbps": nbytes / t / 1e9,
                            "reference_gbps": nbytes / t_ref / 1e9,
                            "speedup": t_ref / t,
                            "op_pct_of_hbm": 100 * nbytes / t / 1e9 / hbm,
                        }
                    )
                    r = rows[-1]
                    print(
                        f"  GPU {shape[0]}x{shape[1]} {dname} {r['scheme']} g={g or 'ch'}: "
                        f"{r['op_gbps']:.0f} GB/s ({r['op_pct_of_hbm']:.0f}% of HBM), x{r['speedup']:.1f}",
                        flush=True,
                    )
    deq = cuda_dequant_cases(shapes[-1], cuda_time, hbm)
    return {
        "device": torch.cuda.get_device_name(),
        "hbm_copy_gbps": hbm,
        "cases": rows,
        "dequant": deq,
    }


def cuda_dequant_cases(shape, cuda_time, hbm: float) -> list[dict]:
    """Packed dequant on the GPU: bytes read (codes, scales) + written (output) per
    second, against the device's copy bandwidth."""
    from empas.quant.packing import dequant, pack

    w = torch.randn(shape, device="cuda") * 0.02
    rows = []
    for bits in (2, 3, 4, 8):
        pw = pack(w, bits, 128)
        for dname in ("fp16", "fp32"):
            dtype = DTYPES[dname]
            nbytes = pw.nbytes + w.numel() * torch.empty(0, dtype=dtype).element_size()
            t = cuda_time(lambda pw=pw, d=dtype: dequant(pw, d))
            rows.append(
                {
                    "shape": list(shape),
                    "bits": bits,
                    "group_size": 128,
                    "out_dtype": dname,
                    "op_s": t,
                    "op_gbps": nbytes / t / 1e9,
                    "op_pct_of_hbm": 100 * nbytes / t / 1e9 / hbm,
                }
            )
            r = rows[-1]
            print(
                f"  GPU dequant {shape[0]}x{shape[1]} {bits} bits -> {dname}: {r['op_gbps']:.0f} "
                f"GB/s read + written ({r['op_pct_of_hbm']:.0f}% of the copy bandwidth)",
                flush=True,
            )
    return rows


def gpu_only(args) -> None:
    """The CUDA section alone: fake-quant and dequant vs the device's copy bandwidth."""
    repeats = args.repeats or 11
    shapes = [(2048, 2048), (5632, 2048)] + ([(4096, 11008)] if args.large else [])
    empas.fake_quant(torch.randn(4, 128), 4)  # loads the ops
    cuda = cuda_section(shapes, repeats)
    if cuda is None:
        raise SystemExit("bench_ops --gpu-only: torch sees no CUDA device")
    summary = {}
    if cuda.get("cases"):
        fq = [r["op_pct_of_hbm"] for r in cuda["cases"]]
        dq = [r["op_pct_of_hbm"] for r in cuda["dequant"]]
        summary = {
            "hbm_copy_gbps": cuda["hbm_copy_gbps"],
            "fake_quant_pct_of_hbm_min": min(fq),
            "fake_quant_pct_of_hbm_median": statistics.median(fq),
            "dequant_pct_of_hbm_min": min(dq),
            "dequant_pct_of_hbm_median": statistics.median(dq),
            "target_gpu_70pct_hbm_met": min(fq) >= 70 and min(dq) >= 70,
        }
        print(
            f"summary: copy {cuda['hbm_copy_gbps']:.0f} GB/s; fake_quant {min(fq):.0f}% min, "
            f"{statistics.median(fq):.0f}% median; dequant {min(dq):.0f}% min, "
            f"{statistics.median(dq):.0f}% median of it (target >= 70%)"
        )
    out = {
        "benchmark": "empas.bench_ops/1",
        "build_info": empas.build_info(),
        "torch": torch.__version__,
        "cuda": cuda,
        "summary": summary,
        "repeats": repeats,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    ap.add_argument("--large", action="store_true", help="also 4096 x 11008")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "ops.json"))
    ap.add_argument(
        "--gpu-only", action="store_true", help="only the CUDA section (scripts/gpu_check.sh)"
    )
    args = ap.parse_args()
    if args.gpu_only:
        gpu_only(args)
        return

    repeats = args.repeats or (3 if args.quick else 11)
    ref_repeats = max(1, repeats // 3)
    shapes = [(256, 512)] if args.quick else [(2048, 2048), (5632, 2048)]
    if args.large:
        shapes.append((4096, 11008))

    empas.fake_quant(torch.randn(4, 128), 4)  # loads the ops
    info = empas.build_info()
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_isa": info.get("cpu_isa"),
    }
    print(
        f"{machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, kernels: {machine['cpu_isa']}"
    )
    mem = memory_bandwidth(repeats)
    bandwidth = mem["torch_copy_gbps"]
    print(
        f"memory bandwidth (read + write, 256 MiB copy): torch copy_ {bandwidth:.1f} GB/s, "
        f"numpy copyto {mem['numpy_copy_gbps']:.1f} GB/s"
    )
    print("fake_quant 4 bits, throughput = bytes read + written per second:")
    rows = cpu_cases(shapes, repeats, ref_repeats, bandwidth)
    clip = clip_cases(shapes[0], max(3, repeats // 2))
    print("packed dequant, g = 128, throughput = bytes of output written per second:")
    deq = dequant_cases((256, 512) if args.quick else (4096, 4096), repeats, ref_repeats)
    cuda = cuda_section(shapes, repeats)

    speedups = [r["speedup"] for r in rows]
    pcts = [r["op_pct_of_bandwidth"] for r in rows]
    pcts_in = [r["op_inplace_pct_of_bandwidth"] for r in rows]
    summary = {
        "speedup_min": min(speedups),
        "speedup_median": statistics.median(speedups),
        "pct_of_bandwidth_min": min(pcts),
        "pct_of_bandwidth_median": statistics.median(pcts),
        "inplace_pct_of_bandwidth_min": min(pcts_in),
        "inplace_pct_of_bandwidth_median": statistics.median(pcts_in),
        "target_speedup_3x_met": min(speedups) >= 3,
        "target_50pct_bandwidth_met": min(pcts) >= 50,
        "target_50pct_bandwidth_met_inplace": min(pcts_in) >= 50,
        "dequant_speedup_min": min(r["speedup"] for r in deq),
        "dequant_out_gbps_median": statistics.median(r["op_out_gbps"] for r in deq),
    }
    if cuda and cuda.get("cases"):
        summary["gpu_pct_of_hbm_min"] = min(r["op_pct_of_hbm"] for r in cuda["cases"])
        summary["gpu_dequant_pct_of_hbm_min"] = min(r["op_pct_of_hbm"] for r in cuda["dequant"])
        summary["target_gpu_70pct_hbm_met"] = (
            min(summary["gpu_pct_of_hbm_min"], summary["gpu_dequant_pct_of_hbm_min"]) >= 70
        )
    print(
        f"summary: op/reference x{summary['speedup_min']:.1f} min, x{summary['speedup_median']:.1f} "
        f"median (target >= 3); op {summary['pct_of_bandwidth_min']:.0f}% min, "
        f"{summary['pct_of_bandwidth_median']:.0f}% median of the copy bandwidth, in place "
        f"{summary['inplace_pct_of_bandwidth_min']:.0f}% min, "
        f"{summary['inplace_pct_of_bandwidth_median']:.0f}% median (target >= 50%)"
    )
    out = {
        "benchmark": "empas.bench_ops/1",
        "machine": machine,
        "build_info": info,
        "memory": mem,
        "cpu": rows,
        "clip_search": clip,
        "dequant": deq,
        "cuda": cuda,
        "summary": summary,
        "repeats": repeats,
        "reference_repeats": ref_repeats,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
