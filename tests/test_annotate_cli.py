"""The annotate and synthesize entrypoints, run as a user would (subprocess, Hydra, small data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "dataset.synthetic.num_images=30",
    "dataset.synthetic.image_width=120",
    "dataset.synthetic.image_height=90",
]


def _run(module: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SKINDERM_ROOT": str(cwd),  # outputs/ and .cache/ land in the test folder
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    work = tmp_path_factory.mktemp("cli")
    result = _run("skinderm.synthesize", f"out={work / 'ham'}", *SMALL, cwd=work)
    return work, result


def test_synthesize_writes_a_dataset_and_prints_where_and_how_many(synthesized) -> None:
    work, result = synthesized
    assert result.returncode == 0, result.stderr
    root = work / "ham"
    assert (root / ".complete").is_file() and (root / "HAM10000_metadata.csv").is_file()
    assert len(list(root.glob("HAM10000_images_part_*/ISIC_*.jpg"))) == 30
    assert f"written: {root}" in result.stdout and "Images: 30 of" in result.stdout
    assert "Per class: akiec" in result.stdout
    assert list((work / "outputs" / "synthesize" / "runs").iterdir())  # Hydra's run folder, not the repo


def test_synthesize_again_reuses_the_folder(synthesized) -> None:
    work, _ = synthesized
    result = _run("skinderm.synthesize", f"out={work / 'ham'}", *SMALL, cwd=work)
    assert result.returncode == 0, result.stderr
    assert "reused" in result.stdout


def test_annotate_writes_json_and_csv_and_prints_counts(synthesized) -> None:
    work, _ = synthesized
    out = work / "annotations"
    result = _run("skinderm.annotate", f"dataset.root={work / 'ham'}", f"annotate.out_dir={out}", cwd=work)
    assert result.returncode == 0, result.stderr
    records = json.loads((out / "ham10000_with_spatial_data.json").read_text())
    assert len(records) == 30 and (out / "ham10000_with_spatial_data.csv").is_file()
    assert str(out / "ham10000_with_spatial_data.json") in result.stdout
    assert "Images: 30 annotated" in result.stdout and "Per class:" in result.stdout


def test_annotate_without_a_root_says_what_to_pass(tmp_path: Path) -> None:
    result = _run("skinderm.annotate", cwd=tmp_path)
    assert result.returncode != 0
    assert "dataset.root is required" in result.stdout + result.stderr
