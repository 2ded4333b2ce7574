"""llama.cpp for real (slow, ~9 min on 2 cores: builds llama-quantize from the
llama-cpp-python sdist): the exported --tensor-type-file gives every planned
tensor the GGML type it asks for. Run with --run-slow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "check_llama_cpp.sh"


@pytest.mark.slow
def test_llama_quantize_applies_the_exported_tensor_types(tmp_path):
    if Path(sys.prefix).resolve() != (SCRIPT.parent.parent / ".venv").resolve():
        pytest.skip("check_llama_cpp.sh runs the project's .venv")
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "llcpp")],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    m = re.search(r"llama.cpp check: (\d+)/(\d+) tensors match", proc.stdout)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) > 0, proc.stdout[-2000:]
