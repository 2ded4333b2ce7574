"""Models and text: loading a model (:mod:`.loading`), what EMPAS quantizes in it
(:mod:`.structure`), text to tokens (:mod:`.text`), and the real models and text
that work offline (:mod:`.examples`: the small Llama EMPAS trains, all-MiniLM).

    >>> path = empas.models.tiny_llama()          # trains once (~7 min), then cached
    >>> calib, evaluation = empas.models.corpus()  # disjoint text
"""

from __future__ import annotations

from .examples import EXAMPLE, TinyLlamaConfig, cache_dir, corpus, minilm_path, resolve, tiny_llama
from .loading import context_length, fingerprint, load_model

__all__ = [
    "EXAMPLE",
    "TinyLlamaConfig",
    "cache_dir",
    "context_length",
    "corpus",
    "fingerprint",
    "load_model",
    "minilm_path",
    "resolve",
    "tiny_llama",
]
