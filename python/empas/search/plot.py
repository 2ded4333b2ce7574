"""Matplotlib views of search results (imported only when plotting)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_MARKERS = {"max_accuracy": "^", "balanced": "*", "max_compression": "v", "best_under_budget": "D"}


def plot_fronts(results: Sequence[Any], ax=None, annotate: bool = True):
    """Predicted loss vs size (MiB) of each result's front; archetypes marked."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot() needs matplotlib: pip install matplotlib") from None
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        mib = [p.predicted_bytes / 2**20 for p in r.front]
        loss = [p.predicted_loss for p in r.front]
        label = f"{r.method} ({len(r.front)} plans)"
        ax.step(mib, loss, where="post", marker=".", ms=4, lw=1, label=label)
        if annotate:
            for name, p in r.archetypes.items():
                ax.scatter(
                    [p.predicted_bytes / 2**20],
                    [p.predicted_loss],
                    marker=_MARKERS.get(name, "o"),
                    s=80,
                    zorder=3,
                    label=f"{name} ({r.method})",
                )
    ax.set_xlabel("predicted size (MiB)")
    ax.set_ylabel("predicted loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
