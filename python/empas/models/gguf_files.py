"""GGUF files in: a llama.cpp ``.gguf`` model, dequantized through transformers into
a plain HuggingFace directory (safetensors) that is cached, so that only the first
load pays for the conversion; the file's own tensor names (for a llama.cpp export of
a plan made on it); and where a loaded model came from.

    >>> d = empas.models.gguf_to_hf("SmolLM2-135M-Instruct.Q4_1.gguf")  # once, then cached
    >>> empas.models.gguf_tensor_names("SmolLM2-135M-Instruct.Q4_1.gguf")[:2]
    ['token_embd.weight', 'blk.0.attn_norm.weight']

The cache key is the file's absolute path, size and modification time (``stat``, no
read): any rewrite of the file changes it, and a multi-GB file costs nothing to
check on every load. The file's full sha256 is computed once, during the
conversion, and recorded in the converted directory (``empas_gguf.json``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from ..errors import FormatError

__all__ = [
    "GGUF_MARKER",
    "gguf_info",
    "gguf_tensor_names",
    "gguf_to_hf",
    "is_gguf",
    "read_gguf",
    "require_gguf_loading",
]

GGUF_MARKER = "empas_gguf.json"  # in a converted directory: where it came from
_FORMAT = "empas.gguf-conversion/1"
# ggml types that hold the weights as they were trained (no quantization error)
_FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}
# what loading a GGUF through transformers needs besides torch + transformers
_NEEDS = {"gguf": "gguf==0.19.0", "accelerate": "accelerate==1.15.0"}


def is_gguf(path) -> bool:
    """Whether ``path`` names a ``.gguf`` file (by its suffix; nothing is read)."""
    return isinstance(path, (str, os.PathLike)) and str(path).lower().endswith(".gguf")


def require_gguf_loading(what: str = "loading a GGUF file") -> None:
    """ImportError naming the install command when ``gguf`` or ``accelerate`` (which
    transformers needs to read and dequantize a GGUF file) is missing."""
    missing = [pin for mod, pin in _NEEDS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(
            f"{what} needs the package(s) {', '.join(p.split('==')[0] for p in missing)}: "
            f"pip install {' '.join(missing)}"
        )


def gguf_file_path(path, gguf_file: str | None = None) -> Path:
    """The GGUF file that ``path`` (a ``.gguf`` file, or a directory plus the file name
    ``gguf_file``) names; FileNotFoundError naming it when it is not there."""
    p = Path(path)
    if gguf_file is not None:
        if not p.is_dir():
            raise FileNotFoundError(
                f"gguf_file={gguf_file!r} names a file in a directory, but {str(p)!r} is not a "
                "directory"
            )
        p = p / gguf_file
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file {str(p)!r} does not exist")
    if not is_gguf(p):
        raise FormatError(f"{str(p)!r} is not a .gguf file")
    return p


def read_gguf(path) -> dict:
    """What a GGUF file holds, read with the ``gguf`` package's ``GGUFReader``:
    ``{"architecture", "name", "tensors": [{"name", "type", "shape"}], "size"}``.
    A truncated or corrupt file is a FormatError naming it and the problem."""
    return _read(Path(path))[0]


def gguf_tensor_names(path) -> list[str]:
    """The tensor names of a GGUF file (``token_embd.weight``, ``blk.0.attn_q.weight``,
    ...), in file order: what ``llama-quantize --tensor-type`` matches against. ``path``
    may also be a directory converted by :func:`gguf_to_hf` (its recorded names)."""
    p = Path(path)
    if p.is_dir():
        info = gguf_info(p)
        if info is None:
            raise FormatError(f"{str(p)!r} is not a directory converted from a GGUF file")
        return list(info["tensor_names"])
    return [t["name"] for t in read_gguf(p)["tensors"]]


def gguf_info(model_dir) -> dict | None:
    """The conversion record of a directory made by :func:`gguf_to_hf` (source file,
    sha256, architecture, quantization types, tensor names, HF -> GGUF name map), or
    None for any other directory."""
    marker = Path(model_dir) / GGUF_MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FormatError(f"{marker}: unreadable conversion record ({exc})") from None
    if info.get("format") != _FORMAT:
        raise FormatError(f"{marker}: format {info.get('format')!r}, expected {_FORMAT}")
    return info


def source_record(info: dict) -> dict:
    """The short provenance a profile or report records for a model converted from a
    GGUF file (from :func:`gguf_info`)."""
    src = info["source"]
    return {
        "format": "gguf",
        "file": src["path"],
        "sha256": src["sha256"],
        "architecture": info["architecture"],
        "quantized": info["quantized"],
        "tensor_types": info["tensor_types"],
        "note": info["note"],
    }


def _cache_key(path: Path) -> str:
    st = path.stat()
    blob = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def gguf_to_hf(
    gguf_path,
    out_dir=None,
    *,
    name: str | None = None,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """A GGUF model as a HuggingFace directory (``config.json``, ``model.safetensors``
    in float32, the tokenizer, ``empas_gguf.json``); returns the directory.

    The file is loaded with transformers (``from_pretrained(dir, gguf_file=...)``),
    every weight dequantized to float32, and saved with ``save_pretrained``; later
    calls find the saved copy and return at once. ``out_dir``: where to save
    (default: the cache, ``$EMPAS_CACHE/models/<name>-<key>`` with ``name`` defaulting
    to the file's stem and ``key`` its path, size and mtime; a copy cached under
    another name with the same key is reused). The directory is
    written under a temporary name and renamed when complete: an interrupted or
    failed conversion leaves nothing half-written. Raises FormatError naming the file
    when it is truncated or corrupt, or of an architecture transformers cannot
    dequantize; ImportError naming the install command when ``gguf`` or
    ``accelerate`` is missing.
    """
    src = gguf_file_path(gguf_path)
    key = _cache_key(src)
    if out_dir is None:
        from .examples import cache_dir

        models = cache_dir() / "models"
        out = models / f"{_slug(name or src.stem)}-{key}"
        if not force and not _is_converted(out, src, key):
            # converted before under another name (a path vs. an alias): the key decides
            for other in sorted(models.glob(f"*-{key}")) if models.is_dir() else []:
                if _is_converted(other, src, key):
                    return other
    else:
        out = Path(out_dir)
    if not force and _is_converted(out, src, key):
        return out
    if out.exists() and any(out.iterdir()) and gguf_info(out) is None:
        raise FileExistsError(
            f"{out} exists and is not a converted GGUF model; choose another path"
        )

    require_gguf_loading(f"converting {src.name}")
    t0 = time.perf_counter()
    info, reader = _read(src)
    if verbose:
        types = ", ".join(f"{n} {t}" for t, n in Counter(_types(info)).most_common())
        print(
            f"[empas.models] converting {src} ({info['size'] / 1e6:.0f} MB; {types}) to a "
            f"float32 safetensors copy, once: {out}",
            file=sys.stderr,
            flush=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _read_once(src, reader), _progress_bars(verbose):
            model, tok, tok_error = _load_through_transformers(src, info)
        linears = _check_dequantized(model, src)
        model.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        del reader  # the memmap of the file
        record = _record(src, key, info, model, linears, tok_error, time.perf_counter() - t0)
        (tmp / GGUF_MARKER).write_text(json.dumps(record, indent=1) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            if not _is_converted(out, src, key):  # else: another process finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        print(
            f"[empas.models] converted {src.name} in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    if out_dir is None:
        _drop_stale(out, src)
    return out


def _drop_stale(fresh: Path, src: Path) -> list[Path]:
    """Removes cached conversions of the same source path made before the file
    changed (a reinstalled package: another size or mtime, so another key), which
    would otherwise stay on disk forever (each one is ~4x the GGUF's size)."""
    gone = []
    for other in sorted(fresh.parent.glob("*-*")):
        if other == fresh or not other.is_dir() or other.name.startswith("."):
            continue
        try:
            info = gguf_info(other)
        except FormatError:
            continue
        if info is None:
            continue
        path = (info.get("source") or {}).get("path")
        if path and Path(path) == src.resolve() and info["source"].get("key") != _cache_key(src):
            shutil.rmtree(other, ignore_errors=True)
            gone.append(other)
    return gone


def _is_converted(out: Path, src: Path, key: str) -> bool:
    try:
        info = gguf_info(out)
    except FormatError:
        return False
    return (
        info is not None
        and info.get("source", {}).get("key") == key
        and (out / "config.json").is_file()
        and any(out.glob("*.safetensors"))
    )


def _types(info: dict) -> list[str]:
    return [t["type"] for t in info["tensors"]]


def _read(path: Path):
    """``(info, reader)``; every way a file can fail to parse is a FormatError."""
    try:
        import gguf
    except ImportError:
        raise ImportError(
            f"reading {path.name} needs the gguf package: pip install gguf==0.19.0"
        ) from None
    size = path.stat().st_size
    hint = (
        f"{str(path)!r} ({size:,} bytes) is not a complete GGUF file: truncated (an "
        "interrupted download or copy?) or corrupt"
    )
    try:
        reader = gguf.GGUFReader(path)
        tensors = [
            {
                "name": str(t.name),
                "type": t.tensor_type.name,
                "shape": [int(d) for d in t.shape],
                "end": int(t.data_offset) + int(t.n_bytes),
            }
            for t in reader.tensors
        ]
        arch = _field(reader, "general.architecture")
        model_name = _field(reader, "general.name")
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, OSError) as exc:
        raise FormatError(f"{hint} ({type(exc).__name__}: {exc})") from None
    if not tensors:
        raise FormatError(f"{hint}: it holds no tensors")
    end = max(t.pop("end") for t in tensors)
    if end > size:
        raise FormatError(f"{hint}: its tensors end at byte {end:,}")
    if arch is None:
        raise FormatError(f"{str(path)!r} has no general.architecture: not a GGUF model")
    info = {"architecture": arch, "name": model_name, "tensors": tensors, "size": size}
    return info, reader


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")


@contextlib.contextmanager
def _read_once(path: Path, reader):
    """While converting: transformers reads the file with ``gguf.GGUFReader`` three
    times (config, weights, tokenizer; ~5 s each for SmolLM2's 49k-token vocabulary)
    and builds gguf's tensor-name table once per module (~400 times). Hand it the
    reader already made and the table once per (architecture, depth): the results are
    the same, the conversion twice as fast. Restored on exit."""
    import gguf

    orig_reader, orig_map = gguf.GGUFReader, gguf.get_tensor_name_map
    target = os.path.realpath(path)

    def reader_once(p, mode="r"):
        if mode == "r" and os.path.realpath(p) == target:
            return reader
        return orig_reader(p, mode)

    gguf.GGUFReader = reader_once
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(orig_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = orig_reader, orig_map


@contextlib.contextmanager
def _progress_bars(verbose: bool):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not verbose and was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()


def _load_through_transformers(src: Path, info: dict):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:
        # dense nn.Linear weights even where a GGUF matmul kernel is installed
        kwargs["quantization_config"] = gguf_config(dequantize=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.float32, **kwargs
        )
    except ImportError:
        raise
    except Exception as exc:
        try:
            from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

            known = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
            hint = f" (it dequantizes GGUF files of: {', '.join(known)})"
        except ImportError:
            hint = ""
        raise FormatError(
            f"{str(src)!r}: transformers {transformers.__version__} cannot load this GGUF "
            f"model of architecture {info['architecture']!r}{hint}: {type(exc).__name__}: {exc}"
        ) from exc
    tok, tok_error = None, None
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except Exception as exc:  # the model is still usable with token ids
        tok_error = f"{type(exc).__name__}: {exc}"
        print(
            f"[empas.models] warning: no tokenizer from {src.name} ({tok_error}); text "
            "calibration and evaluation of this model need tokenizer=",
            file=sys.stderr,
        )
    model.eval()
    return model, tok, tok_error


def _check_dequantized(model, src: Path) -> int:
    """Clears what says "quantized" on a model whose weights are dense now (the
    GGUF quantizer and its config make ``save_pretrained`` refuse), after checking
    that every linear is a plain ``nn.Linear`` with float32 weights."""
    import torch

    packed = sorted(
        {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
    )
    if packed:
        raise FormatError(
            f"{str(src)!r}: transformers kept weights packed ({', '.join(packed)}); EMPAS "
            "needs them dequantized"
        )
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise FormatError(f"{str(src)!r}: the loaded model has no nn.Linear layers")
    bad = {str(p.dtype) for p in model.parameters() if p.dtype != torch.float32}
    if bad:
        raise FormatError(f"{str(src)!r}: weights loaded as {sorted(bad)}, expected float32")
    for obj, attr in ((model, "hf_quantizer"), (model.config, "quantization_config")):
        if getattr(obj, attr, None) is not None:
            with contextlib.suppress(AttributeError):
                delattr(obj, attr)
            if getattr(obj, attr, None) is not None:
                setattr(obj, attr, None)
    with contextlib.suppress(AttributeError):
        del model.quantization_method
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    return len(linears)


def _tensor_map(model, info: dict) -> dict[str, str]:
    """HF parameter name -> the GGUF file's tensor name, via gguf-py's name table
    (only names the file holds: a tied LM head maps to nothing)."""
    import gguf

    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    arch = archs.get(info["architecture"])
    n_blocks = getattr(model.config, "num_hidden_layers", None)
    if arch is None or not n_blocks:
        return {}
    tmap = gguf.get_tensor_name_map(arch, int(n_blocks))
    names = {t["name"] for t in info["tensors"]}
    out = {}
    for pname in model.state_dict():
        g = tmap.get_name(pname, try_suffixes=(".weight", ".bias"))
        if g in names:
            out[pname] = g
    return out


def _record(src: Path, key, info, model, n_linears, tok_error, seconds) -> dict:
    import transformers

    with open(src, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    st = src.stat()
    types = Counter(_types(info))
    quantized = any(t not in _FLOAT_TYPES for t in types)
    from importlib.metadata import PackageNotFoundError, version

    try:
        gguf_version = version("gguf")
    except PackageNotFoundError:  # pragma: no cover - a gguf module outside any package
        gguf_version = None
    note = (
        "dequantized from a quantized GGUF file: the float32 weights carry the file's "
        f"quantization error ({', '.join(sorted(t for t in types if t not in _FLOAT_TYPES))}); "
        "deltas measured at bit widths near the file's understate what the unquantized "
        "original would show"
        if quantized
        else "converted from an unquantized GGUF file"
    )
    return {
        "format": _FORMAT,
        "source": {
            "path": str(src.resolve()),
            "file": src.name,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": sha,
            "key": key,
        },
        "architecture": info["architecture"],
        "name": info["name"],
        "class": type(model).__name__,
        "linears": n_linears,
        "quantized": quantized,
        "tensor_types": dict(types.most_common()),
        "note": note,
        "tensor_names": [t["name"] for t in info["tensors"]],
        "tensor_map": _tensor_map(model, info),
        "tokenizer": tok_error is None,
        "tokenizer_error": tok_error,
        "dtype": "float32",
        "transformers": transformers.__version__,
        "gguf": gguf_version,
        "seconds": round(seconds, 1),
    }
