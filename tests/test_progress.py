"""Progress bars redraw rarely when output goes to a log file, and are left alone on a terminal."""

from __future__ import annotations

import os
import subprocess
import sys

SHOW_INTERVAL = (
    "from skinderm.progress import configure_progress_bars; configure_progress_bars(); "
    "from tqdm import tqdm; bar = tqdm(total=1); print(bar.mininterval); bar.close()"
)


def _mininterval(env: dict[str, str]) -> float:
    result = subprocess.run(
        [sys.executable, "-c", SHOW_INTERVAL], capture_output=True, text=True, timeout=60, check=True, env=env
    )
    return float(result.stdout.strip())


def test_bars_in_a_log_file_redraw_every_30_s() -> None:
    env = {key: value for key, value in os.environ.items() if key != "TQDM_MININTERVAL"}
    assert _mininterval(env) == 30.0  # stderr is a pipe here, as in a SLURM or CI log


def test_a_users_own_setting_wins() -> None:
    assert _mininterval({**os.environ, "TQDM_MININTERVAL": "5"}) == 5.0
