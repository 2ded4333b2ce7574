"""Synthetic sensitivity profiles: realistic-looking Δloss tables of any size,
for benchmarks, tests and trying the search without a model.

Shapes follow a Llama-style decoder (attention q/k/v/o + MLP gate/up/down per
block); Δloss falls roughly 4x per added bit with per-unit sensitivity drawn
log-normally, larger at the first and last blocks, as measured profiles show."""

from __future__ import annotations

import numpy as np

from .table import Profile

_LINEARS = (
    ("self_attn.q_proj", "attn", 1, 1),
    ("self_attn.k_proj", "attn", 1, 1),
    ("self_attn.v_proj", "attn", 1, 1),
    ("self_attn.o_proj", "attn", 1, 1),
    ("mlp.gate_proj", "mlp", 3, 1),
    ("mlp.up_proj", "mlp", 3, 1),
    ("mlp.down_proj", "mlp", 1, 3),
)


def synthetic_profile(
    n_units: int = 560,
    choices: tuple[int, ...] = (2, 3, 4, 8, 16),
    seed: int = 0,
    hidden: int = 1024,
    group_size: int = 128,
    noise: float = 0.0,
    noise_seed: int | None = None,
) -> Profile:
    """A profile of ``n_units`` linear layers (7 per block, Llama layout) with
    exact packed byte counts (group-wise fp16 scales). ``noise`` > 0 adds
    measurement noise as a short calibration run would: each cell gets a standard
    error ``noise`` x (its Δ + the unit's 4-bit Δ) and a Gaussian error of that
    size (drawn from a generator of its own, seeded by ``noise_seed``, default
    ``seed``: the same seed with ``noise=0`` is the noise-free truth, and other
    noise seeds are repeated measurements of it)."""
    if n_units < 1:
        raise ValueError("n_units must be >= 1")
    if len(set(choices)) != len(choices) or not choices:
        raise ValueError("choices must be distinct bit widths")
    rng = np.random.default_rng(seed)
    n_blocks = -(-n_units // len(_LINEARS))
    units, delta = [], []
    for i in range(n_units):
        block, j = divmod(i, len(_LINEARS))
        name, kind, out_mult, in_mult = _LINEARS[j]
        out_f, in_f = hidden * out_mult, hidden * in_mult
        edge = 1.0 + 2.0 * np.exp(-min(block, n_blocks - 1 - block) / 2.0)
        scale = edge * rng.lognormal(mean=-5.0, sigma=0.8) * (out_f * in_f) / hidden**2
        row = []
        for b in choices:
            if b >= 16:
                row.append(0.0)
            elif b == 0:
                row.append(float(scale * 60 * rng.lognormal(0, 0.3)))
            else:
                row.append(float(scale * 4.0 ** (2 - b) * rng.lognormal(0, 0.15)))
        delta.append(row)
        units.append(
            {
                "name": f"model.layers.{block}.{name}",
                "kind": "linear",
                "modules": [f"model.layers.{block}.{name}"],
                "params": out_f * in_f,
                "shapes": [[out_f, in_f]],
            }
        )
    stderr = None
    if noise:
        if not noise > 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        nrng = np.random.default_rng([seed if noise_seed is None else noise_seed, 1])
        ref = [row[choices.index(4)] if 4 in choices else min(row) for row in delta]
        stderr = [
            [0.0 if b >= 16 else noise * (d + r) for b, d in zip(choices, row)]
            for row, r in zip(delta, ref)
        ]
        delta = [
            [d + (0.0 if s == 0 else float(nrng.normal(0.0, s))) for d, s in zip(row, srow)]
            for row, srow in zip(delta, stderr)
        ]
    doc = {
        "format": "empas.sensitivity/1",
        "model": {"name": f"synthetic-{n_units}x{len(choices)}-seed{seed}"},
        "calibration": {"source": "synthetic", "seed": seed},
        "loss": {"kind": "causal_lm", "baseline": 2.5},
        "quantizer": {
            "scheme": "symmetric",
            "granularity": "group",
            "group_size": group_size,
            "scale_bytes": 2,
            "zero_bytes": 0,
            "bytes_model": "packed",
        },
        "choices": list(choices),
        "units": units,
        "unsearched_bytes": 2 * 32000 * hidden * 2,
        "delta": delta,
        "stderr": stderr,
        "source": {"generator": "empas.synthetic.synthetic_profile", "seed": seed, "noise": noise},
    }
    return Profile.from_dict(doc, negative="keep" if noise else None)
