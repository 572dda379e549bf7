"""Baselines beside every metric (skinderm.evaluation.baselines): hand-made records, numbers by hand, and
the reward's and the metric's own functions as the reference where a baseline re-uses them."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from skinderm.data.classes import LOCATIONS
from skinderm.evaluation.baselines import (
    MASK_GRID,
    centre_prior_box_iou,
    centre_prior_mask_iou,
    compute_baselines,
    constant_spatial_reward,
    majority_class,
    majority_location,
    mean_normalised_box,
    mean_training_mask,
    prior_level,
    prior_mask,
    read_oracle,
)
from skinderm.evaluation.report import build_metrics, format_table
from skinderm.geometry import box_iou
from skinderm.rewards.spatial import get_spatial_reward

REPO = Path(__file__).resolve().parents[2]


def record(
    dx: str = "nv",
    location: str | None = "center-center",
    bbox: list[float] | None = None,
    size: tuple[int, int] = (100, 80),
    mask: str | None = None,
) -> dict[str, Any]:
    """A dataset record as frame_to_records gives it (the keys the baselines read)."""
    return {
        "dx": dx,
        "location": location,
        "bbox": bbox,
        "image_width": size[0],
        "image_height": size[1],
        "mask_available": mask is not None,
        "mask_path_abs": mask,
    }


def write_mask(path: Path, mask: np.ndarray) -> str:
    cv2.imwrite(str(path), mask.astype(np.uint8) * 255)
    return str(path)


def test_majority_location_is_the_most_common_training_cell_scored_on_the_scored_split() -> None:
    train = [record(location=c) for c in ["top-left", "center-center", "center-center", None, "top-left",
                                          "center-center"]]  # fmt: skip
    scored = [
        record(location=c) for c in ["center-center", "top-left", "bottom-right", None, "center-center"]
    ]
    result = majority_location(train, scored)
    assert result == {"cell": "center-center", "accuracy": 2 / 4, "n": 4}  # None has no truth: not counted
    # A tie goes to the first cell in LOCATIONS order, so the baseline does not depend on record order.
    tie = [record(location="bottom-right"), record(location="top-left")]
    assert majority_location(tie, scored)["cell"] == "top-left"
    assert majority_location([record(location=None)], scored) is None


def test_majority_class_comes_from_training_and_its_balanced_accuracy_is_one_over_the_classes() -> None:
    train = [record(dx=d) for d in ["mel", "nv", "nv", "bkl"]]
    scored = [record(dx=d) for d in ["nv", "mel", "mel", "bkl", "mel"]]
    assert majority_class(train, scored) == {
        "class": "nv", "accuracy": 1 / 5, "balanced_accuracy": 1 / 3, "n": 5,
    }  # fmt: skip
    # A training majority absent from the scored split recalls nothing.
    assert majority_class(train, [record(dx="mel")])["balanced_accuracy"] == 0.0


def test_a_constant_answers_spatial_reward_is_the_reward_functions_own_value() -> None:
    truths = ["center-center", "center-left", "top-left", "bottom-right", "center-center", "top-center"]
    scored = [record(location=c) for c in truths] + [record(location=None)]
    result = constant_spatial_reward(scored, adjacent_credit=0.3)
    reward = get_spatial_reward(adjacent_credit=0.3)
    for cell in LOCATIONS:
        paid = reward([json.dumps({"location": cell})] * len(truths), location=truths)
        assert result["per_cell"][cell] == pytest.approx(float(np.mean(paid)))
    assert result["reward"] == max(result["per_cell"].values())
    # centre: 2 hits + 2 neighbours (center-left, top-center) = (2 + 2 * 0.3) / 6
    assert result["cell"] == "center-center" and result["reward"] == pytest.approx(2.6 / 6)
    assert result["adjacent_credit"] == 0.3 and result["n"] == 6
    with pytest.raises(ValueError, match="adjacent_credit"):
        constant_spatial_reward(scored, adjacent_credit=1.5)


def test_centre_prior_box_iou_is_box_iou_of_the_mean_normalised_box_averaged_by_hand() -> None:
    train = [
        record(bbox=[10, 8, 50, 40], size=(100, 80)),  # (0.1, 0.1, 0.5, 0.5)
        record(bbox=[60, 40, 180, 120], size=(200, 160)),  # (0.3, 0.25, 0.9, 0.75)
        record(bbox=None),
        record(bbox=[5, 5, 5, 9]),  # zero-area: not a box, left out of the mean
    ]
    assert mean_normalised_box(train) == pytest.approx((0.2, 0.175, 0.7, 0.625))
    scored = [
        record(bbox=[20, 10, 70, 50], size=(100, 80)),
        record(bbox=[0, 0, 300, 300], size=(600, 400)),
        record(bbox=None, size=(100, 80)),
    ]
    by_hand = [
        box_iou([20.0, 14.0, 70.0, 50.0], [20, 10, 70, 50]),
        box_iou([120.0, 70.0, 420.0, 250.0], [0, 0, 300, 300]),
    ]
    result = centre_prior_box_iou(train, scored)
    assert result["n"] == 2
    assert result["mean_iou"] == pytest.approx(sum(by_hand) / 2)
    assert centre_prior_box_iou([record(bbox=None)], scored) is None


def test_centre_prior_mask_is_the_thresholded_mean_training_mask(tmp_path: Path) -> None:
    g = MASK_GRID
    a, b, c = (np.zeros((g, g), bool) for _ in range(3))
    a[20:100, 20:100] = True
    b[40:120, 40:120] = True
    c[30:90, 10:60] = True
    paths = [write_mask(tmp_path / f"{name}.png", m) for name, m in zip("abc", (a, b, c), strict=True)]
    train = [record(mask=p, size=(g, g)) for p in paths] + [record(mask=None)]
    mean, used = mean_training_mask(train)
    assert used == 3
    np.testing.assert_allclose(mean, (a.astype(float) + b + c) / 3)
    # The prior keeps the highest pixels of the mean, as many as the mean training lesion area: here the
    # pixels covered by at least 2 of the 3 masks are fewer than that, so those covered once join them.
    k = round((a.sum() + b.sum() + c.sum()) / 3)
    covered = a.astype(int) + b + c
    assert (covered >= 2).sum() < k <= (covered >= 1).sum()
    prior = covered >= 1
    truth = np.zeros((g, g), bool)
    truth[50:110, 30:80] = True
    empty = np.zeros((g, g), bool)
    scored = [
        record(mask=write_mask(tmp_path / "t.png", truth), size=(g, g)),
        record(mask=write_mask(tmp_path / "e.png", empty), size=(g, g)),
        record(mask=None, size=(g, g)),
    ]
    result = centre_prior_mask_iou((mean, used), scored, size_of=lambda r: (g, g))
    by_hand = (prior & truth).sum() / (prior | truth).sum()
    assert result["n"] == 2  # an empty mask counts (IoU 0), as in the metric; no mask does not
    assert result["mean_iou"] == pytest.approx((by_hand + 0.0) / 2)
    assert result["prior_area_fraction"] == pytest.approx(prior.mean())
    # The outline target keeps the largest component's filled outline only: a hole is filled.
    holed = truth.copy()
    holed[70:90, 45:65] = False
    outline = centre_prior_mask_iou(
        (mean, used), [record(mask=write_mask(tmp_path / "h.png", holed), size=(g, g))],
        size_of=lambda r: (g, g), target="outline",
    )  # fmt: skip
    assert outline["mean_iou"] == pytest.approx(by_hand)


def test_the_prior_has_the_mean_training_area_also_when_lesions_are_spread_out() -> None:
    """Lesions in every 3x3 cell leave each pixel of the mean mask below 0.5; the prior is not empty but
    the mean's highest pixels, covering the mean lesion area."""
    g = 90
    masks = []
    for row, col in itertools.product(range(3), range(3)):
        m = np.zeros((g, g), bool)
        m[row * 30 + 5 : row * 30 + 25, col * 30 + 5 : col * 30 + 25] = True
        masks.append(m)
    centred = np.zeros((g, g), bool)
    centred[35:55, 35:55] = True
    mean = (np.sum(masks, axis=0) + centred) / 10
    assert mean.max() < 0.5
    prior = prior_mask(mean, (g, g))
    assert prior.sum() == 400 and prior[35:55, 35:55].all()  # the centre cell, seen twice
    assert prior_level(np.zeros((4, 4))) == float("inf") and not prior_mask(np.zeros((4, 4)), (8, 8)).any()


def test_the_prior_is_scaled_to_each_image_before_the_threshold() -> None:
    mean = np.zeros((4, 4))
    mean[:, :2] = 1.0  # the left half
    scaled = prior_mask(mean, (40, 20))
    assert scaled.shape == (20, 40)
    assert scaled[:, :19].all() and not scaled[:, 21:].any()


def test_read_oracle_gives_the_split_entry_and_none_without_a_file_or_on_other_splits(tmp_path: Path) -> None:
    assert read_oracle(tmp_path, "test") is None
    assert read_oracle(None, "test") is None
    report = {
        "test": {"balanced_accuracy": 0.86, "accuracy": 0.9, "n_images": 600},
        "split_params": {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0},
    }
    (tmp_path / "synthetic_oracle.json").write_text(json.dumps(report))
    oracle = read_oracle(tmp_path, "test", {"seed": 0})
    assert oracle["balanced_accuracy"] == 0.86 and oracle["n_images"] == 600
    assert read_oracle(tmp_path, "val") is None
    assert read_oracle(tmp_path, "test", {"seed": 1}) is None  # other splits: other images


def test_compute_baselines_and_the_report_put_them_beside_each_metric(tmp_path: Path) -> None:
    g = MASK_GRID
    square = np.zeros((g, g), bool)
    square[32:96, 32:96] = True
    mask = write_mask(tmp_path / "m.png", square)
    train = [record(dx="nv", location="center-center", bbox=[25, 20, 75, 60], mask=mask, size=(100, 80))] * 3
    train.append(record(dx="mel", location="top-left", bbox=[0, 0, 30, 30], mask=None))
    scored = [
        record(dx="nv", location="center-center", bbox=[25, 20, 75, 60], mask=mask, size=(100, 80)),
        record(dx="mel", location="top-center", bbox=[20, 0, 70, 30], mask=None, size=(100, 80)),
    ]
    oracle = {"balanced_accuracy": 0.861, "accuracy": 0.9}
    baselines = compute_baselines(train, scored, size_of=lambda r: (g, g), oracle=oracle, outline=True)
    assert baselines["majority_location"]["cell"] == "center-center"
    # center-center and top-center both earn (1 + 0.5) / 2: the tie goes to the first in LOCATIONS order
    assert baselines["constant_spatial_reward"]["cell"] == "top-center"
    assert baselines["constant_spatial_reward"]["reward"] == pytest.approx(0.75)
    assert baselines["centre_prior_mask_iou"] == pytest.approx(1.0)
    assert baselines["centre_prior_outline_iou"] == pytest.approx(1.0)
    assert baselines["oracle"] == oracle and baselines["n_train"] == 4
    assert json.loads(json.dumps(baselines)) == baselines  # strict JSON for metrics.json

    predictions = [
        {"image_id": "a", "lesion_id": "l1", "dx_true": "nv", "dx_pred": "nv", "parse_ok": True,
         "location_true": "center-center", "location_pred": "top-left", "bbox_true": [25, 20, 75, 60],
         "bbox_pred": [20, 20, 75, 60], "mask_iou": 0.5},
        {"image_id": "b", "lesion_id": "l2", "dx_true": "mel", "dx_pred": None, "parse_ok": False,
         "location_true": "top-center", "location_pred": None, "bbox_true": [20, 0, 70, 30],
         "bbox_pred": None},
    ]  # fmt: skip
    plain = build_metrics(predictions, n_resamples=0)
    metrics = build_metrics(predictions, n_resamples=0, baselines=baselines)
    assert {k: v for k, v in metrics.items() if k != "baselines"} == plain  # every other key unchanged
    table = format_table(metrics)
    assert "oracle ceiling 0.861" in table
    assert "always center-center 0.500" in table
    assert "best constant reward 0.750 (top-center, adjacent 0.5)" in table
    assert "centre prior" in next(line for line in table.splitlines() if "mean box IoU" in line)
    assert "centre prior 1.000" in next(line for line in table.splitlines() if "mean mask IoU" in line)
    assert "centre prior" not in format_table(plain)

    spec = importlib.util.spec_from_file_location("pipeline_table", REPO / "scripts" / "pipeline_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.baseline_rows(metrics)
    assert [row[0] for row in rows] == [
        "oracle ceiling (Bayes on latents)", "majority / centre prior (nv, center-center)",
    ]  # fmt: skip
    assert rows[0][1] == "0.861"
    assert rows[1][3] == "0.500 (reward 0.750)" and rows[1][6] == "-"
    assert rows[1][4] == f"{baselines['centre_prior_box_iou']:.3f}"
    assert len(rows[1]) == len(module.HEADER)


def test_evaluate_fits_the_baselines_on_the_training_split_and_reads_the_oracle(compose_train) -> None:
    """The command's assembly (commands.evaluation_baselines) on a generated dermoscopy-style set."""
    from skinderm.evaluation.choice import choose_dataset, choose_model, load_evaluation_records
    from skinderm.evaluation.commands import evaluation_baselines
    from tests.conftest import SMALL_DATASET

    cfg = compose_train(
        [*SMALL_DATASET, "dataset.synthetic.style=dermoscopy", "logger=none", "run=null"],
        config_name="evaluate",
    )
    choice = choose_model(cfg, [])
    dataset = choose_dataset(cfg, choice, [])
    records = load_evaluation_records(dataset, "test")
    baselines = evaluation_baselines(cfg, choice, dataset, records, choice.builder())
    train = load_evaluation_records(dataset, "train")
    assert baselines["n_train"] == len(train)
    assert baselines["majority_class"] == majority_class(train, records)
    assert baselines["majority_location"] == majority_location(train, records)
    report = json.loads((Path(dataset["root"]) / "synthetic_oracle.json").read_text())
    assert {k: baselines["oracle"][k] for k in report["test"]} == report["test"]
    assert baselines["constant_spatial_reward"]["adjacent_credit"] == 0.5  # zero-shot: the reward's default
    assert baselines["centre_prior_box_iou"] == centre_prior_box_iou(train, records)["mean_iou"]
    assert baselines["centre_prior_mask_iou"] is not None
