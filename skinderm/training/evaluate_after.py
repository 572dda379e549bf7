"""The check every training run ends with: greedy answers on part of the val split, scored."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from skinderm.data.conversations import ExampleBuilder
from skinderm.evaluation.runner import evaluate_records, headline, write_predictions
from skinderm.training.common import subsample
from skinderm.training.run import RunFolder, write_json_atomic

log = logging.getLogger(__name__)


def evaluate_on_split(
    model: Any,
    processor: Any,
    records: Sequence[dict[str, Any]],
    builder: ExampleBuilder,
    cfg: DictConfig,
    run: RunFolder,
    *,
    split_name: str,
) -> dict[str, Any]:
    """Score `eval.num_samples` images of a split; write predictions and full metrics; return the headline."""
    chosen = subsample(list(records), int(cfg.eval.num_samples), int(cfg.seed))
    if not chosen:
        return {}
    predictions, metrics = evaluate_records(
        model,
        processor,
        chosen,
        builder,
        batch_size=int(cfg.eval.batch_size),
        max_new_tokens=int(cfg.eval.max_new_tokens),
        desc=f"{split_name} answers",
    )
    write_predictions(run.path / f"predictions_{split_name}.jsonl", predictions)
    write_json_atomic(run.path / f"metrics_{split_name}.json", metrics)
    summary = headline(metrics)
    log.info("%s generation check: %s", split_name, summary)
    return summary
