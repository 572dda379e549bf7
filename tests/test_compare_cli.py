"""`python -m skinderm.compare runs=[A,B]` end to end on two evaluation folders written here (no model),
and the demo's final table (scripts/pipeline_table.py) with its paired GRPO - SFT row."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skinderm.evaluation.report import build_metrics, write_predictions

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "WANDB_MODE": "offline"}  # fmt: skip
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def records(n_lesions: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Prediction records as evaluate writes them: 1-2 images per lesion, box IoU 0.4-0.8, 60% right."""
    rng = np.random.default_rng(seed)
    rows = []
    for lesion in range(n_lesions):
        dx_true = CLASSES[lesion % len(CLASSES)]
        for _ in range(1 + lesion % 2):
            height = float(rng.integers(40, 81))
            right = rng.random() < 0.6
            rows.append(
                {
                    "image_id": f"ISIC_{len(rows):07d}", "lesion_id": f"HAM_{lesion:07d}",
                    "dx_true": dx_true, "dx_pred": dx_true if right else "nv" if dx_true != "nv" else "mel",
                    "location_true": "center", "location_pred": "center" if right else "top-left",
                    "bbox_true": [0.0, 0.0, 100.0, 100.0], "bbox_pred": [0.0, 0.0, 100.0, height],
                    "polygon_pred": None, "iou": height / 100, "mask_iou": float(rng.uniform(0.3, 0.6)),
                    "parse_ok": True, "answer": {}, "completion": "{}", "sex": "male", "age": 50.0,
                    "localization": "back",
                }
            )  # fmt: skip
    return rows


def evaluation_folder(root: Path, name: str, stage: str, rows: list[dict[str, Any]], **context: Any) -> Path:
    """An outputs/evaluate/runs/<name> folder as `skinderm.evaluate` leaves it, for a run of `stage`."""
    folder = root / "outputs" / "evaluate" / "runs" / name
    folder.mkdir(parents=True)
    write_predictions(folder / "predictions.jsonl", rows)
    run = str(root / "outputs" / stage / "runs" / "t1")
    context = {"run": run, "model": "tiny", "dataset": "synthetic", "dataset_root": str(root / "data"),
               "split": "test", "max_samples": None, **context}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(build_metrics(rows, n_resamples=50, context=context)))
    (folder / "FINISHED").write_text("ok\n")
    return folder


def compare(root: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "skinderm.compare", f"paths.root_dir={root}", *overrides]
    return subprocess.run(command, cwd=root, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    sft = evaluation_folder(tmp_path, "t1_sft", "sft", records(80))
    grpo_rows = records(80)
    for row in grpo_rows:  # better boxes and outlines on every image, same diagnoses
        row["bbox_pred"][3] += 5.0
        row["mask_iou"] += 0.04
    grpo = evaluation_folder(tmp_path, "t1_grpo", "grpo", grpo_rows)
    return sft, grpo


def test_compare_cli_writes_compare_json_and_prints_the_paired_table(tmp_path: Path, pair) -> None:
    sft, grpo = pair
    result = compare(tmp_path, f"runs=['{sft}','{grpo}']", "bootstrap.n_resamples=300")
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(result.stdout.strip().splitlines()[-1].removeprefix("output folder: "))
    assert out.parent == tmp_path / "outputs" / "compare" / "runs"
    assert (out / "FINISHED").is_file() and (out / "config_resolved.yaml").is_file()
    report = json.loads((out / "compare.json").read_text())
    assert report["a"]["folder"] == str(sft) and report["b"]["folder"] == str(grpo)
    assert (report["split"], report["n_images"], report["n_groups"]) == ("test", 120, 80)
    assert report["bootstrap"] == {"paired": True, "group_key": "lesion_id", "n_resamples": 300, "seed": 0,
                                   "confidence": 0.95}  # fmt: skip
    box, mask = report["metrics"]["bbox_mean_iou"], report["metrics"]["mask_mean_iou"]
    assert box["difference"] == pytest.approx(0.05) and box["low"] > 0 and box["excludes_zero"]
    assert mask["difference"] == pytest.approx(0.04) and mask["low"] > 0
    accuracy = report["metrics"]["accuracy"]
    assert (accuracy["difference"], accuracy["low"], accuracy["high"]) == (0.0, 0.0, 0.0)
    # The point estimates are the ones evaluate wrote into each folder's metrics.json.
    written = json.loads((sft / "metrics.json").read_text())
    assert box["a"]["estimate"] == pytest.approx(written["bbox"]["mean_iou"])
    assert report["metrics"]["balanced_accuracy"]["a"]["estimate"] == pytest.approx(
        written["balanced_accuracy"]
    )
    assert "GRPO - SFT [95% paired CI]" in result.stdout
    assert "| box mean IoU" in result.stdout and "+0.050 [+0.050, +0.050]" in result.stdout
    assert (out / "compare.md").read_text().strip() in result.stdout


def test_training_runs_stand_for_their_test_evaluations(tmp_path: Path, pair) -> None:
    for stage in ("sft", "grpo"):
        run = tmp_path / "outputs" / stage / "runs" / "t1"
        (run / "model").mkdir(parents=True)
        (run / "config_resolved.yaml").write_text(f"task_name: {stage}\n")
        (run / "FINISHED").write_text("ok\n")
    result = compare(tmp_path, "runs=[outputs/sft/runs/t1,outputs/grpo/runs/t1]", "bootstrap.n_resamples=50")
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(result.stdout.strip().splitlines()[-1].removeprefix("output folder: "))
    report = json.loads((out / "compare.json").read_text())
    assert (Path(report["a"]["folder"]), Path(report["b"]["folder"])) == tuple(p.resolve() for p in pair)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": 3}, "image set differs (3 of 120 images only in A"),
        ({"split": "val"}, "split differs (A: test, B: val)"),
        ({"dataset_root": "/elsewhere"}, "dataset root differs"),
    ],
)
def test_unlike_evaluations_are_refused_in_one_error_line(tmp_path: Path, change, message) -> None:
    sft = evaluation_folder(tmp_path, "a", "sft", records(80))
    rows = records(80)[change.pop("drop", 0) :]
    other = evaluation_folder(tmp_path, "b", "grpo", rows, **change)
    result = compare(tmp_path, f"runs=['{sft}','{other}']", "bootstrap.n_resamples=20")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]


def test_a_config_mistake_is_one_error_line(tmp_path: Path, pair) -> None:
    result = compare(tmp_path, f"runs=['{pair[0]}']")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config key 'runs'"), result.stderr


def _pipeline_table() -> Any:
    spec = importlib.util.spec_from_file_location("pipeline_table", REPO / "scripts" / "pipeline_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_table_ends_with_the_paired_grpo_minus_sft_row(tmp_path: Path, pair, capsys) -> None:
    sft, grpo = pair
    result = compare(tmp_path, f"runs=['{sft}','{grpo}']", "bootstrap.n_resamples=100", "hydra.run.dir=cmp")
    assert result.returncode == 0, result.stderr[-3000:]
    table = _pipeline_table()
    assert table.main([str(sft), str(grpo), "--compare", str(tmp_path / "cmp")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "outline IoU" in lines[0]
    assert [line.split(" | ")[0].strip() for line in lines[2:]] == [
        "majority class (akiec)", "after sft (t1)", "after grpo (t1)", "GRPO - SFT (paired, 95% CI)",
    ]  # fmt: skip
    cells = [cell.strip() for cell in lines[-1].split(" | ")]
    assert cells[4] == "+0.050 [+0.050, +0.050]"  # box mean IoU
    assert cells[5].startswith("+0.040 [+0.0")  # outline (mask) IoU
    assert cells[1] == "+0.000 [+0.000, +0.000]"  # balanced accuracy: same diagnoses
    other = evaluation_folder(tmp_path, "other", "sft", records(80))
    with pytest.raises(SystemExit, match="not one of the evaluations in this table"):
        table.main([str(sft), str(other), "--compare", str(tmp_path / "cmp")])


def test_the_per_class_table_puts_each_runs_recall_under_the_oracles(tmp_path: Path, pair, capsys) -> None:
    sft, grpo = pair
    metrics = json.loads((sft / "metrics.json").read_text())
    oracle = {code: 0.9 for code in CLASSES}
    metrics["baselines"] = {"oracle": {"balanced_accuracy": 0.9, "recall_per_class": oracle}}
    (sft / "metrics.json").write_text(json.dumps(metrics))
    assert _pipeline_table().main([str(sft), str(grpo), "--per-class"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("recall per class"))
    assert [cell.strip() for cell in lines[start].split(" | ")] == ["recall per class", *sorted(CLASSES)]
    body = [[cell.strip() for cell in line.split(" | ")] for line in lines[start + 2 :]]
    assert [row[0] for row in body] == ["oracle ceiling", "after sft", "after grpo"]
    assert body[0][1:] == ["0.900"] * len(CLASSES)
    recalls = metrics["per_class"]
    assert body[1][1:] == [f"{recalls[code]['recall']:.3f}" for code in sorted(CLASSES)]
