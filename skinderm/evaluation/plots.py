"""Evaluation figures written as PNG files; each function returns the Path it wrote.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, never through
pyplot, so plotting works headless, changes no global backend and leaks no open figures across a
long evaluation or a test session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Polygon as MplPolygon
from matplotlib.patches import Rectangle

from skinderm.evaluation.calibration import reliability_curve
from skinderm.evaluation.metrics import is_missing, record_iou

Records = Sequence[Mapping[str, Any]]
TRUE_COLOUR = "#1a9850"  # green: ground truth
PRED_COLOUR = "#d73027"  # red: prediction


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, out_path: str | Path, dpi: int = 120) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def _require(metrics: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
    missing = [key for key in keys if key not in metrics]
    if missing:
        raise ValueError(f"{what} needs the output of compute_metrics; the dict lacks {missing}")


def plot_confusion_matrix(metrics: Mapping[str, Any], out_path: str | Path, *, title: str = "") -> Path:
    """Heat map of `compute_metrics` output: counts written in cells, colour = share of the true row.

    Colouring by row share keeps minority classes (df, vasc) readable next to thousands of nv.
    """
    _require(metrics, ("confusion_matrix", "confusion_labels", "confusion_columns"), "plot_confusion_matrix")
    counts = np.asarray(metrics["confusion_matrix"], dtype=float)
    rows, columns = metrics["confusion_labels"], metrics["confusion_columns"]
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)

    figure = _new_figure(1.0 + 0.8 * len(columns), 1.0 + 0.7 * len(rows))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            axes.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if shares[i, j] > 0.5 else "black",
            )
    axes.set_xticks(range(len(columns)), labels=columns, rotation=45, ha="right")
    axes.set_yticks(range(len(rows)), labels=rows)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or "Confusion matrix (colour = share of true class)")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    return _save(figure, out_path)


def plot_per_class_recall(metrics: Mapping[str, Any], out_path: str | Path, *, title: str = "") -> Path:
    """Recall per class present in the truth, with balanced accuracy (their mean) and the 1/K chance line."""
    _require(metrics, ("per_class", "balanced_accuracy"), "plot_per_class_recall")
    present = {code: row for code, row in metrics["per_class"].items() if row.get("recall") is not None}
    if not present:
        raise ValueError("plot_per_class_recall: no class has support in this split")
    codes = list(present)
    recalls = [present[code]["recall"] for code in codes]

    figure = _new_figure(1.5 + 0.8 * len(codes), 4.0)
    axes = figure.add_subplot()
    bars = axes.bar(codes, recalls, color="#4575b4")
    for bar, code in zip(bars, codes, strict=True):
        axes.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() + 0.01,
            f"{present[code]['recall']:.2f}\nn={present[code]['support']}",
            ha="center",
            va="bottom",
            fontsize=8,
            zorder=3,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
        )
    balanced = metrics["balanced_accuracy"]
    axes.axhline(balanced, color=PRED_COLOUR, linestyle="--", label=f"balanced accuracy {balanced:.3f}")
    axes.axhline(1.0 / len(codes), color="grey", linestyle=":", label=f"chance 1/{len(codes)}")
    axes.set_ylim(0.0, 1.15)
    axes.set_ylabel("recall")
    axes.set_title(title or "Per-class recall")
    axes.legend(loc="upper right", fontsize=8)
    return _save(figure, out_path)


def plot_iou_histogram(records: Records, out_path: str | Path, *, bins: int = 20, title: str = "") -> Path:
    """Histogram of box IoU over records with a true box (missing prediction = 0), with 0.5 / 0.75 marks."""
    ious = [iou for iou in (record_iou(r) for r in records) if iou is not None]
    if not ious:
        raise ValueError("plot_iou_histogram: no record has a true box (bbox_true)")
    figure = _new_figure(5.0, 3.5)
    axes = figure.add_subplot()
    axes.hist(ious, bins=bins, range=(0.0, 1.0), color="#4575b4", edgecolor="white")
    for threshold in (0.5, 0.75):
        axes.axvline(threshold, color="grey", linestyle=":")
    axes.axvline(float(np.mean(ious)), color=PRED_COLOUR, linestyle="--", label=f"mean {np.mean(ious):.3f}")
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("box IoU")
    axes.set_ylabel("images")
    axes.set_title(title or f"Box IoU (n={len(ious)})")
    axes.legend(fontsize=8)
    return _save(figure, out_path)


def plot_reliability_diagram(
    records: Records, out_path: str | Path, *, n_bins: int = 15, title: str = ""
) -> Path:
    """Top-label accuracy against confidence per bin (needs `class_probs`), the diagonal and bin counts."""
    curve = reliability_curve(records, n_bins)
    edges = np.asarray(curve["bin_edges"])
    width = edges[1] - edges[0]
    filled = [i for i, count in enumerate(curve["count"]) if count]

    figure = _new_figure(5.0, 5.5)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    top.bar(
        edges[filled],
        [curve["accuracy"][i] for i in filled],
        width=width,
        align="edge",
        color="#4575b4",
        edgecolor="white",
        label="accuracy",
    )
    top.plot(
        [curve["confidence"][i] for i in filled],
        [curve["accuracy"][i] for i in filled],
        "o",
        color=PRED_COLOUR,
        markersize=4,
        label="mean confidence",
    )
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy")
    top.set_title(title or "Reliability diagram (top label)")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(edges[:-1], curve["count"], width=width, align="edge", color="grey", edgecolor="white")
    bottom.set_xlim(0.0, 1.0)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("images")
    return _save(figure, out_path)


def _draw_box(axes: Any, box: Sequence[float], colour: str) -> None:
    """Outline the pixels x1..x2-1, y1..y2-1 of an exclusive-end box (pixel i spans [i-0.5, i+0.5])."""
    x1, y1, x2, y2 = (float(v) for v in box)
    axes.add_patch(
        Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5)
    )


def _draw_polygon(axes: Any, polygon: Sequence[Sequence[float]], colour: str) -> None:
    """The predicted outline as a closed line (fewer than 3 valid points draw nothing)."""
    points = [(float(x), float(y)) for x, y in polygon]
    if len(points) >= 3:
        axes.add_patch(
            MplPolygon(points, closed=True, fill=False, edgecolor=colour, linewidth=1.0, linestyle="--")
        )


def plot_prediction_grid(
    records: Records,
    image_loader: Callable[[Mapping[str, Any]], Any],
    out_path: str | Path,
    n: int = 16,
    *,
    columns: int = 4,
    title: str = "",
) -> Path:
    """The first `n` records as a grid: image, true box (green), predicted box (red), "true/pred" label.

    `image_loader(record)` returns the original image (a PIL image or an HxW[xC] array); boxes are in
    its pixel coordinates. Pass the records in the order you want to see them (e.g. errors first).
    """
    shown = list(records)[:n]
    if not shown:
        raise ValueError("plot_prediction_grid: no records to show")
    columns = max(1, min(columns, len(shown)))
    rows = int(np.ceil(len(shown) / columns))
    figure = _new_figure(3.2 * columns, 2.8 * rows + (0.4 if title else 0.0))
    axes_grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axes, record in zip(axes_grid, shown, strict=False):
        try:
            image = image_loader(record)
        except Exception as error:
            raise RuntimeError(
                f"plot_prediction_grid: image_loader failed for image_id={record.get('image_id')!r}: {error}"
            ) from error
        axes.imshow(np.asarray(image))
        if not is_missing(record.get("bbox_true")):
            _draw_box(axes, record["bbox_true"], TRUE_COLOUR)
        if not is_missing(record.get("bbox_pred")):
            _draw_box(axes, record["bbox_pred"], PRED_COLOUR)
        if not is_missing(record.get("polygon_pred")):
            _draw_polygon(axes, record["polygon_pred"], PRED_COLOUR)
        predicted = record.get("dx_pred")
        label = f"{record.get('dx_true')}/{'?' if is_missing(predicted) else predicted}"
        iou = record_iou(record)
        if iou is not None:
            label += f"  IoU {iou:.2f}"
        correct = not is_missing(predicted) and predicted == record.get("dx_true")
        axes.set_title(
            f"{label}\n{record.get('image_id', '')}",
            fontsize=9,
            color=TRUE_COLOUR if correct else PRED_COLOUR,
        )
        axes.set_xticks([])
        axes.set_yticks([])
    for axes in axes_grid[len(shown) :]:
        axes.axis("off")
    if title:
        figure.suptitle(title)
    return _save(figure, out_path, dpi=100)
