"""scripts/bench_annotate.py runs end to end on a few masks and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_annotate.py"


def test_bench_prints_throughput_table_and_box_differences(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--n", "50", "--workers", "2", "--keep", str(tmp_path / "masks")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(a) seed" in result.stdout and "(b) ours" in result.stdout and "(c) decode only" in result.stdout
    assert "time ours / decode-only:" in result.stdout and "time ours / seed's method:" in result.stdout
    assert "differ from the seed's largest-contour box" in result.stdout
    assert len(list((tmp_path / "masks").glob("*_segmentation.png"))) == 50
