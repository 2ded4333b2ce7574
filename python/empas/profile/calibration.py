"""Calibration tokens: a seeded choice of non-overlapping windows of the
calibration text (or of a token tensor), with the identity a profile records."""

from __future__ import annotations

import hashlib

import numpy as np

from ..models.text import encode_stream, texts_from

__all__ = [
    "DEFAULT_SEQUENCES",
    "batches",
    "calibration_tokens",
    "extra_windows",
    "selection_tokens",
]

DEFAULT_SEQUENCES = 32


def calibration_tokens(calibration, tokenizer, seq_len, n_tokens, seed):
    """``(windows [n_seq, seq_len], meta)``: ``n_tokens`` tokens (default: 32
    sequences) of ``calibration`` (text or token ids) and its identity record."""
    windows, seq_len, source = _all_windows(calibration, tokenizer, seq_len)
    pick = _pick(windows.shape[0], seq_len, n_tokens, seed)
    return _record(windows, pick, seq_len, seed, source)


def selection_tokens(calibration, tokenizer, calib_meta: dict, n_tokens: int, seed: int):
    """``(windows, meta)``: ``n_tokens`` tokens of ``calibration`` in windows that a
    profile measured on ``calib_meta`` (its calibration record) did *not* use: the
    selection split, for measuring plans without reusing the profile's tokens.
    The profile's windows are found again from its record (seed, sequence count,
    digest); a different calibration text is an error naming the mismatch."""
    seq_len = int(calib_meta["seq_len"])
    windows, seq_len, source = _all_windows(calibration, tokenizer, seq_len)
    n_prof = int(calib_meta["n_sequences"])
    used = _pick(windows.shape[0], seq_len, n_prof * seq_len, int(calib_meta["seed"]))
    _, again = _record(windows, used, seq_len, int(calib_meta["seed"]), source)
    if again["sha256"] != calib_meta.get("sha256"):
        raise ValueError(
            "the selection text is not the profile's calibration text (its windows "
            f"{again['sha256']} differ from the profile's {calib_meta.get('sha256')}): pass "
            "the same calibration the profile was measured on"
        )
    n_all = windows.shape[0]
    rest = np.setdiff1d(np.arange(n_all), used) if used is not None else np.zeros(0, np.int64)
    n_seq = n_tokens // seq_len
    if n_seq < 1:
        raise ValueError(f"selection needs at least one sequence of {seq_len} tokens")
    if n_seq > rest.size:
        raise ValueError(
            f"the calibration text has {rest.size} windows of {seq_len} tokens the profile did "
            f"not use; {n_tokens} selection tokens need {n_seq}: give more text or fewer tokens"
        )
    pick = np.sort(np.random.default_rng([seed, 17]).choice(rest, n_seq, replace=False))
    return _record(windows, pick, seq_len, seed, source)


def extra_windows(calibration, tokenizer, seq_len, used, n_seq: int, seed: int, round_: int):
    """Up to ``n_seq`` windows of ``calibration`` that are none of ``used`` (a
    [k, seq_len] tensor of windows measured so far), a seeded choice per round; None
    when no unused window is left (adaptive measurement's next round)."""
    windows, seq_len, _ = _all_windows(calibration, tokenizer, seq_len)
    seen = {tuple(r) for r in used.tolist()}
    rest = np.array([i for i, r in enumerate(windows.tolist()) if tuple(r) not in seen])
    if rest.size == 0:
        return None
    k = min(n_seq, rest.size)
    pick = np.sort(np.random.default_rng([seed, 29, round_]).choice(rest, k, replace=False))
    return _record(windows, pick, seq_len, seed, "")[0]


def _all_windows(calibration, tokenizer, seq_len):
    import torch

    if isinstance(calibration, torch.Tensor):
        ids = calibration
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"a calibration tensor holds token ids (int64), got {ids.dtype}")
        if ids.dim() == 2:
            if seq_len is not None and seq_len != ids.shape[1]:
                raise ValueError(
                    f"calibration tensor rows have {ids.shape[1]} tokens but seq_len={seq_len}"
                )
            seq_len = int(ids.shape[1])
            windows = ids.long()
            source = f"tensor {list(ids.shape)}"
        elif ids.dim() == 1:
            stream, source = ids.long(), f"tensor [{ids.numel()}]"
            windows = None
        else:
            raise ValueError(f"a calibration tensor must be 1-D or 2-D, got {ids.dim()}-D")
    else:
        texts, source = texts_from(calibration)
        if tokenizer is None:
            raise ValueError("text calibration needs a tokenizer (tokenizer=...)")
        stream, windows = encode_stream(texts, tokenizer), None
    if windows is None:
        if seq_len is None:
            raise ValueError("seq_len is required")
        w = stream.numel() // seq_len
        if w == 0:
            raise ValueError(
                f"calibration has {stream.numel()} tokens, fewer than one sequence of "
                f"seq_len={seq_len}; give more text or a smaller seq_len"
            )
        windows = stream[: w * seq_len].view(w, seq_len)
    return windows, int(seq_len), source


def _pick(available: int, seq_len: int, n_tokens, seed):
    """Which windows a run of ``n_tokens`` takes (None: all of them)."""
    if n_tokens is None:
        n_seq = min(available, DEFAULT_SEQUENCES)
    else:
        n_seq = n_tokens // seq_len
        if n_seq < 1:
            raise ValueError(f"n_tokens={n_tokens} is less than one sequence (seq_len={seq_len})")
        if n_seq > available:
            raise ValueError(
                f"calibration has {available * seq_len} tokens ({available} sequences of "
                f"{seq_len}); n_tokens={n_tokens} asks for more"
            )
    if n_seq < available:  # a seeded choice of non-overlapping windows, in order
        return np.sort(np.random.default_rng(seed).choice(available, n_seq, replace=False))
    return None


def _record(windows, pick, seq_len, seed, source):
    import torch

    if pick is not None:
        windows = windows[torch.as_tensor(pick)]
    windows = windows.contiguous()
    digest = hashlib.sha256(windows.numpy().astype(np.int64).tobytes()).hexdigest()[:16]
    meta = {
        "source": source,
        "tokens": int(windows.numel()),
        "seq_len": int(seq_len),
        "n_sequences": int(windows.shape[0]),
        "seed": int(seed),
        "sha256": digest,
    }
    return windows, meta


def batches(windows, batch_size, device):
    """The windows in batches of ``batch_size`` rows, on ``device``."""
    return [windows[i : i + batch_size].to(device) for i in range(0, windows.shape[0], batch_size)]
