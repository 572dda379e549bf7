#!/usr/bin/env bash
# The main job on the embedded default (synthetic HAM10000 + tiny Qwen2.5-VL, CPU, no downloads):
# set-up, Stage 1 SFT, Stage 2 GRPO from it; prints run folders and key metrics.
#   bash scripts/demo.sh                 # extra arguments go to both stages, e.g. logger=none
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export WANDB_MODE="${WANDB_MODE:-offline}" TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PY=.venv/bin/python
echo "== Stage 1: SFT =="
$PY -m skinderm.train stage=sft "$@"
echo "== Stage 2: GRPO (from the SFT run above) =="
$PY -m skinderm.train stage=grpo stage.init_from=latest "$@"
