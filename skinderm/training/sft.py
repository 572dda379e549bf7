"""Stage 1 recipe: supervised fine-tuning with TRL's SFTTrainer (LoRA or full)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from peft import PeftModel
from trl import SFTConfig, SFTTrainer

from skinderm.answers import ANSWER_FIELDS
from skinderm.core.files import to_plain
from skinderm.core.runs import RunFolder
from skinderm.data.splits import subsample
from skinderm.models.loading import freeze_vision_tower, load_model_and_processor
from skinderm.training.common import (
    check_trl_fields,
    example_builder,
    examples_drawn,
    image_dataset,
    load_split_records,
    lora_config,
    model_loading_arguments,
    save_policy,
    summarise_log_history,
    trainer_arguments,
    with_trl_fields,
)
from skinderm.training.credit import field_loss_weights
from skinderm.training.optim import build_optimizer
from skinderm.training.resume import ResumableTrainerMixin
from skinderm.training.sampling import ClassBalanceSampler, draws_report
from skinderm.training.shards import SHARDS_DIR, record_data_shards
from skinderm.training.val_check import val_check, val_records, write_val_check

log = logging.getLogger(__name__)


class SkindermSFTTrainer(ResumableTrainerMixin, SFTTrainer):
    """SFTTrainer with per-module learning rates (`stage.lr_multipliers`) and the class-balance sampler.

    The optimizer is built in `create_optimizer`, i.e. after any PEFT wrapping, so adapters are covered
    too. Training examples are drawn by `ClassBalanceSampler` (`stage.class_balance`), seeded by
    `args.data_seed` and the epoch. With `field_loss_weights` ({answer field: weight}), each field's value
    tokens weigh that much in the training loss (`_weight_answer_fields`); the eval loss stays TRL's mean.
    """

    def __init__(
        self,
        *args: Any,
        sample_labels: Sequence[str],
        class_balance: str,
        lr_multipliers: Mapping[str, float] | None = None,
        field_loss_weights: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        self._lr_multipliers = dict(lr_multipliers or {})
        self._sample_labels, self._class_balance = list(sample_labels), class_balance
        super().__init__(*args, **kwargs)
        if field_loss_weights:
            self._weight_answer_fields(dict(field_loss_weights))

    def _weight_answer_fields(self, weights: dict[str, float]) -> None:
        """Scale the per-token log-probabilities of TRL's fused forward by `field_loss_weights` of the labels.

        TRL's loss is -sum(log_probs) / (answer tokens), computed from the forward's `log_probs`; wrapping the
        forward TRL installed (on the base model under PEFT) changes the numerator only, so the metrics
        (entropy, token accuracy) and the normaliser stay TRL's, and a weight of 1 everywhere is TRL exactly.
        """
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        fused_forward = base.forward
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)

        @functools.wraps(fused_forward)
        def weighted_forward(*args: Any, **kwargs: Any) -> Any:
            outputs = fused_forward(*args, **kwargs)
            log_probs = getattr(outputs, "log_probs", None)
            if kwargs.get("fused_lm_head") and base.training and log_probs is not None:
                labels = kwargs.get("shift_labels")
                labels = kwargs["labels"][:, 1:] if labels is None else labels  # the fused forward's shift
                token_weights = field_loss_weights(labels, weights, tokenizer)
                outputs.log_probs = log_probs * token_weights.to(log_probs.dtype)
            return outputs

        base.forward = weighted_forward

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is None and self._lr_multipliers:
            self.optimizer = build_optimizer(
                self.model if model is None else model,
                learning_rate=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                lr_multipliers=self._lr_multipliers,
                training_args=self.args,  # honours `optim` (paged / 8-bit AdamW under QLoRA) too
            )
        return super().create_optimizer(model)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        seed = int(self.args.data_seed or self.args.seed)
        return ClassBalanceSampler(self._sample_labels, self._class_balance, seed=seed)  # type: ignore[arg-type]


def sft_arguments(cfg: DictConfig, run: RunFolder, *, evaluate: bool) -> dict[str, Any]:
    """SFTConfig's arguments from the stage and hardware groups (`stage.trl.*` adds any other field)."""
    return {
        **trainer_arguments(cfg, run),
        "per_device_eval_batch_size": int(cfg.stage.per_device_eval_batch_size),
        "max_length": cfg.stage.max_length,
        "completion_only_loss": True,
        "eval_strategy": "steps" if evaluate else "no",
        "eval_steps": int(cfg.stage.eval_steps),
        # Image examples are collated (tokenised + image processed) on the fly by TRL's VLM collator.
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "remove_unused_columns": False,
    }


def checked_field_loss_weights(cfg: DictConfig) -> dict[str, float]:
    """`stage.field_loss_weights` as {field: weight} for the fields the answer teaches, each weight >= 0;
    {} (TRL's plain mean) when unset. A name outside ANSWER_FIELDS is an error; a known field the answer
    does not teach (the tiny recipe's location weight under `answer.fields=[diagnosis]`) is left out.
    Checked before any data or model loads."""
    weights = {str(k): v for k, v in dict(to_plain(cfg.stage.get("field_loss_weights")) or {}).items()}
    unknown = [field for field in weights if field not in ANSWER_FIELDS]
    if unknown:
        raise ValueError(
            f"stage.field_loss_weights has fields {unknown} no answer has; "
            f"use fields of {list(ANSWER_FIELDS)}"
        )
    bad = {field: weight for field, weight in weights.items() if not _is_weight(weight)}
    if bad:
        raise ValueError(f"stage.field_loss_weights {bad}: weights must be numbers >= 0")
    taught = {str(field) for field in cfg.answer.fields}
    return {field: float(weight) for field, weight in weights.items() if field in taught}


def _is_weight(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 and value == value


def evaluated_at(history: Sequence[Mapping[str, Any]], step: int) -> bool:
    """Whether the log history already holds an eval loss for `step` (eval_steps divides max_steps)."""
    return any("eval_loss" in entry and entry.get("step") == step for entry in history)


def run_sft(
    cfg: DictConfig,
    run: RunFolder,
    *,
    resume_from_checkpoint: str | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train Stage 1 and return its metrics (also written by the caller to metrics.json)."""
    check_trl_fields(SFTConfig, sft_arguments(cfg, run, evaluate=True), cfg.stage.trl)  # before any data
    checked_field_loss_weights(cfg)
    splits = load_split_records(cfg)
    builder = example_builder(cfg)
    model, processor = load_model_and_processor(to_plain(cfg.model), **model_loading_arguments(cfg))
    if cfg.model.freeze_vision_tower:
        log.info("froze %d vision-tower parameters", freeze_vision_tower(model))

    train_records = splits["train"]
    eval_records = subsample(splits["val"], cfg.stage.eval_max_samples, cfg.seed)
    # Images decode when a batch is read (image_dataset). image_id rides along for hardware.record_shards
    # (TRL's collator reads only prompt/completion/images).
    train_dataset = image_dataset(train_records, builder.sft_columns, "train examples", with_image_id=True)
    eval_dataset = image_dataset(eval_records, builder.sft_columns, "val examples") if eval_records else None

    arguments = with_trl_fields(
        SFTConfig, sft_arguments(cfg, run, evaluate=eval_dataset is not None), cfg.stage.trl
    )
    trainer_kwargs: dict[str, Any] = {
        "model": model,
        "args": arguments,
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "processing_class": processor,
        "peft_config": lora_config(cfg),
        "lr_multipliers": to_plain(cfg.stage.get("lr_multipliers")),
        "field_loss_weights": checked_field_loss_weights(cfg),
        "callbacks": list(callbacks),
    }
    labels = [record["dx"] for record in train_records]
    trainer = SkindermSFTTrainer(
        **trainer_kwargs, sample_labels=labels, class_balance=cfg.stage.class_balance
    )

    if cfg.hardware.record_shards:
        record_data_shards(trainer, run.path / SHARDS_DIR)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if eval_dataset is not None and not evaluated_at(trainer.state.log_history, trainer.state.global_step):
        trainer.evaluate()  # the final weights' eval loss, unless the loop's last eval was at this step

    save_policy(trainer, processor, run)

    metrics: dict[str, Any] = {
        "stage": "sft",
        "n_train": len(train_records),
        "n_val_eval_loss": len(eval_records),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "global_step": trainer.state.global_step,
        "class_draws": draws_report(labels, cfg.stage.class_balance, examples_drawn(trainer)),
        **summarise_log_history(trainer.state.log_history),
    }
    checked = val_records(splits["val"], cfg)
    if checked:  # on every rank: with sharded weights generation needs them all
        after, predictions, val_metrics = val_check(
            trainer, processor, checked, builder, cfg, desc="val answers"
        )
        metrics["val_generation"] = after
        write_val_check(run, before=None, after=after, predictions=predictions, metrics=val_metrics)
    return metrics
