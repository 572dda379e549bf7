"""compute_metrics agrees with scikit-learn, counts unparsed answers as wrong, and is strict JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from skinderm.data.classes import CLASS_CODES
from skinderm.evaluation.metrics import age_band, balanced_accuracy, box_iou, compute_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
UNPARSED = "unparsed"
# scikit-learn warns that "unparsed" is a predicted class absent from the truth: that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")


def _sklearn_labels(records):
    y_true = [r["dx_true"] for r in records]
    y_pred = [UNPARSED if r["dx_pred"] is None else r["dx_pred"] for r in records]
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_headline_metrics_agree_with_sklearn_including_unparsed(record_factory, seed):
    records = record_factory(300, seed=seed, unparsed_rate=0.15)
    y_true, y_pred = _sklearn_labels(records)
    assert UNPARSED in y_pred
    metrics = compute_metrics(records)
    present = sorted(set(y_true))

    assert metrics["n"] == 300
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    )
    assert balanced_accuracy(y_true, [None if p == UNPARSED else p for p in y_pred]) == pytest.approx(
        balanced_accuracy_score(y_true, y_pred)
    )

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(CLASS_CODES), zero_division=0
    )
    for k, code in enumerate(CLASS_CODES):
        row = metrics["per_class"][code]
        assert row["precision"] == pytest.approx(precision[k])
        assert row["support"] == support[k]
        if support[k]:
            assert row["recall"] == pytest.approx(recall[k])
            assert row["f1"] == pytest.approx(f1[k])

    expected = confusion_matrix(y_true, y_pred, labels=[*CLASS_CODES, UNPARSED])[: len(CLASS_CODES)]
    assert metrics["confusion_matrix"] == expected.tolist()
    assert metrics["confusion_labels"] == list(CLASS_CODES)
    assert metrics["confusion_columns"] == [*CLASS_CODES, UNPARSED]
    assert metrics["n_unparsed"] == y_pred.count(UNPARSED)
    assert metrics["parse_rate"] == pytest.approx(1 - y_pred.count(UNPARSED) / 300)


def test_balanced_accuracy_uses_only_classes_present_in_truth():
    # Two classes present; a wrong guess of an absent class (vasc) costs recall but adds no class.
    y_true = ["mel", "mel", "nv", "nv"]
    y_pred = ["mel", "vasc", "nv", None]
    assert balanced_accuracy(y_true, y_pred) == pytest.approx((0.5 + 0.5) / 2)
    metrics = compute_metrics(
        [
            {"image_id": f"i{i}", "dx_true": t, "dx_pred": p, "parse_ok": p is not None}
            for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True))
        ]
    )
    assert metrics["per_class"]["vasc"] == {
        "precision": 0.0,
        "recall": None,
        "f1": None,
        "support": 0,
        "n_predicted": 1,
    }
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_majority_baseline_is_the_most_frequent_true_class_of_the_split():
    truths = ["nv"] * 6 + ["mel"] * 3 + ["bcc"]
    records = [
        {"image_id": f"i{i}", "dx_true": t, "dx_pred": "mel", "parse_ok": True} for i, t in enumerate(truths)
    ]
    baseline = compute_metrics(records)["majority_baseline"]
    assert baseline == {
        "class": "nv",
        "accuracy": pytest.approx(0.6),
        "balanced_accuracy": pytest.approx(1 / 3),
    }
    # Predicting the majority class for everyone scores exactly the baseline.
    always_nv = [dict(r, dx_pred="nv") for r in records]
    metrics = compute_metrics(always_nv)
    assert metrics["accuracy"] == pytest.approx(baseline["accuracy"])
    assert metrics["balanced_accuracy"] == pytest.approx(baseline["balanced_accuracy"])


def test_box_iou_hand_cases():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    # Half of a box: intersection 50, union 100.
    assert box_iou([0, 0, 10, 10], [0, 0, 5, 10]) == pytest.approx(0.5)
    # Shifted by half its width: intersection 50, union 150.
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    # Exclusive ends: boxes that share only the edge x = 10 do not overlap, and [0,0,1,1] is one pixel.
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0
    assert box_iou([0, 0, 1, 1], [0, 0, 2, 2]) == pytest.approx(0.25)
    # Missing, inverted, empty and non-finite boxes score 0.
    assert box_iou(None, [0, 0, 10, 10]) == 0.0
    assert box_iou([0, 0, 10, 10], None) == 0.0
    assert box_iou([0, 0, 10, 10], [10, 10, 0, 0]) == 0.0
    assert box_iou([0, 0, 10, 10], [5, 5, 5, 9]) == 0.0
    assert box_iou([0, 0, 10, 10], [0, 0, float("nan"), 10]) == 0.0
    with pytest.raises(ValueError, match="4 numbers"):
        box_iou([0, 0, 10, 10], [0, 0, 10])


def test_bbox_metrics_count_a_missing_prediction_as_zero():
    base = {"dx_true": "nv", "dx_pred": "nv", "parse_ok": True}
    records = [
        {**base, "image_id": "a", "bbox_true": [0, 0, 10, 10], "bbox_pred": [0, 0, 10, 10]},  # 1.0
        {**base, "image_id": "b", "bbox_true": [0, 0, 10, 10], "bbox_pred": [0, 0, 5, 10]},  # 0.5
        {**base, "image_id": "c", "bbox_true": [0, 0, 10, 10], "bbox_pred": [0, 0, 8, 10]},  # 0.8
        {**base, "image_id": "d", "bbox_true": [0, 0, 10, 10], "bbox_pred": None},  # 0.0
        {**base, "image_id": "e", "bbox_true": None, "bbox_pred": [0, 0, 5, 5]},  # no truth: ignored
    ]
    bbox = compute_metrics(records)["bbox"]
    assert bbox["n"] == 4
    assert bbox["n_missing_pred"] == 1
    assert bbox["mean_iou"] == pytest.approx((1.0 + 0.5 + 0.8 + 0.0) / 4)
    assert bbox["iou_at_0_5"] == pytest.approx(3 / 4)
    assert bbox["iou_at_0_75"] == pytest.approx(2 / 4)


def test_bbox_metrics_count_an_inverted_or_zero_area_prediction_as_a_missing_box_with_iou_zero():
    # The reward's rule (skinderm.geometry): such a box is invalid, never repaired by sorting corners.
    base = {"dx_true": "nv", "dx_pred": "nv", "parse_ok": True, "bbox_true": [0, 0, 10, 10]}
    records = [
        {**base, "image_id": "a", "bbox_pred": [0, 0, 10, 10]},  # 1.0
        {**base, "image_id": "b", "bbox_pred": [10, 10, 0, 0]},  # inverted: would be 1.0 sorted
        {**base, "image_id": "c", "bbox_pred": [10, 0, 0, 10]},  # inverted in x
        {**base, "image_id": "d", "bbox_pred": [0, 0, 0, 10]},  # zero width
    ]
    bbox = compute_metrics(records)["bbox"]
    assert bbox["n"] == 4 and bbox["n_missing_pred"] == 3
    assert bbox["mean_iou"] == pytest.approx(1 / 4)


def test_spatial_and_mask_metrics_use_only_records_with_truth():
    base = {"dx_true": "nv", "dx_pred": "nv", "parse_ok": True}
    records = [
        {**base, "image_id": "a", "location_true": "top-left", "location_pred": "top-left", "mask_iou": 0.6},
        {**base, "image_id": "b", "location_true": "top-left", "location_pred": None, "mask_iou": 0.2},
        {**base, "image_id": "c", "location_true": None, "location_pred": "top-left", "mask_iou": None},
    ]
    metrics = compute_metrics(records)
    assert metrics["spatial_accuracy"] == pytest.approx(0.5)
    assert metrics["spatial_n"] == 2
    assert metrics["mask_mean_iou"] == pytest.approx(0.4)
    assert metrics["mask_n"] == 2
    assert metrics["bbox"] == {
        "n": 0,
        "n_missing_pred": 0,
        "mean_iou": None,
        "iou_at_0_5": None,
        "iou_at_0_75": None,
    }


def test_subgroup_tables_partition_the_split(records):
    metrics = compute_metrics(records)
    for table in ("sex", "age_band", "localization"):
        groups = metrics["subgroups"][table]
        assert sum(row["n"] for row in groups.values()) == len(records)
    sex = metrics["subgroups"]["sex"]
    males = [r for r in records if r["sex"] == "male"]
    assert sex["male"]["n"] == len(males)
    assert sex["male"]["accuracy"] == pytest.approx(np.mean([r["dx_pred"] == r["dx_true"] for r in males]))
    assert sex["male"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(*_sklearn_labels(males)))
    bands = list(metrics["subgroups"]["age_band"])
    assert bands == [b for b in ["<30", "30-44", "45-59", "60-74", "75+", "unknown"] if b in bands]
    assert "unknown" in bands  # the fixture leaves some ages missing


def test_age_bands_have_inclusive_lower_bounds():
    assert [age_band(a) for a in (0, 29.9, 30, 44, 45, 60, 74, 75, 85)] == [
        "<30",
        "<30",
        "30-44",
        "30-44",
        "45-59",
        "60-74",
        "60-74",
        "75+",
        "75+",
    ]
    assert age_band(None) == age_band(float("nan")) == age_band("n/a") == "unknown"
    assert age_band("50") == "45-59"


def test_result_is_strict_json(records):
    metrics = compute_metrics(records)
    round_trip = json.loads(json.dumps(metrics, allow_nan=False))
    assert round_trip["confusion_labels"] == list(CLASS_CODES)


def test_bad_records_raise_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([])
    with pytest.raises(ValueError, match=r"lacks keys \['parse_ok'\]"):
        compute_metrics([{"image_id": "a", "dx_true": "nv", "dx_pred": "nv"}])
    with pytest.raises(ValueError, match="outside the labels"):
        compute_metrics([{"image_id": "a", "dx_true": "nv", "dx_pred": "melanoma", "parse_ok": True}])
    with pytest.raises(ValueError, match="outside the labels"):
        compute_metrics([{"image_id": "a", "dx_true": "MEL", "dx_pred": "nv", "parse_ok": True}])
    with pytest.raises(ValueError, match="image_id='a'"):
        compute_metrics(
            [{"image_id": "a", "dx_true": "nv", "dx_pred": "nv", "parse_ok": True, "bbox_true": [0, 0, 1]}]
        )


def test_evaluation_modules_import_neither_sklearn_nor_torch():
    code = (
        "import sys\n"
        "import skinderm.evaluation.metrics, skinderm.evaluation.bootstrap\n"
        "import skinderm.evaluation.calibration, skinderm.evaluation.plots\n"
        "heavy = ('sklearn', 'torch', 'transformers', 'matplotlib.pyplot')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
