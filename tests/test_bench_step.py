"""scripts/bench_step.py: one smoke run prints the project step, the floor and their ratio, writes JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_step_measures_project_and_floor_in_one_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_step.py"), "--steps", "2", "--repeats", "1",
         "--threads", "1", "--no-processes", "--root", str(tmp_path), "--json", str(tmp_path / "step.json")],
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = json.loads((tmp_path / "step.json").read_text())["summary"]["1 thread(s)"]
    assert summary["step_s"] > 0 and summary["floor_s"] > 0 and summary["cycle_s"] >= summary["step_s"] * 0.5
    assert summary["step_over_floor"] == pytest.approx(summary["step_s"] / summary["floor_s"])
    assert "step/floor" in result.stdout and "load average" in result.stdout
