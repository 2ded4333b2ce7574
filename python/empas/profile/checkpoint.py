"""The profile checkpoint (``empas.profile-checkpoint/1``): per-sequence losses of
every finished experiment, keyed by everything that determines them (model
fingerprint, calibration hash, units, choices, loss, quantizer, batches), written
atomically after each experiment so that a killed run resumes where it stopped."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, StaleCheckpointError
from ..util.io import atomic_write_text, loads_json

__all__ = ["CHECKPOINT_FORMAT", "ON_STALE", "ProfileCheckpoint", "StaleCheckpointError"]

CHECKPOINT_FORMAT = "empas.profile-checkpoint/1"
ON_STALE = ("error", "restart")


@dataclass
class ProfileCheckpoint:
    """``done``: experiment key -> per-sequence losses. ``on_stale``: what to do
    with a checkpoint of another run: "error" (StaleCheckpointError naming what
    differs) or "restart" (say so on stderr and start over; the file is replaced at
    the first save)."""

    path: Path | None
    key: dict[str, Any]
    on_stale: str = "error"
    done: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_stale not in ON_STALE:
            raise ValueError(f"on_stale must be one of {ON_STALE}, got {self.on_stale!r}")

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        doc = loads_json(self.path.read_text(), f"checkpoint {self.path}", FormatError)
        if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
            raise FormatError(
                f"{self.path} is not an EMPAS profile checkpoint ({CHECKPOINT_FORMAT})"
            )
        old = doc.get("key", {})
        done = doc.get("done", {})
        if not isinstance(old, dict) or not isinstance(done, dict):
            raise FormatError(f"checkpoint {self.path}: 'key' and 'done' must be objects")
        for name, losses in done.items():
            if not isinstance(losses, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in losses
            ):
                raise FormatError(
                    f"checkpoint {self.path}: done[{name!r}] must be a list of finite losses "
                    "(a hand-edited or corrupt checkpoint; delete it to start over)"
                )
        for k, v in self.key.items():
            if old.get(k) != v:
                exc = StaleCheckpointError(
                    f"checkpoint {self.path} was written for a different run: {k} differs "
                    f"(checkpoint: {old.get(k)!r}, now: {v!r}); delete it or choose another path"
                )
                if self.on_stale == "error":
                    raise exc
                print(f"note: {exc}; starting over", file=sys.stderr)
                self.done = {}
                return
        self.done = {k: list(v) for k, v in done.items()}

    def save(self) -> None:
        if self.path is None:
            return
        doc = {"format": CHECKPOINT_FORMAT, "key": self.key, "done": self.done}
        atomic_write_text(self.path, json.dumps(doc))
