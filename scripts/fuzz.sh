#!/usr/bin/env bash
# Builds the libFuzzer targets of the C++ core (tests_cpp/fuzz: the profile,
# plan and NSGA-II checkpoint JSON loaders and the search entry points) with
# clang + ASan + UBSan and runs each for SECONDS (default 10) from the committed
# seed corpus. New inputs go to build/fuzz/corpus/<target>, not the repo.
#   scripts/fuzz.sh                 # 10 s per target (what scripts/test.sh runs)
#   scripts/fuzz.sh --seconds 600   # longer runs
#   scripts/fuzz.sh --seconds 600 --only profile
# Skips (exit 0, with a message) when clang or libFuzzer is missing; a finding
# (crash, sanitizer report, uncaught exception, timeout) exits non-zero and
# leaves the reproducer as build/fuzz/artifacts/<target>/crash-*.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=10
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    *) echo "usage: scripts/fuzz.sh [--seconds N] [--only profile|plan|checkpoint|search]" >&2; exit 2 ;;
  esac
done
cxx="${FUZZ_CXX:-clang++}"
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "fuzz: skipped: no $cxx (Debian: apt-get install clang)"
  exit 0
fi
probe=$(mktemp -d)
printf 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }\n' > "$probe/p.cpp"
if ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" >/dev/null 2>&1; then
  rm -rf "$probe"
  echo "fuzz: skipped: $cxx cannot link libFuzzer with ASan/UBSan"
  exit 0
fi
rm -rf "$probe"
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
cmake -S tests_cpp/fuzz -B build/fuzz "${gen[@]}" -DCMAKE_CXX_COMPILER="$cxx" >/dev/null
cmake --build build/fuzz -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
rc=0
for t in profile plan checkpoint search; do
  [ -n "$only" ] && [ "$only" != "$t" ] && continue
  work="build/fuzz/corpus/$t"
  art="build/fuzz/artifacts/$t/"
  mkdir -p "$work" "$art"
  start=$(date +%s)
  if build/fuzz/fuzz_$t "$work" "tests_cpp/fuzz/corpus/$t" -dict=tests_cpp/fuzz/json.dict \
      -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=8192 \
      -artifact_prefix="$art" -print_final_stats=1 > "build/fuzz/$t.log" 2>&1; then
    runs=$(grep -m1 'stat::number_of_executed_units' "build/fuzz/$t.log" | awk '{print $2}')
    echo "fuzz $t: $(( $(date +%s) - start )) s, ${runs:-?} inputs, no finding"
  else
    echo "fuzz $t: FINDING (log build/fuzz/$t.log, reproducer in $art)"
    tail -40 "build/fuzz/$t.log"
    rc=1
  fi
done
exit $rc
