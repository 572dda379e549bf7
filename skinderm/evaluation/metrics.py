"""Evaluation metrics over prediction records (one dict per image, as `predictions.jsonl` holds).

The headline number is ISIC 2018 Task 3's balanced multiclass accuracy (mean per-class recall),
because on HAM10000 the majority class alone scores 0.67 plain accuracy; every report therefore
also carries the majority baseline computed on the same split. An unparsed prediction
(`dx_pred` None) always counts as wrong and gets its own "unparsed" column in the confusion
matrix, so a model cannot look better by refusing to answer. `dx_pred` is what
`skinderm.answers.parse_answer` read, the same reading the diagnosis reward pays for, so every answer
the reward scores 0 (a hedge, a negation, an unknown word, a look-alike letter, duplicate keys)
counts as wrong here. Box IoU is `skinderm.geometry.box_iou`, the reward's: a missing, inverted,
zero-area or non-finite predicted box scores 0.

Records may carry a per-image `score_weight` (the ISIC 2018 Task 3 test set's do: skinderm.data.isic2018).
Then `balanced_accuracy` is the challenge scorer's weighted one (`weighted_balanced_accuracy`, matched to
isic-challenge-scoring by scripts/check_isic_scoring.py) and `balanced_accuracy_unweighted` keeps the
plain mean recall beside it; every other number still counts images. Records without weights (HAM10000,
synthetic) get exactly the output they always had.

Pure functions (numpy only; no torch, no scikit-learn), and the result is strict JSON: undefined
values are None, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from skinderm.data.classes import CLASS_CODES
from skinderm.geometry import box_iou, valid_box  # the one box IoU and box rule, the rewards' too

UNPARSED = "unparsed"
SCORE_WEIGHT = "score_weight"  # the optional per-image weight of the official ISIC scoring
UNKNOWN_GROUP = "unknown"
REQUIRED_KEYS: tuple[str, ...] = ("image_id", "dx_true", "dx_pred", "parse_ok")
# (label, lower bound inclusive, upper bound exclusive) of the age-band subgroup table, in years.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<30", 0.0, 30.0),
    ("30-44", 30.0, 45.0),
    ("45-59", 45.0, 60.0),
    ("60-74", 60.0, 75.0),
    ("75+", 75.0, math.inf),
)
SUBGROUP_TABLES: tuple[str, ...] = ("sex", "age_band", "localization")


def is_missing(value: Any) -> bool:
    """None or a float NaN (what pandas writes for an empty cell) both mean 'no value'."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _validate_labels(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[str]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} entries but y_pred has {len(y_pred)}")
    known = set(labels)
    bad_true = sorted({str(v) for v in y_true if v not in known})
    if bad_true:
        raise ValueError(f"dx_true holds codes outside the labels {list(labels)}: {bad_true}")
    bad_pred = sorted({str(v) for v in y_pred if v is not None and v not in known})
    if bad_pred:
        raise ValueError(
            f"dx_pred holds codes outside the labels {list(labels)}: {bad_pred}; "
            "an unparsed prediction must be None"
        )


def _per_class_counts(
    y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, support, predicted count) per label."""
    index = {code: i for i, code in enumerate(labels)}
    tp = np.zeros(len(labels), dtype=np.int64)
    support = np.zeros(len(labels), dtype=np.int64)
    predicted = np.zeros(len(labels), dtype=np.int64)
    for truth, pred in zip(y_true, y_pred, strict=True):
        support[index[truth]] += 1
        if pred is not None:
            predicted[index[pred]] += 1
            if pred == truth:
                tp[index[truth]] += 1
    return tp, support, predicted


def balanced_accuracy(
    y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str] = CLASS_CODES
) -> float:
    """Mean recall over the labels present in y_true (ISIC 2018 Task 3); None in y_pred is wrong."""
    _validate_labels(y_true, y_pred, labels)
    if not y_true:
        raise ValueError("balanced_accuracy needs at least one example")
    tp, support, _ = _per_class_counts(y_true, y_pred, labels)
    present = support > 0
    return float(np.mean(tp[present] / support[present]))


def weighted_balanced_accuracy(
    y_true: Sequence[str],
    y_pred: Sequence[str | None],
    weights: Sequence[float],
    labels: Sequence[str] = CLASS_CODES,
) -> float:
    """Balanced accuracy as the ISIC challenge scorer computes it: each image counts with its weight.

    Per class, recall = (summed weight of its images predicted right) / (summed weight of its images);
    the mean runs over the classes whose summed weight is > 0 (the scorer's 0/0 is NaN, which its
    pandas mean skips). So a weight-0 image changes nothing, and with all weights 1 this is
    `balanced_accuracy`. None in y_pred is wrong, like the scorer's "undecided" (a tie for the highest
    probability), which lands on no diagonal cell. Source: `metrics._label_balanced_multiclass_accuracy`
    in isic_challenge_scoring (docs/isic_scoring.md).
    """
    _validate_labels(y_true, y_pred, labels)
    if len(weights) != len(y_true):
        raise ValueError(f"y_true has {len(y_true)} entries but weights has {len(weights)}")
    w = np.asarray(weights, dtype=float)
    if w.size and (not np.isfinite(w).all() or (w < 0).any()):
        raise ValueError("weights must be finite numbers >= 0")
    index = {code: i for i, code in enumerate(labels)}
    right = np.zeros(len(labels))
    support = np.zeros(len(labels))
    for truth, pred, weight in zip(y_true, y_pred, w, strict=True):
        support[index[truth]] += weight
        if pred == truth:
            right[index[truth]] += weight
    present = support > 0
    if not present.any():
        raise ValueError("weighted_balanced_accuracy needs at least one example of weight > 0")
    return float(np.mean(right[present] / support[present]))


def record_weights(records: Sequence[Mapping[str, Any]]) -> list[float] | None:
    """The records' `score_weight`s, or None when no record has one (then nothing is weighted).

    All or none: a mix means predictions from different sources were joined, and a silent default
    would change the headline number, so it is a ValueError naming the first record without one.
    """
    present = [not is_missing(r.get(SCORE_WEIGHT)) for r in records]
    if not any(present):
        return None
    if not all(present):
        i = present.index(False)
        raise ValueError(
            f"prediction record {i} (image_id={records[i].get('image_id')!r}) has no {SCORE_WEIGHT} "
            f"while others have one: weight all records (the ISIC test set's) or none"
        )
    weights = []
    for i, record in enumerate(records):
        try:
            weight = float(record[SCORE_WEIGHT])
        except (TypeError, ValueError):
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"prediction record {i} (image_id={record.get('image_id')!r}) has "
                f"{SCORE_WEIGHT}={record[SCORE_WEIGHT]!r}; expected a number >= 0"
            )
        weights.append(weight)
    return weights


def _macro_f1(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> float:
    """Macro F1 over the classes present in the truth; F1 = 2TP / (support + predicted)."""
    present = support > 0
    return float(np.mean(2.0 * tp[present] / (support[present] + predicted[present])))


def _accuracy_table(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str]) -> dict:
    correct = sum(t == p for t, p in zip(y_true, y_pred, strict=True))
    return {
        "n": len(y_true),
        "accuracy": correct / len(y_true),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, labels),
    }


def age_band(age: Any) -> str:
    """The subgroup label of an age in years ("unknown" when missing or not a number)."""
    if is_missing(age):
        return UNKNOWN_GROUP
    try:
        years = float(age)
    except (TypeError, ValueError):
        return UNKNOWN_GROUP
    for label, low, high in AGE_BANDS:
        if low <= years < high:
            return label
    return UNKNOWN_GROUP


def _category(value: Any) -> str:
    if is_missing(value) or str(value).strip() == "":
        return UNKNOWN_GROUP
    return str(value).strip().lower()


def _subgroup_table(
    keys: Sequence[str],
    y_true: Sequence[str],
    y_pred: Sequence[str | None],
    labels: Sequence[str],
    order: Sequence[str] | None = None,
) -> dict[str, dict]:
    """{group: {n, accuracy, balanced_accuracy}}, groups in `order` (else sorted), unknown last."""
    members: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    if order is not None:
        names = [g for g in order if g in members] + sorted(g for g in members if g not in order)
    else:
        names = sorted(members)
    names = [g for g in names if g != UNKNOWN_GROUP] + ([UNKNOWN_GROUP] if UNKNOWN_GROUP in members else [])
    return {
        group: _accuracy_table(
            [y_true[i] for i in members[group]], [y_pred[i] for i in members[group]], labels
        )
        for group in names
    }


def _mean_or_none(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def check_records(records: Sequence[Mapping[str, Any]]) -> None:
    """Raise a ValueError naming the first record that lacks a key every prediction record must have."""
    if not records:
        raise ValueError("no prediction records to evaluate (predictions.jsonl is empty?)")
    for i, record in enumerate(records):
        missing = [key for key in REQUIRED_KEYS if key not in record]
        if missing:
            raise ValueError(
                f"prediction record {i} (image_id={record.get('image_id')!r}) lacks keys {missing}; "
                f"every record needs {list(REQUIRED_KEYS)}"
            )
        if is_missing(record["dx_true"]):
            raise ValueError(f"prediction record {i} (image_id={record['image_id']!r}) has no dx_true")


def record_iou(record: Mapping[str, Any]) -> float | None:
    """Box IoU of one record: None without a true box, 0 when the prediction is missing or invalid.

    ValueError naming the image for a box that is not four numbers (a damaged predictions file)."""
    if is_missing(record.get("bbox_true")):
        return None
    try:
        return box_iou(record["bbox_true"], record.get("bbox_pred"))
    except ValueError as error:
        raise ValueError(f"image_id={record.get('image_id')!r}: {error}") from error


def compute_metrics(records: Sequence[Mapping[str, Any]], *, labels: Sequence[str] = CLASS_CODES) -> dict:
    """Every evaluation number of one split, as a JSON-serialisable dict (see the module docstring).

    Keys: n, parse_rate, n_unparsed, accuracy, balanced_accuracy, macro_f1, per_class,
    confusion_matrix (rows = `confusion_labels`, columns = `confusion_columns`, i.e. the labels then
    "unparsed"), majority_baseline, bbox, mask_mean_iou, mask_n, spatial_accuracy, spatial_n, subgroups.
    When the records carry `score_weight` (see `record_weights`), balanced_accuracy is the weighted,
    official one and two keys follow it: balanced_accuracy_unweighted (the plain mean recall) and
    score_weights {n_weighted_zero, total}; per_class, the confusion matrix and the rest count images.
    """
    check_records(records)
    labels = list(labels)
    y_true = [r["dx_true"] for r in records]
    y_pred = [None if is_missing(r["dx_pred"]) else r["dx_pred"] for r in records]
    _validate_labels(y_true, y_pred, labels)
    weights = record_weights(records)
    n = len(records)
    tp, support, predicted = _per_class_counts(y_true, y_pred, labels)
    present = support > 0

    per_class = {}
    for i, code in enumerate(labels):
        precision = float(tp[i] / predicted[i]) if predicted[i] else 0.0
        recall = float(tp[i] / support[i]) if support[i] else None
        f1 = None if recall is None else float(2 * tp[i] / (support[i] + predicted[i]))
        per_class[code] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(support[i]),
            "n_predicted": int(predicted[i]),
        }

    index = {code: i for i, code in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels) + 1), dtype=np.int64)
    for truth, pred in zip(y_true, y_pred, strict=True):
        confusion[index[truth], index[pred] if pred is not None else len(labels)] += 1

    majority_class = labels[int(np.argmax(support))]  # ties -> first in label order
    n_present = int(present.sum())

    ious = [iou for iou in (record_iou(r) for r in records) if iou is not None]
    mask_ious = [float(r["mask_iou"]) for r in records if not is_missing(r.get("mask_iou"))]
    outline_ious = [float(r["outline_iou"]) for r in records if not is_missing(r.get("outline_iou"))]
    spatial = [
        r.get("location_pred") == r["location_true"]
        for r in records
        if not is_missing(r.get("location_true"))
    ]

    subgroups = {
        "sex": _subgroup_table([_category(r.get("sex")) for r in records], y_true, y_pred, labels),
        "age_band": _subgroup_table(
            [age_band(r.get("age")) for r in records], y_true, y_pred, labels, order=[b[0] for b in AGE_BANDS]
        ),
        "localization": _subgroup_table(
            [_category(r.get("localization")) for r in records], y_true, y_pred, labels
        ),
    }

    balanced = float(np.mean(tp[present] / support[present]))
    if weights is None:
        balanced_keys: dict[str, Any] = {"balanced_accuracy": balanced}
    else:
        balanced_keys = {
            "balanced_accuracy": weighted_balanced_accuracy(y_true, y_pred, weights, labels),
            "balanced_accuracy_unweighted": balanced,
            "score_weights": {
                "n_weighted_zero": sum(weight == 0 for weight in weights),
                "total": float(sum(weights)),
            },
        }

    return {
        "n": n,
        "parse_rate": sum(bool(r["parse_ok"]) for r in records) / n,
        "n_unparsed": sum(p is None for p in y_pred),
        "accuracy": float(tp.sum() / n),
        **balanced_keys,
        "macro_f1": _macro_f1(tp, support, predicted),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "confusion_labels": labels,
        "confusion_columns": [*labels, UNPARSED],
        "majority_baseline": {
            "class": majority_class,
            "accuracy": float(support.max() / n),
            "balanced_accuracy": 1.0 / n_present,
        },
        "bbox": {
            "n": len(ious),
            # A present but invalid box (inverted, zero-area) is no box: counted here, IoU 0.
            "n_missing_pred": sum(
                1
                for r in records
                if not is_missing(r.get("bbox_true")) and valid_box(r.get("bbox_pred")) is None
            ),
            "mean_iou": _mean_or_none(ious),
            "iou_at_0_5": _mean_or_none(iou >= 0.5 for iou in ious),
            "iou_at_0_75": _mean_or_none(iou >= 0.75 for iou in ious),
        },
        "mask_mean_iou": _mean_or_none(mask_ious),
        "mask_n": len(mask_ious),
        # The outline reward's IoU (polygon vs the lesion's outline): only for runs taught outlines.
        "outline_mean_iou": _mean_or_none(outline_ious),
        "outline_n": len(outline_ious),
        "spatial_accuracy": _mean_or_none(spatial),
        "spatial_n": len(spatial),
        "subgroups": subgroups,
    }


# The headline numbers, printed and put at the top of metrics files.
HEADLINE_KEYS = ("n", "parse_rate", "accuracy", "balanced_accuracy", "spatial_accuracy")


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers a reader wants first (plus mean box IoU when boxes were scored)."""
    summary = {key: metrics.get(key) for key in HEADLINE_KEYS}
    bbox = metrics.get("bbox") or {}
    summary["bbox_mean_iou"] = bbox.get("mean_iou")
    summary["majority_balanced_accuracy"] = (metrics.get("majority_baseline") or {}).get("balanced_accuracy")
    return summary
