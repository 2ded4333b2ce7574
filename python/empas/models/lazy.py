"""A model whose weights are read from its ``.safetensors`` file(s) only when
needed: the skeleton is built from its config with every parameter on the
``meta`` device (accelerate's ``init_empty_weights``; buffers such as the rotary
frequencies are real), and :class:`LazyWeights` materializes a set of parameters
(one decoder block, or the embeddings/norm/head) onto the device and releases
them after. Streaming profiling (``empas.profile(..., stream=True)``) uses it to
profile models whose weights do not fit the device (or the host memory)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ProfileError

__all__ = ["LazyWeights", "load_lazy", "safetensors_index"]


def safetensors_index(path: Path) -> dict[str, Path]:
    """Tensor name -> the ``.safetensors`` file holding it, for a model directory
    (sharded: ``model.safetensors.index.json``'s ``weight_map``; else every
    ``*.safetensors`` file in it). ProfileError when there is none."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            wmap = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProfileError(f"{index}: not a safetensors index (no weight_map): {exc}") from None
        out = {}
        for k, f in wmap.items():
            fp = path / f
            if not fp.is_file():
                raise ProfileError(f"{index} names {f!r} for tensor {k!r}, but {fp} is missing")
            out[k] = fp
        return out
    files = sorted(path.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in path.glob("*.bin")) + sorted(
            p.name for p in path.glob("*.pt")
        )
        hint = f" (it holds {', '.join(others)}: re-save with save_pretrained)" if others else ""
        raise ProfileError(
            f"stream=True loads the weights block by block from .safetensors files; {path} "
            f"has none{hint}; or profile without stream"
        )
    out = {}
    for fp in files:
        with safe_open(str(fp), framework="pt") as f:
            for k in f.keys():
                out.setdefault(k, fp)
    return out


class LazyWeights:
    """The parameters of a ``meta`` skeleton, read from safetensors files on demand.

    :meth:`hold` (a context manager) materializes the given parameters on
    ``device`` in place (the Parameter objects keep their identity, so tied
    weights and module references stay valid) and puts them back on ``meta`` on
    exit. ``current_bytes`` / ``peak_bytes``: bytes of materialized parameters now
    and at most so far (``numel × element size``)."""

    def __init__(self, model, path: Path, device):
        import torch

        self.model = model
        self.path = Path(path)
        self.device = torch.device(device)
        self.files = safetensors_index(self.path)
        self.current_bytes = 0
        self.peak_bytes = 0
        self.loads = 0  # parameters materialized, all holds together
        self._spare: dict[int, Any] = {}  # id(param) -> its meta impl while materialized
        aliases: dict[int, list[str]] = {}
        self.params: dict[int, Any] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
            self.params[id(p)] = p
        prefix = getattr(model, "base_model_prefix", "") or ""
        self.key: dict[int, str] = {}
        missing = []
        for pid, names in aliases.items():
            k = self._find(names, prefix)
            if k is None:
                missing.append(names[0])
            else:
                self.key[pid] = k
        if missing:
            raise ProfileError(
                f"{len(missing)} parameter(s) of {type(model).__name__} are not in the "
                f".safetensors files of {self.path} (first: {missing[0]!r}); streaming reads "
                "checkpoints whose tensor names match the model's (save_pretrained)"
            )
        self._check_shapes()
        self._load_buffers()

    def _find(self, names: list[str], prefix: str) -> str | None:
        for n in names:
            cands = [n]
            if prefix and n.startswith(prefix + "."):
                cands.append(n[len(prefix) + 1 :])  # saved from the base model
            elif prefix:
                cands.append(f"{prefix}.{n}")
            for c in cands:
                if c in self.files:
                    return c
        return None

    def _by_file(self, keys: Iterable[str]) -> dict[Path, list[str]]:
        out: dict[Path, list[str]] = {}
        for k in keys:
            out.setdefault(self.files[k], []).append(k)
        return out

    def _check_shapes(self) -> None:
        from safetensors import safe_open

        want = {self.key[pid]: tuple(self.params[pid].shape) for pid in self.key}
        for fp, keys in self._by_file(want).items():
            with safe_open(str(fp), framework="pt") as f:
                for k in keys:
                    got = tuple(f.get_slice(k).get_shape())
                    if got != want[k]:
                        raise ProfileError(
                            f"{fp.name}: tensor {k!r} has shape {list(got)}, the model built "
                            f"from config.json expects {list(want[k])}"
                        )

    def _load_buffers(self) -> None:
        """Persistent buffers saved in the files replace those computed at build."""
        from safetensors import safe_open

        for name, buf in self.model.named_buffers():
            if name in self.files:
                with safe_open(str(self.files[name]), framework="pt") as f:
                    t = f.get_tensor(name)
                if tuple(t.shape) == tuple(buf.shape):
                    buf.data.copy_(t.to(buf.dtype))

    def read(self, params: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """(parameter, its tensor from the file on ``device`` at the parameter's dtype)."""
        from safetensors import safe_open

        ps = {id(p): p for p in params}
        for p in ps.values():
            k = self.key[id(p)]
            # one file handle per tensor: the file's pages (mapped while it is open, and
            # counted in the resident memory) are released before the next tensor is read
            with safe_open(str(self.files[k]), framework="pt", device=str(self.device)) as f:
                t = f.get_tensor(k)
            yield p, t.to(p.dtype)

    @contextlib.contextmanager
    def hold(self, params: Iterable[Any]):
        """Materializes ``params`` (meta parameters of the model) for the ``with`` body."""
        import torch

        todo = [p for p in {id(p): p for p in params}.values() if p.is_meta]
        done = []
        try:
            for p, t in self.read(todo):
                new = torch.nn.Parameter(t, requires_grad=p.requires_grad)
                torch.utils.swap_tensors(p, new)  # p now holds the tensor; new the meta impl
                self._spare[id(p)] = new
                done.append(p)
                self.loads += 1
                self.current_bytes += p.numel() * p.element_size()
                self.peak_bytes = max(self.peak_bytes, self.current_bytes)
            yield
        finally:
            for p in done:
                spare = self._spare.pop(id(p))
                self.current_bytes -= p.numel() * p.element_size()
                torch.utils.swap_tensors(p, spare)  # back to meta; the tensor is freed

    def fingerprint(self) -> str:
        """:func:`~empas.models.fingerprint` of the model with its file weights,
        read one tensor at a time (equal to the loaded model's)."""
        import torch

        from .loading import fingerprint_update

        h = hashlib.sha256()
        cfg = getattr(self.model, "config", None)
        if cfg is not None and hasattr(cfg, "to_json_string"):
            h.update(cfg.to_json_string(use_diff=False).encode())
        named = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            named[name] = p
        with torch.no_grad():
            for name, t in self.model.state_dict(keep_vars=True).items():
                p = named.get(name)
                if p is not None and p.is_meta:
                    (_, t), *_ = list(self.read([p]))
                fingerprint_update(h, name, t)
        return h.hexdigest()[:16]


def load_lazy(path: Path, device):
    """``(skeleton model, LazyWeights)`` for a local HuggingFace directory: the
    model built from its ``config.json`` on ``meta`` at the dtype ``from_pretrained
    (dtype="auto")`` would use, its buffers on ``device``, ties applied."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(path)
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    files = safetensors_index(Path(path))
    if not isinstance(dtype, torch.dtype):  # as from_pretrained: the checkpoint's dtype
        from safetensors import safe_open

        dtype, names = torch.float32, {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
        with safe_open(str(next(iter(files.values()))), framework="pt") as f:
            for k in f.keys():
                name = names.get(f.get_slice(k).get_dtype())
                if name is not None:
                    dtype = getattr(torch, name)
                    break
    archs = list(getattr(cfg, "architectures", None) or [])
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    with init_empty_weights(include_buffers=False):
        if causal or not archs:
            try:
                model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
            except ValueError:
                model = AutoModel.from_config(cfg, dtype=dtype)
        else:
            model = AutoModel.from_config(cfg, dtype=dtype)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.name_or_path = str(path)
    dev = torch.device(device)
    for mod in model.modules():
        for k, b in list(mod._buffers.items()):
            if b is not None and not b.is_meta and b.device != dev:
                mod._buffers[k] = b.to(dev)
    model.eval()
    return model, LazyWeights(model, Path(path), dev)
