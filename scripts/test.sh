#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on CPU, offline. Extra arguments go to pytest.
#   bash scripts/test.sh            # everything (a few minutes on 2 cores)
#   bash scripts/test.sh -m "not slow" tests/data
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
