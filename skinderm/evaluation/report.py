"""What an evaluation leaves behind: predictions.jsonl, metrics.json, plots, W&B, and a printed table.

Everything here works from prediction records (one dict per image, see `generation.prediction_record`),
so a report can be rebuilt from a predictions.jsonl without the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from skinderm.core.files import atomic_write_text, json_safe
from skinderm.data.classes import CLASS_NAMES
from skinderm.evaluation.bootstrap import bootstrap_metrics
from skinderm.evaluation.calibration import compute_calibration, has_class_probs
from skinderm.evaluation.metrics import compute_metrics, is_missing, record_iou

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
TRUE_RGB = (26, 152, 80)  # green: ground truth (the colours of skinderm.evaluation.plots)
PRED_RGB = (215, 48, 39)  # red: prediction
GRID_IMAGES = 16
# The W&B predictions table carries an image for at most this many rows (the rest have the data only).
WANDB_TABLE_IMAGES = 256


def write_predictions(path: Path, predictions: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line (NaN written as null, so every JSON reader can load it)."""
    lines = [json.dumps(json_safe(prediction), default=str) + "\n" for prediction in predictions]
    atomic_write_text(path, "".join(lines))


def read_predictions(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build_metrics(
    predictions: Sequence[Mapping[str, Any]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    context: Mapping[str, Any] | None = None,
    baselines: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """compute_metrics + lesion-grouped bootstrap intervals (+ calibration when records carry class_probs).

    `n_resamples=0` skips the bootstrap. `context` (run, model, split, timings...) is stored as "evaluation".
    `baselines` (skinderm.evaluation.baselines.compute_baselines: fitted on the training split, which the
    predictions alone do not hold) is stored as "baselines" when given; every other key is unchanged.
    """
    metrics: dict[str, Any] = compute_metrics(predictions)
    if baselines is not None:
        metrics["baselines"] = dict(baselines)
    metrics["bootstrap"] = (
        bootstrap_metrics(predictions, n_resamples=int(n_resamples), seed=int(seed)) if n_resamples else None
    )
    metrics["calibration"] = compute_calibration(predictions) if has_class_probs(predictions) else None
    if context is not None:
        metrics["evaluation"] = dict(context)
    return metrics


def draw_overlay(
    image: Image.Image,
    *,
    true_box: Sequence[float] | None = None,
    pred_box: Sequence[float] | None = None,
    pred_polygon: Sequence[Sequence[float]] | None = None,
    label: str | None = None,
) -> Image.Image:
    """A copy of `image` with the true box (green), predicted box and outline (red) and a label on top.

    Boxes are [x1, y1, x2, y2] in the image's pixels with exclusive ends (the outline covers the pixels
    x1..x2-1); the line width scales with the image.
    """
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 200))
    if true_box is not None:
        x1, y1, x2, y2 = (float(v) for v in true_box)
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=TRUE_RGB, width=width)
    if pred_box is not None:
        x1, y1, x2, y2 = (float(v) for v in pred_box)
        if x2 > x1 and y2 > y1:
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=PRED_RGB, width=width)
    if pred_polygon is not None and len(pred_polygon) >= 3:
        points = [(float(x), float(y)) for x, y in pred_polygon]
        draw.line([*points, points[0]], fill=PRED_RGB, width=max(1, width - 1), joint="curve")
    if label:
        text_box = draw.textbbox((0, 0), label)
        draw.rectangle([0, 0, text_box[2] + 8, text_box[3] + 6], fill=(0, 0, 0))
        draw.text((4, 3), label, fill=(255, 255, 255))
    return canvas


def prediction_label(prediction: Mapping[str, Any]) -> str:
    """ "true/pred  IoU x" as the grids and tables show it."""
    predicted = prediction.get("dx_pred")
    label = f"{prediction.get('dx_true')}/{'?' if is_missing(predicted) else predicted}"
    iou = record_iou(prediction)
    return label if iou is None else f"{label}  IoU {iou:.2f}"


def grid_order(predictions: Sequence[Mapping[str, Any]], n: int = GRID_IMAGES) -> list[Mapping[str, Any]]:
    """Half wrong answers then right ones (each in split order), so a grid shows both kinds of case."""
    wrong = [p for p in predictions if p.get("dx_pred") != p.get("dx_true")]
    right = [p for p in predictions if p.get("dx_pred") == p.get("dx_true")]
    take_wrong = min(len(wrong), max(n // 2, n - len(right)))
    return [*wrong[:take_wrong], *right[: n - take_wrong]]


def write_plots(
    predictions: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    out_dir: Path,
    image_paths: Mapping[str, str],
    *,
    title: str = "",
) -> dict[str, Path]:
    """Every figure that applies to these predictions: {name: png path}.

    Confusion matrix and per-class recall always; box IoU histogram when boxes exist; the prediction grid
    (original images, true box green, predicted red); the reliability diagram with class probabilities.
    """
    from skinderm.data.images import load_image
    from skinderm.evaluation import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f" - {title}" if title else ""
    written = {
        "confusion_matrix": plots.plot_confusion_matrix(
            metrics, out_dir / "confusion_matrix.png", title=f"Confusion matrix{suffix}"
        ),
        "per_class_recall": plots.plot_per_class_recall(
            metrics, out_dir / "per_class_recall.png", title=f"Per-class recall{suffix}"
        ),
    }
    if any(record_iou(p) is not None for p in predictions):
        written["iou_histogram"] = plots.plot_iou_histogram(predictions, out_dir / "iou_histogram.png")
    shown = [p for p in grid_order(predictions) if p["image_id"] in image_paths]
    if shown:
        written["prediction_grid"] = plots.plot_prediction_grid(
            shown,
            lambda p: load_image(image_paths[p["image_id"]]),
            out_dir / "prediction_grid.png",
            n=GRID_IMAGES,
            title=f"true/predicted (green: true box, red: predicted){suffix}",
        )
    if has_class_probs(predictions):
        written["reliability_diagram"] = plots.plot_reliability_diagram(
            predictions, out_dir / "reliability_diagram.png"
        )
    return written


def _interval(metrics: Mapping[str, Any], key: str) -> str:
    interval = (metrics.get("bootstrap") or {}).get(key) or {}
    low, high = interval.get("low"), interval.get("high")
    return "" if low is None or high is None else f"  [95% CI {low:.3f}, {high:.3f}]"


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _beside(text: str) -> str:
    return f"  ({text})" if text else ""


def baseline_notes(metrics: Mapping[str, Any]) -> dict[str, str]:
    """What to print beside each metric from metrics.json's `baselines` block: {metric: note}, e.g.
    "spatial_accuracy": "always center-center 0.612; training majority". Empty without the block."""
    baselines = metrics.get("baselines") or {}
    notes: dict[str, list[str]] = {}
    majority = baselines.get("majority_class")
    if majority:
        notes.setdefault("accuracy", []).append(
            f"train majority {majority['class']} {_number(majority['accuracy'])}"
        )
        notes.setdefault("balanced_accuracy", []).append(
            f"train majority {_number(majority['balanced_accuracy'])}"
        )
    oracle = baselines.get("oracle")
    if oracle:
        notes.setdefault("balanced_accuracy", []).append(
            f"oracle ceiling {_number(oracle.get('balanced_accuracy'))}"
        )
        if oracle.get("accuracy") is not None:
            notes.setdefault("accuracy", []).append(f"oracle ceiling {_number(oracle.get('accuracy'))}")
    location = baselines.get("majority_location")
    if location:
        notes.setdefault("spatial_accuracy", []).append(
            f"always {location['cell']} {_number(location['accuracy'])}"
        )
    spatial = baselines.get("constant_spatial_reward")
    if spatial:
        notes.setdefault("spatial_accuracy", []).append(
            f"best constant reward {_number(spatial['reward'])} ({spatial['cell']}, "
            f"adjacent {spatial['adjacent_credit']:g})"
        )
    for key, name in (("bbox_mean_iou", "centre_prior_box_iou"), ("mask_mean_iou", "centre_prior_mask_iou"),
                      ("outline_mean_iou", "centre_prior_outline_iou")):  # fmt: skip
        if baselines.get(name) is not None:
            notes.setdefault(key, []).append(f"centre prior {_number(baselines[name])}")
    return {key: "; ".join(parts) for key, parts in notes.items()}


def format_table(metrics: Mapping[str, Any], *, title: str = "") -> str:
    """The few numbers a reader wants first, one per line, with lesion-bootstrap intervals and, in
    brackets, the baselines and ceiling of metrics.json's `baselines` beside the metric they bound."""
    majority = metrics.get("majority_baseline") or {}
    bbox = metrics.get("bbox") or {}
    notes = baseline_notes(metrics)
    rows = [
        ("images", str(metrics["n"])),
        ("parse rate", _number(metrics.get("parse_rate"))),
        (
            "accuracy",
            _number(metrics.get("accuracy"))
            + _interval(metrics, "accuracy")
            + _beside(notes.get("accuracy", "")),
        ),
        (
            "balanced accuracy",
            _number(metrics.get("balanced_accuracy"))
            + _interval(metrics, "balanced_accuracy")
            + _beside(notes.get("balanced_accuracy", "")),
        ),
        ("macro F1", _number(metrics.get("macro_f1")) + _interval(metrics, "macro_f1")),
        (
            "majority baseline",
            f"accuracy {_number(majority.get('accuracy'))}, "
            f"balanced {_number(majority.get('balanced_accuracy'))} (always {majority.get('class')})",
        ),
    ]
    if metrics.get("spatial_n"):
        rows.append(
            (
                "spatial accuracy",
                _number(metrics.get("spatial_accuracy"))
                + _interval(metrics, "spatial_accuracy")
                + _beside(notes.get("spatial_accuracy", "")),
            )
        )
    if bbox.get("n"):
        rows.append(
            (
                "mean box IoU",
                _number(bbox.get("mean_iou"))
                + _interval(metrics, "bbox_mean_iou")
                + _beside(notes.get("bbox_mean_iou", "")),
            )
        )
    if metrics.get("mask_n"):
        rows.append(
            ("mean mask IoU", _number(metrics.get("mask_mean_iou")) + _beside(notes.get("mask_mean_iou", "")))
        )
    if metrics.get("outline_mean_iou") is not None:
        rows.append(
            (
                "mean outline IoU",
                _number(metrics.get("outline_mean_iou")) + _beside(notes.get("outline_mean_iou", "")),
            )
        )
    calibration = metrics.get("calibration")
    if calibration:
        rows.append(("macro AUROC (OvR)", _number(calibration.get("macro_auroc_ovr"))))
        rows.append(("ECE (top label)", _number(calibration.get("ece"))))
    width = max(len(name) for name, _ in rows)
    lines = [title] if title else []
    lines.extend(f"  {name:<{width}}  {value}" for name, value in rows)
    return "\n".join(lines)


def scalar_summary(metrics: Mapping[str, Any]) -> dict[str, float | int | str]:
    """Flat scalars for a tracker summary: headline values and CI bounds."""
    summary: dict[str, Any] = {
        "n": metrics["n"],
        "parse_rate": metrics["parse_rate"],
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "majority_accuracy": (metrics.get("majority_baseline") or {}).get("accuracy"),
        "majority_balanced_accuracy": (metrics.get("majority_baseline") or {}).get("balanced_accuracy"),
        "spatial_accuracy": metrics.get("spatial_accuracy"),
        "bbox_mean_iou": (metrics.get("bbox") or {}).get("mean_iou"),
        "mask_mean_iou": metrics.get("mask_mean_iou"),
    }
    for key, interval in (metrics.get("bootstrap") or {}).items():
        if interval:
            summary[f"{key}_ci_low"], summary[f"{key}_ci_high"] = interval["low"], interval["high"]
    calibration = metrics.get("calibration") or {}
    if calibration:
        summary["macro_auroc_ovr"], summary["ece"] = (
            calibration.get("macro_auroc_ovr"),
            calibration.get("ece"),
        )
    return {key: value for key, value in summary.items() if value is not None}


def log_to_wandb(
    tracker: Any,
    metrics: Mapping[str, Any],
    plots: Mapping[str, Path],
    predictions: Sequence[Mapping[str, Any]],
    image_paths: Mapping[str, str],
    *,
    prefix: str = "eval",
) -> None:
    """Summary scalars, the plots, and a predictions table (plain cells; an overlay image per row)."""
    import wandb

    from skinderm.data.images import load_image

    tracker.summary.update({f"{prefix}/{key}": value for key, value in scalar_summary(metrics).items()})
    tracker.log({f"{prefix}/plots/{name}": wandb.Image(str(path)) for name, path in plots.items()})
    columns = [
        "image_id", "lesion_id", "image", "dx_true", "dx_pred", "correct", "p_true", "location_true",
        "location_pred", "iou", "mask_iou", "outline_iou", "parse_ok", "completion",
    ]  # fmt: skip
    table = wandb.Table(columns=columns)
    for row, prediction in enumerate(predictions):
        image = None
        path = image_paths.get(prediction["image_id"])
        if row < WANDB_TABLE_IMAGES and path:
            overlay = draw_overlay(
                load_image(path),
                true_box=prediction.get("bbox_true"),
                pred_box=prediction.get("bbox_pred"),
                pred_polygon=prediction.get("polygon_pred"),
            )
            image = wandb.Image(overlay, caption=prediction_label(prediction))
        probs = prediction.get("class_probs") or {}
        table.add_data(
            str(prediction["image_id"]),
            str(prediction.get("lesion_id")),
            image,
            str(prediction["dx_true"]),
            "" if is_missing(prediction.get("dx_pred")) else str(prediction["dx_pred"]),
            prediction.get("dx_pred") == prediction["dx_true"],
            float(probs[prediction["dx_true"]]) if prediction["dx_true"] in probs else None,
            prediction.get("location_true") or "",
            prediction.get("location_pred") or "",
            None if is_missing(prediction.get("iou")) else float(prediction["iou"]),
            None if is_missing(prediction.get("mask_iou")) else float(prediction["mask_iou"]),
            None if is_missing(prediction.get("outline_iou")) else float(prediction["outline_iou"]),
            bool(prediction.get("parse_ok")),
            str(prediction.get("completion", "")),
        )
    tracker.log({f"{prefix}/predictions": table})


def class_name(code: str | None) -> str | None:
    """The full HAM10000 name of a class code (None for None)."""
    return None if code is None else CLASS_NAMES.get(code)
