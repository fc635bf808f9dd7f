#!/usr/bin/env bash
# The GPU check: what only a CUDA GPU can measure, in under 10 minutes on one GPU. The last line is one JSON object.
#   1. the CUDA-marked tests (pytest -m cuda: bf16 decode against the reference, the compiled decode step, a training
#      step on the GPU)
#   2. benchmarks/decode_speed.py on the GPU, eager and with the compiled decode step: tokens/s against transformers'
#      generate, and the memory bandwidth the decode achieves against the device's peak
#   3. SFT and GRPO steps of the `cuda` preset (level 2, the 8-layer 384-d guide) on a small run against the local
#      simulated core: steps/s and peak GPU memory
# Usage: bash benchmarks/gpu_check.sh [output dir, default runs/gpu_check]; SFT_STEPS and GRPO_STEPS resize step 3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-runs/gpu_check}
SFT_STEPS=${SFT_STEPS:-300}
GRPO_STEPS=${GRPO_STEPS:-20}
$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'error: this torch sees no CUDA GPU')"
rm -rf "$OUT"
mkdir -p "$OUT"
now() { date +%s.%N; }

echo "1. CUDA tests"
tests_rc=0
$PY -m pytest -q -m cuda tests/ >"$OUT/tests.log" 2>&1 || tests_rc=$?
tail -n 1 "$OUT/tests.log"

echo "2. decode speed, eager and compiled"
$PY benchmarks/decode_speed.py --device cuda >"$OUT/decode_eager.json" 2>"$OUT/decode_eager.log"
$PY benchmarks/decode_speed.py --device cuda --compile >"$OUT/decode_compiled.json" 2>"$OUT/decode_compiled.log"
cat "$OUT/decode_eager.json" "$OUT/decode_compiled.json"

echo "3. SFT and GRPO of the cuda preset"
$PY sim_core.py --host 127.0.0.1 --port 0 >"$OUT/sim_core.log" 2>&1 &
sim_pid=$!
trap 'kill "$sim_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    url=$(sed -n 's/^listening on \(http[^ ]*\).*/\1/p' "$OUT/sim_core.log" | head -n 1)
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "${url:-}" ] || { echo "error: sim_core.py did not start (see $OUT/sim_core.log)" >&2; exit 1; }
run_stage() { local stage=$1; shift; $PY exectune.py "$stage" --run "$OUT/run" --core-url "$url/v1" --preset cuda \
    --device cuda "$@" >>"$OUT/stages.log" 2>&1 || { echo "error: $stage failed (see $OUT/stages.log)" >&2; exit 1; }; }
run_stage data --n-train 1000 --n-val 100 --n-test 100 --n-ood 50
run_stage tokenizer
run_stage baselines --alone-runs 1
run_stage sample --k 2
t0=$(now)
run_stage sft --steps "$SFT_STEPS" --eval-every "$SFT_STEPS"
t1=$(now)
run_stage grpo --init sft-accepted/best --steps "$GRPO_STEPS" --eval-every "$GRPO_STEPS" --n-val-eval 100
t2=$(now)

$PY - "$OUT" "$tests_rc" "$SFT_STEPS" "$GRPO_STEPS" "$t0" "$t1" "$t2" <<'EOF'
import json, re, sys
out, tests_rc, sft_steps, grpo_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0, t1, t2 = map(float, sys.argv[5:8])
tail = open(f"{out}/tests.log").read().strip().splitlines()[-1]
counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)}
metrics = [json.loads(line) for line in open(f"{out}/run/metrics.jsonl")]
sft = [m for m in metrics if m["stage"] == "sft-accepted"][-1]
grpo = [m for m in metrics if m["stage"] == "grpo-structure" and "reward" in m]
print(json.dumps({
    "tests": dict(counts, ok=tests_rc == 0),
    "decode_eager": json.load(open(f"{out}/decode_eager.json")),
    "decode_compiled": json.load(open(f"{out}/decode_compiled.json")),
    "sft": {"steps": sft_steps, "steps_per_s": round(sft_steps / (t1 - t0), 2), "tokens_per_s": sft["tokens_per_s"],
            "peak_memory_mb": sft.get("peak_memory_mb"), "seconds_with_validation": round(t1 - t0, 1)},
    "grpo": {"steps": grpo_steps, "seconds_per_step": round((t2 - t1) / grpo_steps, 2),
             "samples_per_step": grpo[-1]["samples"] if grpo else None,
             "peak_memory_mb": max((m.get("peak_memory_mb") or 0 for m in metrics if m["stage"] == "grpo-structure"),
                                   default=None)},
}))
EOF
