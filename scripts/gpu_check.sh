#!/usr/bin/env bash
# The CUDA path, proven in one prepared run (issue 16). On a machine with a GPU:
#   1. builds EMPAS with EMPAS_CUDA=ON into the Python environment (pip, no build
#      isolation; EMPAS_GPU_CHECK_BUILD=0 skips it when that build is installed),
#   2. runs the gpu-marked tests (pytest --run-gpu -m gpu),
#   3. the ops benchmark on the GPU (benchmarks/bench_ops.py --gpu-only: fake-quant
#      and dequant GB/s against the device's measured copy bandwidth, target >= 70%),
#   4. profiles SmolLM2 (example:smollm2, block units, 2/4 bits, few tokens) on the
#      CPU, on 1 GPU, and with torchrun on all GPUs, and compares each GPU table with
#      the CPU one within the stderr (benchmarks/compare_profiles.py).
# Without a GPU it runs the CPU-only checks: the gpu tests skip cleanly, and the same
# model is profiled in 1 process and by 2 gloo ranks and compared; it says the GPU
# figures are pending. Every figure goes as JSON into $OUT (default out/gpu_check);
# gpu_check.json sums the steps up. The whole run has a time budget
# (EMPAS_GPU_CHECK_BUDGET seconds, default 480): each step gets what is left.
#
#   scripts/gpu_check.sh                 # PYTHON=... to choose the interpreter
#   OUT=/tmp/gc EMPAS_GPU_CHECK_TOKENS=256 scripts/gpu_check.sh
#
# Exit status: 0 when every step that ran passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

out=${OUT:-out/gpu_check}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x .venv/bin/python ]; then
  py=$root/.venv/bin/python
else
  py=$(command -v python3)
fi
budget=${EMPAS_GPU_CHECK_BUDGET:-480}
model=${EMPAS_GPU_CHECK_MODEL:-example:smollm2}
start=$(date +%s)
steps=$out/steps.jsonl
: >"$steps"
failed=0

left() { echo $((budget - ($(date +%s) - start))); }

# step NAME CMD...: runs CMD with the time that is left, logs it to $out/NAME.log,
# and records name, rc and seconds; a failed step does not stop the next ones.
step() {
  local name=$1
  shift
  local t0 rc limit
  limit=$(left)
  if [ "$limit" -le 5 ]; then
    echo "== $name: skipped, the time budget (${budget} s) is spent"
    printf '{"step": "%s", "rc": null, "seconds": 0, "note": "budget spent"}\n' "$name" >>"$steps"
    failed=1
    return 1
  fi
  echo "== $name (at most ${limit} s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  tail -n 15 "$out/$name.log" | sed 's/^/   /'
  printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$steps"
  if [ $rc -ne 0 ]; then
    echo "   -> FAILED (rc $rc; $out/$name.log)"
    failed=1
  fi
  return $rc
}

gpus=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L | grep -c '^GPU')
fi
torch_cuda=$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
echo "gpu_check: $gpus GPU(s) (nvidia-smi), torch CUDA available: $torch_cuda; python $py; out $out"
mode=cpu-only
[ "$gpus" -gt 0 ] && [ "$torch_cuda" = 1 ] && mode=gpu

# the profiles: few tokens (CPU-only mode: fewer still, it runs in CI on 2 cores)
if [ $mode = gpu ]; then
  tokens=${EMPAS_GPU_CHECK_TOKENS:-512} seq_len=${EMPAS_GPU_CHECK_SEQ_LEN:-128} bits=${EMPAS_GPU_CHECK_BITS:-2,4}
else
  tokens=${EMPAS_GPU_CHECK_TOKENS:-128} seq_len=${EMPAS_GPU_CHECK_SEQ_LEN:-64} bits=${EMPAS_GPU_CHECK_BITS:-2}
fi
profile_args=(--units block --bits "$bits" --n-tokens "$tokens" --seq-len "$seq_len" --batch-size 4 --quiet --force)
echo "gpu_check: profiles of $model: block units, bits $bits (+16), $tokens tokens, seq_len $seq_len"

if [ $mode = gpu ]; then
  if [ "${EMPAS_GPU_CHECK_BUILD:-1}" != 0 ]; then
    step build "$py" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
      -C cmake.define.EMPAS_CUDA=ON .
  fi
  step build_info "$py" -c 'import empas, json, sys; i = empas.build_info(); print(json.dumps(i)); sys.exit(0 if i.get("cuda") else "empas was built without CUDA kernels")'
  step gpu_tests "$py" -m pytest -q -p no:cacheprovider --run-gpu -m gpu tests_py \
    --junitxml "$out/gpu_tests.xml"
  step ops_gpu "$py" benchmarks/bench_ops.py --gpu-only --json "$out/ops_gpu.json"
  step profile_cpu "$py" -m empas profile "$model" --device cpu -o "$out/profile_cpu.json" "${profile_args[@]}"
  step profile_gpu1 "$py" -m empas profile "$model" --device cuda -o "$out/profile_gpu1.json" "${profile_args[@]}"
  step profile_gpus "$py" -m torch.distributed.run --standalone --nproc_per_node "$gpus" \
    -m empas profile "$model" --device cuda -o "$out/profile_gpus.json" "${profile_args[@]}"
  step compare_gpu1_cpu "$py" benchmarks/compare_profiles.py "$out/profile_gpu1.json" \
    "$out/profile_cpu.json" --json "$out/compare_gpu1_cpu.json"
  step compare_gpus_cpu "$py" benchmarks/compare_profiles.py "$out/profile_gpus.json" \
    "$out/profile_cpu.json" --json "$out/compare_gpus_cpu.json"
else
  echo "gpu_check: no usable GPU here: CPU-only checks; the GPU figures are pending"
  # the gpu tests must skip cleanly (not fail, not error) without a GPU
  step gpu_tests "$py" -m pytest -q -p no:cacheprovider --run-gpu -m gpu tests_py \
    --junitxml "$out/gpu_tests.xml"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  step profile_cpu "$py" -m empas profile "$model" --device cpu -o "$out/profile_cpu.json" "${profile_args[@]}"
  step profile_cpu2 "$py" -m torch.distributed.run --standalone --nproc_per_node 2 \
    -m empas profile "$model" --device cpu -o "$out/profile_cpu2.json" "${profile_args[@]}"
  step compare_cpu2_cpu "$py" benchmarks/compare_profiles.py "$out/profile_cpu2.json" \
    "$out/profile_cpu.json" --json "$out/compare_cpu2_cpu.json"
fi

# gpu_check.json: the steps, the gpu tests' counts, and every figure file's content
"$py" - "$out" "$mode" "$gpus" "$budget" "$(($(date +%s) - start))" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, mode, gpus, budget, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
doc = {"format": "empas.gpu_check/1", "mode": mode, "gpus": gpus, "budget_s": budget, "seconds": seconds,
       "steps": [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line]}
if mode != "gpu":
    doc["gpu_figures"] = "pending: no GPU on this machine (nvidia-smi / torch.cuda)"
x = out / "gpu_tests.xml"
if x.is_file():
    s = ET.parse(x).getroot()
    s = s if s.tag == "testsuite" else s.find("testsuite")
    doc["gpu_tests"] = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    doc["gpu_tests"]["passed"] = doc["gpu_tests"]["tests"] - sum(doc["gpu_tests"][k] for k in ("failures", "errors", "skipped"))
for f in sorted(out.glob("*.json")):
    if f.name == "gpu_check.json":
        continue
    d = json.loads(f.read_text())
    if f.name.startswith("profile_"):  # the tables are in the file: keep the provenance
        d = {"timings": d.get("timings"), "device": d.get("source", {}).get("device"),
             "distributed": d.get("source", {}).get("distributed"), "baseline": d.get("loss", {}).get("baseline")}
    doc[f.stem] = d
(out / "gpu_check.json").write_text(json.dumps(doc, indent=2) + "\n")
print(f"gpu_check: {mode}, {seconds} s; wrote {out / 'gpu_check.json'}")
if "ops_gpu" in doc and doc["ops_gpu"].get("summary"):
    s = doc["ops_gpu"]["summary"]
    print(f"  ops: copy {s['hbm_copy_gbps']:.0f} GB/s; fake_quant min {s['fake_quant_pct_of_hbm_min']:.0f}%, "
          f"dequant min {s['dequant_pct_of_hbm_min']:.0f}% of it (target >= 70%: {s['target_gpu_70pct_hbm_met']})")
for k in sorted(doc):
    if k.startswith("compare_"):
        c = doc[k]
        print(f"  {k}: max |d|/stderr {c['max_ratio']}, rms {c['rms_ratio']}, pass {c['pass']}")
if mode != "gpu":
    print("  GPU figures: pending (no GPU on this machine)")
EOF
[ $? -ne 0 ] && failed=1
exit $failed
