"""Answer records with a model and score them: the library call behind evaluate, the training runs'
val checks and export's round trip (greedy answers -> prediction records -> metrics)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from skinderm.conversations import ExampleBuilder
from skinderm.evaluation.generation import LazyImages, generate_answers, prediction_record
from skinderm.evaluation.metrics import compute_metrics


def evaluate_records(
    model: Any,
    processor: Any,
    records: Sequence[Mapping[str, Any]],
    builder: ExampleBuilder,
    *,
    batch_size: int,
    max_new_tokens: int,
    desc: str = "evaluate",
    score_classes: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Greedy answers for `records`, their prediction records, and the metrics over them.

    With `score_classes`, each prediction also gets `class_probs` (see skinderm.evaluation.scoring) and
    the metrics a "calibration" block.
    """
    predictions = answer_records(
        model,
        processor,
        records,
        builder,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc=desc,
        score_classes=score_classes,
    )
    metrics = compute_metrics(predictions)
    if score_classes:
        from skinderm.evaluation.calibration import compute_calibration

        metrics["calibration"] = compute_calibration(predictions)
    return predictions, metrics


def answer_records(
    model: Any,
    processor: Any,
    records: Sequence[Mapping[str, Any]],
    builder: ExampleBuilder,
    *,
    batch_size: int,
    max_new_tokens: int,
    desc: str = "evaluate",
    score_classes: bool = False,
) -> list[dict[str, Any]]:
    """Greedy answers for `records` as prediction records, in the order of `records`.

    Images are decoded batch by batch, in order of model input size so that a batch pads as little as
    possible. The number of `generate` calls depends only on len(records) and batch_size (what lock-step
    generation across ranks needs, see skinderm.training.val_check).
    """
    order = sorted(range(len(records)), key=lambda i: builder.model_size(records[i]))
    ordered = [records[i] for i in order]
    completions = generate_answers(
        model,
        processor,
        LazyImages(ordered, builder.image),
        builder.prompt,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc=desc,
    )
    predictions_in_order = [
        prediction_record(record, text, builder) for record, text in zip(ordered, completions, strict=True)
    ]
    if score_classes:
        from skinderm.evaluation.scoring import class_probabilities

        probabilities = class_probabilities(
            model, processor, LazyImages(ordered, builder.image), builder.prompt, fields=builder.fields
        )
        for prediction, probs in zip(predictions_in_order, probabilities, strict=True):
            prediction["class_probs"] = probs
    predictions: list[dict[str, Any]] = [{}] * len(records)
    for position, index in enumerate(order):
        predictions[index] = predictions_in_order[position]
    return predictions
