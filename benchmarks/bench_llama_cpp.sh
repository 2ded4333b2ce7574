#!/usr/bin/env bash
# llama.cpp's CPU matmul (ggml_mul_mat on ggml's CPU backend) on the nn.Linear shapes of
# benchmarks/bench_matmul.py, for the comparison issue 17 asks for: q4_0, q4_K, q8_0,
# f16 (and f32 for reference) weights, fp32 activations, batch 1, 4 and 512.
#
#   benchmarks/bench_llama_cpp.sh [WORKDIR]      (default /tmp/llcpp)
#
# Steps (each skipped when its output is already in WORKDIR, so a rerun resumes):
#  1. llama.cpp sources: the llama-cpp-python==$LLCPP_PY_VERSION sdist from PyPI
#     (`pip download`), which vendors llama.cpp in vendor/llama.cpp (shared with
#     check_llama_cpp.sh).
#  2. Build ggml (targets ggml, ggml-base, ggml-cpu; Release, static, GGML_NATIVE=ON so
#     that the CPU backend uses this machine's AVX2/FMA/F16C; no CUDA/Metal, no OpenSSL)
#     in WORKDIR/build-bench.
#  3. Build our harness benchmarks/llama_cpp/ggml_mul_mat_bench.cpp against those
#     static libraries (rebuilt when the source is newer than the binary).
#  4. Unless TBO=0: llama.cpp's tests/test-backend-ops.cpp, compiled the same way
#     (it only uses ggml; its CMake target would also build libllama and llama-common,
#     see the TODO in tests/CMakeLists.txt), and `test-backend-ops perf -o MUL_MAT -b CPU
#     -p "$TBO_PARAMS"` run once, its output kept raw in $TBO_OUT. Its MUL_MAT perf cases
#     are ggml's own shapes (m=4096 k=14336 at n=1,2,3,4,5,8,512 for every type; q4_K
#     m=4096/6144/6272/14336 k=4096 at n=1..8), not ours, and it runs with
#     hardware_concurrency/2 threads (1 on a 2-core machine) on the plain CPU buffer (no
#     repacking). Each case runs >= 1 s, so all ~30 types take ~15 min: TBO_PARAMS keeps
#     only the types compared here (TBO_PARAMS= runs them all).
#  5. The harness (THREADS threads, BUDGET_S seconds of timed rounds; its own
#     --repack default: weights in the CPU_REPACK buffer where ggml supports it, as
#     llama.cpp loads models) -> JSON lines -> $OUT_JSON with the machine (lscpu model
#     name, cores, load average and `uptime` before and after, and the CPU seconds other
#     processes used during the run, from /proc/stat), the llama.cpp commit and
#     ggml version, the backend's feature flags, and the cases.
#
# The benchmark steps (4, 5) run without nice: run this when the machine is quiet.
#
# Environment: JOBS (build jobs, default 1), NICE (prefix for heavy build commands,
# default "nice -n 19"), LLCPP_PY_VERSION (default 0.3.36), THREADS (default 2),
# BUDGET_S (default 140), HARNESS_ARGS (extra harness options, e.g. "--repack off"),
# TBO (1: build and run test-backend-ops, default 1), TBO_PARAMS (its -p filter, default
# the types q4_0/q4_K/q8_0/f16/f32), PY (python with pip; default the
# repo's .venv, else python3), OUT_JSON (default benchmarks/results/llama_cpp_matmul.json),
# TBO_OUT (default benchmarks/results/llama_cpp_test_backend_ops_perf.txt).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
if [ -z "${PY:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
WORK="${1:-/tmp/llcpp}"
JOBS="${JOBS:-1}"
NICE="${NICE:-nice -n 19}"
LLCPP_PY_VERSION="${LLCPP_PY_VERSION:-0.3.36}"
THREADS="${THREADS:-2}"
BUDGET_S="${BUDGET_S:-140}"
HARNESS_ARGS="${HARNESS_ARGS:-}"
TBO="${TBO:-1}"
TBO_PARAMS="${TBO_PARAMS-type_a=(q4_0|q4_K|q8_0|f16|f32),}"
OUT_JSON="${OUT_JSON:-$HERE/results/llama_cpp_matmul.json}"
TBO_OUT="${TBO_OUT:-$HERE/results/llama_cpp_test_backend_ops_perf.txt}"
CXX="${CXX:-g++}"

mkdir -p "$WORK" "$(dirname "$OUT_JSON")" "$(dirname "$TBO_OUT")"
WORK="$(cd "$WORK" && pwd)"
cd "$WORK"
T0=$(date +%s)
log() { printf '[%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }

# -- 1. llama.cpp sources ---------------------------------------------------------------
# shellcheck source=benchmarks/llama_cpp/sources.sh
source "$HERE/llama_cpp/sources.sh"
llama_cpp_sources

# -- 2. ggml (CPU) ----------------------------------------------------------------------
BUILD="$WORK/build-bench"
find_lib() { find "$BUILD/ggml" -name "lib$1.a" -print -quit 2>/dev/null; }
if [ -z "$(find_lib ggml)" ] || [ -z "$(find_lib ggml-base)" ] || [ -z "$(find_lib ggml-cpu)" ]; then
    log "configuring ggml in $BUILD"
    $NICE cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=ON -DGGML_CCACHE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_COMMON=OFF \
        > "$WORK/bench-configure.log" 2>&1 || { tail -30 "$WORK/bench-configure.log" >&2; exit 2; }
    log "building ggml, ggml-base, ggml-cpu (-j$JOBS)"
    t=$(date +%s)
    $NICE cmake --build "$BUILD" --target ggml ggml-base ggml-cpu -j"$JOBS" \
        > "$WORK/bench-build.log" 2>&1 || { tail -30 "$WORK/bench-build.log" >&2; exit 2; }
    log "ggml built in $(( $(date +%s) - t )) s"
fi
GGML_LIBS=("$(find_lib ggml)" "$(find_lib ggml-cpu)" "$(find_lib ggml-base)")
GGML_INC="$SRC/ggml/include"
# what ggml-cpu was compiled with (-march=native with GGML_NATIVE=ON) and links against
CXXFLAGS=(-O2 -std=c++17 -march=native -I"$GGML_INC")
LDLIBS=(-fopenmp -lpthread -lm)

# -- 3. our harness ---------------------------------------------------------------------
HARNESS_SRC="$HERE/llama_cpp/ggml_mul_mat_bench.cpp"
HARNESS="$WORK/bench-bin/ggml_mul_mat_bench"
mkdir -p "$WORK/bench-bin"
if [ ! -x "$HARNESS" ] || [ "$HARNESS_SRC" -nt "$HARNESS" ]; then
    log "building $HARNESS"
    $NICE "$CXX" "${CXXFLAGS[@]}" -Wall -Wextra -o "$HARNESS.tmp" "$HARNESS_SRC" "${GGML_LIBS[@]}" "${LDLIBS[@]}"
    mv "$HARNESS.tmp" "$HARNESS"
fi

# -- 4. test-backend-ops ----------------------------------------------------------------
if [ "$TBO" = 1 ]; then
    TBO_BIN="$WORK/bench-bin/test-backend-ops"
    if [ ! -x "$TBO_BIN" ]; then
        log "building test-backend-ops (tests/test-backend-ops.cpp + ggml)"
        t=$(date +%s)
        $NICE "$CXX" "${CXXFLAGS[@]}" -o "$TBO_BIN.tmp" "$SRC/tests/test-backend-ops.cpp" \
            "${GGML_LIBS[@]}" "${LDLIBS[@]}" > "$WORK/tbo-build.log" 2>&1 \
            || { tail -30 "$WORK/tbo-build.log" >&2; exit 2; }
        mv "$TBO_BIN.tmp" "$TBO_BIN"
        log "test-backend-ops built in $(( $(date +%s) - t )) s"
    fi
    if [ ! -s "$TBO_OUT" ]; then
        TBO_ARGS=(perf -o MUL_MAT -b CPU)
        [ -z "$TBO_PARAMS" ] || TBO_ARGS+=(-p "$TBO_PARAMS")
        log "test-backend-ops ${TBO_ARGS[*]} (load: $(cut -d' ' -f1-3 /proc/loadavg)) -> $TBO_OUT"
        t=$(date +%s)
        { echo "# test-backend-ops ${TBO_ARGS[*]}"; echo "# $(uptime)"; } > "$TBO_OUT.tmp"
        "$TBO_BIN" "${TBO_ARGS[@]}" >> "$TBO_OUT.tmp" 2>&1
        echo "# $(uptime)" >> "$TBO_OUT.tmp"
        mv "$TBO_OUT.tmp" "$TBO_OUT"
        log "test-backend-ops perf took $(( $(date +%s) - t )) s"
    fi
fi

# -- 5. the harness ---------------------------------------------------------------------
LOAD_START="$(cat /proc/loadavg)"
STAT_START="$(head -1 /proc/stat)"
UPTIME_START="$(uptime)"
log "harness: --threads $THREADS --budget-s $BUDGET_S $HARNESS_ARGS (load: $LOAD_START)"
# HARNESS_ARGS is a list of options: word splitting wanted
# shellcheck disable=SC2086
"$HARNESS" --threads "$THREADS" --budget-s "$BUDGET_S" $HARNESS_ARGS \
    > "$WORK/bench-cases.jsonl" 2> >(tee "$WORK/bench-stderr.log" >&2)
STAT_END="$(head -1 /proc/stat)"
LOAD_END="$(cat /proc/loadavg)"
UPTIME_END="$(uptime)"

LLCPP_COMMIT="$LLCPP_COMMIT" GGML_VERSION="$GGML_VERSION" LLCPP_PY_VERSION="$LLCPP_PY_VERSION" \
LOAD_START="$LOAD_START" LOAD_END="$LOAD_END" UPTIME_START="$UPTIME_START" UPTIME_END="$UPTIME_END" \
HARNESS_CMD="--threads $THREADS --budget-s $BUDGET_S $HARNESS_ARGS" CXX="$CXX" TBO="$TBO" \
STAT_START="$STAT_START" STAT_END="$STAT_END" TBO_OUT="$TBO_OUT" REPO="$REPO" "$PY" - "$WORK" "$OUT_JSON" <<'EOF'
import json, os, platform, re, subprocess, sys
work, out = sys.argv[1], sys.argv[2]
env = os.environ

def lscpu(field):
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        k, _, v = line.partition(":")
        if k.strip() == field:
            return v.strip()
    return None

cases = [json.loads(l) for l in open(os.path.join(work, "bench-cases.jsonl")) if l.strip()]
info = [l[2:].strip() for l in open(os.path.join(work, "bench-stderr.log")) if l.startswith("# ")]
features = next((l[len("features:"):].split() for l in info if l.startswith("features:")), [])
# CPU seconds the whole machine was busy during the harness run (/proc/stat: all but idle
# and iowait), less the harness's own: what other processes took meanwhile
def busy_s(line):
    f = [int(x) for x in line.split()[1:9]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


own = next((l.split() for l in info if l.startswith("cpu_s:")), None)
other_cpu_s = None
if own:
    other_cpu_s = round(busy_s(env["STAT_END"]) - busy_s(env["STAT_START"]) - float(own[1]), 2)
compiler = subprocess.run([env["CXX"], "--version"], capture_output=True, text=True).stdout.splitlines()[0]
tbo = None
if env["TBO"] == "1" and os.path.exists(env["TBO_OUT"]):
    raw = open(env["TBO_OUT"], encoding="utf-8", errors="replace").read()
    line = re.compile(r"MUL_MAT\((type_a=(\w+),type_b=(\w+),m=(\d+),n=(\d+),k=(\d+),[^)]*)\):\s+"
                      r"(\d+) runs -\s+([\d.]+) us/run .*?([\d.]+) ([MGT])FLOPS")
    scale = {"M": 1e-3, "G": 1.0, "T": 1e3}
    tbo_cases = [{"params": m[1], "type_a": m[2], "type_b": m[3], "m": int(m[4]), "n": int(m[5]),
                  "k": int(m[6]), "runs": int(m[7]), "us_per_run": float(m[8]),
                  "gflops": float(m[9]) * scale[m[10]]}
                 for m in line.finditer(raw)]
    tbo = {"command": raw.splitlines()[0].lstrip("# "),
           "output": os.path.relpath(env["TBO_OUT"], env["REPO"]),
           "threads": max(1, (os.cpu_count() or 2) // 2),
           "note": "ggml's own MUL_MAT perf shapes, m = ne1 of A (out_features), k = ne0 (in_features), "
                   "n = batch; plain CPU buffer (no repack); hardware_concurrency/2 threads",
           "cases": tbo_cases}
doc = {
    "benchmark": "empas.bench_llama_cpp/1",
    "what": "ggml_mul_mat(W, x) on ggml's CPU backend (benchmarks/llama_cpp/ggml_mul_mat_bench.cpp)",
    "shape_convention": "[out_features, in_features] of nn.Linear.weight; ggml W ne0=in, ne1=out; "
                        "x fp32 [batch, in] (ggml ne0=in, ne1=batch)",
    "timing": "per (shape, batch): warm-up computes (up to 3 per type), then rounds of one "
              "ggml_backend_graph_compute per type (interleaved); median and min over rounds",
    "llama_cpp": {"commit": env["LLCPP_COMMIT"], "ggml_version": env["GGML_VERSION"],
                  "source": f"llama-cpp-python=={env['LLCPP_PY_VERSION']} sdist, vendor/llama.cpp",
                  "build": "Release, static, GGML_NATIVE=ON, no CUDA/Metal/OpenSSL, OpenMP",
                  "compiler": compiler},
    "harness_args": env["HARNESS_CMD"].split(),
    "machine": {"cpu": lscpu("Model name"), "cores": os.cpu_count(),
                "platform": platform.platform(), "ggml_cpu_features": features,
                "loadavg_start": env["LOAD_START"].split()[:3], "loadavg_end": env["LOAD_END"].split()[:3],
                "uptime_start": env["UPTIME_START"].strip(), "uptime_end": env["UPTIME_END"].strip(),
                "harness_cpu_s": float(own[1]) if own else None,
                "harness_wall_s": float(own[3]) if own else None,
                "other_cpu_s_during_run": other_cpu_s},
    "harness_info": info,
    "test_backend_ops": tbo,
    "cases": cases,
}
with open(out + ".tmp", "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
os.replace(out + ".tmp", out)
print(f"{len(cases)} cases -> {out}", file=sys.stderr)
EOF

# a short table on stdout: median ms per (shape, batch) and type
"$PY" - "$OUT_JSON" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
# per requested type; "*": llama-quantize's fallback type ran (in_features not a multiple of 256)
types = list(dict.fromkeys(c["requested"] for c in doc["cases"]))
rows = {}
for c in doc["cases"]:
    rows.setdefault((c["out"], c["in"], c["batch"]), {})[c["requested"]] = c


def cell(c):
    if c is None or "skipped" in c:
        return f"{'-':>11}"
    return f"{c['median_ms']:10.3f}" + ("*" if c["type"] != c["requested"] else " ")


print("median ms, " + " ".join(doc["harness_args"]) + "; * = fallback type ran")
print(f"{'out x in':>12} {'batch':>5}  " + " ".join(f"{t:>11}" for t in types))
for (o, i, b), r in rows.items():
    print(f"{f'{o}x{i}':>12} {b:>5}  " + " ".join(cell(r.get(t)) for t in types))
EOF
log "done (llama.cpp $LLCPP_COMMIT, ggml $GGML_VERSION)"
