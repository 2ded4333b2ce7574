#!/usr/bin/env bash
# Sets up everything and runs the main job on the offline default:
#  1. the exact front and an NSGA-II search over the shipped TinyLlama-1.1B
#     sensitivity profile (measured by the original EMPAS) -> out/tinyllama/
#  2. a real profile, measured here: the offline Llama-architecture model that
#     EMPAS trains on the Python docs and caches (~2 min the first time), profiled
#     per block at 0 (drop)/2/3/4/8/16 bits with the C++ fake-quant ops, plus the
#     Fisher estimate, then searched -> out/tiny-llama/
# Extra arguments go to the TinyLlama `empas search` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
empas search example:tinyllama -o out/tinyllama/exact --method exact --force "$@"
echo
empas search example:tinyllama -o out/tinyllama/nsga2 --method nsga2 --force "$@"
echo
empas profile example:tiny-llama -o out/tiny-llama/profile.json --bits 0,2,3,4,8 \
  --estimate --checkpoint out/tiny-llama/profile.checkpoint.json --force
echo
empas search out/tiny-llama/profile.json -o out/tiny-llama/search --method nsga2 --force
