"""Ranking and calibration of class probabilities (records carrying `class_probs`, code -> probability).

A generated answer gives one label; class scoring gives a probability per class, which lets us ask
two more questions: does the model rank the right class high (one-vs-rest AUROC, threshold-free and
insensitive to the class mix), and do its confidences mean what they say (top-label ECE and the
reliability curve). Pure numpy; AUROC uses the rank (Mann-Whitney U) formula with average ranks
for ties, so it equals the trapezoidal ROC area.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skinderm.data.classes import CLASS_CODES
from skinderm.evaluation.metrics import is_missing

Records = Sequence[Mapping[str, Any]]
# Probabilities from a softmax may overshoot [0, 1] by rounding; anything beyond this is not a probability.
_PROBABILITY_TOLERANCE = 1e-6


def has_class_probs(records: Records) -> bool:
    """True when every record carries class probabilities (class scoring ran)."""
    return bool(records) and all(not is_missing(r.get("class_probs")) for r in records)


def probability_matrix(
    records: Records, labels: Sequence[str] = CLASS_CODES
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, n_labels) in label order, true label index (n,)), validated."""
    if not records:
        raise ValueError("no prediction records to score")
    lacking = [i for i, r in enumerate(records) if is_missing(r.get("class_probs"))]
    if lacking:
        raise ValueError(
            f"{len(lacking)} of {len(records)} prediction records lack 'class_probs' (first: record "
            f"{lacking[0]}, image_id={records[lacking[0]].get('image_id')!r}); "
            "run evaluation with class scoring on"
        )
    index = {code: i for i, code in enumerate(labels)}
    probs = np.empty((len(records), len(labels)))
    truth = np.empty(len(records), dtype=np.int64)
    for row, record in enumerate(records):
        scores = record["class_probs"]
        if set(scores) != set(labels):
            raise ValueError(
                f"class_probs of image_id={record.get('image_id')!r} has classes {sorted(scores)}; "
                f"expected exactly {sorted(labels)}"
            )
        probs[row] = [float(scores[code]) for code in labels]
        if record.get("dx_true") not in index:
            raise ValueError(
                f"image_id={record.get('image_id')!r} has dx_true={record.get('dx_true')!r}, "
                f"not one of {list(labels)}"
            )
        truth[row] = index[record["dx_true"]]
    if (
        not np.all(np.isfinite(probs))
        or probs.min() < -_PROBABILITY_TOLERANCE
        or probs.max() > 1 + _PROBABILITY_TOLERANCE
    ):
        raise ValueError("class_probs must be probabilities in [0, 1] (got a value outside it, or NaN/inf)")
    return probs, truth


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """P(random positive outscores random negative) + half the ties; None if one side is empty."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(scores, dtype=float))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc_ovr_per_class(records: Records, labels: Sequence[str] = CLASS_CODES) -> dict[str, float | None]:
    """One-vs-rest AUROC per class (None for a class without both positives and negatives)."""
    probs, truth = probability_matrix(records, labels)
    return {code: binary_auroc(probs[:, k], truth == k) for k, code in enumerate(labels)}


def macro_auroc_ovr(records: Records, labels: Sequence[str] = CLASS_CODES) -> float | None:
    """Macro mean of the one-vs-rest AUROCs over classes with both positives and negatives (None if none)."""
    defined = [auc for auc in auroc_ovr_per_class(records, labels).values() if auc is not None]
    return float(np.mean(defined)) if defined else None


def _top_label(probs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top confidence, correct) per record; a tie for the top probability counts as wrong, as in ISIC."""
    confidence = probs.max(axis=1)
    tied = (probs == confidence[:, None]).sum(axis=1) > 1
    correct = (probs.argmax(axis=1) == truth) & ~tied
    return confidence, correct


def _bin_of(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins (lo, hi] over [0, 1]; a confidence of exactly 0 falls in the first bin."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_curve(
    records: Records, n_bins: int = 15, labels: Sequence[str] = CLASS_CODES
) -> dict[str, list]:
    """Per confidence bin: mean top-label confidence, accuracy and count (None for an empty bin)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    probs, truth = probability_matrix(records, labels)
    confidence, correct = _top_label(probs, truth)
    bins = _bin_of(confidence, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    confidence_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=correct.astype(float), minlength=n_bins)
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": [float(s / c) if c else None for s, c in zip(confidence_sum, counts, strict=True)],
        "accuracy": [float(s / c) if c else None for s, c in zip(correct_sum, counts, strict=True)],
        "count": counts.astype(int).tolist(),
    }


def expected_calibration_error(
    records: Records, n_bins: int = 15, labels: Sequence[str] = CLASS_CODES
) -> float:
    """Top-label ECE: sum over bins of (bin share) x |accuracy - mean confidence| (Guo et al. 2017)."""
    curve = reliability_curve(records, n_bins, labels)
    total = sum(curve["count"])
    return float(
        sum(
            count / total * abs(accuracy - confidence)
            for count, accuracy, confidence in zip(
                curve["count"], curve["accuracy"], curve["confidence"], strict=True
            )
            if count
        )
    )


def compute_calibration(
    records: Records, n_bins: int = 15, labels: Sequence[str] = CLASS_CODES
) -> dict[str, Any]:
    """Everything above in one JSON-serialisable dict, for the evaluation report."""
    probs, truth = probability_matrix(records, labels)
    confidence, correct = _top_label(probs, truth)
    return {
        "n": len(records),
        "macro_auroc_ovr": macro_auroc_ovr(records, labels),
        "auroc_ovr": auroc_ovr_per_class(records, labels),
        "ece": expected_calibration_error(records, n_bins, labels),
        "n_bins": n_bins,
        "top_label_accuracy": float(correct.mean()),
        "mean_confidence": float(confidence.mean()),
        "reliability": reliability_curve(records, n_bins, labels),
    }
