"""Packed quantized checkpoints: ``save_quantized`` and ``load_quantized``.

A checkpoint is a directory:

* ``model.safetensors``: the packed model's state dict. A quantized linear
  ``L`` is stored as ``L.qweight`` (uint8, the bit stream of
  ``ceil(out * in * bits / 8)`` bytes), ``L.scales`` (fp16 ``[out, n_groups]``),
  ``L.zeros`` (uint8 ``[out, n_groups]``, asymmetric only) and ``L.bias``; a 16-bit
  unit as an fp16 ``L.weight``; a quantized embedding table the same way (``out``
  = rows, kind ``packed_embedding``, or ``fp16_embedding``); every other tensor
  (norms, an unquantized embedding or head) at its stored dtype. Tensors shared by
  several names (a tied embedding and head, packed or not) are stored once.
* ``config.json``: the HuggingFace config (plus tokenizer files when given).
* ``empas_quantized.json`` (format ``empas.quantized/1``): the plan, the model
  class, every replaced module, the dropped blocks, the tied names, and the
  size and SHA-256 of ``model.safetensors`` (checked on load: a corrupt or
  truncated file is an error, never garbage weights).

The tensor bytes in ``model.safetensors`` equal the plan's predicted bytes
exactly when the plan drops no block (a dropped block's leftover tensors, e.g.
its norms, are counted by the profile but not stored: the manifest records
both). The file adds a JSON header (reported as ``header_bytes``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, FormatError
from ..plan import as_plan
from ..util.io import atomic_write_text, loads_json, sha256_file
from .apply import applied, replace_module

__all__ = ["CheckpointError", "load_quantized", "read_manifest", "save_quantized"]

MANIFEST = "empas_quantized.json"
WEIGHTS = "model.safetensors"
FORMAT = "empas.quantized/1"


def _is_applied(model) -> bool:
    from .nn import DroppedBlock, HalfEmbedding, HalfLinear, PackedEmbedding, PackedLinear

    kinds = (PackedLinear, HalfLinear, PackedEmbedding, HalfEmbedding, DroppedBlock)
    return any(isinstance(m, kinds) for m in model.modules())


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


def _manifest_modules(model) -> tuple[dict[str, Any], list[str]]:
    from .nn import DroppedBlock, HalfEmbedding, HalfLinear, PackedEmbedding, PackedLinear

    mods, dropped = {}, []
    for name, m in model.named_modules():
        if isinstance(m, DroppedBlock):
            dropped.append(name)
            continue
        if isinstance(m, (PackedLinear, PackedEmbedding)):
            spec = {"kind": "packed", "bits": m.bits, "group_size": m.group_size,
                    "symmetric": m.symmetric}  # fmt: skip
        elif isinstance(m, (HalfLinear, HalfEmbedding)):
            spec = {"kind": "fp16"}
        else:
            continue
        if isinstance(m, (PackedEmbedding, HalfEmbedding)):  # a table [rows, dim]
            spec["kind"] += "_embedding"
            spec.update(in_features=m.embedding_dim, out_features=m.num_embeddings)
            spec["dtype"] = _dtype_name(m.dtype)
        else:
            spec.update(in_features=m.in_features, out_features=m.out_features)
            spec["bias"] = None if m.bias is None else _dtype_name(m.bias.dtype)
        mods[name] = spec
    return mods, dropped


def _state(model) -> tuple[dict[str, Any], dict[str, str]]:
    """Distinct tensors (contiguous, on CPU) and the aliases of shared ones."""
    tensors, aliases, first = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), t.dtype, t.device)
        if t.numel() and key in first:
            aliases[name] = first[key]
            continue
        first[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def save_quantized(
    model,
    plan,
    path: str | os.PathLike,
    *,
    tokenizer=None,
    clip_search: bool = False,
    force: bool = False,
    allow_partial: bool = False,
) -> Path:
    """Writes ``model`` quantized by ``plan`` as a packed checkpoint directory.

    ``model`` is the original (unquantized) model — it is packed for the write and
    left unchanged — or a model already packed with ``empas.apply(..., mode="packed")``
    for this plan. The directory is written next to its final place and renamed
    into it; an existing ``path`` is replaced only with ``force=True``. A plan
    that lacks units of its profile is refused unless ``allow_partial=True``.
    Returns the path."""
    from .apply import check_coverage

    plan = as_plan(plan)
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (CLI: --force) to replace it")
    if not allow_partial:
        check_coverage(plan)
    if _is_applied(model):
        return _write(model, plan, path, tokenizer, clip_search)
    with applied(model, plan, mode="packed", clip_search=clip_search, allow_partial=True):
        return _write(model, plan, path, tokenizer, clip_search)


def _write(model, plan, path: Path, tokenizer, clip_search: bool) -> Path:
    from safetensors.torch import save_file

    from .._native import version

    tensors, aliases = _state(model)
    mods, dropped = _manifest_modules(model)
    tensor_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "empas": FORMAT})
        cfg = getattr(model, "config", None)
        if cfg is None or not hasattr(cfg, "save_pretrained"):
            raise TypeError("save_quantized needs a HuggingFace model (with .config)")
        cfg.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        size = (tmp / WEIGHTS).stat().st_size
        data = plan.to_dict()
        manifest = {
            "format": FORMAT,
            "empas_version": version(),
            "model_class": type(model).__name__,
            "plan": data,
            "clip_search": bool(clip_search),
            "modules": mods,
            "dropped_blocks": dropped,
            "tied": aliases,
            "files": {WEIGHTS: {"bytes": size, "sha256": sha256_file(tmp / WEIGHTS)}},
            "tensor_bytes": int(tensor_bytes),
            "header_bytes": int(size - tensor_bytes),
            "predicted_bytes": plan.predicted_bytes,
        }
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        if path.exists():  # force: swap in the new directory, then remove the old one
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``empas_quantized.json``, validated."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{path} is not an EMPAS packed checkpoint (no {MANIFEST})")
    try:
        text = mf.read_text()
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{mf}: not valid JSON ({exc})") from None
    m = loads_json(text, str(mf), CheckpointError)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        got = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise CheckpointError(f"{mf}: format is {got!r}, expected {FORMAT!r}")
    for key in ("model_class", "plan", "modules", "dropped_blocks", "tied", "files"):
        if key not in m:
            raise CheckpointError(f"{mf}: missing field {key!r}")
    _validate_manifest(m, mf)
    return m


_BIAS_DTYPES = ("float16", "bfloat16", "float32", "float64")
_KINDS = ("packed", "fp16", "packed_embedding", "fp16_embedding")


def _validate_manifest(m: dict[str, Any], mf: Path) -> None:
    """Types and ranges of every manifest field load_quantized reads, so a
    malformed manifest is a CheckpointError naming the field, never an
    AttributeError/KeyError/TypeError from deep inside the loader."""

    def bad(field: str, what: str) -> CheckpointError:
        return CheckpointError(f"{mf}: {field} {what}")

    def integer(v: Any, field: str, lo: int, hi: int | None = None) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise bad(field, f"must be an integer {rng}, got {v!r}")

    if not isinstance(m["model_class"], str) or not m["model_class"].isidentifier():
        raise bad("model_class", f"must be a class name, got {m['model_class']!r}")
    if not isinstance(m["plan"], dict):
        raise bad("plan", f"must be an object, got {type(m['plan']).__name__}")
    mods = m["modules"]
    if not isinstance(mods, dict):
        raise bad("modules", f"must be an object (module name -> spec), got {type(mods).__name__}")
    for name, spec in mods.items():
        where = f"modules[{name!r}]"
        if not isinstance(spec, dict):
            raise bad(where, f"must be an object, got {type(spec).__name__}")
        kind = spec.get("kind")
        if kind not in _KINDS:
            raise bad(
                f"{where}.kind", f"must be one of {', '.join(map(repr, _KINDS))}, got {kind!r}"
            )
        need = ["in_features", "out_features"]
        if kind in ("packed", "packed_embedding"):
            need += ["bits", "group_size", "symmetric"]
        if kind.endswith("_embedding"):
            need += ["dtype"]
        for key in need:
            if key not in spec:
                raise bad(where, f"is missing {key!r}")
        integer(spec["in_features"], f"{where}.in_features", 1)
        integer(spec["out_features"], f"{where}.out_features", 1)
        if "dtype" in need and spec["dtype"] not in _BIAS_DTYPES:
            raise bad(f"{where}.dtype", f"must be one of {_BIAS_DTYPES}, got {spec['dtype']!r}")
        if kind in ("packed", "packed_embedding"):
            integer(spec["bits"], f"{where}.bits", 2, 8)
            integer(spec["group_size"], f"{where}.group_size", 0)
            if not isinstance(spec["symmetric"], bool):
                raise bad(f"{where}.symmetric", f"must be true or false, got {spec['symmetric']!r}")
        b = spec.get("bias")
        if b is not None and b not in _BIAS_DTYPES:
            raise bad(f"{where}.bias", f"must be null or one of {_BIAS_DTYPES}, got {b!r}")
    dropped = m["dropped_blocks"]
    if not isinstance(dropped, list) or not all(
        isinstance(d, str) and "." in d and d.rsplit(".", 1)[1].isdigit() for d in dropped
    ):
        raise bad(
            "dropped_blocks",
            f"must be a list of block names like 'model.layers.3', got {dropped!r}",
        )
    tied = m["tied"]
    if not isinstance(tied, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tied.items()
    ):
        raise bad("tied", f"must be an object of tensor name -> tensor name, got {tied!r}")
    files = m["files"]
    if not isinstance(files, dict):
        raise bad("files", f"must be an object, got {type(files).__name__}")
    rec = files.get(WEIGHTS)
    if not isinstance(rec, dict):
        raise bad(f"files[{WEIGHTS!r}]", f"must be an object (bytes, sha256), got {rec!r}")
    if rec.get("bytes") is not None:
        integer(rec["bytes"], f"files[{WEIGHTS!r}].bytes", 0)
    sha = rec.get("sha256")
    if sha is not None and not (
        isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)
    ):
        raise bad(f"files[{WEIGHTS!r}].sha256", f"must be 64 lowercase hex digits, got {sha!r}")


def load_quantized(
    path: str | os.PathLike,
    device: str = "cpu",
    *,
    verify_hash: bool = True,
    activations: str = "exact",
):
    """Loads a packed checkpoint into its HuggingFace model class, with packed
    linears (no full-precision copy of the quantized weights is ever built).
    The plan is attached as ``model.empas_plan``. ``activations="int8"``: the
    packed linears run the int8-activation CPU decode kernel (a runtime choice,
    not stored; see ``empas.set_activations``). Raises CheckpointError on a
    missing, corrupt or inconsistent checkpoint, ValueError for an unknown
    ``activations``."""
    import torch
    import transformers
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..plan import Plan
    from .nn import (
        DroppedBlock,
        HalfEmbedding,
        HalfLinear,
        PackedEmbedding,
        PackedLinear,
        check_activations,
        set_activations,
    )

    check_activations(activations)
    path = Path(path)
    m = read_manifest(path)
    wf = path / WEIGHTS
    if not wf.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS} is missing")
    rec = m["files"][WEIGHTS]
    size = wf.stat().st_size
    if rec.get("bytes") is not None and size != rec["bytes"]:
        raise CheckpointError(
            f"{wf}: {size} bytes, the manifest says {rec['bytes']} (truncated or replaced?)"
        )
    if verify_hash:
        if not rec.get("sha256"):
            # Without a recorded hash a flipped byte would load as wrong weights.
            raise CheckpointError(
                f"{path / MANIFEST}: files[{WEIGHTS!r}] has no sha256, so {WEIGHTS} cannot be "
                "verified; pass verify_hash=False to load it unverified"
            )
        if sha256_file(wf) != rec["sha256"]:
            raise CheckpointError(f"{wf}: SHA-256 differs from the manifest (corrupt file)")
    cls = getattr(transformers, m["model_class"], None)
    if cls is None:
        raise CheckpointError(f"model class {m['model_class']!r} is not in transformers")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: config.json is missing or invalid ({exc})") from None
    with torch.device("meta"):
        model = cls(config)
    named = dict(model.named_modules())
    for name, spec in m["modules"].items():
        if name not in named:
            raise CheckpointError(f"{path}: module {name!r} is not in {m['model_class']}")
        bias_dtype = getattr(torch, spec["bias"]) if spec.get("bias") else None
        with torch.device("meta"):
            if spec["kind"] == "packed":
                new = PackedLinear(
                    spec["in_features"],
                    spec["out_features"],
                    spec["bits"],
                    spec["group_size"],
                    spec["symmetric"],
                    spec.get("bias") is not None,
                    bias_dtype,
                )
            elif spec["kind"] == "fp16":
                new = HalfLinear(
                    spec["in_features"],
                    spec["out_features"],
                    spec.get("bias") is not None,
                    bias_dtype,
                )
            elif spec["kind"] == "packed_embedding":
                new = PackedEmbedding(
                    spec["out_features"],
                    spec["in_features"],
                    spec["bits"],
                    spec["group_size"],
                    spec["symmetric"],
                    getattr(torch, spec["dtype"]),
                )
            elif spec["kind"] == "fp16_embedding":
                new = HalfEmbedding(
                    spec["out_features"], spec["in_features"], getattr(torch, spec["dtype"])
                )
            else:
                raise CheckpointError(f"{path}: module {name!r} has unknown kind {spec['kind']!r}")
        _swap(model, name, new)
    for name in m["dropped_blocks"]:
        if name not in named:
            raise CheckpointError(f"{path}: dropped block {name!r} is not in {m['model_class']}")
        _swap(model, name, DroppedBlock(int(name.rsplit(".", 1)[1])))
    try:
        sd = load_file(str(wf), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{wf}: cannot be read ({exc})") from None
    expected = set(model.state_dict().keys()) - set(m["tied"])
    missing = sorted(expected - set(sd))
    extra = sorted(set(sd) - expected)
    if missing:
        raise CheckpointError(
            f"{wf}: missing {len(missing)} tensor(s), e.g. {missing[0]!r} (missing scales?)"
        )
    if extra:
        raise CheckpointError(f"{wf}: {len(extra)} unexpected tensor(s), e.g. {extra[0]!r}")
    for alias, target in m["tied"].items():
        if target not in sd:
            raise CheckpointError(f"{path}: tied tensor {alias!r} -> {target!r} is not stored")
    try:
        model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{wf}: tensors do not fit the model ({exc})") from None
    for alias, target in m["tied"].items():
        _set_tensor(model, alias, _get_tensor(model, target))
    for mod in model.modules():  # a corrupt packed tensor is an error naming its module
        if isinstance(mod, (PackedLinear, PackedEmbedding)):
            try:
                mod.check()
            except FormatError as exc:
                raise CheckpointError(f"{wf}: {exc}") from None
    _materialize_buffers(model, config, device)
    model.to(device)
    model.eval()
    try:
        model.empas_plan = Plan.from_dict(m["plan"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: the manifest's plan is invalid ({exc})") from None
    set_activations(model, activations)
    return model


def _swap(model, name: str, new) -> None:
    replace_module(model, name, new, None)


def _get_tensor(model, name: str):
    mod, attr = name.rsplit(".", 1) if "." in name else ("", name)
    return getattr(model.get_submodule(mod) if mod else model, attr)


def _set_tensor(model, name: str, t) -> None:
    import torch

    mod, attr = name.rsplit(".", 1) if "." in name else ("", name)
    owner = model.get_submodule(mod) if mod else model
    if isinstance(t, torch.nn.Parameter) or attr in owner._parameters:
        owner._parameters[attr] = t if isinstance(t, torch.nn.Parameter) else torch.nn.Parameter(t)
    else:
        owner._buffers[attr] = t


def _materialize_buffers(model, config, device) -> None:
    """Non-persistent buffers (rotary inv_freq, position ids) are not stored;
    rebuild the modules that own them from the config, on the CPU."""
    import torch

    for name, mod in model.named_modules():
        meta = [k for k, b in mod._buffers.items() if b is not None and b.device.type == "meta"]
        metap = [k for k, p in mod._parameters.items() if p is not None and p.device.type == "meta"]
        if metap:
            raise CheckpointError(f"parameter {name}.{metap[0]} was not in the checkpoint")
        if not meta:
            continue
        fresh = None
        for kwargs in ({"config": config}, None):
            try:
                with torch.device("cpu"):
                    fresh = type(mod)(**kwargs) if kwargs else type(mod)(config)
                break
            except Exception:
                continue
        if fresh is None:
            raise CheckpointError(
                f"cannot rebuild the buffers {meta} of {name or 'the model'} "
                f"({type(mod).__name__}) from the config"
            )
        for k in meta:
            mod._buffers[k] = fresh._buffers[k].to(device)
        for k, v in vars(fresh).items():  # e.g. rotary attention_scaling
            if not k.startswith("_") and not isinstance(v, torch.Tensor) and k not in vars(mod):
                setattr(mod, k, v)
