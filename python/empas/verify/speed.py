"""End-to-end speed of plans (``empas verify --speed``): decode and prefill
tokens per second of the model with each plan applied in packed mode (the
modules a deployment runs), and of the unquantized model as reference.

* decode: batch 1, a prompt of ``prompt_tokens`` tokens of the held-out text, then
  ``new_tokens`` greedy steps with the KV cache (one token per forward, the
  argmax fed back; the end-of-sequence token does not stop it, so every plan
  decodes the same number of steps). Timed: the ``new_tokens`` single-token
  forwards (the prompt's forward is not part of it).
* prefill: one forward (no cache) of ``prefill_tokens`` tokens, batch 1.

Each plan is timed in ``repeats`` rounds after one warm-up round; a round visits
every plan once in an order shuffled by a seeded RNG (a slow spell of a shared
machine then hits all plans alike); the figure is the median over rounds. The
comparison with the profile's latency table (predicted Σ per-unit latency, which
leaves out a constant) is a Spearman rank correlation over the plans.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any

import numpy as np

from ..quant.apply import applied
from ..util.stats import spearman

__all__ = ["check_speed", "measure_speed", "speed_summary"]


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _once(model, prompt, prefill, new_tokens: int, dev, extra) -> tuple[float, float]:
    """(seconds of the new_tokens decode steps, seconds of the prefill forward)."""
    import torch

    with torch.inference_mode():
        n = prompt.shape[1]
        pos = torch.arange(n, device=dev).unsqueeze(0)
        out = model(input_ids=prompt, position_ids=pos, use_cache=True, **extra)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        past = out.past_key_values
        _sync(dev)
        t0 = time.perf_counter()
        for i in range(new_tokens):
            p = torch.tensor([[n + i]], dtype=torch.long, device=dev)
            out = model(
                input_ids=tok, position_ids=p, past_key_values=past, use_cache=True, **extra
            )
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(dev)
        t_dec = time.perf_counter() - t0
        pos = torch.arange(prefill.shape[1], device=dev).unsqueeze(0)
        _sync(dev)
        t0 = time.perf_counter()
        model(input_ids=prefill, position_ids=pos, use_cache=False, **extra)
        _sync(dev)
        t_pre = time.perf_counter() - t0
    return t_dec, t_pre


def check_speed(model, stream, new_tokens: int, prompt_tokens: int, prefill_tokens: int) -> None:
    """ValueError when the lengths do not fit the model's context or the text."""
    from ..models.loading import context_length

    ctx = context_length(model)
    if ctx and prompt_tokens + new_tokens > ctx:
        raise ValueError(
            f"speed: prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds the "
            f"model's context of {ctx} tokens"
        )
    if ctx and prefill_tokens > ctx:
        raise ValueError(
            f"speed: prefill_tokens {prefill_tokens} exceeds the model's context of {ctx} tokens"
        )
    need = max(prompt_tokens, prefill_tokens)
    if stream.numel() < need:
        raise ValueError(f"speed: the eval text has {stream.numel()} tokens, {need} are needed")


def measure_speed(
    model,
    stream,
    plans: list[tuple[str, Any]],
    *,
    clip_search: bool = False,
    new_tokens: int = 32,
    prompt_tokens: int = 16,
    prefill_tokens: int = 128,
    repeats: int = 3,
    seed: int = 0,
    activations: str = "exact",
) -> dict[str, dict[str, Any]]:
    """name -> {decode_tok_s, decode_ms_per_token, prefill_tok_s, prefill_ms_per_token,
    decode_ms_samples, prefill_ms_samples}. ``plans``: (name, Plan or None); None is
    the model as it is (the unquantized reference). ``stream``: 1-D token ids.
    ``activations``: how the packed linears treat their input (``empas.set_activations``)."""
    import torch

    from ..models.loading import model_device

    check_speed(model, stream, new_tokens, prompt_tokens, prefill_tokens)
    dev = model_device(model)
    prompt = stream[:prompt_tokens].view(1, -1).to(dev)
    prefill = stream[:prefill_tokens].view(1, -1).to(dev)
    try:
        sig = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        sig = {}
    extra = {"logits_to_keep": 1} if "logits_to_keep" in sig else {}
    dec = {name: [] for name, _ in plans}
    pre = {name: [] for name, _ in plans}
    rng = np.random.default_rng(seed)
    for r in range(1 + repeats):  # round 0: warm-up, not kept
        for i in rng.permutation(len(plans)):
            name, plan = plans[int(i)]
            if plan is None:
                td, tp = _once(model, prompt, prefill, new_tokens, dev, extra)
            else:
                with applied(
                    model, plan, "packed", clip_search=clip_search, activations=activations
                ):
                    with torch.inference_mode():  # the fresh modules' first call, untimed
                        model(input_ids=prompt, use_cache=False, **extra)
                    td, tp = _once(model, prompt, prefill, new_tokens, dev, extra)
            if r > 0:
                dec[name].append(1e3 * td)
                pre[name].append(1e3 * tp)
    out = {}
    for name, _ in plans:
        d, p = float(np.median(dec[name])), float(np.median(pre[name]))
        out[name] = {
            "decode_ms_per_token": d / new_tokens,
            "decode_tok_s": 1e3 * new_tokens / d,
            "prefill_ms_per_token": p / prefill_tokens,
            "prefill_tok_s": 1e3 * prefill_tokens / p,
            "decode_ms_samples": [round(x, 4) for x in dec[name]],
            "prefill_ms_samples": [round(x, 4) for x in pre[name]],
        }
    return out


def speed_summary(rows: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The report's ``speed`` section: the settings and the Spearman rank
    correlation of predicted latency (Σ per-unit table cells) with the measured
    decode and prefill time per token, over the rows that have both."""
    pts = [
        r
        for r in rows
        if r.get("pred_latency") is not None and r.get("decode_ms_per_token") is not None
    ]
    out = dict(settings)
    out["n_compared"] = len(pts)
    for what in ("decode", "prefill"):
        key = f"spearman_{what}"
        if len(pts) < 3:
            out[key] = None
            continue
        rho = spearman([r["pred_latency"] for r in pts], [r[f"{what}_ms_per_token"] for r in pts])
        out[key] = None if math.isnan(rho) else rho
    out["compared"] = [r["name"] for r in pts]
    return out
