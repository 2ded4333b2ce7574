"""Checks the plan standard errors against repeated measurement: two profiles of the
same model with different calibration seeds; for 30 plans spread over the first one's
exact front, the difference of the two predicted Δ divided by the stated error
(sqrt(se_a² + se_b²)). An rms near 1 means the stated errors are right. Prints the rms
for the raw table at several assumed correlations ρ and for the fitted table.

    PYTHONPATH=python .venv/bin/python benchmarks/check_plan_stderr.py \\
        out/val/p1024_s0.json out/val/p1024_s1.json
"""

from __future__ import annotations

import json
import sys

import numpy as np

import empas
from empas.profile.fit import fit_table, plan_stderr


def main() -> None:
    a, b = (empas.load_profile(p) for p in sys.argv[1:3])
    out = {}
    for tab in ("raw", "monotone"):
        A, B = fit_table(a, tab), fit_table(b, tab)
        front = empas.search(A, method="exact", table="raw").front
        G = front.genomes[np.linspace(0, len(front) - 1, 30).round().astype(int)]
        ch = np.array(A.choices)
        d = np.array(
            [
                (A.evaluate(list(ch[g]))["loss"] - A.baseline)
                - (B.evaluate(list(ch[g]))["loss"] - B.baseline)
                for g in G
            ]
        )
        for rho in (0.0, 0.1, 0.2, 0.3, 0.5, 1.0):
            se = np.hypot(plan_stderr(A, G, rho), plan_stderr(B, G, rho))
            out[f"{tab} rho={rho}"] = float(np.sqrt(np.mean((d / se) ** 2)))
        cols = [j for j, c in enumerate(a.choices) if c not in (0, 16)]
        for j in cols:
            out[f"{tab} column {a.choices[j]}-bit rms a->b, b->a"] = [
                float(np.sqrt(np.mean((A.delta[:, j] - b.delta[:, j]) ** 2))),
                float(np.sqrt(np.mean((B.delta[:, j] - a.delta[:, j]) ** 2))),
            ]
    for k, v in out.items():
        print(f"{k:<40} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
