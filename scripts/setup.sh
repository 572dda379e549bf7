#!/usr/bin/env bash
# Create .venv and install skinderm with its test tools. Idempotent: re-running is a no-op unless
# pyproject.toml changed. Used by scripts/demo.sh, scripts/test.sh and .ci/run.
#   bash scripts/setup.sh            # Python 3.11+ as `python3`, or set PYTHON=/path/to/python
#   SKINDERM_TORCH=2.14.1 bash scripts/setup.sh   # another torch (e.g. a CUDA build on a GPU machine)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${SKINDERM_VENV:-.venv}"
TORCH_VERSION="${SKINDERM_TORCH:-2.13.0}"

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"skinderm needs Python >= 3.11, found {sys.version.split()[0]}; set PYTHON=/path/to/python3.11")
PY

stamp="$VENV/.skinderm-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-torch$TORCH_VERSION"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch first and pinned: with an exact version pip takes the local CPU wheel where one is on disk, and a
# constraint keeps every later install from pulling a different (multi-GB CUDA) build.
"${PIP[@]}" install "torch==$TORCH_VERSION"
constraints="$(mktemp)"; trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH_VERSION" > "$constraints"
"${PIP[@]}" install -c "$constraints" -e ".[dev,slurm,qlora]"
echo "$want" > "$stamp"
echo "skinderm installed in $VENV"
