"""Loading a model (a local HuggingFace directory, a ``.gguf`` file or a model
object) and its identity: a cheap fingerprint of the weights, the context length,
and where the weights came from (:func:`model_source`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ProfileError
from .gguf_files import gguf_file_path, gguf_info, gguf_to_hf, is_gguf, source_record

__all__ = [
    "context_length",
    "fingerprint",
    "load_model",
    "load_model_lazy",
    "model_device",
    "model_source",
    "require_torch",
]

_SOURCE_ATTR = "empas_source"  # set on models loaded from a converted GGUF file


def require_torch(what: str = "this") -> None:
    """ImportError with the install command when torch or transformers is missing
    (``what`` needs them: "profiling", ...)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"{what} needs torch and transformers ({exc}); install them with "
            "`pip install torch==2.13.0 transformers` (a CUDA build of torch for GPUs), then "
            "rebuild EMPAS with `pip install --no-build-isolation .` so the ops match that torch"
        ) from exc


def load_model(model_or_path, device=None, tokenizer=None, gguf_file=None):
    """``(model, tokenizer, owned, name)``: loads a local HuggingFace directory
    (causal LM when its config says so, else the base model, e.g. an encoder) onto
    ``device`` (default: CUDA when available), or takes a model object where it is
    (``owned`` is False: it is left as it was). The tokenizer is loaded from the
    directory when not given (None when it has none).

    A ``.gguf`` file (or a directory and ``gguf_file=`` the file's name in it) is
    dequantized through transformers into a cached float32 copy on first use
    (:func:`~empas.models.gguf_to_hf`) and loaded from there; ``name`` is then the
    ``.gguf`` path, and :func:`model_source` of the model says that its weights came
    from that (quantized) file."""
    import torch

    if isinstance(model_or_path, (str, os.PathLike)):
        path, name = _local_model(model_or_path, gguf_file)
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

        cfg = AutoConfig.from_pretrained(path)
        archs = list(getattr(cfg, "architectures", None) or [])
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        if causal or not archs:
            try:
                model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
            except ValueError:  # no causal-LM class for this config
                model = AutoModel.from_pretrained(path, dtype="auto")
        else:  # an encoder (e.g. all-MiniLM: BertModel): no LM head to invent
            model = AutoModel.from_pretrained(path, dtype="auto")
        tokenizer = _finish_local(model, path, tokenizer)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        owned = True
    else:
        model = model_or_path
        if not hasattr(model, "named_modules"):
            raise TypeError(
                f"model_or_path must be a torch model or a path, got {type(model).__name__}"
            )
        owned = False
        name = getattr(model, "name_or_path", None) or getattr(
            getattr(model, "config", None), "_name_or_path", type(model).__name__
        )
        if tokenizer is None and name and Path(str(name)).is_dir():
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(name)
            except Exception:
                tokenizer = None
        if device is not None:
            p = next(model.parameters())
            if p.device != torch.device(device):
                raise ValueError(
                    f"the model is on {p.device} but device={device!r}; move it first (a model "
                    "object is profiled where it is and left unchanged)"
                )
    return model, tokenizer, owned, str(name)


def _local_model(model_or_path, gguf_file=None) -> tuple[Path, str]:
    """(the HuggingFace directory, the model's name) of a path; a ``.gguf`` file is
    converted (cached) first. FileNotFoundError / ProfileError when it holds none."""
    path = Path(model_or_path)
    if gguf_file is not None or is_gguf(path):
        src = gguf_file_path(path, gguf_file)
        path, name = gguf_to_hf(src, verbose=True), str(src)
    else:
        name = str(path)
    if not path.exists():
        raise FileNotFoundError(
            f"model path {str(path)!r} does not exist (EMPAS loads models from local "
            "directories and .gguf files; no model hub is contacted)"
        )
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf")) if path.is_dir() else []
        hint = (
            f"; it holds GGUF files ({', '.join(ggufs)}): pass one as the model path or "
            "as gguf_file= (--gguf-file)"
            if ggufs
            else ""
        )
        raise ProfileError(f"{str(path)!r} holds no HuggingFace model (no config.json){hint}")
    return path, name


def load_model_lazy(model_path, device=None, tokenizer=None, gguf_file=None):
    """``(model, tokenizer, name, weights)``: like :func:`load_model` for a path,
    but no weight is read: the model's parameters are on ``meta`` and ``weights``
    (a :class:`~empas.models.lazy.LazyWeights`) materializes them from the
    directory's ``.safetensors`` files onto ``device`` when asked."""
    import torch

    from .lazy import load_lazy

    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"lazy loading needs a model path, got {type(model_path).__name__}")
    path, name = _local_model(model_path, gguf_file)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, weights = load_lazy(path, device)
    tokenizer = _finish_local(model, path, tokenizer)
    return model, tokenizer, name, weights


def model_source(model) -> dict | None:
    """Where a model's weights came from, when not from a plain HuggingFace checkpoint:
    for one converted from a GGUF file, ``{"format": "gguf", "file", "sha256",
    "architecture", "quantized", "tensor_types", "note"}`` (``quantized``: the file
    held quantized weights, so the float32 weights carry its quantization error).
    None otherwise."""
    src = getattr(model, _SOURCE_ATTR, None)
    return dict(src) if isinstance(src, dict) else None


def fingerprint(model) -> str:
    """A cheap identity of the weights: names, shapes, dtypes and a strided sample."""
    import torch

    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        h.update(cfg.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            fingerprint_update(h, name, p)
    return h.hexdigest()[:16]


def fingerprint_update(h, name: str, p) -> None:
    """Adds one named tensor to a :func:`fingerprint` hash: name, shape, dtype and
    a strided sample of about 4096 values."""
    h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
    flat = p.detach().reshape(-1)
    if flat.numel():
        step = max(1, flat.numel() // 4096)
        h.update(flat[::step].float().cpu().numpy().tobytes())


def context_length(model) -> int | None:
    """The model's context (``max_position_embeddings`` or ``n_positions``), if it says."""
    cfg = getattr(model, "config", None)
    ctx = None
    for attr in ("max_position_embeddings", "n_positions"):
        ctx = ctx or getattr(cfg, attr, None)
    return int(ctx) if ctx else None


def default_seq_len(model, seq_len: int | None) -> int:
    """``seq_len``, or min(256, the model's context); ValueError beyond the context."""
    ctx = context_length(model)
    if seq_len is None:
        return min(256, ctx) if ctx else 256
    if ctx and seq_len > ctx:
        raise ValueError(f"seq_len={seq_len} exceeds the model's context of {ctx} tokens")
    return seq_len


def model_device(model):
    """The device of the model's first parameter (or buffer); CPU for an empty model."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    import torch

    return torch.device("cpu")


def _finish_local(model, path, tokenizer):
    """The tokenizer of a local model directory (the given one, the directory's, or
    None), and the model tagged with its GGUF source when it was converted from one."""
    if tokenizer is None:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception:
            tokenizer = None
    info = gguf_info(path)
    if info is not None:
        setattr(model, _SOURCE_ATTR, source_record(info))
    return tokenizer
