"""Every plot writes a readable, non-empty PNG; the prediction grid really draws green and red boxes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skinderm.data.classes import CLASS_CODES
from skinderm.evaluation.metrics import compute_metrics
from skinderm.evaluation.plots import (
    plot_confusion_matrix,
    plot_iou_histogram,
    plot_per_class_recall,
    plot_prediction_grid,
    plot_reliability_diagram,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_size=(200, 150)):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert image.width >= min_size[0] and image.height >= min_size[1]


def test_confusion_matrix_and_recall_plots_write_png(records, tmp_path):
    metrics = compute_metrics(records)
    _assert_png(plot_confusion_matrix(metrics, tmp_path / "confusion.png"))
    _assert_png(plot_per_class_recall(metrics, tmp_path / "nested" / "recall.png"))


def test_plots_reject_a_dict_that_is_not_compute_metrics_output(tmp_path):
    with pytest.raises(ValueError, match="compute_metrics"):
        plot_confusion_matrix({"accuracy": 0.5}, tmp_path / "x.png")


def test_iou_histogram_writes_png(records, tmp_path):
    _assert_png(plot_iou_histogram(records, tmp_path / "iou.png"))
    with pytest.raises(ValueError, match="bbox_true"):
        plot_iou_histogram([{"image_id": "a", "bbox_true": None}], tmp_path / "none.png")


def test_reliability_diagram_writes_png(records, tmp_path):
    rng = np.random.default_rng(0)
    scored = [
        dict(r, class_probs=dict(zip(CLASS_CODES, map(float, rng.dirichlet(np.ones(7))), strict=True)))
        for r in records
    ]
    _assert_png(plot_reliability_diagram(scored, tmp_path / "reliability.png", n_bins=10))


def _colour_pixels(path, rgb, tolerance=40):
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(rgb)).sum(axis=2) < tolerance).sum())


def test_prediction_grid_draws_true_green_and_predicted_red_boxes(records, tmp_path):
    grey = Image.new("RGB", (120, 90), (128, 128, 128))
    loaded = []

    def loader(record):
        loaded.append(record["image_id"])
        return grey

    shown = [
        dict(r, bbox_true=[10, 10, 60, 50], bbox_pred=[40, 30, 110, 80], dx_pred="nv") for r in records[:5]
    ]
    path = plot_prediction_grid(shown, loader, tmp_path / "grid.png", n=4)
    _assert_png(path)
    assert loaded == [r["image_id"] for r in shown[:4]]
    assert _colour_pixels(path, (0x1A, 0x98, 0x50)) > 50  # true boxes
    assert _colour_pixels(path, (0xD7, 0x30, 0x27)) > 50  # predicted boxes (and wrong labels)


def test_prediction_grid_also_draws_the_predicted_outline(records, tmp_path):
    grey = Image.new("RGB", (120, 90), (128, 128, 128))
    boxed = [dict(r, bbox_pred=[40, 30, 110, 80], dx_pred=r["dx_true"]) for r in records[:4]]
    outlined = [dict(r, polygon_pred=[[5, 5], [60, 10], [30, 70]]) for r in boxed]
    without = plot_prediction_grid(boxed, lambda r: grey, tmp_path / "box.png", n=4)
    with_outline = plot_prediction_grid(outlined, lambda r: grey, tmp_path / "outline.png", n=4)
    red = (0xD7, 0x30, 0x27)
    assert _colour_pixels(with_outline, red) > _colour_pixels(without, red) + 50


def test_prediction_grid_names_the_image_whose_loader_failed(records, tmp_path):
    def loader(record):
        raise FileNotFoundError("no such file")

    with pytest.raises(RuntimeError, match=records[0]["image_id"]):
        plot_prediction_grid(records, loader, tmp_path / "grid.png", n=2)
