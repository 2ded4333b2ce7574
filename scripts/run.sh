#!/usr/bin/env bash
# Sets up everything and runs the main job on the offline default: the exact
# front and an NSGA-II search over the shipped TinyLlama-1.1B sensitivity
# profile (measured by the original EMPAS), writing fronts and archetype
# plans to out/tinyllama/. Extra arguments go to `empas search`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
empas search example:tinyllama -o out/tinyllama/exact --method exact --force "$@"
echo
empas search example:tinyllama -o out/tinyllama/nsga2 --method nsga2 --force "$@"
