#!/usr/bin/env bash
# Sets up everything and runs the main job on the offline default: `empas demo`,
# the whole pipeline on the small Llama-architecture model that EMPAS trains on
# the Python docs and caches (~7 min the first time on 2 cores, then seconds):
# profile (Δloss per attention/MLP sub-block at 2/3/4/8 bits, C++ fake-quant ops),
# NSGA-II + exact search, verification of the plans with packed weights on
# held-out text against uniform baselines (with loaded memory), export (packed
# checkpoint, llama.cpp / GPTQModel / HQQ configs) and a report -> out/demo/.
# First, the exact front of the shipped TinyLlama-1.1B profile (measured by the
# original EMPAS project) -> out/tinyllama/.
# Extra arguments go to `empas demo` (e.g. --budget 7MB, --config demo.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
empas search example:tinyllama -o out/tinyllama --method exact --force
echo
empas demo -o out/demo --memory --force "$@"
