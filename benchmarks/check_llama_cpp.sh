#!/usr/bin/env bash
# Checks for real that llama.cpp's `llama-quantize --tensor-type-file FILE` accepts
# the file `empas.export.to_llama_cpp_tensor_types(plan)` writes and gives every
# tensor the GGML type the file asks for.
#
#   benchmarks/check_llama_cpp.sh [WORKDIR]      (default /tmp/llcpp)
#
# Steps (each skipped when its output is already in WORKDIR, so a rerun resumes):
#  1. llama.cpp sources: the llama-cpp-python==$LLCPP_PY_VERSION sdist from PyPI
#     (`pip download`), which vendors llama.cpp in vendor/llama.cpp.
#  2. Build only `llama-quantize` (CPU, static, no network features).
#  3. A small Llama model from empas.models.tiny_llama, with 256-multiple dims so
#     that the k-quants (q2_K..q6_K, 256-value super-blocks) apply without fallback.
#  4. HF -> GGUF f16 with the vendored convert_hf_to_gguf.py. Workaround: the
#     converter does not know the pre-tokenizer hash of EMPAS's own byte-level BPE
#     tokenizer; a wrapper maps an unknown hash to 'gpt-2' when tokenizer.json's
#     pre-tokenizer is a plain ByteLevel(use_regex=True, add_prefix_space=False),
#     which is exactly GPT-2's pre-tokenization (nothing under llama.cpp is edited).
#     sentencepiece (imported before the converter's tokenizer fallbacks) goes into
#     WORKDIR/pydeps, not into the project's venv.
#  5. An EMPAS plan: profile (units="linear", choices 2/3/4/8), exact search; of the
#     front, the plan with the most distinct bit widths (ties: nearest "balanced"),
#     exported with to_llama_cpp_tensor_types (or to_llama_cpp_args if this llama.cpp
#     had no --tensor-type-file).
#  6. llama-quantize --tensor-type-file types.txt model-f16.gguf out.gguf Q4_K_M
#  7. Reads out.gguf with gguf.GGUFReader and compares, per planned tensor, the type
#     asked for with the type written. Exit status 1 on any mismatch.
#
# Environment: JOBS (build jobs, default 2), NICE (prefix for heavy commands,
# default "nice -n 19"), LLCPP_PY_VERSION (default 0.3.36), BASE_TYPE (default Q4_K_M).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PY="$HERE/../.venv/bin/python"
WORK="${1:-/tmp/llcpp}"
JOBS="${JOBS:-2}"
NICE="${NICE:-nice -n 19}"
LLCPP_PY_VERSION="${LLCPP_PY_VERSION:-0.3.36}"
BASE_TYPE="${BASE_TYPE:-Q4_K_M}"

[ -x "$PY" ] || { echo "no venv python at $PY" >&2; exit 2; }
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
cd "$WORK"
T0=$(date +%s)
log() { printf '[%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

# -- 1. llama.cpp sources ---------------------------------------------------------------
# shellcheck source=benchmarks/llama_cpp/sources.sh
source "$HERE/llama_cpp/sources.sh"
llama_cpp_sources

if grep -q '"--tensor-type-file"' "$SRC/tools/quantize/quantize.cpp"; then
    MODE=file
else
    MODE=args
    log "this llama-quantize has no --tensor-type-file: using repeated --tensor-type args"
fi

# -- 2. build llama-quantize ------------------------------------------------------------
QUANTIZE="$WORK/build/bin/llama-quantize"
if [ ! -x "$QUANTIZE" ]; then
    log "building llama-quantize (-j$JOBS)"
    $NICE cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=OFF -DGGML_CCACHE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON \
        > "$WORK/cmake-configure.log" 2>&1 || { tail -30 "$WORK/cmake-configure.log"; exit 2; }
    $NICE cmake --build "$WORK/build" --target llama-quantize -j"$JOBS" \
        > "$WORK/cmake-build.log" 2>&1 || { tail -30 "$WORK/cmake-build.log"; exit 2; }
fi
log "llama-quantize: $QUANTIZE"

# -- 3. the model -----------------------------------------------------------------------
MODEL="$WORK/tiny"
log "model (empas.models.tiny_llama) at $MODEL"
$NICE "$PY" - "$MODEL" <<'EOF'
import sys
from empas.models import tiny_llama
# hidden/intermediate multiples of 256: every linear's rows (ne[0] = in_features) take k-quants
print(tiny_llama(path=sys.argv[1], n_layers=4, hidden=256, intermediate=768, heads=4, kv_heads=2,
                 vocab=512, max_positions=64, seq_len=64, batch_size=8, steps=50, lr=1e-2,
                 verbose=False))
EOF

# -- 4. HF -> GGUF f16 ------------------------------------------------------------------
if [ ! -f "$WORK/pydeps/sentencepiece/__init__.py" ]; then
    log "installing sentencepiece into $WORK/pydeps (converter import)"
    $NICE "$PY" -m pip install -q --target "$WORK/pydeps" sentencepiece
fi
cat > "$WORK/convert_wrapper.py" <<'EOF'
"""Runs llama.cpp's convert_hf_to_gguf.py; an unknown BPE pre-tokenizer hash becomes
'gpt-2' when tokenizer.json's pre-tokenizer is GPT-2's (plain ByteLevel with regex)."""
import json, os, runpy, sys
src = os.path.abspath(sys.argv[1])
script = os.path.join(src, "convert_hf_to_gguf.py")
sys.argv = [script] + sys.argv[2:]
sys.path[:0] = [src, os.path.join(src, "gguf-py")]
from conversion import base

_orig = base.TextModel.get_vocab_base_pre

def _pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        tj = json.loads((self.dir_model / "tokenizer.json").read_text(encoding="utf-8"))
        pre = tj.get("pre_tokenizer") or {}
        if (pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                and not pre.get("add_prefix_space", False) and not tj.get("normalizer")):
            print("WORKAROUND: unknown BPE pre-tokenizer hash; tokenizer.json's pre-tokenizer is "
                  "ByteLevel(use_regex=True, add_prefix_space=False) = GPT-2's: "
                  "tokenizer.ggml.pre='gpt-2'", file=sys.stderr)
            return "gpt-2"
        raise

base.TextModel.get_vocab_base_pre = _pre
runpy.run_path(script, run_name="__main__")
EOF
F16="$WORK/model-f16.gguf"
if [ ! -f "$F16" ]; then
    log "converting to GGUF f16"
    PYTHONPATH="$WORK/pydeps" $NICE "$PY" "$WORK/convert_wrapper.py" "$SRC" "$MODEL" \
        --outtype f16 --outfile "$F16.tmp" > "$WORK/convert.log" 2>&1 \
        || { tail -30 "$WORK/convert.log"; exit 2; }
    grep '^WORKAROUND' "$WORK/convert.log" || true
    mv "$F16.tmp" "$F16"
fi

# -- 5. the EMPAS plan and its llama.cpp export -----------------------------------------
log "EMPAS: profile (units=linear), exact search, export ($MODE)"
$NICE "$PY" - "$MODEL" "$WORK" "$MODE" <<'EOF'
import sys
from pathlib import Path
import empas, empas.export, empas.models

model, work, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
prof = empas.profile(model, empas.models.corpus("train"), units="linear", choices=(2, 3, 4, 8),
                     n_tokens=1024, seq_len=64, progress=False,
                     checkpoint=work / "profile.checkpoint.json")
res = empas.search(prof, method="exact")
front = list(res.front)
bal = res.archetypes["balanced"]
ib = next(i for i, p in enumerate(front) if p.bits == bal.bits)
# the front plan with the most distinct bit widths (so several GGML types are exercised)
i = max(range(len(front)), key=lambda i: (len(set(front[i].bits)), -abs(i - ib)))
plan = front[i]
plan.archetype = "balanced" if i == ib else f"front[{i}]"
plan.save(work / "plan.json")
counts = {b: plan.bits.count(b) for b in sorted(set(plan.bits))}
print(f"plan: {plan.archetype} of {len(front)} front plans ({plan!r}); bits -> units: {counts}")
(work / "types.txt").write_text(empas.export.to_llama_cpp_tensor_types(plan))
(work / "types.args").write_text("\n".join(empas.export.to_llama_cpp_args(plan)) + "\n")
EOF

# -- 6. llama-quantize ------------------------------------------------------------------
OUT="$WORK/out.gguf"
rm -f "$OUT"
if [ "$MODE" = file ]; then
    OVERRIDES=(--tensor-type-file "$WORK/types.txt")
else
    mapfile -t OVERRIDES < "$WORK/types.args"
fi
log "llama-quantize ${OVERRIDES[0]} ... model-f16.gguf out.gguf $BASE_TYPE"
$NICE "$QUANTIZE" "${OVERRIDES[@]}" "$F16" "$OUT" "$BASE_TYPE" "$JOBS" > "$WORK/quantize.log" 2>&1 \
    || { tail -30 "$WORK/quantize.log"; exit 2; }
echo "manual overrides logged by llama-quantize: $(grep -ci 'applying manual override' "$WORK/quantize.log" || true)"
grep -i 'fallback' "$WORK/quantize.log" || true

# -- 7. compare -------------------------------------------------------------------------
log "comparing types in out.gguf with types.txt"
set +e
PYTHONPATH="$SRC/gguf-py" "$PY" - "$OUT" "$WORK/types.txt" <<'EOF'
import re, sys
import gguf

out, types_file = sys.argv[1], sys.argv[2]
# as llama-quantize reads it: whitespace-separated pattern=type tokens, the pattern
# lowercased, tried with regex_search in file order, first match wins
rules = []
for tok in open(types_file).read().split():
    pat, typ = tok.split("=", 1)
    rules.append((re.compile(pat.lower()), pat, typ))

tensors = gguf.GGUFReader(out).tensors
hit = {pat: 0 for _, pat, _ in rules}
rows, extra = [], []
for t in tensors:
    rule = next((r for r in rules if r[0].search(t.name)), None)
    got = t.tensor_type.name
    if rule is None:
        extra.append((t.name, got))
        continue
    hit[rule[1]] += 1
    ne0 = int(t.shape[0])
    note = ""
    if got.lower() != rule[2].lower():
        note = (f"ne[0]={ne0} not a multiple of 256: k-quant fallback" if ne0 % 256 and
                rule[2].lower().endswith("_k") else "see quantize.log")
    rows.append((t.name, rule[2], got, note))

w = max(len(r[0]) for r in rows) if rows else 6
print(f"{'tensor':<{w}}  {'requested':<9}  {'in GGUF':<7}")
for name, req, got, note in rows:
    flag = "" if not note else f"  MISMATCH ({note})"
    print(f"{name:<{w}}  {req:<9}  {got:<7}{flag}")
missing = [p for p, n in hit.items() if n == 0]
for p in missing:
    print(f"{p:<{w}}  (pattern matched no tensor)  MISMATCH")
print("not in the file (llama.cpp's own choice): "
      + ", ".join(f"{n}={g}" for n, g in extra))
ok = sum(1 for r in rows if not r[3])
n = len(rows) + len(missing)
print(f"llama.cpp check: {ok}/{n} tensors match")
sys.exit(0 if ok == n and n > 0 else 1)
EOF
rc=$?
set -e
log "done (llama.cpp $LLCPP_COMMIT, ggml $GGML_VERSION)"
exit $rc
