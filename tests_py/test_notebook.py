"""notebooks/quickstart.ipynb runs top to bottom on a fresh kernel: part 1 on the
shipped TinyLlama profile, part 2 (profile, search, verify, export) on a real
model. The default test swaps the offline default model (trained once, ~7 min)
for the session's small test model; --run-slow runs the notebook as shipped."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
DEFAULT_MODEL = "empas.models.tiny_llama()"


def _execute(monkeypatch, model_path=None):
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel uses its inline backend
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    swapped = 0
    for c in nb.cells:
        if model_path is not None and c.cell_type == "code" and DEFAULT_MODEL in c.source:
            c.source = c.source.replace(
                DEFAULT_MODEL, f"empas.models.tiny_llama({str(model_path)!r})"
            )
            swapped += 1
    assert model_path is None or swapped == 1, "the notebook's model cell changed"
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue")
    return outputs


def _check(outputs):
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    # part 1: the shipped TinyLlama profile
    assert "of the exact hypervolume" in text
    assert "optimum at the original balanced plan's size: 3.3554" in text
    # part 2: the real model, profiled, searched, verified and exported
    assert "of the exact front's hypervolume" in text
    assert re.search(r"uniform int4 at [\d,]+ vs [\d,]+ bytes", text)
    m = re.search(r"packed tensors: ([\d,]+) bytes \(the plan predicted ([\d,]+)\)", text)
    assert m and m.group(1) == m.group(2)
    assert "=q" in text  # llama.cpp tensor types
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(html) >= 4, "rich display (_repr_html_) of the result objects"
    assert any("uniform-int4" in h for h in html), "the verify report's rich display"
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3, "front plots and the predicted-vs-measured plot"


def test_quickstart_notebook_executes(monkeypatch, tiny_model_path):
    _check(_execute(monkeypatch, tiny_model_path))


@pytest.mark.slow
def test_quickstart_notebook_as_shipped(monkeypatch):
    """The notebook exactly as a user runs it, on the offline default model."""
    pytest.importorskip("torch")
    _check(_execute(monkeypatch))


@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_notebooks_are_committed_without_outputs(name):
    import nbformat

    nb = nbformat.read(NOTEBOOK.parent / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
