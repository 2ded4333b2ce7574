"""Models and text: loading a model (:mod:`.loading`; HuggingFace directories and
``.gguf`` files, :mod:`.gguf_files`), what EMPAS quantizes in it (:mod:`.structure`),
text to tokens (:mod:`.text`), and the real models and text that work offline
(:mod:`.examples`: the small Llama EMPAS trains, all-MiniLM, SmolLM2-135M, BBC News).

    >>> path = empas.models.tiny_llama()          # trains once (~7 min), then cached
    >>> calib, evaluation = empas.models.corpus()  # disjoint text
    >>> path = empas.models.resolve("example:smollm2")  # converted from GGUF once, cached
    >>> held_out = empas.models.bbc_news("eval")   # or "example:bbc-news:eval"
"""

from __future__ import annotations

from .examples import (
    BBC_NEWS,
    EXAMPLE,
    SMOLLM2,
    TinyLlamaConfig,
    bbc_news,
    cache_dir,
    corpus,
    default_text,
    example_text,
    minilm_path,
    resolve,
    smollm2,
    smollm2_gguf,
    tiny_llama,
)
from .gguf_files import gguf_info, gguf_tensor_names, gguf_to_hf, is_gguf, read_gguf
from .loading import context_length, fingerprint, load_model, model_source

__all__ = [
    "BBC_NEWS",
    "EXAMPLE",
    "SMOLLM2",
    "TinyLlamaConfig",
    "bbc_news",
    "cache_dir",
    "context_length",
    "corpus",
    "default_text",
    "example_text",
    "fingerprint",
    "gguf_info",
    "gguf_tensor_names",
    "gguf_to_hf",
    "is_gguf",
    "load_model",
    "minilm_path",
    "model_source",
    "read_gguf",
    "resolve",
    "smollm2",
    "smollm2_gguf",
    "tiny_llama",
]
