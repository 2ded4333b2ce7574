"""``python -m empas.verify._memprobe CHECKPOINT [DEVICE]``: loads a packed checkpoint in
this fresh process and prints, as one JSON line, the resident memory the load
added (``rss_delta``, bytes), the bytes of the loaded tensors and, on CUDA, the
GPU bytes allocated. Used by ``empas.verify(..., memory=True)``."""

from __future__ import annotations

import gc
import json
import sys


def _rss() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def _warm_up(path: str) -> None:
    """Builds the checkpoint's model class on the meta device (no weights) and drops
    it, so that the code transformers imports lazily for that class (~130 MB of
    modules for a Llama) is resident before the baseline reading: the delta is then
    the model itself, not the library."""
    import torch
    import transformers

    from empas.quant.checkpoint import read_manifest

    cls = getattr(transformers, read_manifest(path)["model_class"], None)
    if cls is None:
        return  # load_quantized reports it
    cfg = transformers.AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = cls(cfg)
    del model
    with torch.no_grad():  # the reduction kernels and thread pool used below, warmed
        for dt in (torch.uint8, torch.float16, torch.bfloat16, torch.float32):
            torch.ones(1 << 16, dtype=dt).sum()
    gc.collect()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m empas.verify._memprobe CHECKPOINT [DEVICE]", file=sys.stderr)
        return 2
    import torch
    import transformers  # noqa: F401  (imported before the baseline RSS reading)

    from empas.quant.apply import weight_bytes
    from empas.quant.checkpoint import load_quantized

    device = argv[1] if len(argv) > 1 else "cpu"
    _warm_up(argv[0])
    gc.collect()
    before = _rss()
    cuda0 = torch.cuda.memory_allocated() if device.startswith("cuda") else None
    model = load_quantized(argv[0], device=device)
    with torch.no_grad():  # read every tensor once: memory-mapped pages become resident
        for t in model.state_dict().values():
            t.sum()
    gc.collect()
    after = _rss()
    out = {
        "rss_delta": after - before,
        "rss_after": after,
        "weight_bytes": weight_bytes(model),
        "cuda_bytes": None if cuda0 is None else torch.cuda.memory_allocated() - cuda0,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
