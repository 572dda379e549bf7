"""The check every training run ends with: greedy answers on part of the val split, scored.

It runs on every rank of a multi-process job, never on rank 0 alone: under FSDP and DeepSpeed ZeRO-3
each rank holds a shard of the weights, every forward pass needs all ranks, and a rank-0-only generation
would hang the job. Each rank answers an equal share of the images and the answers are gathered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig

from skinderm.conversations import ExampleBuilder
from skinderm.core.files import write_json_atomic
from skinderm.core.runs import RunFolder, is_main_process
from skinderm.data.splits import subsample
from skinderm.evaluation.metrics import compute_metrics
from skinderm.evaluation.runner import answer_records, headline, write_predictions

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


def evaluate_on_split(
    trainer: Any,
    processor: Any,
    records: Sequence[dict[str, Any]],
    builder: ExampleBuilder,
    cfg: DictConfig,
    run: RunFolder,
    *,
    split_name: str,
) -> dict[str, Any]:
    """Score `eval.num_samples` images of a split with the trainer's model, on every rank; rank 0 writes
    predictions and full metrics; every rank returns the headline."""
    chosen = subsample(list(records), int(cfg.eval.num_samples), int(cfg.seed))
    if not chosen:
        return {}
    predictions = answer_on_all_ranks(
        trainer,
        processor,
        chosen,
        builder,
        batch_size=int(cfg.eval.batch_size),
        max_new_tokens=int(cfg.eval.max_new_tokens),
        desc=f"{split_name} answers",
    )
    metrics = compute_metrics(predictions)
    if is_main_process():
        write_predictions(run.path / f"predictions_{split_name}.jsonl", predictions)
        write_json_atomic(run.path / f"metrics_{split_name}.json", metrics)
    summary = headline(metrics)
    log.info("%s generation check: %s", split_name, summary)
    return summary
