#!/usr/bin/env bash
# Launch one multi-GPU training run: pins the run folder for all ranks, then `accelerate launch`.
#   bash scripts/launch.sh HARDWARE [hydra overrides ...]
#   bash scripts/launch.sh multi_gpu model=qwen2_5_vl_3b
#   bash scripts/launch.sh fsdp stage=grpo model=qwen2_5_vl_7b model.lora.enabled=false
#   bash scripts/launch.sh --dry-run deepspeed_zero2 model=qwen2_5_vl_7b     # print the command only
# HARDWARE is multi_gpu | fsdp | deepspeed_zero2 | deepspeed_zero3: hardware=HARDWARE plus the accelerate
# file conf/accelerate/HARDWARE.yaml. One process per visible GPU (nvidia-smi -L, CUDA_VISIBLE_DEVICES
# respected); NUM_PROCESSES=N overrides. SKINDERM_RUN_DIR, if set, is used as the run folder as it is.
# Why pin: every rank composes its own config, and `${now:...}` in the run folder can differ by a second
# between ranks; with SKINDERM_RUN_DIR all of them write into one folder (only rank 0 logs and writes).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash scripts/launch.sh [--dry-run] HARDWARE [hydra overrides ...]" >&2
  echo "HARDWARE: one of $(cd "$repo/conf/accelerate" && ls ./*.yaml | sed 's|./||; s|\.yaml||' | tr '\n' ' ')" >&2
  exit 2
fi
hardware="$1"
shift
# The accelerate file is the one the hardware option names (its `accelerate_config` key).
accelerate_config=""
if [[ -f "$repo/conf/hardware/$hardware.yaml" ]]; then
  accelerate_config="$(sed -n 's/^accelerate_config: *//p' "$repo/conf/hardware/$hardware.yaml")"
fi
config="$repo/conf/${accelerate_config:-accelerate/$hardware.yaml}"
if [[ ! -f "$config" || ! -f "$repo/conf/hardware/$hardware.yaml" ]]; then
  echo "error: hardware=$hardware has no conf/accelerate/$hardware.yaml + conf/hardware/$hardware.yaml;" \
    "use one of: $(cd "$repo/conf/accelerate" && ls ./*.yaml | sed 's|./||; s|\.yaml||' | tr '\n' ' ')" >&2
  exit 2
fi

# The run folder follows conf/paths and conf/hydra: <root_dir>/outputs/<task_name>/runs/<time>.
task="sft"
root="${SKINDERM_ROOT:-$PWD}"
for override in "$@"; do
  case "$override" in
    -m | --multirun)
      echo "error: a multirun under accelerate launch would start one sweep per rank; launch each job" \
        "separately, or sweep with hydra/launcher=slurm (docs/scaling.md)" >&2
      exit 2
      ;;
    stage=*) task="${override#stage=}" ;;
    task_name=*) task="${override#task_name=}" ;;
    paths.root_dir=*) root="${override#paths.root_dir=}" ;;
    hardware=*)
      echo "error: pass the hardware option as the first argument, not as $override" >&2
      exit 2
      ;;
  esac
done
run_dir="${SKINDERM_RUN_DIR:-$root/outputs/$task/runs/$(date +%Y-%m-%d_%H-%M-%S)}"

if [[ -n "${NUM_PROCESSES:-}" ]]; then
  num_processes="$NUM_PROCESSES"
elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  num_processes="$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)"
elif command -v nvidia-smi >/dev/null 2>&1; then
  num_processes="$(nvidia-smi -L | grep -c '^GPU')"
else
  echo "error: cannot count GPUs (no nvidia-smi); set NUM_PROCESSES=N" >&2
  exit 2
fi
if [[ ! "$num_processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NUM_PROCESSES=$num_processes is not a positive number of processes" >&2
  exit 2
fi

command=(accelerate launch --config_file "$config" --num_processes "$num_processes"
  -m skinderm.train "hardware=$hardware" "$@")
if [[ "$dry_run" == 1 ]]; then
  printf 'SKINDERM_RUN_DIR=%q' "$run_dir"
  printf ' %q' "${command[@]}"
  printf '\n'
  exit 0
fi
echo "run folder: $run_dir" >&2
export SKINDERM_RUN_DIR="$run_dir"
exec "${command[@]}"
