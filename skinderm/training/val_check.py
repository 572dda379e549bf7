"""The check every training run ends with (and GRPO also starts with): greedy answers on part of the val
split, scored by the metrics and by every reward term.

It runs on every rank of a multi-process job, never on rank 0 alone: under FSDP and DeepSpeed ZeRO-3
each rank holds a shard of the weights, every forward pass needs all ranks, and a rank-0-only generation
would hang the job. Each rank answers an equal share of the images and the answers are gathered.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig

from skinderm.conversations import ExampleBuilder
from skinderm.core.files import to_plain, write_json_atomic
from skinderm.core.runs import METRICS_VAL_FILE, PREDICTIONS_VAL_FILE, RunFolder, is_main_process
from skinderm.data.splits import subsample
from skinderm.evaluation.answering import answer_records
from skinderm.evaluation.metrics import compute_metrics, headline
from skinderm.evaluation.report import write_predictions

log = logging.getLogger(__name__)


@contextmanager
def generation_model(trainer: Any) -> Iterator[Any]:
    """The trainer's model, ready for `generate` on this rank, as TRL's GRPOTrainer prepares it.

    ZeRO-3 parameters are gathered, FSDP1 full parameters summoned (FSDP2 gathers in its forward
    hooks), gradient checkpointing is off while generating. Also right before training starts.
    """
    from trl.distributed import DistributedBackend
    from trl.models import unwrap_model_for_generation

    with (
        unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model,
        DistributedBackend(trainer.accelerator).summon_full_params(trainer.model_wrapped, recurse=False),
    ):
        yield model


def rank_share(n_records: int, world_size: int, rank: int) -> tuple[list[int], int]:
    """(indices this rank answers, how many repeats pad its share): equal-length contiguous shares.

    Every rank must make the same number of `generate` calls: with sharded weights, generation runs in
    lock-step across ranks (transformers' synced_gpus), so a rank with one batch fewer would hang the
    others. A short share repeats its last record (the first one where it has none); repeats are dropped.
    """
    share = -(-n_records // world_size)
    indices = list(range(rank * share, min(n_records, (rank + 1) * share)))
    return indices, share - len(indices)


def answer_on_all_ranks(
    trainer: Any,
    processor: Any,
    records: Sequence[dict[str, Any]],
    builder: ExampleBuilder,
    *,
    batch_size: int,
    max_new_tokens: int,
    desc: str,
) -> list[dict[str, Any]]:
    """Greedy prediction records for `records`, answered in shares by every rank; every rank gets all.

    Call it on every rank (or none): it synchronises them.
    """
    accelerator = trainer.accelerator
    world_size, rank = accelerator.num_processes, accelerator.process_index
    indices, padding = rank_share(len(records), world_size, rank)
    padded = indices + [indices[-1] if indices else 0] * padding
    with generation_model(trainer) as model:
        answers = answer_records(
            model,
            processor,
            [records[index] for index in padded],
            builder,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            desc=desc if world_size == 1 else f"{desc} (rank {rank})",
        )
    if world_size == 1:
        return answers
    from accelerate.utils import gather_object

    gathered = dict(gather_object(list(zip(indices, answers[: len(indices)], strict=True))))
    return [gathered[index] for index in range(len(records))]


def reward_components(
    reward_funcs: Sequence[Callable[..., list[float | None]]],
    completions: Sequence[str],
    columns: Sequence[Mapping[str, Any]],
) -> dict[str, list[float | None]]:
    """Every reward function on completions with their ground-truth columns (as TRL would call them)."""
    kwargs = {key: [row[key] for row in columns] for key in columns[0]} if columns else {}
    return {func.__name__: list(func(list(completions), **kwargs)) for func in reward_funcs}


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [value for value in values if value is not None]  # None: no ground truth for that term
    return sum(kept) / len(kept) if kept else None


def val_check(
    trainer: Any,
    processor: Any,
    records: Sequence[dict[str, Any]],
    builder: ExampleBuilder,
    cfg: DictConfig,
    *,
    desc: str,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(summary, prediction records, full metrics) of the trainer's greedy answers on `records`.

    The summary holds the headline metrics plus the mean of every reward term of the `reward` group and
    their weighted total, so SFT and GRPO report the same numbers under the same keys. Call it on every
    rank (it synchronises them); `eval.max_new_tokens` bounds every answer.
    """
    from skinderm.rewards import build_reward_functions, weighted_total

    predictions = answer_on_all_ranks(
        trainer,
        processor,
        list(records),
        builder,
        batch_size=int(cfg.eval.batch_size),
        max_new_tokens=int(cfg.eval.max_new_tokens),
        desc=desc,
    )
    metrics = compute_metrics(predictions)
    summary = headline(metrics)
    class_counts = Counter(record["dx"] for record in records)
    reward_funcs, weights = build_reward_functions(
        to_plain(cfg.reward), class_counts=dict(class_counts), answer_fields=tuple(cfg.answer.fields)
    )
    columns = [builder.reward_columns(record) for record in records]
    components = reward_components(reward_funcs, [p["completion"] for p in predictions], columns)
    names = [func.__name__ for func in reward_funcs]
    total = weighted_total(components, dict(zip(names, weights, strict=True)))
    summary["reward_weighted"] = _mean(total)
    summary.update({f"reward_{name}": _mean(values) for name, values in components.items()})
    log.info("%s: %s", desc, summary)
    return summary, predictions, metrics


def val_records(records: Sequence[dict[str, Any]], cfg: DictConfig) -> list[dict[str, Any]]:
    """The `eval.num_samples` val images every check of a run uses (the same ones before and after)."""
    return subsample(list(records), int(cfg.eval.num_samples), int(cfg.seed))


def write_val_check(
    run: RunFolder,
    *,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
) -> None:
    """predictions_val.jsonl and metrics_val.json, one schema for every stage: `before` (the starting
    policy's summary, null when not measured), `after` (the trained policy's) and `metrics` (all of
    `compute_metrics` for the trained policy)."""
    if is_main_process():
        write_predictions(run.path / PREDICTIONS_VAL_FILE, predictions)
        write_json_atomic(run.path / METRICS_VAL_FILE, {"before": before, "after": after, "metrics": metrics})
