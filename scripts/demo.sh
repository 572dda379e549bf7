#!/usr/bin/env bash
# The main job on the embedded default (synthetic HAM10000 + tiny Qwen2.5-VL, CPU, no downloads):
# set-up, synthesize -> annotate -> Stage 1 SFT -> Stage 2 GRPO -> evaluate both on the held-out test split,
# ending with one table (majority baseline, after SFT, after GRPO, and GRPO - SFT: the paired difference of
# every metric with its lesion-resampled 95% interval, from `python -m skinderm.compare`).
#   bash scripts/demo.sh                 # extra arguments go to both training stages, e.g. logger=none
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export WANDB_MODE="${WANDB_MODE:-offline}" TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PY=.venv/bin/python
TAG="demo_$(date +%Y-%m-%d_%H-%M-%S)"
SFT="outputs/sft/runs/$TAG" GRPO="outputs/grpo/runs/$TAG"
EVAL_SFT="outputs/evaluate/runs/${TAG}_sft" EVAL_GRPO="outputs/evaluate/runs/${TAG}_grpo"
COMPARE="outputs/compare/runs/$TAG"

echo "== 1. synthetic HAM10000 (cached) and its annotation from the masks =="
$PY -m skinderm.synthesize "hydra.run.dir=outputs/synthesize/runs/$TAG"
DATA="$($PY -m skinderm.synthesize --cfg job --resolve 2>/dev/null | sed -n 's/^out: //p')"
$PY -m skinderm.annotate dataset=synthetic "dataset.root=$DATA" "hydra.run.dir=outputs/annotate/runs/$TAG"
echo "== 2. Stage 1: SFT =="
$PY -m skinderm.train stage=sft "hydra.run.dir=$SFT" "$@"
echo "== 3. Stage 2: GRPO from that SFT run =="
$PY -m skinderm.train stage=grpo "stage.init_from=$SFT" "hydra.run.dir=$GRPO" "$@"
echo "== 4. Evaluation on the held-out test split =="
$PY -m skinderm.evaluate "run=$SFT" split=test logger=none "hydra.run.dir=$EVAL_SFT"
$PY -m skinderm.evaluate "run=$GRPO" split=test logger=none "hydra.run.dir=$EVAL_GRPO"
echo "== 5. Paired comparison: GRPO - SFT on the same test images =="
$PY -m skinderm.compare "runs=['$EVAL_SFT','$EVAL_GRPO']" "hydra.run.dir=$COMPARE" >/dev/null
echo "== Results (test split; [95% CI] resampled by lesion; the last row pairs both runs on each resample) =="
$PY scripts/pipeline_table.py "$EVAL_SFT" "$EVAL_GRPO" --compare "$COMPARE"
echo "runs: $SFT $GRPO; evaluations: $EVAL_SFT $EVAL_GRPO; comparison: $COMPARE/compare.md"
