"""Atomic file writes and JSON documents, in plain Python (no compiled extension).

Every file EMPAS writes goes through :func:`atomic_write_text`: the text is written
to a temporary file in the same directory, flushed to disk, then renamed over the
target, so a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_json",
    "loads_json",
    "read_json",
    "sha256_file",
    "write_json",
]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically; creates parent directories."""
    data = text.encode("utf-8")
    return atomic_write_bytes(path, lambda f: f.write(data))


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Calls ``write(f)`` on a temporary binary file next to ``path``, fsyncs it
    and renames it over ``path``: a crash or an error in ``write`` leaves the old
    file (or none), never a half-written one. Creates parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a directory's entries (a rename into it) to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def clean_json(obj: Any) -> Any:
    """``obj`` with non-finite floats as None and numpy scalars as Python numbers
    (what strict JSON can hold)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    item = getattr(obj, "item", None)  # numpy scalars (numpy is not imported here)
    if item is not None and type(obj).__module__ == "numpy" and getattr(obj, "ndim", 1) == 0:
        return clean_json(item())
    return obj


def write_json(path: str | os.PathLike, doc: Any, indent: int | None = 2) -> Path:
    """Writes ``doc`` as strict JSON (non-finite numbers as null) atomically."""
    return atomic_write_text(
        path, json.dumps(clean_json(doc), indent=indent, allow_nan=False) + "\n"
    )


def read_json(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> Any:
    """Parses the JSON file ``path``; ``error`` (naming ``what`` and the file) when it
    is missing, unreadable or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{path}: malformed JSON in {what} ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise error(f"{path}: {what} is nested too deeply to be an EMPAS file") from None


def loads_json(text: str, what: str, error: type[Exception] = ValueError) -> Any:
    """``json.loads(text)``; ``error`` naming ``what`` for malformed JSON and for
    JSON nested too deeply (never a RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise error(f"{what}: JSON nested too deeply to be an EMPAS file") from None


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
