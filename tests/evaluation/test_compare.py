"""Paired comparison: a run against itself differs by exactly 0, a uniform gain is found with an interval
that excludes 0, pairing narrows the interval when runs agree, and unlike evaluations are refused."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from skinderm.config import ConfigError, validate_compare_config
from skinderm.evaluation.bootstrap import ACCURACY, bootstrap_replicates, paired_bootstrap
from skinderm.evaluation.compare import (
    HEADLINE_METRICS,
    Evaluation,
    check_comparable,
    choose_evaluations,
    compare_evaluations,
    difference_name,
    format_comparison,
    format_difference,
    load_evaluation,
)
from skinderm.evaluation.report import build_metrics, write_predictions

CONTEXT = {"model": "tiny", "dataset": "synthetic", "dataset_root": "/data/synthetic", "split": "test",
           "max_samples": None}  # fmt: skip
N_RESAMPLES = 300


def evaluation(records: list[dict[str, Any]], name: str = "a", **context: Any) -> Evaluation:
    return Evaluation(Path(f"/evals/{name}"), records, {**CONTEXT, "run": None, **context})


def write_evaluation(folder: Path, records: list[dict[str, Any]], **context: Any) -> Path:
    """An evaluation folder as `skinderm.evaluate` leaves it: predictions.jsonl, metrics.json, FINISHED."""
    folder.mkdir(parents=True)
    write_predictions(folder / "predictions.jsonl", records)
    metrics = build_metrics(records, n_resamples=0, context={**CONTEXT, "run": None, **context})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "FINISHED").write_text("ok\n")
    return folder


def box_records(n_lesions: int = 60, *, seed: int = 0) -> list[dict[str, Any]]:
    """1-3 images per lesion; box IoU h/100 (true box 100x100, predicted 100 x h), h in 30..80."""
    rng = np.random.default_rng(seed)
    records = []
    for lesion in range(n_lesions):
        dx_true = ("nv", "mel", "bcc")[lesion % 3]
        for _ in range(int(rng.integers(1, 4))):
            height = int(rng.integers(30, 81))
            right = rng.random() < 0.6
            records.append(
                {
                    "image_id": f"ISIC_{len(records):05d}",
                    "lesion_id": f"HAM_{lesion:05d}",
                    "dx_true": dx_true,
                    "dx_pred": dx_true if right else "nv" if dx_true != "nv" else "mel",
                    "parse_ok": True,
                    "location_true": "center",
                    "location_pred": "center" if right else "top-left",
                    "bbox_true": [0, 0, 100, 100],
                    "bbox_pred": [0, 0, 100, height],
                    "mask_iou": float(rng.uniform(0.2, 0.8)),
                }
            )
    return records


def test_a_run_against_itself_differs_by_exactly_zero(record_factory) -> None:
    records = record_factory(300, seed=4)
    result = compare_evaluations(
        evaluation(records), evaluation(copy.deepcopy(records), "b"), n_resamples=N_RESAMPLES
    )
    for name, _ in HEADLINE_METRICS:
        entry = result["metrics"][name]
        assert (entry["difference"], entry["low"], entry["high"]) == (0.0, 0.0, 0.0), name
        assert entry["excludes_zero"] is False
        assert entry["a"] == entry["b"]
    assert format_difference(result["metrics"]["accuracy"]) == "+0.000 [+0.000, +0.000]"


def test_b_better_on_every_image_by_a_known_amount_is_found_with_an_interval_excluding_zero() -> None:
    records_a = box_records()
    records_b = copy.deepcopy(records_a)
    for record in records_b:
        record["bbox_pred"][3] += 10  # box IoU + 0.10 on every image
        record["mask_iou"] += 0.05
        record["dx_pred"] = record["dx_true"]
        record["location_pred"] = record["location_true"]
    result = compare_evaluations(evaluation(records_a), evaluation(records_b, "b"), n_resamples=N_RESAMPLES)
    metrics = result["metrics"]
    wrong_in_a = np.mean([r["dx_pred"] != r["dx_true"] for r in records_a])
    expected = {"bbox_mean_iou": 0.10, "mask_mean_iou": 0.05, "accuracy": wrong_in_a,
                "spatial_accuracy": wrong_in_a}  # fmt: skip
    for name, gain in expected.items():
        entry = metrics[name]
        assert entry["difference"] == pytest.approx(gain), name
        assert 0.0 < entry["low"] <= gain + 1e-9 <= entry["high"] + 2e-9, name
        assert entry["excludes_zero"] is True
        assert entry["b"]["estimate"] - entry["a"]["estimate"] == pytest.approx(gain)
    # A gain that is the same on every image is the same on every resample: the interval is that gain.
    assert metrics["bbox_mean_iou"]["high"] - metrics["bbox_mean_iou"]["low"] < 1e-9
    assert metrics["balanced_accuracy"]["low"] > 0.0
    assert metrics["parse_rate"]["difference"] == 0.0


def test_the_paired_interval_is_narrower_than_the_unpaired_one_when_runs_agree(record_factory) -> None:
    """B fixes 10% of A's wrong answers and keeps the rest: what both share cancels only when paired."""
    records_a = record_factory(600, seed=2)
    rng = random.Random(0)
    fixed = [r["dx_pred"] != r["dx_true"] and rng.random() < 0.1 for r in records_a]
    records_b = [
        dict(r, dx_pred=r["dx_true"], parse_ok=True) if fix else r
        for r, fix in zip(records_a, fixed, strict=True)
    ]
    accuracy = {"accuracy": ACCURACY}
    paired = paired_bootstrap(records_a, records_b, accuracy, n_resamples=1000, seed=0)["accuracy"]
    alone_a = bootstrap_replicates(records_a, accuracy, n_resamples=1000, seed=1)["accuracy"]
    alone_b = bootstrap_replicates(records_b, accuracy, n_resamples=1000, seed=2)["accuracy"]
    unpaired_low, unpaired_high = np.quantile(alone_b - alone_a, [0.025, 0.975])
    assert paired["high"] - paired["low"] < 0.5 * (unpaired_high - unpaired_low)
    assert paired["low"] > 0.0 > unpaired_low  # the gain is visible only when paired
    # The two runs' own intervals overlap almost entirely, as two rows of a table would show.
    assert paired["b"]["low"] < paired["a"]["high"]


def test_b_in_another_image_order_is_paired_image_by_image(record_factory) -> None:
    records = record_factory(200, seed=6)
    better = [dict(r, dx_pred=r["dx_true"]) if i % 5 == 0 else r for i, r in enumerate(records)]
    shuffled = better[:]
    random.Random(1).shuffle(shuffled)
    in_order = compare_evaluations(evaluation(records), evaluation(better, "b"), n_resamples=100)
    out_of_order = compare_evaluations(evaluation(records), evaluation(shuffled, "b"), n_resamples=100)
    assert in_order["metrics"] == out_of_order["metrics"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"split": "val"}, r"split differs \(A: test, B: val\)"),
        ({"dataset_root": "/data/other"}, r"dataset root differs \(A: /data/synthetic, B: /data/other\)"),
        ({"dataset": "ham10000", "split": "val"}, r"split differs .*; dataset differs"),
    ],
)
def test_another_split_or_dataset_is_refused_naming_what_differs(record_factory, change, message) -> None:
    records = record_factory(50)
    with pytest.raises(ValueError, match=message) as error:
        check_comparable(evaluation(records), evaluation(records, "b", **change))
    assert "\n" not in str(error.value)


def test_mismatched_image_sets_are_refused_in_one_line(record_factory) -> None:
    records = record_factory(50)
    other = record_factory(52)[2:]
    with pytest.raises(ValueError, match="image set differs") as error:
        compare_evaluations(evaluation(records), evaluation(other, "b"), n_resamples=10)
    text = str(error.value)
    assert "\n" not in text
    assert "2 of 50 images only in A: ISIC_0000000, ISIC_0000001" in text
    assert "2 of 50 only in B: ISIC_0000050, ISIC_0000051" in text


def test_other_ground_truth_on_the_same_images_is_refused(record_factory) -> None:
    records = record_factory(50)
    relabelled = copy.deepcopy(records)
    relabelled[3]["dx_true"] = "df" if records[3]["dx_true"] != "df" else "nv"
    with pytest.raises(ValueError, match="ground truth differs, dx_true on 1 images"):
        check_comparable(evaluation(records), evaluation(relabelled, "b"))
    no_masks = [dict(r, mask_iou=None) for r in records]
    with pytest.raises(ValueError, match="mask availability"):
        check_comparable(evaluation(records), evaluation(no_masks, "b"))


def test_metrics_without_truth_are_none_and_the_table_leaves_them_out() -> None:
    records = [
        {"image_id": f"i{i}", "lesion_id": f"l{i // 2}", "dx_true": "nv", "dx_pred": "nv" if i % 3 else None,
         "parse_ok": bool(i % 3)}
        for i in range(30)
    ]  # fmt: skip
    result = compare_evaluations(evaluation(records), evaluation(records, "b"), n_resamples=20)
    assert result["metrics"]["bbox_mean_iou"] is None
    assert result["metrics"]["mask_mean_iou"] is None
    assert result["metrics"]["spatial_accuracy"] is None
    table = format_comparison(result)
    assert "box mean IoU" not in table and "parse rate" in table
    assert result["n_groups"] == 15


def _training_run(root: Path, stage: str, name: str) -> Path:
    run = root / "outputs" / stage / "runs" / name
    (run / "model").mkdir(parents=True)
    (run / "config_resolved.yaml").write_text(
        yaml.safe_dump({"task_name": stage, "paths": {"log_dir": str(root / "outputs")}})
    )
    (run / "FINISHED").write_text("ok\n")
    return run


def test_training_runs_resolve_to_their_evaluations_on_the_split(tmp_path: Path, record_factory) -> None:
    records = record_factory(40)
    sft, grpo = _training_run(tmp_path, "sft", "t1"), _training_run(tmp_path, "grpo", "t1")
    evals = tmp_path / "outputs" / "evaluate" / "runs"
    eval_sft = write_evaluation(evals / "sft_test", records, run=str(sft))
    write_evaluation(evals / "sft_val", records, run=str(sft), split="val")
    eval_grpo = write_evaluation(evals / "grpo_test", records, run=str(grpo))
    log_dir = tmp_path / "outputs"
    both = (eval_sft.resolve(), eval_grpo.resolve())
    assert choose_evaluations([str(sft), str(grpo)], log_dir, None) == both
    # A folder on one side and a run on the other.
    assert choose_evaluations([str(eval_sft), str(grpo)], log_dir, "test") == (eval_sft, eval_grpo.resolve())
    a, b = load_evaluation(eval_sft), load_evaluation(eval_grpo)
    assert (a.label, b.label) == ("after sft (t1)", "after grpo (t1)")
    result = compare_evaluations(a, b, n_resamples=10)
    assert difference_name(result) == "GRPO - SFT"
    with pytest.raises(FileNotFoundError, match=rf"run={grpo} split=val` first"):
        choose_evaluations([str(sft), str(grpo)], log_dir, "val")
    with pytest.raises(FileNotFoundError, match="neither an evaluation folder"):
        choose_evaluations([str(tmp_path), str(grpo)], log_dir, None)


def test_bad_compare_configs_are_one_line_config_errors(compose_train) -> None:
    cfg = compose_train(["runs=[a,b]"], config_name="compare")
    validate_compare_config(cfg)
    for overrides, message in (
        (["runs=[a]"], "config key 'runs'"),
        (["runs=a"], "config key 'runs'"),
        (["runs=[a,b]", "split=dev"], "config key 'split'"),
        (["runs=[a,b]", "bootstrap.n_resamples=0"], "bootstrap.n_resamples"),
        (["runs=[a,b]", "bootstrap.confidence=95"], "bootstrap.confidence"),
    ):
        with pytest.raises(ConfigError, match=message) as error:
            validate_compare_config(compose_train(overrides, config_name="compare"))
        assert "\n" not in str(error.value)
