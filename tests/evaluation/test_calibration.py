"""AUROC agrees with scikit-learn (ties included); ECE and the reliability curve match hand counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from skinderm.data.classes import CLASS_CODES
from skinderm.evaluation.calibration import (
    auroc_ovr_per_class,
    binary_auroc,
    compute_calibration,
    expected_calibration_error,
    has_class_probs,
    macro_auroc_ovr,
    reliability_curve,
)


def _scored_records(n: int = 350, seed: int = 0, classes=CLASS_CODES) -> list[dict]:
    """Records whose probabilities lean towards the true class, so AUROC is well above 0.5."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        truth = classes[i % len(classes)]  # every listed class appears
        alpha = np.ones(len(CLASS_CODES))
        alpha[CLASS_CODES.index(truth)] += 2.0
        probs = rng.dirichlet(alpha)
        records.append(
            {
                "image_id": f"ISIC_{i:07d}",
                "dx_true": truth,
                "class_probs": {code: float(p) for code, p in zip(CLASS_CODES, probs, strict=True)},
            }
        )
    return records


def _probability_matrix(records):
    return np.array([[r["class_probs"][c] for c in CLASS_CODES] for r in records])


def test_macro_auroc_matches_sklearn_ovr_macro():
    records = _scored_records()
    expected = roc_auc_score(
        [r["dx_true"] for r in records],
        _probability_matrix(records),
        multi_class="ovr",
        average="macro",
        labels=list(CLASS_CODES),
    )
    assert macro_auroc_ovr(records) == pytest.approx(expected, abs=1e-12)
    assert 0.6 < expected < 1.0


def test_binary_auroc_handles_ties_like_the_trapezoidal_roc_area():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(200), 1)  # ten distinct values: many ties
    positive = rng.random(200) < scores
    assert binary_auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert binary_auroc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert binary_auroc(np.array([0.9, 0.1]), np.array([True, True])) is None


def test_classes_without_positives_are_left_out_of_the_macro_mean():
    records = _scored_records(classes=("mel", "nv", "bcc"))
    per_class = auroc_ovr_per_class(records)
    assert per_class["vasc"] is None and per_class["df"] is None
    truth = np.array([r["dx_true"] for r in records])
    probs = _probability_matrix(records)
    expected = np.mean(
        [roc_auc_score(truth == c, probs[:, CLASS_CODES.index(c)]) for c in ("bcc", "mel", "nv")]
    )
    assert macro_auroc_ovr(records) == pytest.approx(expected, abs=1e-12)


def _record(truth: str, top: str, confidence: float) -> dict:
    """`top` gets `confidence`; the other six classes share the rest equally."""
    rest = (1.0 - confidence) / (len(CLASS_CODES) - 1)
    probs = dict.fromkeys(CLASS_CODES, rest)
    probs[top] = confidence
    return {"image_id": f"{truth}-{top}-{confidence}", "dx_true": truth, "class_probs": probs}


def test_expected_calibration_error_hand_case():
    # Bin (0.8, 0.9]: four answers at confidence 0.9, three right -> |0.75 - 0.9| = 0.15, weight 4/6.
    # Bin (0.4, 0.5]: two answers at confidence 0.5, one right -> |0.5 - 0.5| = 0, weight 2/6.
    records = [
        _record("nv", "nv", 0.9),
        _record("nv", "nv", 0.9),
        _record("bcc", "bcc", 0.9),
        _record("mel", "nv", 0.9),
        _record("df", "df", 0.5),
        _record("mel", "vasc", 0.5),
    ]
    assert expected_calibration_error(records, n_bins=10) == pytest.approx(4 / 6 * 0.15)
    curve = reliability_curve(records, n_bins=10)
    assert curve["count"] == [0, 0, 0, 0, 2, 0, 0, 0, 4, 0]
    assert curve["accuracy"][8] == pytest.approx(0.75)
    assert curve["confidence"][8] == pytest.approx(0.9)
    assert curve["accuracy"][4] == pytest.approx(0.5)
    assert curve["accuracy"][0] is None
    assert curve["bin_edges"][0] == 0.0 and curve["bin_edges"][-1] == 1.0


def test_perfectly_calibrated_one_hot_answers_have_zero_ece():
    records = [_record(code, code, 1.0) for code in CLASS_CODES]
    assert expected_calibration_error(records) == 0.0


def test_a_tie_for_the_top_probability_counts_as_wrong():
    probs = dict.fromkeys(CLASS_CODES, 0.0)
    probs["nv"] = probs["mel"] = 0.5
    records = [{"image_id": "tie", "dx_true": "nv", "class_probs": probs}]
    summary = compute_calibration(records, n_bins=4)
    assert summary["top_label_accuracy"] == 0.0
    assert summary["ece"] == pytest.approx(0.5)


def test_compute_calibration_is_strict_json():
    summary = compute_calibration(_scored_records(n=70))
    json.dumps(summary, allow_nan=False)
    assert summary["n"] == 70
    assert sum(summary["reliability"]["count"]) == 70


def test_records_without_class_probs_are_reported_not_skipped():
    records = _scored_records(n=10)
    records[3] = {key: value for key, value in records[3].items() if key != "class_probs"}
    assert not has_class_probs(records)
    with pytest.raises(ValueError, match="1 of 10 prediction records lack 'class_probs'"):
        macro_auroc_ovr(records)
    broken = _scored_records(n=2)
    del broken[0]["class_probs"]["vasc"]
    with pytest.raises(ValueError, match="expected exactly"):
        expected_calibration_error(broken)
    negative = _scored_records(n=2)
    negative[1]["class_probs"]["nv"] = -2.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability_curve(negative)
