"""Percentile bootstrap confidence intervals that resample whole lesions, not images.

HAM10000 has 10,015 images of 7,470 lesions: images of one lesion are near-duplicates whose
predictions succeed or fail together. Resampling images would treat them as independent evidence
and give intervals that are too narrow, so every resample here draws lesions (groups) with
replacement and keeps all images of each drawn lesion.

Speed: the built-in statistics (accuracy, balanced accuracy, macro F1, box mean IoU, spatial
accuracy) are `GroupedStatistic`s. Each reduces a split to per-group sufficient statistics once
(e.g. true positives and support per class per lesion); a resample is then a vector of group
weights (how often each lesion was drawn), and all resamples are one matrix product. Any other
callable `statistic(records) -> float` works too, through a slower loop over resamples.

Pairing: `paired_bootstrap` compares two evaluations of the same images. Each resample draws lesions
once and computes both runs' statistics on it, so what the two runs share (easy and hard lesions)
cancels in the difference B - A; two separate intervals would count that shared variation twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from skinderm.data.classes import CLASS_CODES
from skinderm.evaluation.metrics import box_iou, check_records, is_missing

Records = Sequence[Mapping[str, Any]]
Statistic = Callable[[list[dict]], float]
# Resamples are drawn in blocks so that a whole-dataset bootstrap (7,470 lesions x 1,000
# resamples) never holds more than a few tens of MB of weights at once.
_BLOCK = 250


class GroupedStatistic:
    """A statistic that is a ratio of sums over records, so it can be evaluated on weighted groups.

    Subclasses give `record_sums(records) -> {name: array (n_records, ...)}` and
    `from_sums({name: array (n_resamples, ...)}) -> array (n_resamples,)`; NaN marks a resample on
    which the statistic is undefined (e.g. no true box was drawn).
    """

    name = "statistic"

    def record_sums(self, records: Records) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def from_sums(self, sums: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, records: Records) -> float:
        sums = {key: value.sum(axis=0)[None] for key, value in self.record_sums(records).items()}
        return float(self.from_sums(sums)[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _one_hot(codes: Sequence[str | None], labels: Sequence[str], field: str) -> np.ndarray:
    index = {code: i for i, code in enumerate(labels)}
    matrix = np.zeros((len(codes), len(labels)))
    for row, code in enumerate(codes):
        if code is None:
            continue
        if code not in index:
            raise ValueError(f"{field} holds {code!r}, which is not one of the labels {list(labels)}")
        matrix[row, index[code]] = 1.0
    return matrix


def _dx(records: Records) -> tuple[list[str], list[str | None]]:
    y_true = [r["dx_true"] for r in records]
    y_pred = [None if is_missing(r["dx_pred"]) else r["dx_pred"] for r in records]
    return y_true, y_pred


class AccuracyStatistic(GroupedStatistic):
    """Share of images whose diagnosis is right (unparsed = wrong)."""

    name = "accuracy"

    def record_sums(self, records: Records) -> dict[str, np.ndarray]:
        y_true, y_pred = _dx(records)
        correct = np.array([t == p for t, p in zip(y_true, y_pred, strict=True)], dtype=float)
        return {"correct": correct, "n": np.ones(len(records))}

    def from_sums(self, sums: Mapping[str, np.ndarray]) -> np.ndarray:
        return _ratio(sums["correct"], sums["n"])


class BalancedAccuracyStatistic(GroupedStatistic):
    """Mean recall over the classes present in the (resampled) truth: ISIC 2018 Task 3's metric."""

    name = "balanced_accuracy"

    def __init__(self, labels: Sequence[str] = CLASS_CODES) -> None:
        self.labels = tuple(labels)

    def record_sums(self, records: Records) -> dict[str, np.ndarray]:
        y_true, y_pred = _dx(records)
        truth = _one_hot(y_true, self.labels, "dx_true")
        pred = _one_hot(y_pred, self.labels, "dx_pred")
        return {"tp": truth * pred, "support": truth, "predicted": pred}

    def from_sums(self, sums: Mapping[str, np.ndarray]) -> np.ndarray:
        recall = _ratio(sums["tp"], sums["support"])
        present = sums["support"] > 0
        return np.where(present, recall, 0.0).sum(axis=1) / present.sum(axis=1)


class MacroF1Statistic(BalancedAccuracyStatistic):
    """Macro F1 over the classes present in the (resampled) truth; F1 = 2TP / (support + predicted)."""

    name = "macro_f1"

    def from_sums(self, sums: Mapping[str, np.ndarray]) -> np.ndarray:
        f1 = _ratio(2.0 * sums["tp"], sums["support"] + sums["predicted"])
        present = sums["support"] > 0
        return np.where(present, f1, 0.0).sum(axis=1) / present.sum(axis=1)


class BoxMeanIoUStatistic(GroupedStatistic):
    """Mean box IoU over images with a true box (a missing prediction scores 0)."""

    name = "bbox_mean_iou"

    def record_sums(self, records: Records) -> dict[str, np.ndarray]:
        has_box = np.array([not is_missing(r.get("bbox_true")) for r in records], dtype=float)
        iou = np.array(
            [
                box_iou(r["bbox_true"], r.get("bbox_pred")) if has else 0.0
                for r, has in zip(records, has_box, strict=True)
            ]
        )
        return {"iou": iou, "n": has_box}

    def from_sums(self, sums: Mapping[str, np.ndarray]) -> np.ndarray:
        return _ratio(sums["iou"], sums["n"])


class SpatialAccuracyStatistic(GroupedStatistic):
    """Share of images with a true 3x3 location whose predicted location matches it."""

    name = "spatial_accuracy"

    def record_sums(self, records: Records) -> dict[str, np.ndarray]:
        has_location = np.array([not is_missing(r.get("location_true")) for r in records], dtype=float)
        correct = np.array(
            [
                float(has and r.get("location_pred") == r.get("location_true"))
                for r, has in zip(records, has_location, strict=True)
            ]
        )
        return {"correct": correct, "n": has_location}

    def from_sums(self, sums: Mapping[str, np.ndarray]) -> np.ndarray:
        return _ratio(sums["correct"], sums["n"])


class MaskMeanIoUStatistic(GroupedStatistic):
    """Mean mask IoU (the answer's outline, else its box, against the lesion mask) over images with a mask."""

    name = "mask_mean_iou"

    def record_sums(self, records: Records) -> dict[str, np.ndarray]:
        has_mask = np.array([not is_missing(r.get("mask_iou")) for r in records], dtype=float)
        iou = np.array(
            [float(r["mask_iou"]) if has else 0.0 for r, has in zip(records, has_mask, strict=True)]
        )
        return {"iou": iou, "n": has_mask}

    def from_sums(self, sums: Mapping[str, np.ndarray]) -> np.ndarray:
        return _ratio(sums["iou"], sums["n"])


class ParseRateStatistic(GroupedStatistic):
    """Share of images whose answer parsed (`parse_ok`)."""

    name = "parse_rate"

    def record_sums(self, records: Records) -> dict[str, np.ndarray]:
        parsed = np.array([bool(r.get("parse_ok")) for r in records], dtype=float)
        return {"parsed": parsed, "n": np.ones(len(records))}

    def from_sums(self, sums: Mapping[str, np.ndarray]) -> np.ndarray:
        return _ratio(sums["parsed"], sums["n"])


ACCURACY = AccuracyStatistic()
BALANCED_ACCURACY = BalancedAccuracyStatistic()
MACRO_F1 = MacroF1Statistic()
BBOX_MEAN_IOU = BoxMeanIoUStatistic()
SPATIAL_ACCURACY = SpatialAccuracyStatistic()
MASK_MEAN_IOU = MaskMeanIoUStatistic()
PARSE_RATE = ParseRateStatistic()


def group_index(records: Records, group_key: str) -> tuple[np.ndarray, int]:
    """Integer group of each record (groups numbered in order of first appearance) and the group count."""
    ids: dict[Any, int] = {}
    index = np.empty(len(records), dtype=np.int64)
    for i, record in enumerate(records):
        value = record.get(group_key)
        if is_missing(value):
            raise ValueError(
                f"prediction record {i} (image_id={record.get('image_id')!r}) has no {group_key!r} to "
                f"group the bootstrap by; add it, or pass group_key='image_id' for an image-level bootstrap"
            )
        index[i] = ids.setdefault(value, len(ids))
    return index, len(ids)


def _resample_blocks(n_groups: int, n_resamples: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (drawn group ids (b, n_groups), group weights (b, n_groups)) for blocks of resamples."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, _BLOCK):
        size = min(_BLOCK, n_resamples - start)
        drawn = rng.integers(0, n_groups, size=(size, n_groups))
        flat = (drawn + np.arange(size)[:, None] * n_groups).ravel()
        weights = np.bincount(flat, minlength=size * n_groups).reshape(size, n_groups).astype(float)
        yield drawn, weights


def _check_n_resamples(n_resamples: int) -> None:
    if not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")


def _check_arguments(n_resamples: int, confidence: float) -> None:
    _check_n_resamples(n_resamples)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _interval(estimate: float, values: np.ndarray, confidence: float, n_resamples: int) -> dict[str, Any]:
    defined = values[~np.isnan(values)]
    alpha = 1.0 - confidence
    if defined.size:
        low, high = np.quantile(defined, [alpha / 2.0, 1.0 - alpha / 2.0])
        low, high = float(low), float(high)
    else:
        low = high = None
    return {
        "estimate": None if estimate is None or np.isnan(estimate) else float(estimate),
        "low": low,
        "high": high,
        "n_resamples": int(n_resamples),
        "n_undefined": int(values.size - defined.size),
        "confidence": float(confidence),
    }


def _group_sums(records: Records, statistic: GroupedStatistic, groups: np.ndarray, n_groups: int) -> dict:
    """Per-group sufficient statistics of `statistic`: {name: array (n_groups, ...)}."""
    sums = {}
    for key, values in statistic.record_sums(records).items():
        summed = np.zeros((n_groups, *values.shape[1:]))
        np.add.at(summed, groups, values)
        sums[key] = summed
    return sums


def _replicates(
    record_sets: Sequence[list[Mapping[str, Any]]],
    statistics: Mapping[str, Statistic],
    groups: np.ndarray,
    n_groups: int,
    *,
    n_resamples: int,
    seed: int,
) -> list[dict[str, np.ndarray]]:
    """Each statistic of each record set on the same resamples: [{name: values (n_resamples,)}] per set.

    All sets share one group index (record i of every set belongs to group groups[i]), so one drawn
    resample of lesions selects the same images from every set: what pairing needs.
    """
    members = [np.flatnonzero(groups == g) for g in range(n_groups)]
    fast = {name: s for name, s in statistics.items() if isinstance(s, GroupedStatistic)}
    slow = {name: s for name, s in statistics.items() if not isinstance(s, GroupedStatistic)}
    group_sums = [
        {name: _group_sums(records, statistic, groups, n_groups) for name, statistic in fast.items()}
        for records in record_sets
    ]

    values: list[dict[str, list[np.ndarray]]] = [{name: [] for name in statistics} for _ in record_sets]
    progress = tqdm(total=n_resamples, desc="bootstrap", disable=None if slow else True, leave=False)
    for drawn, weights in _resample_blocks(n_groups, n_resamples, seed):
        for set_values, set_sums in zip(values, group_sums, strict=True):
            for name, statistic in fast.items():
                sums = {key: weights @ summed for key, summed in set_sums[name].items()}
                set_values[name].append(np.asarray(statistic.from_sums(sums), dtype=float))
        if slow:
            blocks = [{name: np.empty(len(drawn)) for name in slow} for _ in record_sets]
            for row, group_ids in enumerate(drawn):
                rows = [i for g in group_ids for i in members[g]]
                for records, block in zip(record_sets, blocks, strict=True):
                    resample = [records[i] for i in rows]
                    for name, statistic in slow.items():
                        result = statistic(resample)
                        block[name][row] = np.nan if result is None else float(result)
                progress.update(1)
            for set_values, block in zip(values, blocks, strict=True):
                for name in slow:
                    set_values[name].append(block[name])
    progress.close()
    return [{name: np.concatenate(parts) for name, parts in set_values.items()} for set_values in values]


def _estimate(statistic: Statistic, records: Records) -> float:
    """The statistic on the whole sample; NaN where it is undefined."""
    value = statistic(list(records))
    return np.nan if value is None else float(value)


def bootstrap_replicates(
    records: Records,
    statistics: Mapping[str, Statistic],
    *,
    group_key: str = "lesion_id",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The raw resampled values {name: array (n_resamples,)} (NaN = undefined) behind `bootstrap_many`."""
    _check_n_resamples(n_resamples)
    records = list(records)
    if not records:
        raise ValueError("no prediction records to bootstrap")
    groups, n_groups = group_index(records, group_key)
    return _replicates([records], statistics, groups, n_groups, n_resamples=n_resamples, seed=seed)[0]


def bootstrap_many(
    records: Records,
    statistics: Mapping[str, Statistic],
    *,
    group_key: str = "lesion_id",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """`bootstrap_ci` for several statistics on the same resamples: {name: interval}."""
    _check_arguments(n_resamples, confidence)
    records = list(records)
    if not records:
        raise ValueError("no prediction records to bootstrap")
    groups, n_groups = group_index(records, group_key)
    values = _replicates([records], statistics, groups, n_groups, n_resamples=n_resamples, seed=seed)[0]

    intervals = {}
    for name, statistic in statistics.items():
        intervals[name] = _interval(_estimate(statistic, records), values[name], confidence, n_resamples)
        intervals[name]["group_key"] = group_key
        intervals[name]["n_groups"] = n_groups
    return intervals


def check_paired(records_a: Records, records_b: Records, group_key: str = "lesion_id") -> None:
    """ValueError unless record i of both lists is the same image of the same group, for every i."""
    if len(records_a) != len(records_b):
        raise ValueError(
            f"paired bootstrap needs the same images in both runs: {len(records_a)} records in A, "
            f"{len(records_b)} in B"
        )
    for i, (a, b) in enumerate(zip(records_a, records_b, strict=True)):
        if a.get("image_id") != b.get("image_id") or a.get(group_key) != b.get(group_key):
            raise ValueError(
                f"paired bootstrap needs the records in the same image order: record {i} is "
                f"image_id={a.get('image_id')!r} ({group_key}={a.get(group_key)!r}) in A but "
                f"image_id={b.get('image_id')!r} ({group_key}={b.get(group_key)!r}) in B"
            )


def paired_bootstrap(
    records_a: Records,
    records_b: Records,
    statistics: Mapping[str, Statistic],
    *,
    group_key: str = "lesion_id",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Percentile interval of each statistic's difference B - A, both runs computed on the same resamples.

    `records_a[i]` and `records_b[i]` must be the same image (`check_paired`). Returns {name: {"estimate"
    (B - A on all images), "low", "high", "n_resamples", "n_undefined", "confidence", "group_key",
    "n_groups", "a": interval of A, "b": interval of B}}; the per-run intervals come from the same
    resamples. A resample on which either run's statistic is undefined counts in n_undefined.
    A run compared with itself gets exactly [0, 0].
    """
    _check_arguments(n_resamples, confidence)
    records_a, records_b = list(records_a), list(records_b)
    if not records_a:
        raise ValueError("no prediction records to bootstrap")
    check_paired(records_a, records_b, group_key)
    groups, n_groups = group_index(records_a, group_key)
    values_a, values_b = _replicates(
        [records_a, records_b], statistics, groups, n_groups, n_resamples=n_resamples, seed=seed
    )
    intervals = {}
    for name, statistic in statistics.items():
        estimate_a, estimate_b = _estimate(statistic, records_a), _estimate(statistic, records_b)
        interval = _interval(
            estimate_b - estimate_a, values_b[name] - values_a[name], confidence, n_resamples
        )
        interval["group_key"] = group_key
        interval["n_groups"] = n_groups
        interval["a"] = _interval(estimate_a, values_a[name], confidence, n_resamples)
        interval["b"] = _interval(estimate_b, values_b[name], confidence, n_resamples)
        intervals[name] = interval
    return intervals


def bootstrap_ci(
    records: Records,
    statistic: Statistic,
    *,
    group_key: str = "lesion_id",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Percentile interval of `statistic` over resamples of whole groups (lesions) with replacement.

    Returns {"estimate", "low", "high", "n_resamples", "n_undefined", "confidence", "group_key",
    "n_groups"}; resamples on which the statistic is undefined (NaN/None) are counted in
    n_undefined and left out of the percentiles. Deterministic for a given seed and record order.
    """
    return bootstrap_many(
        records,
        {"statistic": statistic},
        group_key=group_key,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )["statistic"]


def bootstrap_metrics(
    records: Records,
    *,
    labels: Sequence[str] = CLASS_CODES,
    group_key: str = "lesion_id",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any] | None]:
    """Lesion-grouped intervals for accuracy, balanced_accuracy, macro_f1, bbox_mean_iou and spatial_accuracy.

    bbox_mean_iou / spatial_accuracy are None when no record has a true box / true location.
    """
    check_records(records)
    statistics: dict[str, Statistic] = {
        "accuracy": ACCURACY,
        "balanced_accuracy": BalancedAccuracyStatistic(labels),
        "macro_f1": MacroF1Statistic(labels),
    }
    has_boxes = any(not is_missing(r.get("bbox_true")) for r in records)
    has_locations = any(not is_missing(r.get("location_true")) for r in records)
    if has_boxes:
        statistics["bbox_mean_iou"] = BBOX_MEAN_IOU
    if has_locations:
        statistics["spatial_accuracy"] = SPATIAL_ACCURACY
    intervals: dict[str, dict[str, Any] | None] = dict(
        bootstrap_many(
            records,
            statistics,
            group_key=group_key,
            n_resamples=n_resamples,
            seed=seed,
            confidence=confidence,
        )
    )
    intervals.setdefault("bbox_mean_iou", None)
    intervals.setdefault("spatial_accuracy", None)
    return intervals
