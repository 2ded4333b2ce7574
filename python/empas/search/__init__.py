"""Search: the Pareto front of loss vs bytes (vs latency) over a profile's
additive proxy, by NSGA-II or exactly (:mod:`.run`), with its settings
(:mod:`.config`: :class:`SearchConfig`) and its result (:mod:`.result`:
:class:`SearchResult`, ``empas.search/1``, with :meth:`SearchResult.load`), and
the loop that measures candidate plans and corrects the proxy (:mod:`.measured`)."""

from __future__ import annotations

from .config import METHODS, SearchConfig
from .measured import MeasuredSearch, search_measured
from .result import ARCHETYPES, SEARCH_FORMAT, Front, SearchResult
from .run import search

__all__ = [
    "ARCHETYPES",
    "METHODS",
    "SEARCH_FORMAT",
    "Front",
    "MeasuredSearch",
    "SearchConfig",
    "SearchResult",
    "search",
    "search_measured",
]
