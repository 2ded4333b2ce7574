"""Measuring a profile: :func:`profile` loads the model once, builds the units
and the calibration batches (a :class:`Session`), then runs one experiment per
(unit, choice) on the :class:`~empas.profile.runner.Runner`, restoring the
weights bit-exactly after each, with a checkpoint to resume from."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, ProfileError
from ..models.loading import (
    default_seq_len,
    fingerprint,
    load_model,
    load_model_lazy,
    model_source,
    require_torch,
)
from ..models.structure import distinct
from ..quant.apply import Undo, quantize_members
from ..track import TrackerSpec, log_profile, open_tracker, profile_progress
from ..track.stages import stage_config
from ..util.progress import progress_bar
from ..util.settings import settle
from .calibration import batches, calibration_tokens, extra_windows
from .checkpoint import ProfileCheckpoint
from .config import ProfileConfig
from .distributed import Group, Monitor, cell_cost, current_group, die_for_tests, share
from .fisher import fisher_deltas, fisher_diagonal
from .oom import is_out_of_memory, memory_error
from .runner import Runner
from .streaming import ResidentWeights, StreamExperiment, StreamRunner
from .table import Profile
from .units import UnitSpec, build_units, unsearched_bytes

__all__ = ["Session", "profile"]


class Session:
    """Model, units and calibration batches of one profiling run (``config``),
    shared by :func:`profile` and :func:`~empas.estimate_sensitivity`."""

    def __init__(self, model_or_path, calibration, config: ProfileConfig, tokenizer=None):
        require_torch("profiling")
        import torch

        self.config = config
        self.loss = config.loss
        self.loss_name = config.loss_name
        self.choices = list(config.choices)
        self.qs = config.quant
        self.seed = config.seed
        torch.manual_seed(self.seed)
        self.weights = None  # LazyWeights: the weights stay in their files until needed
        if config.stream and isinstance(model_or_path, (str, os.PathLike)):
            self.model, tok, self.name, self.weights = load_model_lazy(
                model_or_path, config.device, tokenizer
            )
            self.owned = True
            self.device = self.weights.device
        else:
            self.model, tok, self.owned, self.name = load_model(
                model_or_path, config.device, tokenizer
            )
            self.device = next(self.model.parameters()).device
        self.specs, self.prefix, self.blocks = build_units(
            self.model, config.units, config.embeddings, config.head
        )
        self.has_logits = hasattr(self.model, "get_output_embeddings") and (
            self.model.get_output_embeddings() is not None
        )
        if self.loss_name in ("causal_lm", "kl") and not self.has_logits:
            raise ValueError(
                f"loss={self.loss_name!r} needs a model with an LM head (logits); "
                f"{type(self.model).__name__} has none: use loss='embedding' for encoders"
            )
        if config.estimate and not self.has_logits:
            raise ValueError(
                f"estimate={list(config.estimate)} needs a model with an LM head (the Fisher "
                f"estimate is of the cross-entropy); {type(self.model).__name__} has none"
            )
        seq_len = config.seq_len
        if seq_len is not None or not isinstance(calibration, torch.Tensor):
            seq_len = default_seq_len(self.model, seq_len)
        self._calibration, self._tokenizer, self._seq_len = calibration, tok, seq_len
        windows, self.calib_meta = calibration_tokens(
            calibration, tok, seq_len, config.n_tokens, config.seed
        )
        self.batches = batches(windows, config.batch_size, self.device)
        self.model_meta = {
            "name": self.name,
            "class": type(self.model).__name__,
            "fingerprint": (
                self.weights.fingerprint() if self.weights is not None else fingerprint(self.model)
            ),
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "params": int(sum(p.numel() for p in self.model.parameters())),
            "blocks": self.prefix,
            "n_blocks": len(self.blocks),
        }
        source = model_source(self.model)
        if source is not None:  # e.g. dequantized from a GGUF file: say so in the profile
            self.model_meta["source"] = source

    # -- profile dictionary ------------------------------------------------------
    def _units_json(self) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "kind": s.kind,
                "modules": [m.name for m in s.members],
                "params": s.params,
                "shapes": [m.shape for m in distinct(s.members)],
            }
            for s in self.specs
        ]

    def make_profile(self, baseline, delta, stderr, loss_kind, timings, extra_source) -> Profile:
        """The ``empas.sensitivity/1`` profile of measured (or estimated) tables."""
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
            "quantizer": self.qs.to_json(),
            "choices": self.choices,
            "units": self._units_json(),
            "unsearched_bytes": unsearched_bytes(self.model, self.specs),
            "delta": delta,
            "stderr": stderr,
            "timings": timings,
            "source": {
                "generator": "empas.profile",
                "device": str(self.device),
                "torch": torch.__version__,
                "transformers": tv,
                "clip_search": self.qs.clip_search,
                "formats": self.qs.choice_formats(self.choices),
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
            "quantizer": self.qs.to_json(),
            "clip_search": self.qs.clip_search,
            "batches": [int(b.shape[0]) for b in self.batches],
        }

    # -- measurement ----------------------------------------------------------------
    def _change(self, spec: UnitSpec, bits: int, runner: Runner) -> Undo:
        """Sets the unit to ``bits`` (0: its block passes its input through);
        returns what restores it exactly."""
        undo = Undo()
        if bits == 0:
            blk = self.blocks[spec.block]
            blk.forward = runner.drop_forward()

            def undo_drop():
                del blk.forward

            undo.add(undo_drop)
        else:
            quantize_members(spec.members, bits, self.qs, undo)
        return undo

    def _experiment(self, spec: UnitSpec, bits: int, runner: Runner) -> np.ndarray:
        """Per-sequence losses with ``spec`` alone at ``bits``; weights restored after."""
        try:
            undo = self._change(spec, bits, runner)
            try:
                losses = runner.run(spec.start)
            finally:
                undo.restore()
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise memory_error(self, exc, f"the experiment {spec.name} at {bits} bits") from exc
        if not np.all(np.isfinite(losses)):
            raise ProfileError(
                f"the loss is NaN or infinite with unit {spec.name!r} at {bits} bits"
            )
        return losses

    def _baseline(self, runner: Runner) -> np.ndarray:
        """The unchanged model's per-sequence losses (and the block-input cache)."""
        try:
            return runner.baseline()
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise memory_error(
                self, exc, "the baseline pass (which fills the block-input cache)"
            ) from exc

    def measure(
        self,
        checkpoint=None,
        on_stale: str = "error",
        progress: bool = True,
        on_experiment: Callable[[dict[str, Any]], None] | None = None,
    ) -> Profile:
        """Runs the experiments; ``on_experiment`` receives, after each, the count
        done and in all, the unit, bits, the cell's mean Δloss and its seconds.
        Under torch.distributed a :class:`~empas.profile.distributed.Monitor`
        watches the ranks: a rank that dies or fails stops the others with an error
        naming it (each rank's checkpoint keeps its finished cells)."""
        group = current_group()
        if group is None:
            return self._measure(None, checkpoint, on_stale, progress, on_experiment)
        group.monitor = Monitor(group).start()
        try:
            return self._measure(group, checkpoint, on_stale, progress, on_experiment)
        except BaseException as exc:
            group.monitor.leave(exc)  # a no-op when another rank's failure stopped this one
            raise
        finally:
            group.monitor.stop()
            group.monitor = None

    def _measure(self, group, checkpoint, on_stale, progress, on_experiment) -> Profile:
        import torch

        cfg = self.config
        was_training = self.model.training
        self.model.eval()
        loss = self.loss if callable(self.loss) else self.loss_name
        state_device = torch.device(cfg.cache_device) if cfg.cache_device else self.device
        if cfg.stream:
            weights = self.weights if self.weights is not None else ResidentWeights(self.model)
            runner = StreamRunner(
                self.model, self.blocks, self.batches, loss, weights, state_device
            )
        else:
            runner = Runner(self.model, self.blocks, self.batches, loss, cfg.cache, state_device)
        if group is not None:
            self._check_group(group)
        ck = ProfileCheckpoint(_rank_path(checkpoint, group), self._key(), on_stale)
        ck.load()
        if group is not None and checkpoint is not None:
            merged = ProfileCheckpoint(checkpoint, self._key(), on_stale)
            merged.load()  # a finished earlier run's merged cells count as done too
            for k, v in merged.done.items():
                if "|" in k and "#" not in k:
                    ck.done.setdefault(k, v)
        experiments = [
            (u, c)
            for u, spec in enumerate(self.specs)
            for c, bits in enumerate(self.choices)
            if not (bits == 0 and spec.block is None) and bits not in cfg.estimate
        ]
        all_experiments = experiments
        if group is not None:
            costs = [
                cell_cost(self.specs[u].start, len(self.blocks), cfg.cache) for u, _ in experiments
            ]
            mine = share(costs, group.world)[group.rank]
            experiments = [experiments[i] for i in mine]
            my_cost = sum(costs[i] for i in mine)
            group.monitor.total = len(experiments)
        todo = [
            (u, c) for u, c in experiments if _ekey(self.specs[u], self.choices[c]) not in ck.done
        ]
        if group is not None:
            group.monitor.progress(len(experiments) - len(todo))  # resumed from the checkpoint
        bar = progress_bar(
            len(experiments),
            "empas profile" if group is None else f"empas profile [rank {group.rank}]",
            "exp",
            enabled=progress,
            initial=len(experiments) - len(todo),
        )
        t0 = time.perf_counter()
        times = []
        try:
            if cfg.stream:  # the baseline runs in the same sweep as the experiments
                t_base = 0.0
                try:
                    base = self._stream(runner, todo, ck, experiments, on_experiment, bar, times)
                except (MemoryError, RuntimeError) as exc:
                    if not is_out_of_memory(exc):
                        raise
                    raise memory_error(self, exc, "a streamed sweep over the blocks") from exc
            else:
                base = self._baseline(runner)
                t_base = time.perf_counter() - t0
                self._check_baseline(ck, base)
            for k, (u, c) in enumerate([] if cfg.stream else todo):
                spec, bits = self.specs[u], self.choices[c]
                te = time.perf_counter()
                losses = self._experiment(spec, bits, runner)
                ck.done[_ekey(spec, bits)] = losses.tolist()
                ck.save()
                times.append(time.perf_counter() - te)
                if group is not None:  # another rank dead or failed: stop here, say which
                    group.monitor.progress(len(experiments) - len(todo) + k + 1)
                    die_for_tests(group.rank, k + 1)
                    group.monitor.check()
                if on_experiment is not None:
                    on_experiment(
                        {
                            "done": len(experiments) - len(todo) + k + 1,
                            "total": len(experiments),
                            "unit": spec.name,
                            "bits": bits,
                            "delta": float(np.mean(losses) - np.mean(base)),
                            "seconds": times[-1],
                        }
                    )
                bar.set_postfix_str(f"{spec.name}@{bits}", refresh=False)
                bar.update(1)
        finally:
            bar.close()
            runner.cached.clear()
            runner.reference.clear()
            if was_training:
                self.model.train()
        t_mine = time.perf_counter() - t0 - t_base
        dist_info = None
        if group is not None:
            base, dist_info = self._gather(
                group, ck, experiments, base, t_mine, times, my_cost,
                len(experiments) - len(todo), checkpoint,
            )  # fmt: skip
            group.monitor.stop()  # every rank is past the last collective
        if self.weights is None and fingerprint(self.model) != self.model_meta["fingerprint"]:
            raise RuntimeError("EMPAS bug: the model's weights were not restored exactly")
        t_est = time.perf_counter()
        estimated = {}
        if cfg.estimate:
            fisher, _ = fisher_diagonal(self)
            for spec in self.specs:
                estimated[spec.name] = fisher_deltas(self, fisher, spec, cfg.estimate)
            del fisher
        t_est = time.perf_counter() - t_est
        seqs = {
            _ekey(spec, bits): np.asarray(ck.done[_ekey(spec, bits)]) - base
            for spec in self.specs
            for bits in self.choices
            if _ekey(spec, bits) in ck.done
        }
        adaptive = None
        if cfg.target_stderr is not None or cfg.token_budget is not None:
            adaptive = self._refine(seqs, ck, progress)
        total = time.perf_counter() - t0
        delta, stderr = [], []
        for spec in self.specs:
            drow, srow = [], []
            for bits in self.choices:
                k = _ekey(spec, bits)
                if bits in cfg.estimate:
                    drow.append(estimated[spec.name][cfg.estimate.index(bits)])
                    srow.append(None)  # an estimate has no sampling error to report
                    continue
                if k not in seqs:
                    drow.append(None)
                    srow.append(None)
                    continue
                d = seqs[k]
                drow.append(float(d.mean()))
                srow.append(float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0)
            delta.append(drow)
            stderr.append(srow)
        measured, resumed = len(todo), len(experiments) - len(todo)
        if dist_info is not None:
            measured = sum(r["measured"] for r in dist_info["ranks"])
            resumed = len(all_experiments) - measured
            times = dist_info.pop("times")
        timings = {
            "baseline_s": round(t_base, 4),
            "experiments": measured,
            "resumed": resumed,
            "experiments_s": round(total - t_base - t_est, 4),
            "per_experiment_s": round(float(np.median(times)), 5) if times else None,
            "total_s": round(total, 4),
            "cache": bool(cfg.cache),
        }
        extra = {}
        if cfg.stream:
            extra["stream"] = self._stream_info
        if dist_info is not None:
            extra["distributed"] = dist_info
        if adaptive is not None:
            extra["adaptive"] = adaptive
        if cfg.estimate:
            timings["estimate_s"] = round(t_est, 4)
            extra["estimated"] = {
                "method": "fisher",
                "choices": list(cfg.estimate),
                "cells": len(self.specs) * len(cfg.estimate),
            }
        return self.make_profile(float(base.mean()), delta, stderr, self.loss_name, timings, extra)

    def _check_baseline(self, ck: ProfileCheckpoint, base: np.ndarray) -> None:
        """Refuses a non-finite baseline, or one that differs from the checkpoint's."""
        if not np.all(np.isfinite(base)):
            raise ProfileError(
                f"the baseline loss is not finite ({base.mean()}) on the calibration"
            )
        if "baseline" in ck.done and not np.allclose(
            ck.done["baseline"], base, rtol=1e-5, atol=1e-6
        ):
            raise FormatError(
                f"checkpoint {ck.path}: the baseline measured now differs from the one it "
                "holds (different weights, device or software?); delete it to start over"
            )
        ck.done["baseline"] = base.tolist()

    def _stream_experiment(self, spec: UnitSpec, bits: int) -> StreamExperiment:
        """``spec`` at ``bits`` as a :class:`StreamExperiment`: its change split by
        where its weights are (a block, or outside the blocks)."""
        n, pre = len(self.blocks), self.prefix + "."
        where: dict[Any, list] = {}
        for m in spec.members:
            i = int(m.name[len(pre) :].split(".", 1)[0]) if m.name.startswith(pre) else "outer"
            where.setdefault(i, []).append(m)

        def change(stage: int) -> Undo | None:
            ms = where.get("outer" if stage < 0 or stage >= n else stage)
            if not ms:
                return None
            undo = Undo()
            quantize_members(ms, bits, self.qs, undo)
            return undo

        return StreamExperiment(
            key=_ekey(spec, bits),
            start=spec.start,
            change=change,
            stages=frozenset(k for k in where if k != "outer"),
            outer="outer" in where,
            drop=spec.block if bits == 0 else None,
        )

    def _stream(self, runner: StreamRunner, todo, ck, experiments, on_experiment, bar, times):
        """Measures ``todo`` in sweeps of at most ``stream_chunk`` experiments (one
        sweep reads every weight once); saves each cell to the checkpoint as it
        finishes. Returns the baseline's per-sequence losses."""
        import torch

        cfg = self.config
        size = cfg.stream_chunk or max(1, len(todo))
        parts = [todo[i : i + size] for i in range(0, len(todo), size)] or [[]]
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        done = len(experiments) - len(todo)
        base = None
        t_all = time.perf_counter()
        cells: dict[str, tuple[UnitSpec, int]] = {}
        results: list[tuple[UnitSpec, int, np.ndarray]] = []

        def on_result(e, losses):
            spec, bits = cells[e.key]
            if not np.all(np.isfinite(losses)):
                raise ProfileError(
                    f"the loss is NaN or infinite with unit {spec.name!r} at {bits} bits"
                )
            ck.done[e.key] = losses.tolist()
            ck.save()
            results.append((spec, bits, losses))

        def on_stage(what):
            bar.set_postfix_str(what, refresh=True)

        for part in parts:
            exps = []
            results.clear()
            for u, c in part:
                e = self._stream_experiment(self.specs[u], self.choices[c])
                cells[e.key] = (self.specs[u], self.choices[c])
                exps.append(e)
            t = time.perf_counter()
            base = runner.sweep(exps, lambda b: self._check_baseline(ck, b), on_result, on_stage)
            dt = time.perf_counter() - t
            for spec, bits, losses in results:  # a sweep's cells finish together
                times.append(dt / len(results))
                done += 1
                if on_experiment is not None:
                    on_experiment(
                        {
                            "done": done,
                            "total": len(experiments),
                            "unit": spec.name,
                            "bits": bits,
                            "delta": float(np.mean(losses) - np.mean(base)),
                            "seconds": times[-1],
                        }
                    )
                bar.update(1)
        w = runner.weights
        self._stream_info = {
            "weights": "lazy-safetensors" if self.weights is not None else "resident",
            "state_device": str(runner.cache_device),
            "sweeps": len(parts),
            "experiments_per_sweep": size,
            "sweep_s": round(time.perf_counter() - t_all, 4),
            "weights_peak_bytes": int(w.peak_bytes),
            "states_peak_bytes": int(runner.states_peak_bytes),
            "weight_loads": int(w.loads),
            "device_peak_bytes": int(torch.cuda.max_memory_allocated(self.device))
            if cuda
            else None,
            "note": "weights_peak_bytes: parameters materialized at once (lazy: the largest "
            "block or the embeddings/norm/head; resident: the whole model); states_peak_bytes: "
            "hidden states in flight; the baseline runs inside the sweep (baseline_s 0)",
        }
        return base

    def _check_group(self, group: Group) -> None:
        """Refuses, before any measurement, settings that differ across ranks
        (everything but the device) and what is not sharded yet."""
        settings = {
            k: v for k, v in self.config.to_dict().items() if k not in ("device", "cache_device")
        }
        group.check_same({"key": self._key(), "settings": settings})
        cfg = self.config
        if cfg.target_stderr is not None or cfg.token_budget is not None:
            raise ValueError(
                "adaptive measurement (target_stderr / token_budget) is not sharded across "
                "torch.distributed ranks yet: profile without it, or in one process"
            )

    def _gather(self, group, ck, mine, base, t_mine, times, cost, resumed, checkpoint):
        """Every rank's cells into ``ck.done`` (on every rank); rank 0 writes the
        merged checkpoint. Returns (rank 0's baseline, the provenance record)."""
        cells = {}
        for u, c in mine:
            k = _ekey(self.specs[u], self.choices[c])
            if k in ck.done:
                cells[k] = ck.done[k]
        msg = {
            "rank": group.rank,
            "host": group.host(),
            "device": str(self.device),
            "baseline": base.tolist(),
            "cells": cells,
            "n_cells": len(mine),
            "measured": len(times),
            "resumed": resumed,
            "cost_blocks": cost,
            "experiments_s": round(t_mine, 4),
            "times": times,
        }
        all_msgs = group.gather(msg)  # a rank that failed or died is named before this
        base0 = np.asarray(all_msgs[0]["baseline"])
        for m in all_msgs[1:]:
            if not np.allclose(m["baseline"], base0, rtol=1e-5, atol=1e-6):
                raise ProfileError(
                    f"torch.distributed: rank {m['rank']}'s baseline loss "
                    f"{np.mean(m['baseline']):.6f} differs from rank 0's {base0.mean():.6f} "
                    "(different weights, dtype or device software?)"
                )
        for m in all_msgs:
            ck.done.update(m["cells"])
        if group.rank == 0 and checkpoint is not None:
            merged = ProfileCheckpoint(checkpoint, ck.key)
            merged.done = {"baseline": base0.tolist()}
            merged.done.update({k: v for m in all_msgs for k, v in m["cells"].items()})
            merged.save()
        ranks = [
            {k: m[k] for k in ("rank", "host", "device", "n_cells", "measured", "resumed",
                               "cost_blocks", "experiments_s")}
            for m in all_msgs
        ]  # fmt: skip
        info = {
            "world_size": group.world,
            "backend": group.backend,
            "share": "greedy longest-processing-time by blocks run per cell",
            "ranks": ranks,
            "times": [t for m in all_msgs for t in m["times"]],
        }
        return base0, info

    def _undecided(self, seqs: dict[str, np.ndarray]) -> list[tuple[int, int]]:
        """Cells (unit, choice index) whose order against a neighbouring choice of
        the same unit is within the noise (|Δ_b − Δ_b'| < 2·se of the difference)
        and whose stderr is above ``target_stderr`` (any, without one)."""
        cfg = self.config
        target = cfg.target_stderr or 0.0
        chain = [c for c in sorted(self.choices) if c not in (0, 16) and c not in cfg.estimate]
        out = set()
        for u, spec in enumerate(self.specs):
            for a, b in zip(chain, chain[1:]):
                ka, kb = _ekey(spec, a), _ekey(spec, b)
                if ka not in seqs or kb not in seqs:
                    continue
                da, db = seqs[ka], seqs[kb]
                se = math.sqrt(da.var(ddof=1) / da.size + db.var(ddof=1) / db.size)
                if abs(da.mean() - db.mean()) < 2 * se:
                    for bits, d in ((a, da), (b, db)):
                        if d.std(ddof=1) / math.sqrt(d.size) > target:
                            out.add((u, self.choices.index(bits)))
        return sorted(out)

    def _refine(self, seqs: dict[str, np.ndarray], ck, progress: bool) -> dict[str, Any]:
        """Adaptive measurement: undecided cells are measured again on calibration
        windows not used so far (as many as the first pass), round after round,
        until none is left, a cell would pass ``token_budget`` tokens, or the text
        runs out. The extra rounds reuse the checkpoint (a rerun resumes)."""
        import torch

        cfg = self.config
        n0 = sum(int(b.shape[0]) for b in self.batches)
        seq_len = int(self.batches[0].shape[1])
        budget = cfg.token_budget or 8 * n0 * seq_len
        tokens = {k: int(v.size) * seq_len for k, v in seqs.items()}
        used = [w for b in self.batches for w in b.cpu()]
        rounds = 0
        stop = "no undecided cells"
        while True:
            todo = [
                (u, c)
                for u, c in self._undecided(seqs)
                if tokens[_ekey(self.specs[u], self.choices[c])] + n0 * seq_len <= budget
            ]
            if not todo:
                if self._undecided(seqs):
                    stop = f"token_budget ({budget:,} tokens per cell) reached"
                break
            w = extra_windows(
                self._calibration,
                self._tokenizer,
                seq_len,
                torch.stack(used),
                n0,
                self.seed,
                rounds + 1,
            )
            if w is None:
                stop = "the calibration text has no unused windows left"
                break
            rounds += 1
            used.extend(list(w))
            loss = self.loss if callable(self.loss) else self.loss_name
            state_device = torch.device(cfg.cache_device) if cfg.cache_device else self.device
            wb = batches(w, cfg.batch_size, self.device)
            if cfg.stream:
                weights = self.weights if self.weights is not None else ResidentWeights(self.model)
                runner = StreamRunner(self.model, self.blocks, wb, loss, weights, state_device)
            else:
                runner = Runner(self.model, self.blocks, wb, loss, cfg.cache, state_device)
            bar = progress_bar(
                len(todo), f"empas profile: refine {rounds}", "exp", enabled=progress
            )
            try:
                bk = f"baseline#r{rounds}"

                def check(base, bk=bk):
                    if bk in ck.done and not np.allclose(ck.done[bk], base, rtol=1e-5, atol=1e-6):
                        raise FormatError("checkpoint: the refinement baseline differs; delete it")
                    ck.done[bk] = base.tolist()

                if cfg.stream:  # one sweep for the round's cells not in the checkpoint yet
                    exps = []
                    for u, c in todo:
                        e = self._stream_experiment(self.specs[u], self.choices[c])
                        e.key = f"{e.key}#r{rounds}"
                        if e.key not in ck.done:
                            exps.append(e)

                    def save(e, losses):
                        if not np.all(np.isfinite(losses)):
                            raise ProfileError(f"the loss is NaN or infinite in cell {e.key!r}")
                        ck.done[e.key] = losses.tolist()
                        ck.save()

                    base = runner.sweep(exps, check, save)
                else:
                    base = self._baseline(runner)
                    check(base)
                for u, c in todo:
                    spec, bits = self.specs[u], self.choices[c]
                    k = _ekey(spec, bits)
                    rk = f"{k}#r{rounds}"
                    if rk not in ck.done:
                        losses = self._experiment(spec, bits, runner)
                        ck.done[rk] = losses.tolist()
                        ck.save()
                    seqs[k] = np.concatenate([seqs[k], np.asarray(ck.done[rk]) - base])
                    tokens[k] += int(w.shape[0]) * seq_len
                    bar.update(1)
            finally:
                bar.close()
                runner.cached.clear()
                runner.reference.clear()
        return {
            "target_stderr": cfg.target_stderr,
            "token_budget": budget,
            "rounds": rounds,
            "stopped": stop,
            "refined_cells": sum(1 for k in tokens if tokens[k] > n0 * seq_len),
            "tokens": [[tokens.get(_ekey(spec, b)) for b in self.choices] for spec in self.specs],
        }


def _rank_path(checkpoint: Path | None, group: Group | None) -> Path | None:
    """The rank's own checkpoint file: ``<checkpoint>.rank<k>`` under torch.distributed."""
    if checkpoint is None or group is None:
        return checkpoint
    return checkpoint.with_name(f"{checkpoint.name}.rank{group.rank}")


def _ekey(spec: UnitSpec, bits: int) -> str:
    return f"{spec.name}|{bits}"


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
    config: ProfileConfig | None = None,
    tokenizer=None,
    group_size: int = 128,
    symmetric: bool = True,
    clip_search: bool = False,
    embeddings: bool = False,
    head: bool = False,
    cache: bool = True,
    cache_device: str | None = None,
    estimate: Sequence[int] = (),
    target_stderr: float | None = None,
    token_budget: int | None = None,
    stream: bool = False,
    stream_chunk: int | None = None,
    on_stale: str = "error",
    progress: bool = True,
    tracker: TrackerSpec = None,
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
    the same arguments resumes from it; one written for another run is an error
    (``on_stale="error"``) or discarded (``on_stale="restart"``). ``cache``: run
    every experiment from its own block on cached block inputs (``cache_device``
    holds them; default the model's device). ``estimate``: choices whose cells are
    the Fisher estimate (one backward pass per batch) instead of a measurement, e.g.
    ``(16,)``: their stderr is null and the profile's ``source.estimated`` says so.
    ``target_stderr`` / ``token_budget``: adaptive measurement: cells whose order
    against a neighbouring choice of the same unit is within the noise (and whose
    stderr is above ``target_stderr``) are measured again on calibration windows not
    used so far, round after round, until none is left or a cell would pass
    ``token_budget`` tokens (default 8x ``n_tokens``); ``source.adaptive.tokens``
    records the tokens each cell used. ``stream``: one sweep over the blocks runs
    every experiment (each block is read once per profile, not once per experiment;
    see :mod:`empas.profile.streaming`); with a model path, the weights are read
    block by block from its ``.safetensors`` files (the model need not fit the
    device, nor the host memory): peak memory is one block (or the embeddings/head)
    plus the hidden states in flight (on ``cache_device``); ``stream_chunk``: at most
    this many experiments per sweep (bounds the states in flight; each sweep reads
    the weights once more). The table equals the resident run's; the profile's
    ``source.stream`` records the peak bytes. ``config``: all these settings as one
    :class:`~empas.ProfileConfig` instead of keywords. ``tracker``: "wandb",
    "mlflow" (a new run, finished on return) or a tracker object (see
    :mod:`empas.track`): the settings, the model's fingerprint, each experiment as
    it finishes, the Δ table and the profile file.
    """
    given = dict(locals())
    cfg = settle(ProfileConfig, config, given)
    with open_tracker(tracker, run_name="empas-profile") as t:
        session = Session(model_or_path, calibration, cfg, tokenizer)
        stage_config(
            t,
            "profile",
            cfg,
            model=session.model_meta,
            calibration=session.calib_meta,
            checkpoint=str(checkpoint) if checkpoint is not None else None,
        )
        prof = session.measure(
            checkpoint=Path(checkpoint) if checkpoint is not None else None,
            on_stale=on_stale,
            progress=progress,
            on_experiment=profile_progress(t),
        )
        log_profile(t, prof)
    return prof
