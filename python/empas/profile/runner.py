"""Sensitivity profiling of real models: the measured Δloss table.

For every unit (decoder block, attention/MLP sub-block, single linear, or a
user grouping) and every choice (2..8 bits fake-quantized by the C++ ops, 16 =
fp16 storage, 0 = block dropped), the unit alone is changed, the loss on the
calibration tokens is measured, and the weights are restored bit-exactly.

Speed: one model load; the hidden states entering every block are cached once
(baseline pass) and each experiment runs from its own block onward: blocks
before it return their cached output without computing. Per-sequence losses
give the standard error of every Δ (paired with the baseline on the same
tokens). A checkpoint file lets a killed run resume without redoing finished
experiments.

    >>> prof = empas.profile(path, calib_texts, units="block", choices=(2, 3, 4, 8))
    >>> prof.delta.shape          # n_units x n_choices (16 is always measured too)
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FormatError
from .qformats import choice_formats
from .quant import _fake_quant_module_
from .sensitivity import Profile

__all__ = ["estimate_sensitivity", "profile", "rank_correlation"]

LOSSES = ("causal_lm", "kl", "embedding")
UNIT_MODES = ("block", "sublayer", "linear")
CHECKPOINT_FORMAT = "empas.profile-checkpoint/1"


class StaleCheckpointError(FormatError):
    """A profile checkpoint written for another model, text or settings."""


_DEFAULT_SEQUENCES = 32


class ProfileError(FormatError):
    """Profiling cannot proceed: bad model, data, units or a non-finite loss."""


# ----------------------------------------------------------------------------
# modules and units
# ----------------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    module: Any
    kind: str  # "linear" | "conv1d" | "embedding"

    @property
    def weight(self):
        return self.module.weight

    def view2d(self):
        """The weight as [out, in] (groups run along `in`); a view, never a copy."""
        w = self.module.weight.data
        return w.t() if self.kind == "conv1d" else w

    @property
    def shape(self) -> list[int]:
        return [int(s) for s in self.view2d().shape]


@dataclass
class _UnitSpec:
    name: str
    kind: str
    members: list[_Member]
    start: int  # first block whose output changes; -1 = embedding; n_blocks = head only
    block: int | None = None  # the block this unit is (for choice 0)

    @property
    def params(self) -> int:
        return sum(m.weight.numel() for m in _distinct(self.members))


def _distinct(members: list[_Member]) -> list[_Member]:
    """Members with distinct weight tensors (a tied embedding/head counts once)."""
    seen, out = set(), []
    for m in members:
        if m.weight.data_ptr() not in seen:
            seen.add(m.weight.data_ptr())
            out.append(m)
    return out


def _is_conv1d(mod) -> bool:
    return type(mod).__name__ == "Conv1D" and getattr(mod, "weight", None) is not None


def _quantizable(model) -> dict[str, _Member]:
    import torch.nn as nn

    out: dict[str, _Member] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            out[name] = _Member(name, mod, "linear")
        elif _is_conv1d(mod) and mod.weight.dim() == 2:
            out[name] = _Member(name, mod, "conv1d")
    return out


def _find_blocks(model, quant: dict[str, _Member]) -> tuple[str, list[Any]]:
    """The decoder (or encoder) stack: the ModuleList of same-class modules that
    holds the most quantizable weights."""
    import torch.nn as nn

    best, best_n = None, 0
    for name, ml in model.named_modules():
        if not isinstance(ml, nn.ModuleList) or len(ml) == 0:
            continue
        if len({type(b) for b in ml}) != 1:
            continue
        n = sum(m.weight.numel() for k, m in quant.items() if k.startswith(name + "."))
        if n > best_n:
            best, best_n = name, n
    if best is None:
        raise ProfileError(
            f"{type(model).__name__} has no stack of identical blocks (nn.ModuleList) holding "
            "quantizable layers (nn.Linear / Conv1D); EMPAS profiles transformer models"
        )
    return best, list(model.get_submodule(best))


def _sublayer_kind(child: str) -> str:
    c = child.lower()
    if "attn" in c or "attention" in c:
        return "attn"
    return "mlp"


def _build_units(model, units, embeddings: bool, head: bool):
    quant = _quantizable(model)
    head_mod = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb_mod = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head_name = next((k for k, m in quant.items() if m.module is head_mod), None)
    body = {k: m for k, m in quant.items() if k != head_name}
    if not body:
        raise ProfileError(
            f"{type(model).__name__} has no quantizable layers (nn.Linear or transformers "
            "Conv1D) outside the output head"
        )
    prefix, blocks = _find_blocks(model, body)
    n_blocks = len(blocks)

    def block_of(name: str) -> int | None:
        if name.startswith(prefix + "."):
            return int(name[len(prefix) + 1 :].split(".", 1)[0])
        return None

    specs: list[_UnitSpec] = []
    if isinstance(units, str):
        if units not in UNIT_MODES:
            raise ValueError(
                f"units must be one of {UNIT_MODES} or a mapping of unit name -> module names or "
                f"regexes, got {units!r}"
            )
        in_blocks = {k: m for k, m in body.items() if block_of(k) is not None}
        if units == "block":
            for i in range(n_blocks):
                ms = [m for k, m in in_blocks.items() if block_of(k) == i]
                if ms:
                    specs.append(_UnitSpec(f"{prefix}.{i}", "block", ms, i, i))
        elif units == "sublayer":
            groups: dict[str, list[_Member]] = {}
            for k, m in in_blocks.items():
                i = block_of(k)
                child = k[len(prefix) + 1 :].split(".")[1]
                groups.setdefault(f"{prefix}.{i}.{child}", []).append(m)
            for g, ms in groups.items():
                i = block_of(g)
                specs.append(_UnitSpec(g, _sublayer_kind(g.rsplit(".", 1)[1]), ms, i))
        else:
            for k, m in in_blocks.items():
                specs.append(_UnitSpec(k, "linear", [m], block_of(k)))
    elif isinstance(units, Mapping):
        taken: dict[str, str] = {}
        allq = dict(body)
        if head_name is not None:
            allq[head_name] = quant[head_name]
        for uname, pats in units.items():
            if isinstance(pats, str):
                pats = [pats]
            ms = []
            for k, m in allq.items():
                if any(k == p or re.fullmatch(p, k) for p in pats):
                    if k in taken:
                        raise ValueError(
                            f"module {k!r} is in two units: {taken[k]!r} and {uname!r}"
                        )
                    taken[k] = str(uname)
                    ms.append(m)
            if not ms:
                sample = ", ".join(list(allq)[:4])
                raise ValueError(
                    f"unit {uname!r}: {list(pats)!r} matches no quantizable module "
                    f"(names look like: {sample}, ...)"
                )
            starts = [block_of(m.name) for m in ms]
            start = min(n_blocks if s is None else s for s in starts)
            specs.append(_UnitSpec(str(uname), "group", ms, start))
    else:
        raise ValueError(f"units must be a string or a mapping, got {type(units).__name__}")

    if embeddings:
        if emb_mod is None or getattr(emb_mod, "weight", None) is None:
            raise ProfileError("embeddings=True but the model has no input embedding")
        ename = next(k for k, m in model.named_modules() if m is emb_mod)
        tied = head_mod is not None and head_mod.weight is emb_mod.weight
        kind = "embedding"
        members = [_Member(ename, emb_mod, "embedding")]
        if tied and head:
            members.append(quant[head_name])  # one shared tensor: one unit
        specs.append(
            _UnitSpec(ename + ("+" + head_name if tied and head else ""), kind, members, -1)
        )
    if head and head_name is not None:
        tied = emb_mod is not None and head_mod.weight is emb_mod.weight
        if tied and not embeddings:
            specs.append(_UnitSpec(head_name, "head", [quant[head_name]], -1))
        elif not tied:
            specs.append(_UnitSpec(head_name, "head", [quant[head_name]], n_blocks))
    elif head and head_name is None:
        raise ProfileError("head=True but the model has no linear output head")
    return specs, prefix, blocks


# ----------------------------------------------------------------------------
# calibration
# ----------------------------------------------------------------------------


def _texts_from(calibration, what: str = "calibration") -> tuple[list[str], str]:
    if isinstance(calibration, (str, os.PathLike)):
        p = Path(calibration)
        if not p.is_file():
            raise FileNotFoundError(
                f"{what} file {str(p)!r} not found (pass a text file, a list of strings, "
                "a token tensor or a datasets.Dataset)"
            )
        return [p.read_text(encoding="utf-8", errors="replace")], f"file:{p}"
    if hasattr(calibration, "column_names") and hasattr(calibration, "__getitem__"):
        cols = list(calibration.column_names)
        if "text" not in cols:
            raise ValueError(f"{what} dataset has no 'text' column (columns: {cols})")
        return [str(t) for t in calibration["text"]], "datasets.Dataset"
    if isinstance(calibration, Sequence) and all(isinstance(t, str) for t in calibration):
        if len(calibration) == 0:
            raise ValueError(f"{what} is an empty list of strings")
        return list(calibration), f"list[str] ({len(calibration)} texts)"
    raise TypeError(
        f"{what} must be a path to a text file, a list of strings, a token tensor or a "
        f"datasets.Dataset, got {type(calibration).__name__}"
    )


def _encode_stream(texts: list[str], tokenizer):
    """One token stream: each text's ids (no special tokens) followed by EOS (or SEP)."""
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


def _calibration_tokens(calibration, tokenizer, seq_len, n_tokens, seed):
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
        texts, source = _texts_from(calibration)
        if tokenizer is None:
            raise ValueError("text calibration needs a tokenizer (tokenizer=...)")
        stream, windows = _encode_stream(texts, tokenizer), None
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
    available = windows.shape[0]
    if n_tokens is None:
        n_seq = min(available, _DEFAULT_SEQUENCES)
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
        pick = np.sort(np.random.default_rng(seed).choice(available, n_seq, replace=False))
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


# ----------------------------------------------------------------------------
# the experiment runner: cached block inputs, run from a block onward
# ----------------------------------------------------------------------------


class _Runner:
    """Runs the model on the calibration batches, optionally from block `start`
    onward with cached inputs. Holds the cache and the reference outputs."""

    def __init__(self, model, blocks, batches, loss, cache: bool, cache_device):
        self.model = model
        self.blocks = blocks
        self.batches = batches
        self.loss = loss
        self.use_cache = cache
        self.cache_device = cache_device
        self.cached: list[list[Any]] = []  # [batch][block] -> input hidden (and final output)
        self.out_tuple: int | None = None  # blocks return a tuple of this length, or a tensor
        self.reference: list[Any] = []  # per batch: what kl/embedding compare against
        sig = inspect.signature(model.forward).parameters
        self.fwd_kwargs = {"use_cache": False} if "use_cache" in sig else {}

    # -- helpers ------------------------------------------------------------
    def _wrap(self, h):
        return h if self.out_tuple is None else (h,) + (None,) * (self.out_tuple - 1)

    def _forward(self, ids):
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=ids, **self.fwd_kwargs)
        if getattr(out, "logits", None) is not None:
            return out.logits
        if getattr(out, "last_hidden_state", None) is not None:
            return out.last_hidden_state
        return out[0]

    def _per_seq(self, out, b: int):
        import torch
        import torch.nn.functional as F

        ids = self.batches[b]
        with torch.inference_mode():
            if self.loss == "causal_lm":
                lg = out[:, :-1].float()
                ce = F.cross_entropy(
                    lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
                )
                v = ce.view(ids.shape[0], -1).mean(dim=1)
            elif self.loss == "kl":
                lq = F.log_softmax(out.float(), dim=-1)
                lr = self.reference[b].to(lq.device).float()
                v = (lr.exp() * (lr - lq)).sum(-1).mean(-1)
            elif self.loss == "embedding":
                e = out.float().mean(dim=1)
                r = self.reference[b].to(e.device)
                v = 1.0 - F.cosine_similarity(e, r, dim=-1)
            else:
                v = self.loss(out, ids)
                v = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
                if v.numel() not in (1, ids.shape[0]):
                    raise ValueError(
                        f"the loss callable returned {v.numel()} values for a batch of "
                        f"{ids.shape[0]} sequences (return one per sequence, or a scalar)"
                    )
        return v.double().cpu().numpy()

    # -- passes -----------------------------------------------------------------
    def baseline(self) -> np.ndarray:
        """Full forward on every batch, caching block inputs and reference outputs."""
        import torch.nn.functional as F

        store: list[Any] = []
        hooks = []

        def pre(i):
            def fn(mod, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                store.append((i, h))

            return fn

        def post(mod, args, kwargs, out):
            if isinstance(out, tuple):
                if any(x is not None for x in out[1:]):
                    raise ProfileError(
                        f"{type(mod).__name__} returns extra outputs EMPAS cannot cache; "
                        "profile with cache=False"
                    )
                self.out_tuple = len(out)
                store.append((len(self.blocks), out[0]))
            else:
                store.append((len(self.blocks), out))

        if self.use_cache:
            for i, blk in enumerate(self.blocks):
                hooks.append(blk.register_forward_pre_hook(pre(i), with_kwargs=True))
            hooks.append(self.blocks[-1].register_forward_hook(post, with_kwargs=True))
        else:  # still learn the blocks' output structure (for dropped blocks)
            hooks.append(self.blocks[-1].register_forward_hook(post, with_kwargs=True))
        losses = []
        try:
            for b, ids in enumerate(self.batches):
                store.clear()
                out = self._forward(ids)
                if self.loss == "kl":
                    self.reference.append(F.log_softmax(out.float(), dim=-1).to(self.cache_device))
                elif self.loss == "embedding":
                    self.reference.append(out.float().mean(dim=1))
                if self.use_cache:
                    row = [None] * (len(self.blocks) + 1)
                    for i, h in store:
                        row[i] = h.detach().to(self.cache_device)
                    self.cached.append(row)
                losses.append(self._per_seq(out, b))
        finally:
            for h in hooks:
                h.remove()
        return np.concatenate(losses)

    def run(self, start: int) -> np.ndarray:
        """Per-sequence losses with the model's current weights, computing only
        from block `start` onward when the cache allows it."""
        n = len(self.blocks)
        skip = self.use_cache and start > 0
        losses = []
        for b, ids in enumerate(self.batches):
            if skip:
                row = self.cached[b]
                for j in range(min(start, n)):
                    self.blocks[j].forward = self._cached_forward(row[j + 1])
            try:
                out = self._forward(ids)
            finally:
                if skip:
                    for j in range(min(start, n)):
                        del self.blocks[j].forward
            losses.append(self._per_seq(out, b))
        return np.concatenate(losses)

    def _cached_forward(self, h):
        def fwd(*args, **kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            return self._wrap(h.to(x.device))

        return fwd

    def drop_forward(self):
        def fwd(*args, **kwargs):
            return self._wrap(args[0] if args else kwargs["hidden_states"])

        return fwd


# ----------------------------------------------------------------------------
# applying a choice and restoring
# ----------------------------------------------------------------------------


@dataclass
class _QuantSettings:
    group_size: int = 128
    symmetric: bool = True
    clip_search: bool = False


def _apply(spec: _UnitSpec, bits: int, qs: _QuantSettings, blocks, runner) -> Callable[[], None]:
    """Changes the unit to `bits`; returns the function that restores it exactly."""
    import torch

    if bits == 0:
        blk = blocks[spec.block]
        blk.forward = runner.drop_forward()

        def undo_drop():
            del blk.forward

        return undo_drop
    saved = []
    try:
        for m in _distinct(spec.members):  # a tied tensor is quantized once
            w = m.weight.data
            saved.append((w, w.clone()))
            _fake_quant_module_(m, bits, qs.group_size, qs.symmetric, qs.clip_search)
    except BaseException:
        for w, orig in saved:
            w.copy_(orig)
        raise

    def undo():
        with torch.no_grad():
            for w, orig in saved:
                w.copy_(orig)

    return undo


# ----------------------------------------------------------------------------
# model loading and identity
# ----------------------------------------------------------------------------


def _load(model_or_path, device, tokenizer):
    import torch

    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if not path.exists():
            raise FileNotFoundError(
                f"model path {str(path)!r} does not exist (EMPAS loads models from local "
                "directories; no model hub is contacted)"
            )
        if not (path / "config.json").is_file():
            raise ProfileError(f"{str(path)!r} holds no HuggingFace model (no config.json)")
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

        cfg = AutoConfig.from_pretrained(path)
        archs = list(getattr(cfg, "architectures", None) or [])
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        if causal or not archs:
            try:
                model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
            except ValueError:  # no causal-LM class for this config
                model = AutoModel.from_pretrained(path, dtype="auto")
        else:  # an encoder (e.g. all-MiniLM: BertModel): no LM head to invent
            model = AutoModel.from_pretrained(path, dtype="auto")
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
            except Exception:
                tokenizer = None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        owned = True
        name = str(path)
    else:
        model = model_or_path
        if not hasattr(model, "named_modules"):
            raise TypeError(
                f"model_or_path must be a torch model or a path, got {type(model).__name__}"
            )
        owned = False
        name = getattr(model, "name_or_path", None) or getattr(
            getattr(model, "config", None), "_name_or_path", type(model).__name__
        )
        if tokenizer is None and name and Path(str(name)).is_dir():
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(name)
            except Exception:
                tokenizer = None
        if device is not None:
            p = next(model.parameters())
            if p.device != torch.device(device):
                raise ValueError(
                    f"the model is on {p.device} but device={device!r}; move it first (a model "
                    "object is profiled where it is and left unchanged)"
                )
    return model, tokenizer, owned, str(name)


def _fingerprint(model) -> str:
    """A cheap identity of the weights: names, shapes, dtypes and a strided sample."""
    import torch

    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        h.update(cfg.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            flat = p.detach().reshape(-1)
            if flat.numel():
                step = max(1, flat.numel() // 4096)
                h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _unsearched_bytes(model, specs) -> int:
    """Bytes of what a checkpoint stores besides the searched weights: distinct
    parameters and persistent buffers (the state dict) at their stored dtype.
    Non-persistent buffers (e.g. rotary inv_freq) are recomputed, not stored."""
    searched = {m.weight.data_ptr() for s in specs for m in s.members}
    seen, n = set(), 0
    for p in model.state_dict(keep_vars=True).values():
        if p.data_ptr() in seen or p.data_ptr() in searched:
            continue
        seen.add(p.data_ptr())
        n += p.numel() * p.element_size()
    return int(n)


# ----------------------------------------------------------------------------
# checkpoint
# ----------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class _Checkpoint:
    path: Path | None
    key: dict[str, Any]
    done: dict[str, list[float]] = field(default_factory=dict)

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise FormatError(f"checkpoint {self.path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
            raise FormatError(
                f"{self.path} is not an EMPAS profile checkpoint ({CHECKPOINT_FORMAT})"
            )
        old = doc.get("key", {})
        for k, v in self.key.items():
            if old.get(k) != v:
                raise StaleCheckpointError(
                    f"checkpoint {self.path} was written for a different run: {k} differs "
                    f"(checkpoint: {old.get(k)!r}, now: {v!r}); delete it or choose another path"
                )
        self.done = {k: list(v) for k, v in doc.get("done", {}).items()}

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": CHECKPOINT_FORMAT, "key": self.key, "done": self.done}
        _atomic_write(self.path, json.dumps(doc))


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------


def _check_choices(choices, units_kind_block: bool) -> list[int]:
    out = []
    for b in choices:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise ValueError(f"choices must be integer bit widths, got {b!r}")
        b = int(b)
        if not (b in (0, 16) or 2 <= b <= 8):
            raise ValueError(f"bit width {b} is not supported: use 2..8, 16 (fp16) or 0 (drop)")
        if b == 0 and not units_kind_block:
            raise ValueError('choice 0 (drop) applies to whole blocks: use units="block"')
        if b not in out:
            out.append(b)
    if 16 not in out:
        out.append(16)
    return sorted(out)


def _loss_name(loss) -> str:
    if callable(loss):
        return getattr(loss, "__name__", "callable")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
    return loss


def _batches(windows, batch_size, device):
    return [windows[i : i + batch_size].to(device) for i in range(0, windows.shape[0], batch_size)]


def profile(
    model_or_path,
    calibration,
    units: str | Mapping[str, str | Sequence[str]] = "block",
    choices: Sequence[int] = (2, 3, 4, 8),
    loss: str | Callable = "causal_lm",
    n_tokens: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 4,
    device: str | None = None,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    *,
    tokenizer=None,
    group_size: int = 128,
    symmetric: bool = True,
    clip_search: bool = False,
    embeddings: bool = False,
    head: bool = False,
    cache: bool = True,
    cache_device: str | None = None,
    progress: bool = True,
) -> Profile:
    """Measures Δloss for every (unit, choice); returns an ``empas.sensitivity/1`` profile.

    ``model_or_path``: a model object (profiled where it is and left exactly as it
    was) or a local directory for ``from_pretrained``. ``calibration``: a text
    file, a list of strings, a token tensor (1-D stream or [n_seq, seq_len]) or a
    ``datasets.Dataset`` with a ``text`` column. ``units``: "block", "sublayer",
    "linear", or ``{unit_name: module name or regex (or a list)}``;
    ``embeddings=`` / ``head=`` add the input embedding / output head as units.
    ``choices``: bits in 2..8, 0 = drop the block (units="block" only); 16 (fp16
    storage) is always measured too. ``loss``: "causal_lm" (cross-entropy),
    "kl" (to the unquantized model's next-token distribution), "embedding"
    (1 - cosine of mean-pooled outputs; for encoders), or a callable
    ``fn(output, input_ids) -> per-sequence losses`` (output: logits or last
    hidden state). ``n_tokens``: calibration tokens (default: 32 sequences);
    ``seq_len``: tokens per sequence (default: min(256, the model's context)).
    ``checkpoint``: a JSON file updated after every experiment; a rerun with
    the same arguments resumes from it. ``cache``: run every experiment from its
    own block on cached block inputs (``cache_device`` holds them; default the
    model's device).
    """
    return _Session(
        model_or_path,
        calibration,
        units,
        choices,
        loss,
        n_tokens,
        seq_len,
        batch_size,
        device,
        seed,
        tokenizer,
        _QuantSettings(int(group_size), bool(symmetric), bool(clip_search)),
        embeddings,
        head,
    ).measure(
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        cache=cache,
        cache_device=cache_device,
        progress=progress,
    )


class _Session:
    """Model, units and calibration batches, shared by profile() and the estimator."""

    def __init__(
        self,
        model_or_path,
        calibration,
        units,
        choices,
        loss,
        n_tokens,
        seq_len,
        batch_size,
        device,
        seed,
        tokenizer,
        qs,
        embeddings,
        head,
    ):
        _require_torch()
        import torch

        for name, v, lo in (("batch_size", batch_size, 1), ("seed", seed, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name, v in (("n_tokens", n_tokens), ("seq_len", seq_len)):
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2
            ):
                raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
        if not (qs.group_size > 0 or qs.group_size in (0, -1)):
            raise ValueError(
                f"group_size must be > 0, or 0 / -1 for per-channel, got {qs.group_size}"
            )
        self.loss_name = _loss_name(loss)
        self.loss = loss
        self.choices = _check_choices(choices, units == "block")
        self.qs = qs
        self.seed = int(seed)
        torch.manual_seed(self.seed)
        self.model, tok, self.owned, self.name = _load(model_or_path, device, tokenizer)
        self.device = next(self.model.parameters()).device
        self.specs, self.prefix, self.blocks = _build_units(self.model, units, embeddings, head)
        self.has_logits = hasattr(self.model, "get_output_embeddings") and (
            self.model.get_output_embeddings() is not None
        )
        if self.loss_name in ("causal_lm", "kl") and not self.has_logits:
            raise ValueError(
                f"loss={self.loss_name!r} needs a model with an LM head (logits); "
                f"{type(self.model).__name__} has none: use loss='embedding' for encoders"
            )
        cfg = getattr(self.model, "config", None)
        ctx = None
        for attr in ("max_position_embeddings", "n_positions"):
            ctx = ctx or getattr(cfg, attr, None)
        if seq_len is None and not isinstance(calibration, torch.Tensor):
            seq_len = min(256, int(ctx)) if ctx else 256
        elif seq_len is not None and ctx and seq_len > ctx:
            raise ValueError(f"seq_len={seq_len} exceeds the model's context of {ctx} tokens")
        windows, self.calib_meta = _calibration_tokens(calibration, tok, seq_len, n_tokens, seed)
        self.batches = _batches(windows, int(batch_size), self.device)
        self.model_meta = {
            "name": self.name,
            "class": type(self.model).__name__,
            "fingerprint": _fingerprint(self.model),
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "params": int(sum(p.numel() for p in self.model.parameters())),
            "blocks": self.prefix,
            "n_blocks": len(self.blocks),
        }

    # -- profile dictionary ------------------------------------------------------
    def _quantizer(self) -> dict[str, Any]:
        per_channel = self.qs.group_size <= 0
        return {
            "scheme": "symmetric" if self.qs.symmetric else "asymmetric",
            "granularity": "channel" if per_channel else "group",
            "group_size": 0 if per_channel else self.qs.group_size,
            "scale_bytes": 2,
            "zero_bytes": 0 if self.qs.symmetric else 1,
            "bytes_model": "packed",
        }

    def _units_json(self) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "kind": s.kind,
                "modules": [m.name for m in s.members],
                "params": s.params,
                "shapes": [m.shape for m in _distinct(s.members)],
            }
            for s in self.specs
        ]

    def _profile(self, baseline, delta, stderr, loss_kind, timings, extra_source) -> Profile:
        import torch

        try:
            import transformers

            tv = transformers.__version__
        except ImportError:  # pragma: no cover - a plain torch model
            tv = None
        doc = {
            "format": "empas.sensitivity/1",
            "model": self.model_meta,
            "calibration": self.calib_meta,
            "loss": {"kind": loss_kind, "baseline": float(baseline)},
            "quantizer": self._quantizer(),
            "choices": self.choices,
            "units": self._units_json(),
            "unsearched_bytes": _unsearched_bytes(self.model, self.specs),
            "delta": delta,
            "stderr": stderr,
            "timings": timings,
            "source": {
                "generator": "empas.profile",
                "device": str(self.device),
                "torch": torch.__version__,
                "transformers": tv,
                "clip_search": self.qs.clip_search,
                "formats": choice_formats(self.choices, self.qs.group_size, self.qs.symmetric),
                **extra_source,
            },
        }
        return Profile.from_dict(doc, negative="keep")

    def _key(self) -> dict[str, Any]:
        return {
            "model": self.model_meta["fingerprint"],
            "calibration": self.calib_meta["sha256"],
            "units": [s.name for s in self.specs],
            "choices": self.choices,
            "loss": self.loss_name,
            "quantizer": self._quantizer(),
            "clip_search": self.qs.clip_search,
            "batches": [int(b.shape[0]) for b in self.batches],
        }

    # -- measurement ----------------------------------------------------------------
    def measure(self, checkpoint, cache, cache_device, progress) -> Profile:
        import torch

        was_training = self.model.training
        self.model.eval()
        runner = _Runner(
            self.model,
            self.blocks,
            self.batches,
            self.loss if callable(self.loss) else self.loss_name,
            bool(cache),
            torch.device(cache_device) if cache_device else self.device,
        )
        ck = _Checkpoint(checkpoint, self._key())
        ck.load()
        experiments = [
            (u, c)
            for u, spec in enumerate(self.specs)
            for c, bits in enumerate(self.choices)
            if not (bits == 0 and spec.block is None)
        ]
        todo = [
            (u, c) for u, c in experiments if _ekey(self.specs[u], self.choices[c]) not in ck.done
        ]
        bar = _progress_bar(progress, len(experiments), len(experiments) - len(todo))
        t0 = time.perf_counter()
        try:
            base = runner.baseline()
            t_base = time.perf_counter() - t0
            if not np.all(np.isfinite(base)):
                raise ProfileError(
                    f"the baseline loss is not finite ({base.mean()}) on the calibration"
                )
            if "baseline" in ck.done and not np.allclose(
                ck.done["baseline"], base, rtol=1e-5, atol=1e-6
            ):
                raise FormatError(
                    f"checkpoint {checkpoint}: the baseline measured now differs from the one it "
                    "holds (different weights, device or software?); delete it to start over"
                )
            ck.done["baseline"] = base.tolist()
            times = []
            for u, c in todo:
                spec, bits = self.specs[u], self.choices[c]
                te = time.perf_counter()
                undo = _apply(spec, bits, self.qs, self.blocks, runner)
                try:
                    losses = runner.run(spec.start)
                finally:
                    undo()
                if not np.all(np.isfinite(losses)):
                    raise ProfileError(
                        f"the loss is NaN or infinite with unit {spec.name!r} at {bits} bits"
                    )
                ck.done[_ekey(spec, bits)] = losses.tolist()
                ck.save()
                times.append(time.perf_counter() - te)
                if bar is not None:
                    bar.set_postfix_str(f"{spec.name}@{bits}", refresh=False)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            runner.cached.clear()
            runner.reference.clear()
            if was_training:
                self.model.train()
        if _fingerprint(self.model) != self.model_meta["fingerprint"]:  # belt and braces
            raise RuntimeError("EMPAS bug: the model's weights were not restored exactly")
        total = time.perf_counter() - t0
        delta, stderr = [], []
        for spec in self.specs:
            drow, srow = [], []
            for bits in self.choices:
                k = _ekey(spec, bits)
                if k not in ck.done:
                    drow.append(None)
                    srow.append(None)
                    continue
                d = np.asarray(ck.done[k]) - base
                drow.append(float(d.mean()))
                srow.append(float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0)
            delta.append(drow)
            stderr.append(srow)
        timings = {
            "baseline_s": round(t_base, 4),
            "experiments": len(todo),
            "resumed": len(experiments) - len(todo),
            "experiments_s": round(total - t_base, 4),
            "per_experiment_s": round(float(np.median(times)), 5) if times else None,
            "total_s": round(total, 4),
            "cache": bool(cache),
        }
        return self._profile(float(base.mean()), delta, stderr, self.loss_name, timings, {})


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"profiling needs torch and transformers ({exc}); install them with "
            "`pip install torch==2.13.0 transformers` (a CUDA build of torch for GPUs), then "
            "rebuild EMPAS with `pip install --no-build-isolation .` so the ops match that torch"
        ) from exc


def _ekey(spec: _UnitSpec, bits: int) -> str:
    return f"{spec.name}|{bits}"


def _progress_bar(progress: bool, total: int, initial: int):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, initial=initial, desc="empas profile", unit="exp", leave=True)


# ----------------------------------------------------------------------------
# the cheap estimator
# ----------------------------------------------------------------------------


def estimate_sensitivity(
    model_or_path,
    calibration,
    units="block",
    choices: Sequence[int] = (2, 3, 4, 8),
    n_tokens: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 4,
    device: str | None = None,
    seed: int = 0,
    *,
    tokenizer=None,
    group_size: int = 128,
    symmetric: bool = True,
    clip_search: bool = False,
    embeddings: bool = False,
    head: bool = False,
) -> Profile:
    """Estimates the Δloss table from one backward pass per calibration batch:
    Δ(unit, b) ≈ ½ Σ F ⊙ (Q_b(W) − W)² with F the empirical Fisher diagonal
    (squared gradients of the cross-entropy, averaged over batches), as HAWQ-style
    and ModelOpt's sensitivity estimators do. Seconds instead of one forward per
    (unit, choice); compare with :func:`rank_correlation`. Causal LMs only.
    """
    import torch

    s = _Session(
        model_or_path,
        calibration,
        units,
        [b for b in choices if b != 0],
        "causal_lm",
        n_tokens,
        seq_len,
        batch_size,
        device,
        seed,
        tokenizer,
        _QuantSettings(int(group_size), bool(symmetric), bool(clip_search)),
        embeddings,
        head,
    )
    model = s.model
    t0 = time.perf_counter()
    weights = {}
    for spec in s.specs:
        for m in spec.members:
            weights[m.weight.data_ptr()] = m
    fisher = {k: torch.zeros_like(m.weight, dtype=torch.float32) for k, m in weights.items()}
    was_training = model.training
    model.eval()
    req = {p: p.requires_grad for p in model.parameters()}
    base_losses = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for m in weights.values():
            m.weight.requires_grad_(True)
        for ids in s.batches:
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                out = model(input_ids=ids, labels=ids, **({"use_cache": False}))
                out.loss.backward()
            base_losses.append(float(out.loss.detach()))
            for k, m in weights.items():
                if m.weight.grad is not None:
                    fisher[k] += m.weight.grad.float() ** 2
        for k in fisher:
            fisher[k] /= len(s.batches)
    finally:
        model.zero_grad(set_to_none=True)
        for p, r in req.items():
            p.requires_grad_(r)
        if was_training:
            model.train()
    delta = []
    with torch.no_grad():
        for spec in s.specs:
            row = []
            for bits in s.choices:
                est = 0.0
                for m in _distinct(spec.members):
                    w = m.weight.data
                    f = fisher[w.data_ptr()]
                    if bits == 16:
                        q = w.to(torch.float16).to(w.dtype)
                        err = (q.float() - w.float()) ** 2
                    else:
                        from .quant import fake_quant

                        v = m.view2d()
                        q = fake_quant(
                            v,
                            bits,
                            group_size=s.qs.group_size,
                            symmetric=s.qs.symmetric,
                            clip_search=s.qs.clip_search,
                        )
                        err = (q.float() - v.float()) ** 2
                        if m.kind == "conv1d":
                            err = err.t()
                    est += 0.5 * float((f * err).sum())
                row.append(est)
            delta.append(row)
    timings = {"total_s": round(time.perf_counter() - t0, 4), "method": "fisher"}
    return s._profile(
        float(np.mean(base_losses)),
        delta,
        None,
        "fisher_estimate",
        timings,
        {"estimator": "fisher"},
    )


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    xs = x[order]
    i = 0
    while i < len(xs):  # average ranks of ties
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        if j > i:
            r[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return r


def rank_correlation(a: Profile, b: Profile, bits: Sequence[int] | None = None) -> float:
    """Spearman rank correlation between two profiles' Δ tables over the
    (unit, choice) cells both hold (optionally only the given bit widths; the
    16-bit and drop columns are left out by default)."""
    if a.unit_names != b.unit_names:
        raise ValueError("the two profiles have different units")
    keep = [
        c for c in a.choices if c in b.choices and (c not in (0, 16) if bits is None else c in bits)
    ]
    if not keep:
        raise ValueError("the two profiles share no choices to compare")
    xa = a.delta[:, [a.choices.index(c) for c in keep]].ravel()
    xb = b.delta[:, [b.choices.index(c) for c in keep]].ravel()
    ok = np.isfinite(xa) & np.isfinite(xb)
    if ok.sum() < 3:
        raise ValueError("fewer than 3 cells to correlate")
    ra, rb = _ranks(xa[ok]), _ranks(xb[ok])
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")
