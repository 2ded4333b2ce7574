#!/usr/bin/env bash
# Sets up everything and runs all the tests: formatting and lint, the C++
# GoogleTest suites (Release, then AddressSanitizer + UndefinedBehaviorSanitizer),
# the libFuzzer targets for a few seconds each (EMPAS_FUZZ_SECONDS=600 for longer
# runs; scripts/fuzz.sh alone for more options), scripts/gpu_check.sh (its
# CPU-only checks where there is no GPU), and pytest. Extra arguments go
# to pytest (e.g. --run-slow, --run-gpu, -k NAME).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export PATH="$PWD/.venv/bin:$PATH"
jobs=$(nproc 2>/dev/null || echo 2)

echo "== format and lint"
mapfile -t cxx < <(find cpp tests_cpp benchmarks/llama_cpp -name '*.cpp' -o -name '*.hpp' -o -name '*.cu' -o -name '*.h' | sort)
clang-format --dry-run -Werror "${cxx[@]}"
ruff check python tests_py benchmarks
ruff format --check python tests_py benchmarks

echo "== C++ tests (Release)"
cmake -S . -B build/tests -G Ninja -DEMPAS_BUILD_TESTS=ON -DEMPAS_BUILD_PYTHON=OFF >/dev/null
cmake --build build/tests -j "$jobs"
ctest --test-dir build/tests --output-on-failure -j "$jobs"

echo "== C++ tests (ASan + UBSan)"
cmake -S . -B build/asan -G Ninja -DEMPAS_BUILD_TESTS=ON -DEMPAS_BUILD_PYTHON=OFF \
  -DEMPAS_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan --output-on-failure -j "$jobs"

echo "== C++ fuzzers (libFuzzer + ASan + UBSan, ${EMPAS_FUZZ_SECONDS:-10} s each; skipped without clang)"
bash scripts/fuzz.sh --seconds "${EMPAS_FUZZ_SECONDS:-10}"

echo "== scripts/gpu_check.sh (without a GPU: its CPU-only checks, and it says the GPU figures are pending)"
OUT=out/gpu_check EMPAS_GPU_CHECK_BUDGET=${EMPAS_GPU_CHECK_BUDGET:-900} bash scripts/gpu_check.sh

echo "== Python tests"
set +e
python -m pytest tests_py "$@"
rc=$?
set -e
[ $rc -eq 5 ] && { echo "pytest collected no tests"; exit 1; }
exit $rc
