"""Quantization: one :class:`QuantConfig` (:mod:`.config`), fake quantization
(:mod:`.fake`, the C++ ops), real packed weights (:mod:`.packing`), the modules a
plan puts into a model (:mod:`.nn`: ``PackedLinear``, ``HalfLinear``,
``PackedEmbedding``, ``HalfEmbedding``, ``DroppedBlock``), applying a plan to a model (:mod:`.apply`) and packed
checkpoints (:mod:`.checkpoint`). torch is imported on first use."""

from __future__ import annotations

from ..errors import CheckpointError, PlanMismatchError
from . import packing
from .apply import applied, apply, set_activations, weight_bytes
from .checkpoint import load_quantized, read_manifest, save_quantized
from .config import QuantConfig, QuantFormat, choice_formats, int_format
from .fake import fake_quant, fake_quant_reference

__all__ = [
    "CheckpointError",
    "PlanMismatchError",
    "QuantConfig",
    "QuantFormat",
    "applied",
    "apply",
    "choice_formats",
    "fake_quant",
    "fake_quant_reference",
    "int_format",
    "load_quantized",
    "packing",
    "read_manifest",
    "save_quantized",
    "set_activations",
    "weight_bytes",
]
