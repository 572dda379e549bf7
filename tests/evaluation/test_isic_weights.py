"""The official ISIC scorer's weighting rule, on hand-made cases, with our code only.

isic-challenge-scoring (metrics._label_balanced_multiclass_accuracy) builds a confusion matrix with
sample_weight=score_weight and divides its diagonal by the summed weight of each true class; 0/0 is NaN
and its mean skips it. The package itself cannot be installed here (it needs pandas < 3);
scripts/check_isic_scoring.py compares against it in its own environment (docs/isic_scoring.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from skinderm.data.isic2018 import read_isic2018_test
from skinderm.data.prepare import frame_to_records
from skinderm.evaluation.metrics import (
    balanced_accuracy,
    compute_metrics,
    record_weights,
    weighted_balanced_accuracy,
)
from tests.data.test_isic2018 import IMAGES, write_isic2018_test

LABELS = ("a", "b", "c")


def records(rows: list[tuple[str, str | None, float | None]]) -> list[dict[str, Any]]:
    """Prediction records from (truth, prediction, weight); weight None leaves the key out."""
    out = []
    for i, (truth, pred, weight) in enumerate(rows):
        record: dict[str, Any] = {
            "image_id": f"ISIC_{i:07d}",
            "lesion_id": f"L{i}",
            "dx_true": truth,
            "dx_pred": pred,
            "parse_ok": pred is not None,
        }
        if weight is not None:
            record["score_weight"] = weight
        out.append(record)
    return out


def test_weights_enter_each_class_recall_as_summed_weight() -> None:
    y_true = ["a", "a", "b", "b", "b"]
    y_pred = ["a", "b", "b", None, "b"]
    weights = [2.0, 1.0, 0.5, 0.5, 1.0]
    # a: right weight 2 of 3; b: right 0.5 + 1 of 2 (the unparsed / tied one is wrong).
    expected = (2.0 / 3.0 + 1.5 / 2.0) / 2
    assert weighted_balanced_accuracy(y_true, y_pred, weights, LABELS) == pytest.approx(expected, abs=1e-15)
    assert balanced_accuracy(y_true, y_pred, LABELS) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_a_weight_0_image_changes_nothing_whatever_its_prediction() -> None:
    y_true, y_pred, weights = ["a", "a", "b", "c"], ["a", "b", "b", "a"], [1.0, 1.0, 1.0, 1.0]
    base = weighted_balanced_accuracy(y_true, y_pred, weights, LABELS)
    for pred in ("a", "b", None):
        with_zero = weighted_balanced_accuracy([*y_true, "a"], [*y_pred, pred], [*weights, 0.0], LABELS)
        assert with_zero == base
    assert base == balanced_accuracy(y_true, y_pred, LABELS), "all weights 1 is the plain mean recall"


def test_a_class_whose_images_all_weigh_0_leaves_the_mean() -> None:
    # c's only image weighs 0: the scorer's recall for c is 0/0 = NaN, skipped by the mean (not a 0).
    value = weighted_balanced_accuracy(["a", "b", "c"], ["a", "a", "c"], [1.0, 1.0, 0.0], LABELS)
    assert value == pytest.approx((1.0 + 0.0) / 2)


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        weighted_balanced_accuracy(["a"], ["a"], [-1.0], LABELS)
    with pytest.raises(ValueError, match="weight > 0"):
        weighted_balanced_accuracy(["a"], ["a"], [0.0], LABELS)
    with pytest.raises(ValueError, match="weights has 2"):
        weighted_balanced_accuracy(["a"], ["a"], [1.0, 1.0], LABELS)


def test_unweighted_records_keep_exactly_the_old_output() -> None:
    rows = [("a", "a", None), ("a", "b", None), ("b", "b", None), ("c", None, None)]
    metrics = compute_metrics(records(rows), labels=LABELS)
    assert "balanced_accuracy_unweighted" not in metrics and "score_weights" not in metrics
    assert metrics["balanced_accuracy"] == balanced_accuracy(
        ["a", "a", "b", "c"], ["a", "b", "b", None], LABELS
    )
    assert record_weights(records(rows)) is None


def test_weighted_records_report_the_official_number_and_the_unweighted_one() -> None:
    rows = [("a", "a", 1.0), ("a", "b", 1.0), ("b", "b", 1.0), ("c", "c", 1.0), ("c", "a", 0.0)]
    weighted = compute_metrics(records(rows), labels=LABELS)
    plain = compute_metrics(records([(t, p, None) for t, p, _ in rows]), labels=LABELS)
    assert weighted["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert (
        weighted["balanced_accuracy_unweighted"]
        == plain["balanced_accuracy"]
        == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    )
    assert weighted["score_weights"] == {"n_weighted_zero": 1, "total": 4.0}
    # Everything else still counts images.
    for key in set(plain) - {"balanced_accuracy"}:
        assert weighted[key] == plain[key], key
    assert list(weighted)[4:7] == ["balanced_accuracy", "balanced_accuracy_unweighted", "score_weights"]


def test_weights_on_some_records_only_are_refused() -> None:
    with pytest.raises(ValueError, match=r"record 1 .* has no score_weight"):
        compute_metrics(records([("a", "a", 1.0), ("b", "b", None)]), labels=LABELS)
    with pytest.raises(ValueError, match="score_weight=-2"):
        record_weights(records([("a", "a", -2.0)]))


def test_the_isic_reader_and_the_metrics_together_ignore_isic_0035068(tmp_path: Path) -> None:
    images = {**IMAGES, "ISIC_0035068": ("MEL", (600, 450))}
    frame = read_isic2018_test(write_isic2018_test(tmp_path / "isic", images=images))
    predictions = [
        {
            "image_id": r["image_id"],
            "lesion_id": r["lesion_id"],
            "dx_true": r["dx"],
            # Right everywhere but on the image the scorer weighs 0.
            "dx_pred": "nv" if r["image_id"] == "ISIC_0035068" else r["dx"],
            "parse_ok": True,
            "score_weight": r["score_weight"],
        }
        for r in frame_to_records(frame)
    ]
    metrics = compute_metrics(predictions)
    without = compute_metrics(
        [
            {k: v for k, v in p.items() if k != "score_weight"}
            for p in predictions
            if p["image_id"] != "ISIC_0035068"
        ]
    )
    # mel: 1 of its 2 images right, but only ISIC_0034525 counts officially.
    assert metrics["balanced_accuracy"] == without["balanced_accuracy"] == 1.0
    assert metrics["balanced_accuracy_unweighted"] == pytest.approx((6 + 1 / 2) / 7)
