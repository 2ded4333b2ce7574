"""Are two profiles of the same model and settings the same table within the
noise? E.g. a GPU profile against a CPU one (``scripts/gpu_check.sh``).

For every cell measured in both (estimated and missing cells are skipped), the
difference of the Δloss in units of the cell's stderr, ``|Δa - Δb| / max(se_a,
se_b)``: the two runs use the same calibration tokens, so what differs is the
device's arithmetic, and "within the stderr" means the difference is smaller than
the sampling error the profile already reports. Cells whose stderr is 0 in both
must agree to ``--atol``. Prints max and rms of the ratio and the worst cells,
writes JSON (``--json``) and exits 1 above ``--threshold`` (default 1.0), 2 on
profiles that cannot be compared (other units, choices or model).

    python benchmarks/compare_profiles.py GPU.json CPU.json [--threshold 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

import empas


def compare(a, b, atol: float = 1e-9) -> dict[str, Any]:
    """The comparison of two loaded profiles (raises ValueError when the tables
    are not of the same units and choices)."""
    if a.unit_names != b.unit_names:
        raise ValueError("the profiles have different units")
    if list(a.choices) != list(b.choices):
        raise ValueError(f"the profiles have different choices: {a.choices} vs {b.choices}")
    fa = a.meta.get("model", {}).get("fingerprint")
    fb = b.meta.get("model", {}).get("fingerprint")
    if fa and fb and fa != fb:
        raise ValueError(f"the profiles are of different weights (fingerprints {fa} vs {fb})")
    da, db = np.asarray(a.delta, float), np.asarray(b.delta, float)
    sa, sb = np.asarray(a.stderr, float), np.asarray(b.stderr, float)
    both = np.isfinite(da) & np.isfinite(db) & np.isfinite(sa) & np.isfinite(sb)
    diff = np.abs(da - db)
    se = np.maximum(sa, sb)
    ratio = np.full(da.shape, np.nan)
    noisy = both & (se > 0)
    ratio[noisy] = diff[noisy] / se[noisy]
    exact = both & (se == 0)
    bad_exact = exact & (diff > atol)
    ratio[exact] = np.where(diff[exact] > atol, np.inf, 0.0)
    r = ratio[both]
    worst = []
    if r.size:
        order = np.argsort(-np.nan_to_num(ratio, nan=-1.0), axis=None)[:5]
        for flat in order:
            u, c = np.unravel_index(flat, ratio.shape)
            if not both[u, c]:
                continue
            worst.append(
                {
                    "unit": a.unit_names[u],
                    "bits": int(a.choices[c]),
                    "delta_a": float(da[u, c]),
                    "delta_b": float(db[u, c]),
                    "stderr": float(se[u, c]),
                    "ratio": float(ratio[u, c]),
                }
            )
    finite = r[np.isfinite(r)]
    return {
        "cells_compared": int(both.sum()),
        "cells_skipped": int(da.size - both.sum()),
        "max_ratio": float(r.max()) if r.size else None,
        "rms_ratio": float(math.sqrt(np.mean(finite**2))) if finite.size else None,
        "share_over_1": float(np.mean(r > 1)) if r.size else None,
        "max_abs_diff": float(diff[both].max()) if r.size else None,
        "zero_stderr_mismatches": int(bad_exact.sum()),
        "baseline_a": a.baseline,
        "baseline_b": b.baseline,
        "baseline_diff": abs(a.baseline - b.baseline),
        "device_a": a.meta.get("source", {}).get("device"),
        "device_b": b.meta.get("source", {}).get("device"),
        "worst": worst,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="a profile (e.g. the GPU one)")
    ap.add_argument("b", help="the profile to compare with (e.g. the CPU one)")
    ap.add_argument("--threshold", type=float, default=1.0, help="max |Δa-Δb|/stderr allowed")
    ap.add_argument("--atol", type=float, default=1e-9, help="for cells of stderr 0")
    ap.add_argument("--json", help="write the comparison here")
    a = ap.parse_args(argv)
    if not (a.threshold > 0 and math.isfinite(a.threshold)):
        print(f"compare_profiles: --threshold must be > 0, got {a.threshold}", file=sys.stderr)
        return 2
    try:
        res = compare(empas.load_profile(a.a), empas.load_profile(a.b), a.atol)
    except (ValueError, OSError) as exc:
        print(f"compare_profiles: {exc}", file=sys.stderr)
        return 2
    res.update({"a": a.a, "b": a.b, "threshold": a.threshold})
    res["pass"] = res["cells_compared"] > 0 and res["max_ratio"] <= a.threshold
    print(
        f"{a.a} ({res['device_a']}) vs {a.b} ({res['device_b']}): {res['cells_compared']} cells "
        f"({res['cells_skipped']} skipped); baseline {res['baseline_a']:.6f} vs "
        f"{res['baseline_b']:.6f}"
    )
    if res["cells_compared"]:
        print(
            f"  |Δa-Δb|/stderr: max {res['max_ratio']:.3f}, rms {res['rms_ratio']:.3f}, "
            f"{100 * res['share_over_1']:.1f}% of cells over 1; max |Δa-Δb| "
            f"{res['max_abs_diff']:.3g}"
        )
        for w in res["worst"][:3]:
            print(
                f"  {w['unit']} @ {w['bits']} bits: {w['delta_a']:.6f} vs {w['delta_b']:.6f} "
                f"(stderr {w['stderr']:.2g}, ratio {w['ratio']:.3f})"
            )
    print(
        f"  {'PASS' if res['pass'] else 'FAIL'}: max ratio "
        f"{'n/a' if res['max_ratio'] is None else format(res['max_ratio'], '.3f')} "
        f"(threshold {a.threshold})"
    )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
