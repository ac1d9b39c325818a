#!/usr/bin/env bash
# The committed reproduction (results/multi30k-small): every row of the paper's tables 1-6 once
# per seed with experiment=small on Multi30k, the attention analyses of vanilla / AGF-M /
# AGF-M + PCM-V, the finished runs' small files exported, and REPORT.md regenerated from them.
#
#   MULTI30K_ROOT=/path/to/multi30k bash sweeps/reproduce_small.sh [seeds...]   # default: 1 2 3
#
# Tables 1 and 2 are subsets of table 4's rows and table 6 shares its vanilla row, so each row
# is trained once per seed (the report takes a row's runs from whichever table dir holds them).
# Seed-major order, so partial results are balanced across rows. Resumable: finished runs are
# skipped and interrupted ones continue from last.pt. Extra overrides via $AGF_OVERRIDES
# (e.g. AGF_OVERRIDES="trainer.num_threads=1").
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MULTI30K_ROOT:?set MULTI30K_ROOT to the folder with the Multi30k .gz files}"
export MULTI30K_ROOT
seeds=("${@:-1 2 3}")
read -r -a extra <<< "${AGF_OVERRIDES:-}"
for seed in ${seeds[@]}; do
    python run.py +table=table4 experiment=small seed="$seed" trainer.progress=false "${extra[@]}"
    python run.py +table=table6 experiment=small seed="$seed" row=agf_m_sco_pe,agf_m_sco_pcmv_pe trainer.progress=false "${extra[@]}"
    python run.py +table=table5 experiment=small seed="$seed" trainer.progress=false "${extra[@]}"
    # attention analyses of the models the report describes (vanilla, AGF-M, AGF-M + PCM-V)
    for row in vanilla agf_m agf_m_pcmv; do
        run="outputs/sweeps/table4/small/$row/seed$seed"
        if [ -f "$run/summary.json" ] && [ ! -f "$run/analysis/heads.json" ]; then
            python -m agf_exp.analyze decay ckpt="$run/checkpoints/best.pt" data.root="$MULTI30K_ROOT" wandb=false
            python -m agf_exp.analyze heads ckpt="$run/checkpoints/best.pt" data.root="$MULTI30K_ROOT" wandb=false
        fi
    done
    python -m agf_exp.report --export results/multi30k-small --runs outputs/sweeps --experiment small
done
python -m agf_exp.report --all --runs results/multi30k-small --experiment small --out results/multi30k-small/REPORT.md
