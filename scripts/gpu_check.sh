#!/usr/bin/env bash
# One command for a CUDA machine without network: random Qwen2.5-VL at 7B then 3B shapes, LoRA SFT and GRPO
# steps through skinderm's trainer layer; prints step time, FLOPs/step, TFLOP/s, MFU (skinderm/training/
# flops.py), generated tokens/s and peak GPU memory. ~8 minutes on one H200 (--deadline-s 450 skips a stage
# that would end later; the wheel install adds ~20 s).
#   bash scripts/gpu_check.sh --fetch-wheels   # HERE (has PyPI): wheels the GPU image lacks -> .whl/
#   bash scripts/gpu_check.sh                  # THERE: installs .whl/*.whl (if any) into /tmp, then runs
#   bash scripts/gpu_check.sh --tiny           # anywhere: tiny shapes, CPU if no GPU (tests use this)
# Other arguments go to scripts/gpu_check.py (--sizes 3b, --sft-steps N, --deadline-s S, ...).
# The summary is also written to $OUT/gpu_check.json when OUT is set. See docs/scaling.md.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

# What the GPU image (python3.12, torch, transformers 5.17, accelerate 1.15, peft) lacks or has too old.
WHEELS=(transformers==5.24.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  hydra-core==1.3.8 omegaconf==2.3.1 bitsandbytes==0.50.2)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  python="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
  mkdir -p .whl
  # Keep the wheels out of git (the device tool carries ignored paths named in `carry`).
  if [[ -d .git/info ]] && ! grep -qxF "/.whl/" .git/info/exclude 2>/dev/null; then
    echo "/.whl/" >>.git/info/exclude
  fi
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  # antlr4 (omegaconf's parser runtime) is published as a source archive only: build its pure-Python wheel.
  "$python" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
  du -sh .whl
  ls .whl
  exit 0
fi

# The wheels are fetched for the GPU image's Python 3.12; anywhere else (e.g. --tiny here) they are ignored.
if compgen -G ".whl/*.whl" >/dev/null && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  site=/tmp/skinderm_site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
python="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
exec "$python" scripts/gpu_check.py "$@"
