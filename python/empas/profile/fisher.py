"""The empirical Fisher diagonal of a session's model and the second-order
estimate of a unit's Δloss it gives: Δ(unit, b) ≈ ½ Σ F ⊙ (Q_b(W) − W)².
Shared by :func:`~empas.estimate_sensitivity` (a whole table from one backward
pass per batch) and :func:`~empas.profile` (``estimate=``: the cells of chosen
bit widths estimated instead of measured)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models.structure import distinct
from ..quant.fake import fake_quant

__all__ = ["fisher_diagonal", "fisher_deltas"]


def fisher_diagonal(session) -> tuple[dict[int, Any], list[float]]:
    """Squared gradients of the cross-entropy, averaged over the session's
    calibration batches, for every weight of every unit (keyed by data_ptr);
    and the batches' losses. The model is left as it was (eval/train mode,
    requires_grad flags, no gradients)."""
    import torch

    model = session.model
    weights = {}
    for spec in session.specs:
        for m in spec.members:
            weights[m.weight.data_ptr()] = m
    fisher = {k: torch.zeros_like(m.weight, dtype=torch.float32) for k, m in weights.items()}
    was_training = model.training
    model.eval()
    req = {p: p.requires_grad for p in model.parameters()}
    losses = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for m in weights.values():
            m.weight.requires_grad_(True)
        for ids in session.batches:
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                out = model(input_ids=ids, labels=ids, use_cache=False)
                out.loss.backward()
            losses.append(float(out.loss.detach()))
            for k, m in weights.items():
                if m.weight.grad is not None:
                    fisher[k] += m.weight.grad.float() ** 2
        for k in fisher:
            fisher[k] /= len(session.batches)
    finally:
        model.zero_grad(set_to_none=True)
        for p, r in req.items():
            p.requires_grad_(r)
        if was_training:
            model.train()
    return fisher, losses


def fisher_deltas(session, fisher, spec, choices: Sequence[int]) -> list[float]:
    """The Fisher estimate of ``spec``'s Δloss at each of ``choices`` (bits;
    16 = fp16 storage)."""
    import torch

    qs = session.qs
    out = []
    with torch.no_grad():
        for bits in choices:
            est = 0.0
            for m in distinct(spec.members):
                w = m.weight.data
                f = fisher[w.data_ptr()]
                if bits == 16:
                    q = w.to(torch.float16).to(w.dtype)
                    err = (q.float() - w.float()) ** 2
                else:
                    v = m.view2d()
                    q = fake_quant(
                        v,
                        bits,
                        group_size=qs.group_size,
                        symmetric=qs.symmetric,
                        clip_search=qs.clip_search,
                    )
                    err = (q.float() - v.float()) ** 2
                    if m.kind == "conv1d":
                        err = err.t()
                est += 0.5 * float((f * err).sum())
            out.append(est)
    return out
