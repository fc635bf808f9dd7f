#!/usr/bin/env bash
# ExecTune end to end: every stage of exectune.py, then the results table and one JSON summary line.
#   bash train.sh                    the default run: level-1 mathsim against the local simulated core, on a CPU
#   LEVEL=2 bash train.sh            level 2 (2-6 operations, shuffled facts) with sizes for a CPU
#   DEVICE=cuda bash train.sh        the guide on a GPU; level 2 with sizes for one modern GPU (LEVEL=1 to keep level 1)
#   QUICK=1 bash train.sh            a smoke version of every stage (under a minute and a half)
#   TASK=codesim bash train.sh       the code world (docs/world.md §6): replies graded by running their code
#   TEACHER_ECHO=E bash train.sh     the offline world with the simulated teacher's echo rate E (default 0.7; 0: the
#                                    world before the echo habit, docs/world.md §5)
# Overrides: CORE_URL CORE_MODEL CORE_API LARGE_CORE_MODEL TEACHER_URL TEACHER_MODEL TEACHER_API RUN DEVICE LEVEL PRESET
#   TASK (mathsim, codesim; gsm8k, humaneval, kodcode need CORE_URL)
#   SEED (default 0): the training seed of SFT and GRPO; the tasks, their splits and the teacher's draws stay the same
#   NPROC: run each SFT and GRPO stage as NPROC torchrun processes (data parallel: gloo on CPU, NCCL on CUDA, one GPU
#   each), one stage after another; unset, each stage is one process and the two guides train side by side
# The paper's experiments: TASK=gsm8k|kodcode|humaneval GUIDE_INIT=<Hugging Face dir> CORE_URL=https://api.anthropic.com
#   bash train.sh (GSM8K from DATA_DIR, default data/gsm8k; kodcode and humaneval train on DATA_DIR/kodcode.jsonl,
#   default data/kodcode, and humaneval tests on HumanEval; a pretrained guide fine-tuned instead of one from scratch;
#   with Anthropic's URL the core is Claude 3.5 Haiku and the teacher and large core Claude 3.5 Sonnet by default;
#   exectune's default sizes, no preset, unless QUICK=1 or PRESET says otherwise)
# With CORE_URL unset, sim_core.py is started on a free loopback port and stopped on exit, however the script ends.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python}
export DEVICE=${DEVICE:-cpu}
TASK=${TASK:-mathsim}
case "$TASK" in
    mathsim|codesim) offline=1 ;;                 # worlds the local simulated core knows
    gsm8k|humaneval|kodcode) offline=0 ;;
    *) echo "error: TASK must be mathsim, codesim, gsm8k, humaneval or kodcode, got '$TASK'" >&2; exit 2 ;;
esac
case "$DEVICE" in cuda*) LEVEL=${LEVEL:-2} ;; *) LEVEL=${LEVEL:-1} ;; esac
if [ "${QUICK:-0}" = "1" ]; then
    preset=quick
    if [ "$TASK" = "mathsim" ]; then RUN=${RUN:-runs/quick}; else RUN=${RUN:-runs/quick-$TASK}; fi
elif [ "$TASK" = "codesim" ]; then
    preset=codesim; RUN=${RUN:-runs/codesim}
elif [ "$TASK" != "mathsim" ]; then               # a real benchmark: exectune's defaults
    preset=""; RUN=${RUN:-runs/$TASK}
elif [ "$LEVEL" = "2" ]; then
    case "$DEVICE" in cuda*) preset=cuda; RUN=${RUN:-runs/cuda} ;; *) preset=level2; RUN=${RUN:-runs/level2} ;; esac
elif [ "$LEVEL" = "1" ]; then
    preset=""; RUN=${RUN:-runs/default}
else
    echo "error: LEVEL must be 1 or 2, got '$LEVEL'" >&2; exit 2
fi
export PRESET=${PRESET:-$preset} RUN
start=$(date +%s)

if [ "$offline" = "0" ] && [ -z "${CORE_URL:-}" ]; then
    echo "error: TASK=$TASK needs a real core: set CORE_URL (the simulated core knows mathsim and codesim only)" >&2
    exit 1
fi
if [ -n "${GUIDE_INIT:-}" ] && [ ! -f "$GUIDE_INIT/config.json" ]; then
    echo "error: GUIDE_INIT=$GUIDE_INIT: no config.json there (a local Hugging Face model directory)" >&2; exit 1
fi
case "${CORE_URL:-}" in
    *api.anthropic.com*)
        export CORE_API=${CORE_API:-anthropic} CORE_MODEL=${CORE_MODEL:-claude-3-5-haiku-20241022}
        export LARGE_CORE_MODEL=${LARGE_CORE_MODEL:-claude-3-5-sonnet-20241022}
        export TEACHER_MODEL=${TEACHER_MODEL:-claude-3-5-sonnet-20241022} ;;
esac
# extra flags, word-split where they are used (so GUIDE_INIT must not contain spaces)
SEED=${SEED:-0}
case "$SEED" in ''|*[!0-9]*) echo "error: SEED must be a non-negative integer, got '$SEED'" >&2; exit 2 ;; esac
DATA_FLAGS="--family $TASK" GEN_FLAGS="" SFT_FLAGS="--seed $SEED" GRPO_FLAGS="--seed $SEED"
if [ "$TASK" = "gsm8k" ] && [ "$PRESET" != "quick" ]; then
    DATA_FLAGS="$DATA_FLAGS --n-train 7473 --n-test 1319"     # all of GSM8K (200 of train: val)
fi
if [ "$offline" = "0" ]; then
    GEN_FLAGS="--max-new-tokens 256"               # free-text strategies run longer than the offline worlds'
    SFT_FLAGS="$SFT_FLAGS $GEN_FLAGS"              # the run's one strategy budget, set by its first stage that decodes
fi
if [ -n "${GUIDE_INIT:-}" ]; then                  # a pretrained guide: small learning rates, loss on strategies alone
    SFT_FLAGS="$SFT_FLAGS --init hf:$GUIDE_INIT --lr 1e-5 --warmup 20 --prompt-loss-weight 0"
    GRPO_FLAGS="$GRPO_FLAGS --lr 1e-6"
fi

if [ -z "${CORE_URL:-}" ]; then
    mkdir -p "$RUN"
    log="$RUN/sim_core.log"
    $PY sim_core.py --host 127.0.0.1 --port 0 ${TEACHER_ECHO:+--teacher-echo "$TEACHER_ECHO"} >"$log" 2>&1 &
    sim_pid=$!
    trap 'kill "$sim_pid" 2>/dev/null || true; wait "$sim_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do
        url=$(sed -n 's/^listening on \(http[^ ]*\).*/\1/p' "$log" | head -n 1)
        [ -n "$url" ] && break
        kill -0 "$sim_pid" 2>/dev/null || { echo "error: sim_core.py exited: $(tail -n 1 "$log")" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "${url:-}" ] || { echo "error: sim_core.py did not start within 10 s (see $log)" >&2; exit 1; }
    export CORE_URL="$url/v1"
    echo "local simulated core at $CORE_URL"
fi

X="$PY exectune.py"
side_by_side() {   # stages $1 and $2 at once, one core each (two small models train faster apart than sharing
                   # two cores); $2 writes to the log $RUN/$3
    echo "($2 runs beside it, one core each: $RUN/$3)"
    OMP_NUM_THREADS=1 $X $1 & local first=$!
    OMP_NUM_THREADS=1 $X $2 >"$RUN/$3" 2>&1 & local second=$!
    local status=0
    wait $first || status=$?
    wait $second || { status=$?; echo "error: '$2' failed: $(tail -n 1 "$RUN/$3")" >&2; }
    return $status
}
$X data $DATA_FLAGS
[ -n "${GUIDE_INIT:-}" ] || $X tokenizer           # a pretrained guide brings its own tokenizer
$X baselines
$X sample
if [ -n "${NPROC:-}" ]; then
    case "$NPROC" in *[!0-9]*|0) echo "error: NPROC must be a positive integer, got '$NPROC'" >&2; exit 2 ;; esac
    # the run directory goes by RUN (exported above): torchrun's parser would take --run for its --run-path
    DP="$PY -m torch.distributed.run --standalone --nproc_per_node $NPROC exectune.py"
    $DP sft --data accepted $SFT_FLAGS
    $DP sft --data raw $SFT_FLAGS
    $DP grpo --init sft-accepted/best --reward structure $GRPO_FLAGS $GEN_FLAGS
    $DP grpo --init sft-raw/best --reward outcome $GRPO_FLAGS $GEN_FLAGS
else
    side_by_side "sft --data accepted $SFT_FLAGS" "sft --data raw $SFT_FLAGS" sft-raw.log
    side_by_side "grpo --init sft-accepted/best --reward structure $GRPO_FLAGS $GEN_FLAGS" \
                 "grpo --init sft-raw/best --reward outcome $GRPO_FLAGS $GEN_FLAGS" grpo-outcome.log
fi
$X eval --guide teacher --name "teacher strategies (reference)"
$X eval --guide sft-raw/best --name "supervised GCoP" $GEN_FLAGS
$X eval --guide grpo-outcome/best --name "advisor-style GCoP" $GEN_FLAGS
$X eval --guide sft-accepted/best --name "ExecTune w/o RL" $GEN_FLAGS
$X eval --guide grpo-structure/best --name "ExecTune without the gate" $GEN_FLAGS
$X eval --guide grpo-structure/best --name "ExecTune" --decline-gate $GEN_FLAGS

echo
$X table --wall-s $(( $(date +%s) - start ))
