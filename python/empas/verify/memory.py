"""Memory when loaded: each plan's packed checkpoint loaded in a fresh Python
process (:mod:`._memprobe`), reporting the resident (and GPU) memory it adds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..models.loading import model_device
from ..plan import Plan
from ..quant.checkpoint import save_quantized
from .evaluate import Verifier

__all__ = ["probe_all", "probe_memory"]


def probe_all(v: Verifier, rows, plans: dict[str, Plan]) -> None:
    """Fills ``rss_mb``, ``gpu_mb`` and ``loaded_bytes`` of each row with a plan:
    its packed checkpoint loaded in a fresh process."""
    dev = str(model_device(v.model))
    with tempfile.TemporaryDirectory(prefix="empas-mem-") as tmp:
        for r in rows:
            if r["name"] not in plans:
                continue
            d = Path(tmp) / r["name"]
            save_quantized(v.model, plans[r["name"]], d, clip_search=v.clip_search)
            m = probe_memory(d, dev)
            r["rss_mb"] = m["rss_delta"] / 2**20
            r["gpu_mb"] = None if m.get("cuda_bytes") is None else m["cuda_bytes"] / 2**20
            r["loaded_bytes"] = m["weight_bytes"]
            shutil.rmtree(d, ignore_errors=True)


def probe_memory(checkpoint: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """Loads a packed checkpoint in a fresh Python process and returns
    ``{"rss_delta": bytes of resident memory the load added, "weight_bytes":
    bytes of the loaded tensors, "cuda_bytes": GPU bytes allocated or None}``."""
    proc = subprocess.run(
        [sys.executable, "-m", "empas.verify._memprobe", str(checkpoint), device],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
