"""The bootstrap resamples whole lesions, is deterministic by seed, and its fast path equals the slow one."""

from __future__ import annotations

import time

import numpy as np
import pytest

from skinderm.evaluation.bootstrap import (
    ACCURACY,
    BALANCED_ACCURACY,
    BBOX_MEAN_IOU,
    MACRO_F1,
    MASK_MEAN_IOU,
    PARSE_RATE,
    SPATIAL_ACCURACY,
    bootstrap_ci,
    bootstrap_many,
    bootstrap_metrics,
    bootstrap_replicates,
    paired_bootstrap,
)
from skinderm.evaluation.metrics import compute_metrics


def _repeated_lesions(n_lesions: int = 20, images_per_lesion: int = 10, n_correct: int = 12) -> list[dict]:
    """Each lesion photographed `images_per_lesion` times; its images share one (right or wrong) answer."""
    records = []
    for lesion in range(n_lesions):
        dx_true = "mel" if lesion % 2 else "nv"
        dx_pred = dx_true if lesion < n_correct else ("nv" if dx_true == "mel" else "mel")
        for image in range(images_per_lesion):
            records.append(
                {
                    "image_id": f"ISIC_{lesion:03d}{image:02d}",
                    "lesion_id": f"HAM_{lesion:03d}",
                    "dx_true": dx_true,
                    "dx_pred": dx_pred,
                    "parse_ok": True,
                    "bbox_true": [0, 0, 10, 10],
                    "bbox_pred": [0, 0, 10, 10] if lesion < n_correct else [0, 0, 3, 10],
                }
            )
    return records


def test_lesion_grouped_interval_is_wider_than_image_level():
    records = _repeated_lesions()
    by_lesion = bootstrap_ci(records, ACCURACY, group_key="lesion_id", n_resamples=2000, seed=0)
    by_image = bootstrap_ci(records, ACCURACY, group_key="image_id", n_resamples=2000, seed=0)
    assert by_lesion["estimate"] == by_image["estimate"] == pytest.approx(0.6)
    assert by_lesion["n_groups"] == 20
    assert by_image["n_groups"] == 200
    lesion_width = by_lesion["high"] - by_lesion["low"]
    image_width = by_image["high"] - by_image["low"]
    # 20 independent lesions carry the information of 20 images, not 200: about sqrt(10) wider.
    assert lesion_width > 2.0 * image_width
    assert by_lesion["low"] < 0.6 < by_lesion["high"]


def test_all_correct_predictions_give_the_degenerate_interval_one_one():
    records = _repeated_lesions(n_correct=20)
    for statistic in (ACCURACY, BALANCED_ACCURACY, MACRO_F1, BBOX_MEAN_IOU):
        interval = bootstrap_ci(records, statistic, n_resamples=200)
        assert (interval["estimate"], interval["low"], interval["high"]) == (1.0, 1.0, 1.0)


def test_same_seed_same_interval_other_seed_other_interval(records):
    first = bootstrap_ci(records, BALANCED_ACCURACY, n_resamples=300, seed=7)
    again = bootstrap_ci(records, BALANCED_ACCURACY, n_resamples=300, seed=7)
    other = bootstrap_ci(records, BALANCED_ACCURACY, n_resamples=300, seed=8)
    assert first == again
    assert (first["low"], first["high"]) != (other["low"], other["high"])


@pytest.mark.parametrize(
    ("fast", "metric"),
    [
        (ACCURACY, lambda m: m["accuracy"]),
        (BALANCED_ACCURACY, lambda m: m["balanced_accuracy"]),
        (MACRO_F1, lambda m: m["macro_f1"]),
        (BBOX_MEAN_IOU, lambda m: m["bbox"]["mean_iou"]),
        (SPATIAL_ACCURACY, lambda m: m["spatial_accuracy"]),
    ],
)
def test_vectorised_statistics_equal_compute_metrics_on_every_resample(records, fast, metric):
    """The matrix-product path and a plain loop over resampled record lists give the same interval."""
    slow = bootstrap_ci(records, lambda rs: metric(compute_metrics(rs)), n_resamples=40, seed=3)
    quick = bootstrap_ci(records, fast, n_resamples=40, seed=3)
    assert quick["estimate"] == pytest.approx(metric(compute_metrics(records)))
    for key in ("estimate", "low", "high"):
        assert quick[key] == pytest.approx(slow[key], abs=1e-12)


def test_bootstrap_metrics_is_fast_and_centred_on_the_point_estimates(record_factory):
    records = record_factory(1500, seed=5)
    bootstrap_metrics(records, n_resamples=10)  # warm caches before timing
    start = time.perf_counter()
    intervals = bootstrap_metrics(records, n_resamples=1000, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"1000 grouped resamples of 1,500 records took {elapsed:.2f} s"
    metrics = compute_metrics(records)
    expected = {
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "bbox_mean_iou": metrics["bbox"]["mean_iou"],
        "spatial_accuracy": metrics["spatial_accuracy"],
    }
    for name, value in expected.items():
        interval = intervals[name]
        assert interval["estimate"] == pytest.approx(value)
        assert interval["low"] < value < interval["high"]
        assert interval["n_resamples"] == 1000
        assert interval["group_key"] == "lesion_id"


def test_bootstrap_metrics_leaves_out_box_interval_without_true_boxes():
    records = [
        {"image_id": f"i{i}", "lesion_id": f"l{i}", "dx_true": "nv", "dx_pred": "nv", "parse_ok": True}
        for i in range(5)
    ]
    intervals = bootstrap_metrics(records, n_resamples=20)
    assert intervals["bbox_mean_iou"] is None
    assert intervals["spatial_accuracy"] is None
    assert intervals["accuracy"]["low"] == 1.0


def test_undefined_resamples_are_counted_not_hidden():
    # One lesion of three has a true box: about (2/3)^3 of resamples draw no box at all.
    records = [
        {
            "image_id": f"i{i}",
            "lesion_id": f"l{i}",
            "dx_true": "nv",
            "dx_pred": "nv",
            "parse_ok": True,
            "bbox_true": [0, 0, 4, 4] if i == 0 else None,
            "bbox_pred": [0, 0, 2, 4],
        }
        for i in range(3)
    ]
    interval = bootstrap_ci(records, BBOX_MEAN_IOU, n_resamples=500, seed=0)
    assert interval["estimate"] == pytest.approx(0.5)
    assert 0.2 * 500 < interval["n_undefined"] < 0.4 * 500
    assert interval["low"] == interval["high"] == pytest.approx(0.5)


def test_missing_group_key_names_the_fix():
    records = [{"image_id": "i0", "dx_true": "nv", "dx_pred": "nv", "parse_ok": True}]
    with pytest.raises(ValueError, match="group_key='image_id'"):
        bootstrap_ci(records, ACCURACY)
    assert bootstrap_ci(records, ACCURACY, group_key="image_id", n_resamples=5)["estimate"] == 1.0
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(records, ACCURACY, group_key="image_id", confidence=95)


def test_custom_statistic_sees_whole_lesions():
    """A custom callable sees whole lesions: its resample sizes are multiples of the lesion size."""
    records = _repeated_lesions(n_lesions=6, images_per_lesion=4)
    sizes = []

    def size_statistic(resample):
        sizes.append(len(resample))
        return float(np.mean([r["dx_true"] == r["dx_pred"] for r in resample]))

    interval = bootstrap_ci(records, size_statistic, n_resamples=50, seed=1, confidence=0.9)
    assert set(sizes) == {24}
    assert interval["confidence"] == 0.9
    assert 0.0 <= interval["low"] <= interval["estimate"] <= interval["high"] <= 1.0


# --- paired bootstrap -----------------------------------------------------------------------------

ALL_FAST = {
    "accuracy": ACCURACY,
    "balanced_accuracy": BALANCED_ACCURACY,
    "macro_f1": MACRO_F1,
    "bbox_mean_iou": BBOX_MEAN_IOU,
    "mask_mean_iou": MASK_MEAN_IOU,
    "spatial_accuracy": SPATIAL_ACCURACY,
    "parse_rate": PARSE_RATE,
}


@pytest.mark.parametrize(
    ("fast", "metric"),
    [(MASK_MEAN_IOU, lambda m: m["mask_mean_iou"]), (PARSE_RATE, lambda m: m["parse_rate"])],
)
def test_mask_iou_and_parse_rate_statistics_equal_compute_metrics_on_every_resample(records, fast, metric):
    slow = bootstrap_ci(records, lambda rs: metric(compute_metrics(rs)), n_resamples=40, seed=3)
    quick = bootstrap_ci(records, fast, n_resamples=40, seed=3)
    assert quick["estimate"] == pytest.approx(metric(compute_metrics(records)))
    for key in ("estimate", "low", "high"):
        assert quick[key] == pytest.approx(slow[key], abs=1e-12)


def test_paired_bootstrap_of_records_with_themselves_is_exactly_zero(records):
    def share_right(resample):  # a plain callable takes the slow path: it must pair too
        return float(np.mean([r["dx_true"] == r["dx_pred"] for r in resample]))

    statistics = {**ALL_FAST, "custom": share_right}
    paired = paired_bootstrap(records, [dict(r) for r in records], statistics, n_resamples=100, seed=2)
    for name, interval in paired.items():
        assert (interval["estimate"], interval["low"], interval["high"]) == (0.0, 0.0, 0.0), name
        assert interval["a"] == interval["b"]


def test_paired_per_run_intervals_are_bootstrap_many_on_the_same_resamples(record_factory):
    """Pairing changes only the difference: each run's own interval is the unpaired one, same seed."""
    records_a = record_factory(300, seed=1)
    records_b = [dict(r, dx_pred=r["dx_true"]) if i % 4 == 0 else r for i, r in enumerate(records_a)]
    paired = paired_bootstrap(records_a, records_b, ALL_FAST, n_resamples=200, seed=9)
    alone_a = bootstrap_many(records_a, ALL_FAST, n_resamples=200, seed=9)
    alone_b = bootstrap_many(records_b, ALL_FAST, n_resamples=200, seed=9)
    for name in ALL_FAST:
        for key in ("estimate", "low", "high"):
            assert paired[name]["a"][key] == alone_a[name][key]
            assert paired[name]["b"][key] == alone_b[name][key]
        assert paired[name]["estimate"] == pytest.approx(
            alone_b[name]["estimate"] - alone_a[name]["estimate"]
        )
    replicates = bootstrap_replicates(records_a, {"accuracy": ACCURACY}, n_resamples=200, seed=9)["accuracy"]
    assert np.quantile(replicates, 0.025) == pytest.approx(alone_a["accuracy"]["low"], abs=1e-12)


def test_paired_bootstrap_refuses_records_in_another_order(records):
    with pytest.raises(ValueError, match="same image order: record 0"):
        paired_bootstrap(records, records[::-1], {"accuracy": ACCURACY}, n_resamples=5)
    with pytest.raises(ValueError, match="same images in both runs"):
        paired_bootstrap(records, records[:-1], {"accuracy": ACCURACY}, n_resamples=5)
