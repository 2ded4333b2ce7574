"""Measuring a model on held-out text: the evaluation tokens (:class:`EvalData`,
sliding windows for causal LMs), the loss of the model as it is now
(:func:`evaluate`), and the :class:`Verifier` that measures plans applied to one
loaded model against its original loss."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..models.loading import default_seq_len, load_model, model_device
from ..models.text import encode_stream, texts_from
from ..plan import Plan
from ..profile.table import load_profile
from ..quant.apply import applied, weight_bytes
from ..util.io import clean_json
from .config import VerifyConfig

__all__ = ["EvalData", "Verifier", "eval_data", "evaluate"]


@dataclass
class EvalData:
    kind: str
    seq_len: int
    stride: int
    windows: list[tuple[int, int, int]]  # (begin, end, n_target) for causal_lm
    stream: Any  # 1-D token tensor (causal_lm) or 2-D windows (embedding)
    batch_size: int
    reference: list[Any] = field(default_factory=list)  # embedding: original's embeddings
    source: str = ""

    @property
    def n_tokens(self) -> int:
        return int(self.stream.numel())


def eval_data(eval_text, tokenizer, kind, seq_len, stride, max_tokens, batch_size) -> EvalData:
    import torch

    if isinstance(eval_text, torch.Tensor):
        if eval_text.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"an eval tensor holds token ids (int64), got {eval_text.dtype}")
        stream, source = eval_text.reshape(-1).long(), f"tensor [{eval_text.numel()}]"
    else:
        texts, source = texts_from(eval_text, "eval text")
        if tokenizer is None:
            raise ValueError("text evaluation needs a tokenizer (tokenizer=...)")
        stream = encode_stream(texts, tokenizer)
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        stream = stream[: int(max_tokens)]
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    stride = max(1, seq_len // 2) if stride is None else int(stride)
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    n = stream.numel()
    if kind == "embedding":
        w = n // seq_len
        if w == 0:
            raise ValueError(f"eval text has {n} tokens, fewer than one window of {seq_len}")
        return EvalData(
            kind,
            seq_len,
            seq_len,
            [],
            stream[: w * seq_len].view(w, seq_len),
            batch_size,
            [],
            source,
        )
    if n < 2:
        raise ValueError(f"eval text has {n} tokens; at least 2 are needed")
    windows, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + seq_len, n)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == n:
            break
        begin += stride
    return EvalData(kind, seq_len, stride, windows, stream, batch_size, [], source)


def _forward(model, ids):
    out = model(input_ids=ids)
    for attr in ("logits", "last_hidden_state"):
        v = getattr(out, attr, None)
        if v is not None:
            return v
    return out[0]


def evaluate(model, data: EvalData) -> dict[str, float]:
    """Loss (and perplexity for causal_lm) of the model as it is now."""
    import torch
    import torch.nn.functional as F

    dev = model_device(model)
    with torch.inference_mode():
        if data.kind == "embedding":
            vals = []
            for i in range(0, data.stream.shape[0], data.batch_size):
                ids = data.stream[i : i + data.batch_size].to(dev)
                e = _forward(model, ids).float().mean(dim=1)
                if len(data.reference) <= i // data.batch_size:
                    data.reference.append(e.clone())
                r = data.reference[i // data.batch_size]
                vals.append(1.0 - F.cosine_similarity(e, r, dim=-1).double())
            loss = float(torch.cat(vals).mean())
            if not math.isfinite(loss):
                raise FloatingPointError("the embedding loss is not finite")
            return {"loss": loss, "ppl": None, "tokens": int(data.stream.numel())}
        nll, count = 0.0, 0
        # windows of the same length are batched; the last may be shorter
        groups: dict[int, list[tuple[int, int, int]]] = {}
        for w in data.windows:
            groups.setdefault(w[1] - w[0], []).append(w)
        for length, ws in groups.items():
            if length < 2:
                continue
            for i in range(0, len(ws), data.batch_size):
                chunk = ws[i : i + data.batch_size]
                ids = torch.stack([data.stream[b:e] for b, e, _ in chunk]).to(dev)
                logits = _forward(model, ids)[:, :-1].float()
                ce = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
                ).view(len(chunk), -1)
                pos = torch.arange(1, length, device=dev)
                for j, (_, _, trg) in enumerate(chunk):
                    keep = pos >= length - trg
                    nll += float(ce[j][keep].double().sum())
                    count += int(keep.sum())
    if count == 0:
        raise ValueError("the evaluation scored no tokens")
    loss = nll / count
    if not math.isfinite(loss):
        raise FloatingPointError("the evaluation loss is not finite (a plan broke the model?)")
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count}


class Verifier:
    """One loaded model, its evaluation tokens and its original loss; measures
    plans applied to it (``config``: a :class:`VerifyConfig`)."""

    def __init__(self, model, eval_text, config: VerifyConfig, profile=None, tokenizer=None):
        self.config = config
        self.model, self.tokenizer, _, self.model_name = load_model(model, config.device, tokenizer)
        self.model.eval()
        self.profile = load_profile(profile) if isinstance(profile, (str, os.PathLike)) else profile
        loss = config.loss
        if loss is None:
            loss = self.profile.loss_kind if self.profile is not None else "causal_lm"
        if loss not in ("causal_lm", "embedding"):
            raise ValueError(f"verify measures loss 'causal_lm' or 'embedding', got {loss!r}")
        clip_search = config.clip_search
        if clip_search is None:
            src = (self.profile.meta.get("source") or {}) if self.profile is not None else {}
            clip_search = bool(src.get("clip_search", False))
        self.clip_search = clip_search
        self.mode = config.mode
        seq_len = default_seq_len(self.model, config.seq_len)
        self.data = eval_data(
            eval_text,
            self.tokenizer,
            loss,
            seq_len,
            config.stride,
            config.max_tokens,
            config.batch_size,
        )
        t = time.perf_counter()
        self.original = evaluate(self.model, self.data)  # also fills the embedding reference
        self.original["bytes"] = weight_bytes(self.model)
        self.eval_s = time.perf_counter() - t

    def measure(self, plan: Plan) -> dict[str, Any]:
        with applied(self.model, plan, self.mode, clip_search=self.clip_search):
            r = evaluate(self.model, self.data)
            r["bytes"] = weight_bytes(self.model)
        return r

    def measured_record(self, m: dict[str, Any]) -> dict[str, Any]:
        """What a plan's ``measured`` field holds for the measurement ``m``."""
        return clean_json(
            {
                "loss": m["loss"],
                "ppl": m.get("ppl"),
                "bytes": m["bytes"],
                "loss_kind": self.data.kind,
                "eval_tokens": self.data.n_tokens,
                "original_loss": self.original["loss"],
            }
        )

    def row(self, name: str, kind: str, plan: Plan | None, m: dict[str, Any]) -> dict[str, Any]:
        row = {
            "name": name,
            "kind": kind,
            "loss": m["loss"],
            "ppl": m.get("ppl"),
            "bytes": m["bytes"],
        }
        row["delta"] = m["loss"] - self.original["loss"]
        if plan is not None:
            pred = plan.predicted
            row["avg_bits"] = pred.get("avg_bits")
            row["pred_loss"] = pred.get("loss")
            row["pred_bytes"] = pred.get("bytes")
            if self.profile is not None and pred.get("loss") is not None:
                row["pred_delta"] = pred["loss"] - self.profile.baseline
                row["error"] = row["delta"] - row["pred_delta"]
            row["bits"] = plan.bits
        return row

    def meta(self) -> dict[str, Any]:
        d = self.data
        return {
            "model": self.model_name,
            "loss": d.kind,
            "eval_tokens": d.n_tokens,
            "eval_source": d.source,
            "seq_len": d.seq_len,
            "stride": d.stride,
            "mode": self.mode,
            "device": str(model_device(self.model)),
            "original": {k: v for k, v in self.original.items()},
            "profile_baseline": None if self.profile is None else self.profile.baseline,
            "clip_search": self.clip_search,
        }
