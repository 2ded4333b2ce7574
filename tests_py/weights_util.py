"""Test weights and bit-exact comparison shared by the op tests (test_ops, test_pack).
Imports torch: import it after ``pytest.importorskip("torch")``."""

from __future__ import annotations

import torch

INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def weights(shape, dtype=torch.float32, seed=0, device="cpu"):
    """Like a linear layer's weight: small normal values, a few outliers, a tie."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    if w.numel():
        w.view(-1)[::53] *= 10
        w.view(-1)[-1] = -w.view(-1)[0]  # equal magnitudes of both signs
    return w.to(dtype=dtype, device=device)


def same_bits(a, b) -> bool:
    """Bit-identical (so -0.0 != +0.0), same shape and dtype."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    view = INT_VIEW.get(a.dtype)
    if view is None:
        return torch.equal(a, b)
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
