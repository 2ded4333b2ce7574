"""Sharded profiling on ``torch.distributed``: every rank measures the same
baseline on the same tokens, takes a deterministic, cost-balanced share of the
(unit, choice) cells, and the per-sequence losses are gathered so that every rank
builds the same profile (rank 0 writes it).

EMPAS does not run its own engine: the process group is the caller's (an
initialized ``torch.distributed`` group, e.g. under ``torchrun``); gloo on CPU,
NCCL on GPUs. The messages are small (per-sequence losses), sent as pickled
objects, so the float64 losses arrive bit-exactly."""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ProfileError

__all__ = ["Group", "cell_cost", "current_group", "init_from_env", "share"]


def cell_cost(start: int, n_blocks: int, cache: bool = True) -> int:
    """Blocks (plus one for the head and loss) an experiment whose first changed
    block is ``start`` runs: with the cache it starts at its own block; without,
    or for the embedding (``start`` -1), it runs the whole model."""
    if not cache or start < 0:
        return n_blocks + 1
    return max(n_blocks - start, 0) + 1


def share(costs: Sequence[float], n_ranks: int) -> list[list[int]]:
    """Which cells (indices into ``costs``) each of ``n_ranks`` ranks measures:
    greedy longest-processing-time assignment (cells by cost descending, ties by
    index; each to the least-loaded rank, ties by rank number). Deterministic
    (no randomness, no dependence on timing) and within 4/3 of the optimal
    makespan. Each rank's list is in ascending index order."""
    if n_ranks < 1:
        raise ValueError(f"n_ranks must be >= 1, got {n_ranks}")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    heap = [(0.0, r) for r in range(n_ranks)]
    out: list[list[int]] = [[] for _ in range(n_ranks)]
    for i in order:
        load, r = heapq.heappop(heap)
        out[r].append(i)
        heapq.heappush(heap, (load + float(costs[i]), r))
    return [sorted(x) for x in out]


def settings_hash(obj: Any) -> str:
    """A short digest of a JSON-able settings record."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Group:
    """The rank and size of the initialized default process group."""

    rank: int
    world: int
    backend: str

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def check_same(self, settings: Any, what: str = "settings") -> None:
        """Refuses (ProfileError on every rank) when the ranks' ``settings``
        differ, naming the ranks that differ from rank 0."""
        mine = settings_hash(settings)
        hashes = self.gather(mine)
        bad = [r for r, h in enumerate(hashes) if h != hashes[0]]
        if bad:
            raise ProfileError(
                f"torch.distributed: the {what} of rank(s) {bad} differ from rank 0's "
                f"(hashes {[hashes[r] for r in bad]} vs {hashes[0]}): every rank must profile "
                "the same model on the same calibration with the same settings"
            )

    def host(self) -> str:
        return socket.gethostname()


def current_group() -> Group | None:
    """The default process group when ``torch.distributed`` is initialized with
    more than one rank, else None (a single-process run)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world < 2:
        return None
    return Group(dist.get_rank(), world, str(dist.get_backend()))


def init_from_env(device: str | None) -> tuple[bool, str | None]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) initializes the
    default process group (NCCL when the device is CUDA, else gloo) unless it
    already is; returns ``(initialized here, the device for this rank)``: a CUDA
    device becomes ``cuda:<LOCAL_RANK>``."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False, device
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if dist.is_initialized():
        return False, device
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True, device
