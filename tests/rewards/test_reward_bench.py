"""The reward benchmark runs end to end and reports every reward (a smoke test, not a timing test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_rewards_reports_every_reward_and_the_weighted_total() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_rewards.py"),
            "--completions",
            "300",
            "--masks",
            "4",
            "--repeats",
            "1",
            "--width",
            "112",
            "--height",
            "84",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in (
        "diagnosis",
        "spatial",
        "bbox_iou",
        "format",
        "outline_iou",
        "total(diagnosis+spatial+bbox_iou+outline_iou)",
    ):
        assert f"\n{name} " in result.stdout, name
