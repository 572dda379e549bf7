"""Stage 1 recipe: supervised fine-tuning with TRL's SFTTrainer (LoRA or full)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset
from omegaconf import DictConfig
from trl import SFTConfig, SFTTrainer

from skinderm.models.loading import freeze_vision_tower, load_model_and_processor
from skinderm.training.common import (
    build_examples,
    example_builder,
    load_split_records,
    lora_config,
    subsample,
    summarise_log_history,
    trainer_arguments,
)
from skinderm.training.evaluate_after import evaluate_on_split
from skinderm.training.run import RunFolder, to_plain

log = logging.getLogger(__name__)


def class_balanced_weights(labels: Sequence[str]) -> torch.Tensor:
    """Per-example sampling weights that make every class equally likely to be drawn."""
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.double)


class ClassBalancedSFTTrainer(SFTTrainer):
    """SFTTrainer drawing training examples class-balanced (with replacement), seeded by `args.data_seed`."""

    def __init__(self, *args: Any, sample_labels: Sequence[str], **kwargs: Any) -> None:
        self._sample_weights = class_balanced_weights(sample_labels)
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        generator = torch.Generator().manual_seed(int(self.args.data_seed or self.args.seed))
        return torch.utils.data.WeightedRandomSampler(
            self._sample_weights, num_samples=len(self._sample_weights), replacement=True, generator=generator
        )


def run_sft(cfg: DictConfig, run: RunFolder, *, resume_from_checkpoint: str | None = None) -> dict[str, Any]:
    """Train Stage 1 and return its metrics (also written by the caller to metrics.json)."""
    splits = load_split_records(cfg)
    builder = example_builder(cfg)
    model, processor = load_model_and_processor(
        to_plain(cfg.model),
        torch_dtype=cfg.hardware.precision,
        attn_implementation=cfg.hardware.attn_implementation,
    )
    if cfg.model.freeze_vision_tower:
        log.info("froze %d vision-tower parameters", freeze_vision_tower(model))

    train_records = splits["train"]
    eval_records = subsample(splits["val"], cfg.stage.eval_max_samples, cfg.seed)
    train_dataset = Dataset.from_list(build_examples(train_records, builder.sft_example, "train examples"))
    eval_dataset = (
        Dataset.from_list(build_examples(eval_records, builder.sft_example, "val examples"))
        if eval_records
        else None
    )

    arguments = SFTConfig(
        **trainer_arguments(cfg, run),
        max_length=cfg.stage.max_length,
        completion_only_loss=True,
        eval_strategy="steps" if eval_dataset is not None else "no",
        eval_steps=int(cfg.stage.eval_steps),
        # Image examples are collated (tokenised + image processed) on the fly by TRL's VLM collator.
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
    )
    trainer_kwargs: dict[str, Any] = {
        "model": model,
        "args": arguments,
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "processing_class": processor,
        "peft_config": lora_config(cfg),
    }
    if cfg.stage.class_balanced_sampling:
        trainer = ClassBalancedSFTTrainer(**trainer_kwargs, sample_labels=[r["dx"] for r in train_records])
    else:
        trainer = SFTTrainer(**trainer_kwargs)

    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if eval_dataset is not None:
        trainer.evaluate()

    trainer.save_model(str(run.model_dir))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(run.model_dir))

    metrics: dict[str, Any] = {
        "stage": "sft",
        "n_train": len(train_records),
        "n_val_eval_loss": len(eval_records),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "global_step": trainer.state.global_step,
        **summarise_log_history(trainer.state.log_history),
    }
    if trainer.is_world_process_zero() and cfg.eval.num_samples:
        metrics["val_generation"] = evaluate_on_split(
            trainer.model, processor, splits["val"], builder, cfg, run, split_name="val"
        )
    return metrics
