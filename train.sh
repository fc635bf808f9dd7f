#!/usr/bin/env bash
# ExecTune end to end: every stage of exectune.py, then the results table and one JSON summary line.
#   bash train.sh                    full default run against the local simulated core (about 14 min on 2 CPU cores)
#   QUICK=1 bash train.sh            a smoke version of every stage (under a minute)
# Overrides: CORE_URL CORE_MODEL CORE_API LARGE_CORE_MODEL TEACHER_URL TEACHER_MODEL TEACHER_API RUN DEVICE
# With CORE_URL unset, sim_core.py is started on a free loopback port and stopped on exit, however the script ends.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python}
if [ "${QUICK:-0}" = "1" ]; then export QUICK=1; RUN=${RUN:-runs/quick}; else export QUICK=0; RUN=${RUN:-runs/default}; fi
export RUN
export DEVICE=${DEVICE:-cpu}
start=$(date +%s)

if [ -z "${CORE_URL:-}" ]; then
    mkdir -p "$RUN"
    log="$RUN/sim_core.log"
    $PY sim_core.py --host 127.0.0.1 --port 0 >"$log" 2>&1 &
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
$X data
$X tokenizer
$X baselines
$X sample
$X sft --data accepted
$X sft --data raw
$X grpo --init sft-raw/best --reward outcome
$X grpo --init sft-accepted/best --reward structure
$X eval --guide teacher --name "teacher strategies (reference)"
$X eval --guide sft-raw/best --name "supervised GCoP"
$X eval --guide grpo-outcome/best --name "advisor-style GCoP"
$X eval --guide sft-accepted/best --name "ExecTune w/o RL"
$X eval --guide grpo-structure/best --name "ExecTune"

echo
$X table --wall-s $(( $(date +%s) - start ))
