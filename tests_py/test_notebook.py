"""notebooks/quickstart.ipynb runs top to bottom on a fresh kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(monkeypatch):
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel uses its inline backend
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "of the exact hypervolume" in text
    assert "optimum at the original balanced plan's size: 3.3554" in text
    html = [o for o in outputs if "text/html" in o.get("data", {})]
    assert html, "rich display (_repr_html_) produced no HTML"
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert pngs, "the plot cell produced no image"


@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_notebooks_are_committed_without_outputs(name):
    import nbformat

    nb = nbformat.read(NOTEBOOK.parent / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
