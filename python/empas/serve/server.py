"""HTTP serving of a model with EMPAS plans applied (FastAPI + uvicorn).

One process holds the model ONCE and every plan's packed weights: the base model
is loaded once, and each plan gets a variant that shares every tensor it does not
quantize (embeddings, norms, head, rotary buffers) with the base and holds only its
own ``empas.quant.nn.PackedLinear`` / ``HalfLinear`` modules. Once the variants exist the
base model is released, so its full-precision linear weights are freed (unless the
caller still holds the model object). Requests choose a plan by name:

    >>> server = PlanServer("example:tiny-llama", ["out/plans"], report="verify.json")
    >>> server.generate("The for statement", plan="balanced", max_new_tokens=16)
    {'text': ..., 'tokens': 16, 'latency_ms': ..., 'plan': 'balanced', ...}
    >>> run("example:tiny-llama", ["out/plans"], port=8000)   # blocks: HTTP API

HTTP API (:func:`create_app`): ``POST /generate``, ``GET /plans``, ``GET /health``,
plus FastAPI's ``/openapi.json`` and ``/docs``. Status codes: 404 unknown plan; 413
prompt over ``max_prompt_chars`` / ``max_prompt_tokens`` or prompt + max_new_tokens
over the model context; 422 malformed JSON, wrong types, unknown fields, empty
prompt, ``max_new_tokens`` over the server's cap; 429 (with ``Retry-After``) when
``max_concurrency`` generations run and ``max_queue`` more wait; 500 (JSON) when a
generation fails, the server keeps running.

Generation is a plain KV-cache loop: greedy when ``temperature == 0``, else
temperature + top-p sampling from a per-request ``torch.Generator`` seeded by the
request's ``seed`` (the same seed gives the same text; the global RNG is never used).
This module imports torch, fastapi and pydantic; ``import empas`` does not import it.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from .._native import version as empas_version
from ..errors import FormatError, PlanMismatchError
from ..plan import Plan, load_plan
from ..quant.apply import apply as apply_plan
from ..quant.apply import weight_bytes
from ..verify.report import VerifyReport

__all__ = [
    "BackgroundServer",
    "Limits",
    "PlanServer",
    "RequestError",
    "ServeError",
    "bind_socket",
    "create_app",
    "run",
    "serve_in_thread",
]

log = logging.getLogger("empas.serve")

FP16_PLAN = "fp16"


class ServeError(ValueError):
    """A bad serving setup: port in use, unknown default plan, no plans, bad report..."""


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status it maps to
    (404 unknown plan, 413 too large, 422 invalid)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)


@dataclass
class Limits:
    """What one request may ask, and how much work the server accepts at once."""

    max_prompt_chars: int = 4000
    max_prompt_tokens: int | None = None  # default: model context - 1
    max_new_tokens: int = 256  # cap; prompt + new tokens must also fit the model context
    max_concurrency: int = 2  # generations running at once
    max_queue: int = 8  # requests waiting beyond that; more get 429 at once
    max_body_bytes: int | None = None  # default: 4 bytes per prompt character + 16 KiB

    def __post_init__(self) -> None:
        for name in ("max_prompt_chars", "max_new_tokens", "max_concurrency"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ServeError(f"Limits.{name} must be a positive integer, got {v!r}")
        if not isinstance(self.max_queue, int) or isinstance(self.max_queue, bool):
            raise ServeError(f"Limits.max_queue must be an integer >= 0, got {self.max_queue!r}")
        if self.max_queue < 0:
            raise ServeError(f"Limits.max_queue must be an integer >= 0, got {self.max_queue!r}")
        mpt = self.max_prompt_tokens
        if mpt is not None and (not isinstance(mpt, int) or isinstance(mpt, bool) or mpt < 1):
            raise ServeError(f"Limits.max_prompt_tokens must be a positive integer, got {mpt!r}")
        mb = self.max_body_bytes
        if mb is None:
            self.max_body_bytes = 4 * self.max_prompt_chars + 16384
        elif not isinstance(mb, int) or isinstance(mb, bool) or mb < 1:
            raise ServeError(f"Limits.max_body_bytes must be a positive integer, got {mb!r}")


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it
    is read into memory (by its Content-Length, or while a chunked body streams in)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _too_large(self):
        from fastapi import HTTPException

        return HTTPException(
            status_code=413,
            detail=f"request body over {self.limit:,} bytes (the server's max_body_bytes)",
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers") or []:
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                from fastapi.responses import JSONResponse

                exc = self._too_large()
                return await JSONResponse({"detail": exc.detail}, status_code=413)(
                    scope, receive, send
                )
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise self._too_large()
            return msg

        return await self.app(scope, limited, send)


# ----------------------------------------------------------------------------
# request / response bodies (module level so FastAPI can resolve them)
# ----------------------------------------------------------------------------


class GenerateRequest(BaseModel):
    """Body of ``POST /generate``. Strict types, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, description="the text to continue (not empty)")
    max_new_tokens: int = Field(32, ge=1, description="tokens to generate at most")
    temperature: float = Field(0.0, ge=0.0, le=100.0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    plan: str | None = Field(None, description="plan name (GET /plans); default plan if absent")
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="sampling seed (same seed, same text)"
    )


class GenerateResponse(BaseModel):
    """Answer of ``POST /generate``."""

    text: str
    tokens: int = Field(description="generated tokens (the end-of-sequence token not counted)")
    token_ids: list[int]
    latency_ms: float = Field(description="generation time in the server (queue wait excluded)")
    queue_ms: float = Field(description="time spent waiting for a free generation slot")
    tokens_per_s: float
    plan: str
    prompt_tokens: int
    finish_reason: str = Field(description="'eos' (end-of-sequence token) or 'length'")
    seed: int | None = Field(description="the sampling seed used (None when greedy)")


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------


def _load_base(model, tokenizer, device) -> tuple[Any, Any, str]:
    from ..models import load_model, resolve

    name = model if isinstance(model, str) and model.startswith("example:") else None
    try:
        model = resolve(model)
    except ValueError as exc:  # an unknown example name
        raise ServeError(str(exc)) from None
    m, tok, _, loaded_name = load_model(model, device, tokenizer)
    if tok is None:
        raise ServeError(
            f"no tokenizer for {loaded_name!r}: pass tokenizer= (a model object needs one unless "
            "its name_or_path is a directory holding a tokenizer)"
        )
    if not hasattr(m, "get_output_embeddings") or m.get_output_embeddings() is None:
        raise ServeError(f"{type(m).__name__} has no language-model head: cannot generate text")
    return m, tok, name or loaded_name


def _plan_items(plans) -> list[tuple[str, Plan]]:
    """(name, plan) pairs from a dict, a SearchResult, a Plan, a path, or a list of them;
    directories give their *.json files; name = dict key, else archetype or file stem."""
    if plans is None:
        return []
    if hasattr(plans, "archetypes") and hasattr(plans, "front"):  # SearchResult
        return [(str(k), p) for k, p in plans.archetypes.items()]
    if isinstance(plans, Mapping):
        out = []
        for k, v in plans.items():
            if isinstance(v, Plan):
                out.append((str(k), v))
            elif isinstance(v, dict):
                out.append((str(k), Plan.from_dict(v)))
            else:
                out.append((str(k), load_plan(v)))
        return out
    if isinstance(plans, (Plan, str, os.PathLike)):
        plans = [plans]
    out = []
    for i, item in enumerate(plans):
        if isinstance(item, Plan):
            out.append((item.archetype or f"plan{i}", item))
            continue
        if isinstance(item, dict):
            p = Plan.from_dict(item)
            out.append((p.archetype or f"plan{i}", p))
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(path.glob("*.json"))
            if not files:
                raise ServeError(f"{path} holds no plan files (*.json)")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"plan file not found: {path}")
        for f in files:
            p = load_plan(f)
            out.append((p.archetype or f.stem, p))
    return out


def _load_report(report) -> dict[str, dict]:
    """Report rows by name, from a VerifyReport, an ``empas.verify/1`` dict or its file."""
    if report is None:
        return {}
    try:
        if isinstance(report, (str, os.PathLike)):
            report = VerifyReport.load(report)
        elif not isinstance(report, VerifyReport):
            report = VerifyReport.from_dict(report, "the report")
    except FormatError as exc:
        raise ServeError(str(exc)) from None
    return {r["name"]: r for r in report.rows}


def _shared_copy(model):
    """A deep copy of ``model``'s module tree that shares every parameter and buffer."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        memo[id(t)] = t
    return copy.deepcopy(model, memo)


def _tensor_keys(model) -> dict[tuple, int]:
    """(data_ptr, numel, dtype) -> bytes of the model's distinct state tensors."""
    out = {}
    for t in model.state_dict(keep_vars=True).values():
        key = (t.data_ptr(), t.numel(), t.dtype)
        out[key] = t.numel() * t.element_size()
    return out


def _context_length(model, tokenizer) -> int | None:
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    v = getattr(tokenizer, "model_max_length", None)
    if isinstance(v, int) and 0 < v < 10**7:
        return v
    return None


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), tokenizer):
        v = getattr(src, "eos_token_id", None)
        if v is None:
            continue
        ids.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return ids


# ----------------------------------------------------------------------------
# the server
# ----------------------------------------------------------------------------


@dataclass
class _Variant:
    name: str
    plan: Plan
    model: Any
    packed_bytes: int
    own_bytes: int


@dataclass
class _Prepared:
    variant: _Variant
    ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None


class PlanServer:
    """Holds the model once and one packed variant per plan; generates text.

    ``model``: a HuggingFace model directory, ``"example:tiny-llama"``, or a loaded
    model (then pass ``tokenizer=``; it is not modified). ``plans``: a dict name ->
    Plan/path, or a list of plan files, directories of ``*.json`` and Plans (name =
    archetype or file stem). ``report``: a VerifyReport, or an ``empas.verify/1`` file or dict,
    whose rows give each plan's measured metrics (matched by plan name, then
    archetype). ``fp16``: also serve ``"fp16"``, every unit at 16 bits.
    ``default_plan``: the plan of requests that name none (default: the first plan
    given). Raises ServeError for a bad setup, PlanMismatchError naming the plan for
    a plan made for another model. ``activations="int8"``: the packed linears run
    the int8-activation CPU decode kernel (``empas.set_activations``)."""

    def __init__(
        self,
        model,
        plans,
        *,
        tokenizer=None,
        report=None,
        fp16: bool = True,
        default_plan: str | None = None,
        limits: Limits | None = None,
        device: str | None = None,
        activations: str = "exact",
    ):
        from ..quant.nn import check_activations

        try:
            self.activations = check_activations(activations)
        except ValueError as exc:
            raise ServeError(str(exc)) from None
        self.limits = limits if limits is not None else Limits()
        if not isinstance(self.limits, Limits):
            raise ServeError(f"limits must be a Limits, got {type(self.limits).__name__}")
        items = _plan_items(plans)
        names = [n for n, _ in items]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ServeError(f"two plans share the name {dup[0]!r}; pass a dict to name them")
        if fp16 and items and FP16_PLAN not in names:
            from ..verify import uniform_plan

            items.append((FP16_PLAN, uniform_plan(items[0][1], 16)))
        if not items:
            raise ServeError(
                "no plans to serve: give plan files or directories of them (CLI: --plans, "
                "e.g. out/demo/plans from empas demo)"
            )
        names = [n for n, _ in items]
        if default_plan is None:
            default_plan = names[0]
        elif default_plan not in names:
            raise ServeError(
                f"default plan {default_plan!r} is not loaded; plans: {', '.join(names)}"
            )
        self.default_plan = default_plan
        self._rows = _load_report(report)

        base, self.tokenizer, self.model_name = _load_base(model, tokenizer, device)
        base.eval()
        self.device = str(next(base.parameters()).device)
        self.context = _context_length(base, self.tokenizer)
        self.max_prompt_tokens = self.limits.max_prompt_tokens
        if self.max_prompt_tokens is None:
            self.max_prompt_tokens = self.context - 1 if self.context else None
        self.eos_ids = _eos_ids(base, self.tokenizer)
        sig = inspect.signature(base.forward).parameters
        self._logits_to_keep = "logits_to_keep" in sig
        base_keys = set(_tensor_keys(base))

        self.variants: dict[str, _Variant] = {}
        built: dict[str, _Variant] = {}  # identical plans (same units, bits, quantizer) share
        for name, plan in items:
            key = json.dumps([plan.unit_names, plan.bits, plan.quantizer], sort_keys=True)
            if key in built:
                same = built[key]
                self.variants[name] = _Variant(name, plan, same.model, same.packed_bytes, 0)
                continue
            variant = _shared_copy(base)
            try:
                apply_plan(variant, plan, mode="packed", activations=self.activations)
            except (PlanMismatchError, FormatError) as exc:
                raise type(exc)(f"plan {name!r}: {exc}") from exc
            except ValueError as exc:
                raise ServeError(f"plan {name!r}: {exc}") from exc
            variant.eval()
            own = sum(b for k, b in _tensor_keys(variant).items() if k not in base_keys)
            self.variants[name] = built[key] = _Variant(
                name, plan, variant, weight_bytes(variant), own
            )
        # The variants hold the shared tensors; dropping the base frees its
        # full-precision linear weights (no plan uses them: every planned linear is
        # packed, half or dropped in each variant).
        del base
        self.started = time.time()
        self._lock = threading.Lock()
        self._served = 0
        self._tokens = 0
        self._ema_s: float | None = None  # mean generation time (for Retry-After)

    # -- information ----------------------------------------------------------
    @property
    def plan_names(self) -> list[str]:
        return list(self.variants)

    def weight_bytes(self) -> int:
        """Bytes of the distinct weight tensors held for all plans together."""
        keys: dict[tuple, int] = {}
        for v in self.variants.values():
            keys.update(_tensor_keys(v.model))
        return int(sum(keys.values()))

    def plans_info(self) -> list[dict]:
        """Per plan: name, archetype, bits per unit, predicted and measured metrics
        (from the report row of the same name or archetype, else None), packed_bytes
        (the weight bytes this plan's model holds, shared tensors included: what
        ``plan.predicted_bytes`` predicts) and own_bytes (those only it holds)."""
        out = []
        for name, v in self.variants.items():
            p = v.plan
            row = self._rows.get(name) or (self._rows.get(p.archetype) if p.archetype else None)
            measured = None
            if row is not None:
                measured = {k: row.get(k) for k in ("loss", "ppl", "delta", "bytes")}
            out.append(
                {
                    "name": name,
                    "archetype": p.archetype,
                    "default": name == self.default_plan,
                    "bits": p.bits_by_unit,
                    "predicted": {
                        "loss": p.predicted_loss,
                        "bytes": p.predicted_bytes,
                        "avg_bits": p.predicted_avg_bits,
                    },
                    "measured": measured,
                    "packed_bytes": v.packed_bytes,
                    "own_bytes": v.own_bytes,
                }
            )
        return out

    def stats(self) -> dict:
        with self._lock:
            return {"requests": self._served, "generated_tokens": self._tokens}

    def retry_after(self, waiting: int) -> int:
        """Seconds a refused client should wait: the queue ahead of it, drained at
        ``max_concurrency`` generations at a time (at least 1)."""
        per = self._ema_s if self._ema_s is not None else 1.0
        return max(1, math.ceil(per * (waiting + 1) / self.limits.max_concurrency))

    # -- requests -------------------------------------------------------------
    def prepare(
        self,
        prompt: str,
        *,
        plan: str | None = None,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> _Prepared:
        """Validates a request against the limits and tokenizes the prompt; raises
        RequestError (404 unknown plan, 413 too large, 422 invalid)."""
        lim = self.limits
        name = self.default_plan if plan is None else plan
        variant = self.variants.get(name)
        if variant is None:
            raise RequestError(
                404, f"unknown plan {name!r}; available plans: {', '.join(self.variants)}"
            )
        if not isinstance(prompt, str) or not prompt:
            raise RequestError(422, "prompt must be a non-empty string")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800") in the JSON string
            raise RequestError(
                422,
                f"prompt is not valid Unicode: a lone surrogate at character {exc.start} "
                "(JSON \\ud800-\\udfff escapes must come in pairs)",
            ) from None
        if len(prompt) > lim.max_prompt_chars:
            raise RequestError(
                413,
                f"prompt is {len(prompt):,} characters; this server's limit is "
                f"{lim.max_prompt_chars:,} (max_prompt_chars)",
            )
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise RequestError(422, "max_new_tokens must be a positive integer")
        if max_new_tokens > lim.max_new_tokens:
            raise RequestError(
                422,
                f"max_new_tokens {max_new_tokens} is over this server's limit of "
                f"{lim.max_new_tokens} (max_new_tokens)",
            )
        if not (isinstance(temperature, (int, float)) and 0.0 <= temperature < math.inf):
            raise RequestError(422, "temperature must be a finite number >= 0")
        if not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
            raise RequestError(422, "top_p must be in (0, 1]")
        ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if not ids:
            raise RequestError(422, "the prompt encodes to no tokens")
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise RequestError(
                413,
                f"prompt is {len(ids)} tokens; this server's limit is {self.max_prompt_tokens} "
                "(max_prompt_tokens)",
            )
        if self.context is not None and len(ids) + max_new_tokens > self.context:
            raise RequestError(
                413,
                f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) = "
                f"{len(ids) + max_new_tokens} is over the model context of {self.context} tokens; "
                f"ask for at most {max(0, self.context - len(ids))} new tokens",
            )
        return _Prepared(variant, ids, max_new_tokens, float(temperature), float(top_p), seed)

    def generate(
        self,
        prompt: str,
        *,
        plan: str | None = None,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> dict:
        """Generates a continuation of ``prompt`` with ``plan`` (default plan if None).
        Returns {text, tokens, token_ids, latency_ms, tokens_per_s, plan,
        prompt_tokens, finish_reason, seed}. Raises RequestError for a bad request."""
        req = self.prepare(
            prompt,
            plan=plan,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        return self.run_prepared(req)

    def run_prepared(self, req: _Prepared) -> dict:
        """Runs a validated request (in the calling thread)."""
        seed = req.seed
        if req.temperature > 0 and seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        t0 = time.perf_counter()
        new, finish = self._decode(req.variant.model, req, seed)
        dt = time.perf_counter() - t0
        with self._lock:
            self._served += 1
            self._tokens += len(new)
            self._ema_s = dt if self._ema_s is None else 0.8 * self._ema_s + 0.2 * dt
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return {
            "text": text,
            "tokens": len(new),
            "token_ids": new,
            "latency_ms": 1000.0 * dt,
            "tokens_per_s": len(new) / dt if dt > 0 else 0.0,
            "plan": req.variant.name,
            "prompt_tokens": len(req.ids),
            "finish_reason": finish,
            "seed": seed if req.temperature > 0 else None,
        }

    def _decode(self, model, req: _Prepared, seed: int | None) -> tuple[list[int], str]:
        """The KV-cache loop: prompt once, then one token per forward."""
        dev = torch.device(self.device)
        gen = None
        if req.temperature > 0:
            gen = torch.Generator(device=dev)
            gen.manual_seed(int(seed))
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        new: list[int] = []
        n = len(req.ids)
        with torch.inference_mode():
            ids = torch.tensor([req.ids], dtype=torch.long, device=dev)
            pos = torch.arange(n, device=dev).unsqueeze(0)
            out = model(input_ids=ids, position_ids=pos, use_cache=True, **extra)
            while True:
                tok = _pick(out.logits[0, -1], req.temperature, req.top_p, gen)
                if tok in self.eos_ids:
                    return new, "eos"
                new.append(tok)
                if len(new) >= req.max_new_tokens:
                    return new, "length"
                ids = torch.tensor([[tok]], dtype=torch.long, device=dev)
                pos = torch.tensor([[n + len(new) - 1]], dtype=torch.long, device=dev)
                out = model(
                    input_ids=ids,
                    position_ids=pos,
                    past_key_values=out.past_key_values,
                    use_cache=True,
                    **extra,
                )


def _pick(logits, temperature: float, top_p: float, gen) -> int:
    """Greedy (temperature 0) or temperature + nucleus sampling from ``gen``."""
    logits = logits.double()
    if temperature <= 0 or not bool(torch.isfinite(logits).all()):
        return int(torch.argmax(logits))
    # Shifted so the largest logit is 0, in float64: a tiny temperature (1e-300)
    # sends the others to -inf (probability 0), never to inf/NaN.
    scaled = (logits - logits.max()) / temperature
    probs = torch.softmax(scaled, dim=-1)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        return int(torch.argmax(logits))
    if top_p < 1.0:
        p_sorted, idx = torch.sort(probs, descending=True)
        cum = torch.cumsum(p_sorted, dim=-1)
        keep = (cum - p_sorted) < top_p  # the smallest prefix whose mass reaches top_p
        keep[0] = True
        p_sorted = torch.where(keep, p_sorted, torch.zeros_like(p_sorted))
        choice = torch.multinomial(p_sorted / p_sorted.sum(), 1, generator=gen)
        return int(idx[choice])
    return int(torch.multinomial(probs, 1, generator=gen))


# ----------------------------------------------------------------------------
# the HTTP app
# ----------------------------------------------------------------------------


def create_app(server: PlanServer):
    """The FastAPI app serving ``server``: POST /generate, GET /plans, GET /health."""
    import anyio.to_thread
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(
        title="EMPAS plan server",
        version=empas_version(),
        description=(
            f"Text generation with {server.model_name} under mixed-precision plans. "
            f"Plans: {', '.join(server.plan_names)} (default {server.default_plan})."
        ),
    )
    lim = server.limits
    app.add_middleware(_BodyLimit, limit=lim.max_body_bytes)
    state = {"running": 0, "admitted": 0}
    sem_box: dict[str, asyncio.Semaphore] = {}

    def semaphore() -> asyncio.Semaphore:
        if "sem" not in sem_box:  # created in the serving event loop
            sem_box["sem"] = asyncio.Semaphore(lim.max_concurrency)
        return sem_box["sem"]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # FastAPI's default echoes each offending input, which cannot be encoded
        # when it is NaN/Infinity (a 500 instead of the 422); keep what is safe.
        detail = []
        for e in exc.errors():
            item = {
                "loc": list(e.get("loc", ())),
                "msg": str(e.get("msg", "")),
                "type": e.get("type"),
            }
            v = e.get("input")
            if isinstance(v, float) and not math.isfinite(v):
                item["input"] = repr(v)
            elif isinstance(v, (int, float, bool)) or v is None:
                item["input"] = v
            detail.append(item)
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(
            status_code=500, content={"detail": f"internal error: {type(exc).__name__}: {exc}"}
        )

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        responses={
            404: {"description": "unknown plan"},
            413: {"description": "prompt, or prompt + max_new_tokens, too large"},
            429: {"description": "too many requests running and waiting (see Retry-After)"},
            500: {"description": "generation failed"},
        },
    )
    async def generate(body: GenerateRequest):
        """Generates a continuation of the prompt with the chosen plan."""
        try:
            req = server.prepare(
                body.prompt,
                plan=body.plan,
                max_new_tokens=body.max_new_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
            )
        except RequestError as exc:
            raise HTTPException(status_code=exc.status, detail=str(exc)) from None
        if state["admitted"] >= lim.max_concurrency + lim.max_queue:
            waiting = state["admitted"] - state["running"]
            raise HTTPException(
                status_code=429,
                detail=(
                    f"server busy: {state['running']} generations running and {waiting} waiting "
                    f"(max_concurrency {lim.max_concurrency}, max_queue {lim.max_queue}); retry"
                ),
                headers={"Retry-After": str(server.retry_after(waiting))},
            )
        state["admitted"] += 1
        t_in = time.perf_counter()
        try:
            async with semaphore():
                state["running"] += 1
                queue_ms = 1000.0 * (time.perf_counter() - t_in)
                try:
                    result = await anyio.to_thread.run_sync(server.run_prepared, req)
                except Exception as exc:
                    log.exception("generation failed (plan %s)", req.variant.name)
                    return JSONResponse(
                        status_code=500,
                        content={"detail": f"generation failed: {type(exc).__name__}: {exc}"},
                    )
                finally:
                    state["running"] -= 1
        finally:
            state["admitted"] -= 1
        result["queue_ms"] = queue_ms
        return result

    @app.get("/plans")
    async def plans():
        """The loaded plans with their predicted and (from the report) measured metrics."""
        return {"default_plan": server.default_plan, "plans": server.plans_info()}

    @app.get("/health")
    async def health():
        """Liveness and load: plans, running and queued generations, limits."""
        return {
            "status": "ok",
            "model": server.model_name,
            "device": server.device,
            "activations": server.activations,
            "plans": server.plan_names,
            "default_plan": server.default_plan,
            "busy": state["running"],
            "queued": state["admitted"] - state["running"],
            "limits": {**asdict(lim), "max_prompt_tokens": server.max_prompt_tokens},
            "context": server.context,
            "weight_bytes": server.weight_bytes(),
            "uptime_s": time.time() - server.started,
            **server.stats(),
        }

    return app


# ----------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------


def bind_socket(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A TCP socket bound to host:port and listening (port 0: a free port). Raises
    ServeError when the port is in use."""
    from ..util.net import listen

    in_use = "{host}:{port} is already in use (another empas serve?); pick another --port"
    sock = listen(host, int(port), ServeError, in_use)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(server: PlanServer, log_level: str):
    import uvicorn

    config = uvicorn.Config(
        create_app(server),
        log_level=log_level,
        timeout_graceful_shutdown=30,
        lifespan="off",
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """A uvicorn server running :func:`create_app` in a daemon thread (tests,
    benchmarks, notebooks). ``url``; ``stop()`` shuts it down and joins."""

    def __init__(self, server: PlanServer, host: str = "127.0.0.1", port: int = 0, *,
                 log_level: str = "warning", timeout: float = 30.0):  # fmt: skip
        self.plan_server = server
        self.sock = bind_socket(host, port)
        self.url = _url(self.sock)
        self.uvicorn = _uvicorn_server(server, log_level)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="empas-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServeError(f"the server did not start: {self.error!r}")
            time.sleep(0.01)

    def _run(self) -> None:
        try:
            self.uvicorn.run(sockets=[self.sock])
        except BaseException as exc:  # noqa: BLE001 (reported by the starter)
            self.error = exc

    def stop(self, timeout: float = 30.0) -> None:
        """Asks the server to exit, waits for the thread, closes the socket."""
        self.uvicorn.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_thread(server: PlanServer, host: str = "127.0.0.1", port: int = 0, **kw):
    """Starts ``server`` on host:port (0: a free port) in a background thread and
    returns once it accepts connections: a :class:`BackgroundServer`."""
    return BackgroundServer(server, host, port, **kw)


def _logger(log_level: str) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        try:
            from uvicorn.logging import DefaultFormatter

            handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        except ImportError:  # pragma: no cover
            handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(getattr(logging, str(log_level).upper(), logging.INFO))


def run(
    model,
    plans,
    *,
    report=None,
    host: str = "127.0.0.1",
    port: int = 8000,
    fp16: bool = True,
    default_plan: str | None = None,
    limits: Limits | None = None,
    device: str | None = None,
    log_level: str = "info",
    tokenizer=None,
    activations: str = "exact",
) -> int:
    """Loads the model and plans, then serves HTTP on host:port until interrupted
    (Ctrl-C). Returns 0 after a clean shutdown. Raises ServeError (bad setup, port
    in use) or the plan's error before binding anything."""
    from ..util.sizes import format_bytes

    _logger(log_level)
    server = PlanServer(
        model,
        plans,
        tokenizer=tokenizer,
        report=report,
        fp16=fp16,
        default_plan=default_plan,
        limits=limits,
        device=device,
        activations=activations,
    )
    sock = bind_socket(host, port)
    try:
        for info in server.plans_info():
            loss = info["predicted"]["loss"]
            log.info(
                "plan %-18s %10s weights%s%s",
                info["name"],
                format_bytes(info["packed_bytes"]),
                "" if loss is None else f", predicted loss {loss:.4f}",
                "  (default)" if info["default"] else "",
            )
        log.info(
            "%s on %s: %d plans, %s of weights held; serving on %s (docs: %s/docs)",
            server.model_name,
            server.device,
            len(server.variants),
            format_bytes(server.weight_bytes()),
            _url(sock),
            _url(sock),
        )
        userver = _uvicorn_server(server, log_level)
        try:
            userver.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the captured Ctrl-C after shutdown
            pass
    finally:
        sock.close()
    return 0
