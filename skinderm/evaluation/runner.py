"""Evaluate a model on records: generate, parse, score, write predictions and metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skinderm.data.conversations import ExampleBuilder
from skinderm.evaluation.generation import generate_answers, prediction_record
from skinderm.evaluation.metrics import compute_metrics

log = logging.getLogger(__name__)

# The headline numbers, printed and put at the top of metrics files.
HEADLINE_KEYS = ("n", "parse_rate", "accuracy", "balanced_accuracy", "spatial_accuracy")


def evaluate_records(
    model: Any,
    processor: Any,
    records: Sequence[Mapping[str, Any]],
    builder: ExampleBuilder,
    *,
    batch_size: int,
    max_new_tokens: int,
    desc: str = "evaluate",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Greedy answers for `records`, their prediction records, and the metrics over them."""
    images = [builder.image(record) for record in records]
    completions = generate_answers(
        model,
        processor,
        images,
        builder.prompt,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc=desc,
    )
    predictions = [
        prediction_record(record, text, builder) for record, text in zip(records, completions, strict=True)
    ]
    return predictions, compute_metrics(predictions)


def write_predictions(path: Path, predictions: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for prediction in predictions:
            handle.write(json.dumps(prediction, default=str) + "\n")


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers a reader wants first (plus mean box IoU when boxes were scored)."""
    summary = {key: metrics.get(key) for key in HEADLINE_KEYS}
    bbox = metrics.get("bbox") or {}
    summary["bbox_mean_iou"] = bbox.get("mean_iou")
    summary["majority_balanced_accuracy"] = (metrics.get("majority_baseline") or {}).get("balanced_accuracy")
    return summary
