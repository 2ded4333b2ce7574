"""Text in, tokens out: calibration and evaluation text from files, text aliases
(``example:bbc-news:calib`` / ``:eval``), lists of strings or ``datasets.Dataset``
objects, encoded as one token stream."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["encode_stream", "texts_from"]


def texts_from(source, what: str = "calibration") -> tuple[list[str], str]:
    """``(texts, description)`` of a text file path, a text alias
    (``"example:bbc-news:calib"`` or ``"example:bbc-news:eval"``: BBC News articles,
    split by article), a list of strings or a ``datasets.Dataset`` with a ``text``
    column; ``what`` names it in errors."""
    if isinstance(source, str) and source.startswith("example:") and not Path(source).is_file():
        from .examples import example_text

        try:
            return example_text(source)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(
                f"{what} file {str(p)!r} not found (pass a text file, example:bbc-news:calib "
                "or :eval, a list of strings, a token tensor or a datasets.Dataset)"
            )
        return [p.read_text(encoding="utf-8", errors="replace")], f"file:{p}"
    if hasattr(source, "column_names") and hasattr(source, "__getitem__"):
        cols = list(source.column_names)
        if "text" not in cols:
            raise ValueError(f"{what} dataset has no 'text' column (columns: {cols})")
        return [str(t) for t in source["text"]], "datasets.Dataset"
    if isinstance(source, Sequence) and all(isinstance(t, str) for t in source):
        if len(source) == 0:
            raise ValueError(f"{what} is an empty list of strings")
        return list(source), f"list[str] ({len(source)} texts)"
    raise TypeError(
        f"{what} must be a path to a text file, a list of strings, a token tensor or a "
        f"datasets.Dataset, got {type(source).__name__}"
    )


def encode_stream(texts: list[str], tokenizer):
    """One token stream (int64 tensor): each text's ids (no special tokens)
    followed by EOS (or SEP). The tokenizer's own truncation and padding are ignored."""
    import torch

    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    parts: list[int] = []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # a copy without truncation/padding: tokenizer.json may set them (all-MiniLM's
        # truncates at 128), which would keep only the head of every text
        from tokenizers import Tokenizer

        bt = Tokenizer.from_str(backend.to_str())
        bt.no_truncation()
        bt.no_padding()
        encs = [e.ids for e in bt.encode_batch(texts, add_special_tokens=False)]
    else:
        encs = [
            tokenizer(t, add_special_tokens=False, truncation=False)["input_ids"] for t in texts
        ]
    for e in encs:
        parts.extend(e)
        if eos is not None:
            parts.append(eos)
    return torch.tensor(parts, dtype=torch.long)
