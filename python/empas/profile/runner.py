"""The experiment runner: the model on the calibration batches, with the hidden
states entering every block cached by the baseline pass, so that an experiment
on block ``i`` computes only blocks ``i`` onward."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ..errors import ProfileError

__all__ = ["Runner"]


class Runner:
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
