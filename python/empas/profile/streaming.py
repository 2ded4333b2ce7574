"""Streaming profile: one sweep over the decoder blocks runs every experiment.

The resident :class:`~empas.profile.runner.Runner` runs one experiment at a time
through the whole model (from its own block on cached block inputs): the model's
weights are read once per experiment. :class:`StreamRunner` turns the loops
around: each block is held once (materialized from its file by
:class:`~empas.models.lazy.LazyWeights`, or already resident) and every
experiment that passes through it advances by that block, from its own state:

- an experiment on a unit of block ``i`` starts from the baseline's input of block
  ``i`` (the state the resident runner caches), runs block ``i`` with the unit
  quantized (or passes it through: a dropped block), then blocks ``> i`` as they are;
- one on the input embedding starts before block 0, one on the head at the end;
- at the end the model's own forward, with every block replaced by the
  experiment's final state, applies the final norm and head, and the loss.

Each experiment thus performs the same operations on the same tensors as in the
resident runner (same batches, same block calls with the block's arguments
captured from the baseline pass, same tail), so the losses are equal bit for
bit on the same device. Device memory: one block (or the embeddings/norm/head)
plus the hidden states in flight (one per started experiment and batch; kept on
``state_device``, e.g. the CPU), plus the baseline's per-batch block arguments.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ProfileError
from .runner import Runner

__all__ = ["ResidentWeights", "StreamExperiment", "StreamRunner"]


class _Stop(Exception):
    """Ends a forward pass once the block inputs are captured."""


class ResidentWeights:
    """The weights of a model that is already in memory: holding is a no-op."""

    mode = "resident"

    def __init__(self, model):
        seen = {}
        for p in model.parameters():
            seen[id(p)] = p.numel() * p.element_size()
        self.peak_bytes = self.current_bytes = int(sum(seen.values()))
        self.loads = 0

    def hold(self, params: Iterable[Any]):
        return contextlib.nullcontext()


@dataclass
class StreamExperiment:
    """One experiment of a sweep. ``start``: the first stage whose output it
    changes (-1: the embedding, before block 0; ``n_blocks``: the head only).
    ``change(stage)``: applies the experiment's change to the parts of stage
    ``stage`` (-1 / ``n_blocks`` for the parts outside the blocks, a block index
    otherwise) and returns an :class:`~empas.quant.apply.Undo`, or None when it
    changes nothing there; ``drop``: the block it passes through (choice 0)."""

    key: str
    start: int
    change: Callable[[int], Any]
    stages: frozenset = field(default_factory=frozenset)  # blocks whose weights it changes
    outer: bool = False  # changes weights outside the blocks (embedding, head)
    drop: int | None = None


class StreamRunner(Runner):
    """Runs experiments block by block (see the module's docstring). ``weights``:
    :class:`ResidentWeights` or :class:`~empas.models.lazy.LazyWeights`;
    ``state_device``: where the hidden states in flight are kept."""

    def __init__(self, model, blocks, batches, loss, weights, state_device):
        super().__init__(model, blocks, batches, loss, True, state_device)
        self.weights = weights
        n = len(blocks)
        in_block = set()
        self.block_params = []
        for blk in blocks:
            ps = list({id(p): p for p in blk.parameters()}.values())
            in_block.update(id(p) for p in ps)
            self.block_params.append(ps)
        self.outer_params = [
            p for p in {id(p): p for p in model.parameters()}.values() if id(p) not in in_block
        ]
        self.n = n
        self.args: list[list[tuple[tuple, dict, bool]]] = []  # [batch][block] -> call args
        self.states_peak_bytes = 0
        self.stats: dict[str, Any] = {}

    # -- block calls -----------------------------------------------------------------
    def _call(self, i: int, b: int, h):
        import torch

        rest, kw, as_kw = self.args[b][i]
        dev = self._device
        with torch.inference_mode():
            if as_kw:
                out = self.blocks[i](hidden_states=h.to(dev), **kw)
            else:
                out = self.blocks[i](h.to(dev), *rest, **kw)
        if isinstance(out, tuple):
            if any(x is not None for x in out[1:]):
                raise ProfileError(
                    f"{type(self.blocks[i]).__name__} returns extra outputs EMPAS cannot "
                    "carry between blocks; profile without stream"
                )
            self.out_tuple = len(out)
            out = out[0]
        return out.detach().to(self.cache_device)

    def _prologue(self) -> tuple[list[Any], list[list[Any]]]:
        """Block 0's input per batch (the embedding output), and every block's call
        arguments per batch, captured from the model's own forward with the blocks
        replaced by stubs (no block weights needed)."""
        states, args = [], []
        for ids in self.batches:
            h, row = self._capture(ids)
            args.append(row)
            states.append(h.detach().to(self.cache_device))
        return states, args

    def _capture(self, ids) -> tuple[Any, list[Any]]:
        row: list[Any] = [None] * self.n
        first: list[Any] = []
        passed: list[Any] = [None]

        def stub(i, as_tuple):
            def fwd(*a, **kwargs):
                as_kw = not a
                h = kwargs.pop("hidden_states") if as_kw else a[0]
                if i > 0 and h is not passed[0]:
                    raise _Retry
                row[i] = (tuple(a[1:]), kwargs, as_kw)
                if i == 0:
                    first.append(h)
                if i == self.n - 1:
                    raise _Stop
                passed[0] = h
                return (h,) if as_tuple else h

            return fwd

        for as_tuple in (False, True):  # blocks return a tensor, or a tuple indexed [0]
            first.clear()
            for i, blk in enumerate(self.blocks):
                blk.forward = stub(i, as_tuple)
            try:
                self._forward(ids)
            except _Stop:
                return first[0], row
            except _Retry:
                continue
            finally:
                for blk in self.blocks:
                    del blk.forward
            raise ProfileError(
                f"{type(self.model).__name__}'s forward did not reach its last block; "
                "profile without stream"
            )
        raise ProfileError(
            f"{type(self.model).__name__}'s forward does not pass each block's output "
            "straight to the next block; profile without stream"
        )

    def _tail(self, states: list[Any], b: int):
        """The model's output on batch ``b`` whose last block output is ``states[b]``."""
        h = states[b]
        for blk in self.blocks:
            blk.forward = self._cached_forward(h)
        try:
            return self._forward(self.batches[b])
        finally:
            for blk in self.blocks:
                del blk.forward

    def _track(self, live: dict[Any, list[Any]]) -> None:
        seen, n = set(), 0
        for hs in live.values():
            for h in hs:
                if h.data_ptr() not in seen:
                    seen.add(h.data_ptr())
                    n += h.numel() * h.element_size()
        self.states_peak_bytes = max(self.states_peak_bytes, n)

    def _check(self, params, before: str, where: str) -> None:
        if _sample_hash(params) != before:
            raise RuntimeError(f"EMPAS bug: the weights of {where} were not restored exactly")

    # -- the sweep ----------------------------------------------------------------------
    def sweep(
        self,
        experiments: list[StreamExperiment],
        on_baseline: Callable[[np.ndarray], None] | None = None,
        on_result: Callable[[StreamExperiment, np.ndarray], None] | None = None,
        on_stage: Callable[[str], None] | None = None,
    ) -> np.ndarray:
        """Runs the baseline and ``experiments`` in one pass over the blocks;
        returns the baseline's per-sequence losses. ``on_baseline(losses)`` is called
        before the first experiment's result, ``on_result(experiment, losses)`` as
        each finishes (all in the final stage, in the order given), ``on_stage(name)``
        as each stage starts."""
        import torch.nn.functional as F

        n = self.n
        self._device = self.batches[0].device if self.batches else None
        BASE = "\0baseline"
        live: dict[str, list[Any]] = {}
        started: list[StreamExperiment] = []
        stage = on_stage or (lambda name: None)
        stage("embeddings")
        with self.weights.hold(self.outer_params):
            before = _sample_hash(self.outer_params)
            live[BASE], self.args = self._prologue()
            for e in experiments:
                if e.start < 0:
                    undo = e.change(-1)
                    try:
                        live[e.key] = self._prologue()[0]
                    finally:
                        if undo is not None:
                            undo.restore()
                    started.append(e)
            self._check(self.outer_params, before, "the embeddings")
        self._track(live)
        for i in range(n):
            stage(f"block {i + 1}/{n}")
            with self.weights.hold(self.block_params[i]):
                before = _sample_hash(self.block_params[i])
                for e in started:  # experiments under way: block i as it is, or theirs
                    undo = e.change(i) if i in e.stages else None
                    try:
                        live[e.key] = [self._call(i, b, h) for b, h in enumerate(live[e.key])]
                    finally:
                        if undo is not None:
                            undo.restore()
                for e in experiments:
                    if e.start != i:
                        continue
                    if e.drop == i:  # the block passes its input through
                        live[e.key] = list(live[BASE])
                    else:
                        undo = e.change(i)
                        try:
                            live[e.key] = [self._call(i, b, h) for b, h in enumerate(live[BASE])]
                        finally:
                            if undo is not None:
                                undo.restore()
                    started.append(e)
                live[BASE] = [self._call(i, b, h) for b, h in enumerate(live[BASE])]
                self._check(self.block_params[i], before, f"block {i}")
            self._track(live)
        stage("head")
        with self.weights.hold(self.outer_params):
            before = _sample_hash(self.outer_params)
            losses = []
            self.reference = []
            for b in range(len(self.batches)):
                out = self._tail(live[BASE], b)
                if self.loss == "kl":
                    self.reference.append(F.log_softmax(out.float(), dim=-1).to(self.cache_device))
                elif self.loss == "embedding":
                    self.reference.append(out.float().mean(dim=1))
                losses.append(self._per_seq(out, b))
            base = np.concatenate(losses)
            if on_baseline is not None:
                on_baseline(base)
            for e in experiments:
                states = live.pop(e.key, None) or live[BASE]
                undo = e.change(n) if e.outer else None
                try:
                    res = np.concatenate(
                        [self._per_seq(self._tail(states, b), b) for b in range(len(self.batches))]
                    )
                finally:
                    if undo is not None:
                        undo.restore()
                if on_result is not None:
                    on_result(e, res)
            self._check(self.outer_params, before, "the embeddings/head")
        self.reference = []
        return base


class _Retry(Exception):
    """The model indexes its blocks' outputs: stubs must return tuples."""


def _sample_hash(params) -> str:
    """A strided sample of the parameters' values (as the model fingerprint takes)."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for p in params:
            flat = p.detach().reshape(-1)
            if flat.numel():
                step = max(1, flat.numel() // 4096)
                h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()
