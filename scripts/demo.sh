#!/usr/bin/env bash
# The main job on the embedded default (synthetic HAM10000 + tiny Qwen2.5-VL, CPU, no downloads):
# set-up, synthesize -> annotate -> Stage 1 SFT -> Stage 2 GRPO -> evaluate both on the held-out test split
# and on the shifted test set (the same lesions as another clinic and device would image them; dermoscopy
# style only), ending with one table per test set (oracle ceiling, baselines that ignore the image, after SFT,
# after GRPO, and GRPO - SFT: the paired difference of every metric with its lesion-resampled 95% interval,
# from `python -m skinderm.compare`).
#   bash scripts/demo.sh                 # extra arguments go to both training stages, e.g. logger=none;
#                                        # dataset.synthetic.* ones to the data steps too
# Work that does not wait on the step before runs beside it on the second core (each process has one torch
# thread): the shifted set is drawn during SFT, the SFT evaluations run during GRPO.
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
EVAL_SFT_SHIFTED="${EVAL_SFT}_shifted" EVAL_GRPO_SHIFTED="${EVAL_GRPO}_shifted"
COMPARE="outputs/compare/runs/$TAG" COMPARE_SHIFTED="outputs/compare/runs/${TAG}_shifted"
DATA_ARGS=()
for arg in "$@"; do
    case "$arg" in dataset.synthetic.*) DATA_ARGS+=("$arg") ;; esac
done
SHIFT=(dataset.synthetic.acquisition=shifted)

# Run a command in the background with its output in a file; `finish` waits for it and says where to look.
started() { mkdir -p "$(dirname "$1")"; echo "   (beside it: $2; output in $1)"; }
finish() {
    wait "$1" || { echo "error: $2 failed; its output: $3" >&2; tail -n 20 "$3" >&2; exit 1; }
}

echo "== 1. synthetic HAM10000 (cached) and its annotation from the masks =="
$PY -m skinderm.synthesize "hydra.run.dir=outputs/synthesize/runs/$TAG" "${DATA_ARGS[@]}"
resolved="$($PY -m skinderm.synthesize --cfg job --resolve "${DATA_ARGS[@]}" 2>/dev/null)"
DATA="$(sed -n 's/^out: //p' <<<"$resolved")"
STYLE="$(sed -n 's/^    style: //p' <<<"$resolved")"
$PY -m skinderm.annotate dataset=synthetic "dataset.root=$DATA" "hydra.run.dir=outputs/annotate/runs/$TAG"
SHIFTED=false
[ "$STYLE" = dermoscopy ] && SHIFTED=true

echo "== 2. Stage 1: SFT =="
if $SHIFTED; then
    log="outputs/synthesize/runs/${TAG}_shifted/console.txt"
    started "$log" "the shifted test set"
    (
        $PY -m skinderm.synthesize "hydra.run.dir=outputs/synthesize/runs/${TAG}_shifted" "${DATA_ARGS[@]}" \
            "${SHIFT[@]}"
        shifted_root="$($PY -m skinderm.synthesize --cfg job --resolve "${DATA_ARGS[@]}" "${SHIFT[@]}" \
            2>/dev/null | sed -n 's/^out: //p')"
        $PY -m skinderm.annotate dataset=synthetic "dataset.root=$shifted_root" \
            "hydra.run.dir=outputs/annotate/runs/${TAG}_shifted"
    ) >"$log" 2>&1 &
    shifted_data=$!
fi
$PY -m skinderm.train stage=sft "hydra.run.dir=$SFT" "$@"
if $SHIFTED; then finish "$shifted_data" "drawing the shifted test set" "$log"; fi

echo "== 3. Stage 2: GRPO from that SFT run =="
log="$EVAL_SFT/console.txt"
started "$log" "evaluation of the SFT run"
(
    $PY -m skinderm.evaluate "run=$SFT" split=test logger=none "hydra.run.dir=$EVAL_SFT"
    if $SHIFTED; then
        $PY -m skinderm.evaluate "run=$SFT" split=test logger=none "${SHIFT[@]}" "hydra.run.dir=$EVAL_SFT_SHIFTED"
    fi
) >"$log" 2>&1 &
sft_eval=$!
$PY -m skinderm.train stage=grpo "stage.init_from=$SFT" "hydra.run.dir=$GRPO" "$@"

echo "== 4. Evaluation on the held-out test split$($SHIFTED && echo ' and the shifted test set') =="
if $SHIFTED; then
    log_shifted="$EVAL_GRPO_SHIFTED/console.txt"
    started "$log_shifted" "the GRPO run on the shifted test set"
    $PY -m skinderm.evaluate "run=$GRPO" split=test logger=none "${SHIFT[@]}" \
        "hydra.run.dir=$EVAL_GRPO_SHIFTED" >"$log_shifted" 2>&1 &
    grpo_shifted_eval=$!
fi
$PY -m skinderm.evaluate "run=$GRPO" split=test logger=none "hydra.run.dir=$EVAL_GRPO"
finish "$sft_eval" "evaluating the SFT run" "$log"
if $SHIFTED; then finish "$grpo_shifted_eval" "evaluating the GRPO run on the shifted set" "$log_shifted"; fi

echo "== 5. Paired comparison: GRPO - SFT on the same test images =="
$PY -m skinderm.compare "runs=['$EVAL_SFT','$EVAL_GRPO']" "hydra.run.dir=$COMPARE" >/dev/null
if $SHIFTED; then
    $PY -m skinderm.compare "runs=['$EVAL_SFT_SHIFTED','$EVAL_GRPO_SHIFTED']" "hydra.run.dir=$COMPARE_SHIFTED" \
        >/dev/null
fi
echo "== Results (test split; [95% CI] resampled by lesion; the last row pairs both runs on each resample) =="
$PY scripts/pipeline_table.py "$EVAL_SFT" "$EVAL_GRPO" --compare "$COMPARE" --per-class
if $SHIFTED; then
    echo "== Results on the shifted test set (the same lesions, another clinic and device; its own oracle) =="
    $PY scripts/pipeline_table.py "$EVAL_SFT_SHIFTED" "$EVAL_GRPO_SHIFTED" --compare "$COMPARE_SHIFTED" --per-class
fi
echo "runs: $SFT $GRPO; evaluations: $EVAL_SFT $EVAL_GRPO$($SHIFTED && echo " $EVAL_SFT_SHIFTED $EVAL_GRPO_SHIFTED"); comparison: $COMPARE/compare.md"
