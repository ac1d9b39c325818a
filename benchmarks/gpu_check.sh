#!/usr/bin/env bash
# Everything GPU-only in one script, about 8 minutes on one H100/H200: each step is time-boxed and
# prints its own line at once, so a partial run still tells something; at the end one Markdown
# table on stdout and every figure in $OUT/gpu_check.json (default outputs/bench/gpu_check).
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine, from the repository root
#   MULTI30K_ROOT=/path bash benchmarks/gpu_check.sh  # train on Multi30k (else the synthetic task)
#   bash benchmarks/gpu_check.sh --device cpu --smoke # the script itself at toy sizes (tests run this)
#
# Steps and their time boxes (seconds): env 30, pytest -m cuda 100, attention (bf16, every
# multiplicative/additive mode x PCM-V, L = 128..4096) 70, train (experiment=small for
# TRAIN_MINUTES=1 minute each, vanilla and agf_m + PCM-V) 170, parity (the same seed on the GPU in
# bf16 and on the CPU in fp32) 60, paper (experiment=paper, 50 steps) 60, peer (Eole on the GPU,
# when it installs) 30. Extra arguments go to every step.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-outputs/bench/gpu_check}"
RESULTS="$OUT/results.jsonl"
mkdir -p "$OUT"
: > "$RESULTS"
SMOKE=0
for a in "$@"; do [ "$a" = "--smoke" ] && SMOKE=1; done
step() {  # name seconds
    local scale=1
    [ "$SMOKE" = 1 ] && scale=6  # toy sizes on a shared 2-core CPU get more room than the GPU steps need
    timeout --kill-after=10 $(( $2 * scale )) python benchmarks/gpu_check.py "$1" --results "$RESULTS" \
        --work "$OUT/work" --minutes "${TRAIN_MINUTES:-1}" "${@:3}" \
        || echo "[$1] stopped (exit $?): see the table below"
}
step env 30 "$@"
step pytest 100 "$@"
step attention 70 "$@"
step train 170 "$@"
step parity 60 "$@"
step paper 60 "$@"
step peer 30 "$@"
python benchmarks/gpu_check.py summary --results "$RESULTS" --json "$OUT/gpu_check.json"
