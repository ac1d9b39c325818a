#!/usr/bin/env bash
# The committed reproduction (results/multi30k-small): every row of the paper's tables 1-6 once
# per seed with experiment=small on Multi30k, the attention analyses of vanilla / AGF-M /
# AGF-M + PCM-V, the finished runs' small files exported, and REPORT.md regenerated from them.
#
#   MULTI30K_ROOT=/path/to/multi30k bash sweeps/reproduce_small.sh [seeds...]   # default: 1 2 3 4 5
#   AGF_JOBS=20 MULTI30K_ROOT=... bash sweeps/reproduce_small.sh               # one GPU, 20 runs at once
#
# Tables 1 and 2 are subsets of table 4's rows and table 6 shares its vanilla row, so each row
# is trained once per seed (the report takes a row's runs from whichever table dir holds them):
# 10 runs per seed, each `python run.py +table=<t> hydra.mode=RUN row=<r> seed=<s>` into the
# same dir the table's multirun uses (outputs/sweeps/<table>/small/<row>/seed<s>).
# Every run uses the committed subword model (results/multi30k-small/unigram8000.model, trained
# by sentencepiece 0.2.3 on Multi30k's training split), so runs on any machine and any
# sentencepiece version share one segmentation. Seed-major order, so partial results are balanced across rows. Resumable: finished runs are
# skipped and interrupted ones continue from last.pt.
#   AGF_JOBS       runs at once (default 1). A small model leaves a GPU mostly idle, so one GPU
#                  takes many at once; each run's output then goes to outputs/sweeps/logs/.
#   AGF_OVERRIDES  extra overrides for every run (e.g. "trainer.num_threads=1" on a CPU,
#                  "trainer.precision=fp32" on a GPU to match a CPU's arithmetic).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MULTI30K_ROOT:?set MULTI30K_ROOT to the folder with the Multi30k .gz files}"
export MULTI30K_ROOT AGF_OVERRIDES="${AGF_OVERRIDES:-}" AGF_JOBS="${AGF_JOBS:-1}"
seeds=("${@:-1 2 3 4 5}")
# every row trained once per seed, as <table>:<row> (tables 1, 2 and 6's vanilla reuse table 4's)
table_rows="table4:vanilla table4:agf table4:agf_pcmv table4:agf_m table4:agf_m_pcmv
            table6:agf_m_sco_pe table6:agf_m_sco_pcmv_pe
            table5:alibi_bl table5:alibi_bl_pcmv_exp table5:alibi_bl_mul_pcmv"
mkdir -p outputs/sweeps/logs

one_run() {  # table row seed
    local extra cmd log="outputs/sweeps/logs/$1-$2-seed$3.log"
    read -r -a extra <<< "$AGF_OVERRIDES"
    cmd=(python run.py +table="$1" hydra.mode=RUN experiment=small row="$2" seed="$3" trainer.progress=false
         data.subword_file="$PWD/results/multi30k-small/unigram8000.model" "${extra[@]}")
    if [ "$AGF_JOBS" = 1 ]; then
        "${cmd[@]}"
        return
    fi
    "${cmd[@]}" > "$log" 2>&1 || { echo "FAILED: $1 $2 seed$3 ($log)"; return 1; }
    echo "done: $1 $2 seed$3"
}
analyses() {  # seed: the attention analyses of the models the report describes
    local row run
    for row in vanilla agf_m agf_m_pcmv; do
        run="outputs/sweeps/table4/small/$row/seed$1"
        if [ -f "$run/summary.json" ] && [ ! -f "$run/analysis/heads.json" ]; then
            python -m agf_exp.analyze decay ckpt="$run/checkpoints/best.pt" data.root="$MULTI30K_ROOT" wandb=false
            python -m agf_exp.analyze heads ckpt="$run/checkpoints/best.pt" data.root="$MULTI30K_ROOT" wandb=false
        fi
    done
}
export -f one_run

status=0
if [ "$AGF_JOBS" = 1 ]; then  # one at a time: each seed analysed and exported as soon as it is done
    for seed in ${seeds[@]}; do
        for tr in $table_rows; do one_run "${tr%:*}" "${tr#*:}" "$seed"; done
        analyses "$seed"
        python -m agf_exp.report --export results/multi30k-small --runs outputs/sweeps --experiment small
    done
else
    for seed in ${seeds[@]}; do
        for tr in $table_rows; do echo "${tr%:*} ${tr#*:} $seed"; done
    done | xargs -P "$AGF_JOBS" -L 1 bash -c 'one_run "$0" "$1" "$2"' || status=$?
    for seed in ${seeds[@]}; do analyses "$seed" & done
    wait
    python -m agf_exp.report --export results/multi30k-small --runs outputs/sweeps --experiment small
fi
python -m agf_exp.report --all --runs results/multi30k-small --experiment small --out results/multi30k-small/REPORT.md \
    --seeds "$(echo ${seeds[*]} | tr ' ' ,)"
exit "$status"
