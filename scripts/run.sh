#!/usr/bin/env bash
# Sets up everything and runs the main job on the offline default:
#  1. the exact front and an NSGA-II search over the shipped TinyLlama-1.1B
#     sensitivity profile (measured by the original EMPAS) -> out/tinyllama/
#  2. a real profile, measured here: the offline Llama-architecture model that
#     EMPAS trains on the Python docs and caches (~5 min the first time), profiled
#     per block at 0 (drop)/2/3/4/8/16 bits with the C++ fake-quant ops, plus the
#     Fisher estimate, then searched -> out/tiny-llama/
#  3. the plans checked on the real model: packed weights, held-out text, uniform
#     baselines, memory when loaded (out/tiny-llama/verify.json, verify.png), and
#     the balanced plan of a no-drop search exported as a packed checkpoint and
#     runtime configs (out/tiny-llama/export/)
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
echo
empas verify example:tiny-llama --profile out/tiny-llama/profile.json \
  --plans out/tiny-llama/search/plans -o out/tiny-llama/verify.json \
  --plot out/tiny-llama/verify.png --memory --force
echo
# Runtime formats cannot remove a block: export the plans of a search without
# drops (0 bits).
empas search out/tiny-llama/profile.json -o out/tiny-llama/search-nodrop --method exact \
  --bits 2,3,4,8 --force
plan=out/tiny-llama/search-nodrop/plans/balanced.json
ex=out/tiny-llama/export
empas export "$plan" --format packed --model example:tiny-llama -o $ex/packed-balanced --force
empas export "$plan" --format llama.cpp -o $ex/balanced.tensor-types.txt --force
empas export "$plan" --format gptqmodel -o $ex/balanced.gptqmodel.json --force
empas export "$plan" --format hqq --allow-approx -o $ex/balanced.hqq.json --force
for a in balanced max_accuracy max_compression; do  # files the original EMPAS tool reads
  empas export out/tiny-llama/search-nodrop/plans/$a.json --format empas-original \
    -o $ex/original/$a.json --force
done
