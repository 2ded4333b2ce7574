"""A device that runs out of memory while profiling: the backend's error (CUDA's
``torch.OutOfMemoryError``, the CPU allocator's RuntimeError, Python's
MemoryError) becomes a :class:`~empas.errors.DeviceMemoryError` naming the device,
its memory, what :func:`empas.profile_cost` estimates the run needs, and what to
change."""

from __future__ import annotations

import os
from typing import Any

from ..errors import DeviceMemoryError
from ..util.sizes import format_bytes

__all__ = ["device_capacity", "is_out_of_memory", "memory_error"]

# how the allocators say it (CUDA: "CUDA out of memory", CPU: "DefaultCPUAllocator:
# can't allocate memory", MPS: "MPS backend out of memory")
_SIGNS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device or host allocation failure."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
        if isinstance(exc, oom):
            return True
    except ImportError:  # pragma: no cover - profiling needs torch
        pass
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _SIGNS)


def device_capacity(device) -> tuple[str, int | None]:
    """(a name for the device, its memory in bytes or None): a CUDA device's total
    memory, the machine's RAM for the CPU."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            props = torch.cuda.get_device_properties(dev)
            return f"{dev} ({props.name})", int(props.total_memory)
        except Exception:  # noqa: BLE001 - a broken driver: the name alone
            return str(dev), None
    if dev.type == "cpu":
        try:
            return "cpu", int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return "cpu", None
    return str(dev), None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:limit]}{'...' if len(line) > limit else ''}"


def memory_error(session: Any, exc: BaseException, phase: str) -> DeviceMemoryError:
    """The error for ``exc`` raised by ``session`` (a profiling Session) during
    ``phase``, with :func:`~empas.profile.cost.profile_cost`'s estimate for the
    same model and settings (the calibration's actual tokens and sequence length)."""
    from .cost import profile_cost

    cfg = session.config
    name, capacity = device_capacity(session.device)
    n_seq = sum(int(b.shape[0]) for b in session.batches)
    seq_len = int(session.batches[0].shape[1]) if session.batches else cfg.seq_len
    est = None
    try:
        est = profile_cost(
            session.model,
            units=cfg.units,
            choices=cfg.choices,
            n_tokens=n_seq * seq_len if n_seq else cfg.n_tokens,
            seq_len=seq_len,
            batch_size=cfg.batch_size,
            loss=cfg.loss if isinstance(cfg.loss, str) else "causal_lm",  # a callable: like CE
            cache=cfg.cache,
            embeddings=cfg.embeddings,
            head=cfg.head,
            estimate=cfg.estimate,
            benchmark=False,
            ranks=(),
        )
    except Exception as inner:  # noqa: BLE001 - the estimate is a courtesy: never hide the OOM
        needs = f"(no estimate: {type(inner).__name__}: {inner})"
    if est is not None:
        needs = (
            f"the estimate for this model and these settings is {format_bytes(est.device_bytes)} "
            f"({est.device_bytes:,} bytes) per rank: weights {format_bytes(est.weight_bytes)}, "
            f"block-input cache {format_bytes(est.cache_bytes)}, reference outputs "
            f"{format_bytes(est.reference_bytes)}, one batch of fp32 logits "
            f"{format_bytes(est.logits_bytes)}, plus one batch's activations "
            "(`empas profile --dry-run` with the same options prints it)"
        )
    has = f" of {format_bytes(capacity)}" if capacity is not None else ""
    cache_note = ""
    if cfg.cache_device is not None and str(cfg.cache_device) != str(session.device):
        cache_note = f" (the cache is held on {cfg.cache_device}, not on this device)"
    msg = (
        f"{name}{has} ran out of memory during {phase} ({_first_line(exc)}): {needs}"
        f"{cache_note}. To fit: fewer tokens per batch (--batch-size, now {cfg.batch_size}: "
        "activations and logits), fewer calibration tokens (--n-tokens) or the block-input "
        "cache on the host (--cache-device cpu) or none (--no-cache); weights larger than the "
        "device need a larger device or streaming the blocks. More ranks share the time, not "
        "the memory: every rank holds the whole model."
    )
    return DeviceMemoryError(
        msg,
        device=name,
        needed_bytes=est.device_bytes if est is not None else None,
        capacity_bytes=capacity,
        phase=phase,
    )
