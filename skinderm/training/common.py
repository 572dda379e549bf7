"""What SFT and GRPO share: seeding, torch settings, data, model, trainer arguments, log summaries."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig
from tqdm.auto import tqdm

from skinderm.conversations import ExampleBuilder, decode_image_source
from skinderm.core.errors import ConfigError
from skinderm.core.files import to_plain
from skinderm.core.runs import RunFolder
from skinderm.core.tracking import report_to
from skinderm.data.prepare import frame_to_records, prepare_dataset

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)


def load_split_records(cfg: DictConfig) -> dict[str, list[dict[str, Any]]]:
    """Annotated records of the configured dataset, by split (data generated/annotated on demand)."""
    frame = prepare_dataset(to_plain(cfg.dataset))
    splits = {name: frame_to_records(frame[frame["split"] == name]) for name in ("train", "val", "test")}
    if not splits["train"]:
        raise ValueError(
            f"dataset.root={cfg.dataset.root}: the train split is empty; check the data and dataset.splits"
        )
    log.info("records: %s", {name: len(rows) for name, rows in splits.items()})
    return splits


def example_builder(cfg: DictConfig) -> ExampleBuilder:
    return ExampleBuilder(
        fields=tuple(cfg.answer.fields),
        min_pixels=int(cfg.model.min_pixels),
        max_pixels=int(cfg.model.max_pixels),
        polygon_max_points=int(cfg.answer.polygon_max_points),
    )


def build_examples(
    records: Sequence[Mapping[str, Any]], make: Callable[[Mapping[str, Any]], dict[str, Any]], desc: str
) -> list[dict[str, Any]]:
    """Each record's example, `make(record)`, with a progress bar (masks are read; images if `make` does)."""
    return [make(record) for record in tqdm(records, desc=desc, unit="img", mininterval=2.0)]


IMAGES_COLUMN = "images"


class DecodeImages:
    """`Dataset.with_transform` callable: the `images` column's sources become decoded PIL images.

    Why: a training dataset of decoded images holds every pixel of the split in memory before the first
    step (~5 GB per rank for HAM10000 at 504x364); sources are a path and a size. datasets applies the
    transform on every read (`ds[i]`, `ds[[i, j]]` as the DataLoader fetches, iteration), to the rows
    read only, so a batch decodes its own images, in the DataLoader's workers when there are any. Every
    other column passes through unchanged, and a read without `images` (`ds["image_id"]`) decodes nothing.
    A module-level class, not a closure, so the dataset pickles into DataLoader worker processes.
    """

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if IMAGES_COLUMN not in batch:
            return batch
        decoded = [[decode_image_source(source) for source in sources] for sources in batch[IMAGES_COLUMN]]
        return {key: decoded if key == IMAGES_COLUMN else values for key, values in batch.items()}


def image_dataset(
    records: Sequence[Mapping[str, Any]],
    make: Callable[[Mapping[str, Any]], dict[str, Any]],
    desc: str,
    *,
    with_image_id: bool = False,
) -> Dataset:
    """A datasets.Dataset of one example per record, `make(record)` (ExampleBuilder.sft_columns /
    grpo_columns: `images` holds image sources), whose images decode when read (`DecodeImages`).

    The rows read back are those of the eager construction it replaces,
    `Dataset.from_list(build_examples(records, builder.sft_example, ...))`: same keys in the same order,
    same values, same pixels (datasets stored those images losslessly, as PNG); tests/training/
    test_lazy_dataset.py checks it. Text and ground truth (answers, boxes, outlines from the masks) are
    still computed now: they are small, and a bad mask still fails before training. `with_image_id`
    adds the record's image_id as the last column (hardware.record_shards reads it; TRL's SFT collator
    ignores it).
    """
    from datasets import Dataset

    def row(record: Mapping[str, Any]) -> dict[str, Any]:
        example = make(record)
        return {**example, "image_id": record["image_id"]} if with_image_id else example

    return Dataset.from_list(build_examples(records, row, desc)).with_transform(DecodeImages())


def precision_flags(cfg: DictConfig) -> dict[str, bool]:
    precision = cfg.hardware.precision
    if precision not in {"float32", "bfloat16", "float16"}:
        raise ValueError(f"hardware.precision={precision!r}: use float32, bfloat16 or float16")
    return {"bf16": precision == "bfloat16", "fp16": precision == "float16"}


def trainer_arguments(cfg: DictConfig, run: RunFolder) -> dict[str, Any]:
    """Arguments common to SFTConfig and GRPOConfig, taken from the stage and hardware groups."""
    stage = cfg.stage
    return {
        "output_dir": str(run.checkpoints_dir),
        "run_name": f"{stage.name}-{run.path.name}",
        "max_steps": int(stage.max_steps),
        "per_device_train_batch_size": int(stage.per_device_train_batch_size),
        "gradient_accumulation_steps": int(stage.gradient_accumulation_steps),
        "learning_rate": float(stage.learning_rate),
        "lr_scheduler_type": stage.lr_scheduler_type,
        "warmup_steps": int(stage.warmup_steps),
        "weight_decay": float(stage.weight_decay),
        "max_grad_norm": float(stage.max_grad_norm),
        "logging_steps": int(stage.logging_steps),
        "save_strategy": "steps",
        "save_steps": int(stage.save_steps),
        "save_total_limit": stage.save_total_limit,
        "seed": int(cfg.seed),
        "data_seed": int(cfg.seed),
        "use_cpu": bool(cfg.hardware.use_cpu),
        "activation_checkpointing": bool(cfg.hardware.gradient_checkpointing),
        "dataloader_num_workers": int(cfg.hardware.dataloader_num_workers),
        "ddp_find_unused_parameters": cfg.hardware.ddp_find_unused_parameters,
        "report_to": report_to(cfg),
        "disable_tqdm": False,
        **precision_flags(cfg),
    }


def with_trl_fields(
    config_class: type, ours: Mapping[str, Any], passthrough: Mapping[str, Any] | None
) -> Any:
    """`config_class(**ours, **passthrough)`: TRL's SFTConfig / GRPOConfig plus the `stage.trl.*` fields.

    Any TRL field reaches the trainer without a code change (`stage.trl.epsilon_high=0.28`), but an unknown
    one fails in one line naming it and its close matches, and a field skinderm sets itself from a stage,
    hardware or eval key cannot be set a second time here (the two would silently disagree).
    """
    return config_class(**ours, **check_trl_fields(config_class, ours, passthrough))


def check_trl_fields(
    config_class: type, ours: Mapping[str, Any], passthrough: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The `stage.trl.*` fields as a plain dict, after the checks of `with_trl_fields` (ConfigError)."""
    extra = to_plain(passthrough) or {}
    known = {item.name for item in dataclasses.fields(config_class)}
    for key in sorted(extra):
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise ConfigError(
                f"config key 'stage.trl.{key}': not a field of TRL's {config_class.__name__}{hint}"
            )
        if key in ours:
            raise ConfigError(
                f"config key 'stage.trl.{key}': skinderm sets {config_class.__name__}.{key} itself from the "
                "stage, hardware or eval keys; set it there (python -m skinderm.train --cfg job shows them)"
            )
    return extra


def examples_drawn(trainer: Any) -> int:
    """Training examples (GRPO: completions) the run's optimizer steps consumed, over all ranks."""
    args = trainer.args
    world = int(getattr(args, "world_size", 1) or 1)
    per_step = int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * world
    return int(trainer.state.global_step) * per_step


def model_loading_arguments(cfg: DictConfig) -> dict[str, Any]:
    """How the hardware group loads weights: dtype, attention kernel, 4-bit quantisation (QLoRA)."""
    from skinderm.models.loading import four_bit_arguments

    precision = str(cfg.hardware.precision)
    return {
        "torch_dtype": precision,
        "attn_implementation": cfg.hardware.attn_implementation,
        "quantization": (
            four_bit_arguments(precision, use_cpu=bool(cfg.hardware.use_cpu))
            if cfg.hardware.load_in_4bit
            else None
        ),
    }


def lora_config(cfg: DictConfig) -> Any | None:
    """A PEFT LoraConfig from `model.lora`, or None for full fine-tuning."""
    lora = cfg.model.lora
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=int(lora.r),
        lora_alpha=int(lora.alpha),
        lora_dropout=float(lora.dropout),
        target_modules=to_plain(lora.target_modules),
        # Names like gate_proj also occur in the vision blocks; adapters go on the language model only.
        exclude_modules=r".*visual.*",
        task_type="CAUSAL_LM",
    )


def save_policy(trainer: Any, processor: Any, run: RunFolder) -> None:
    """The trained model (or adapter) and its processor into <run>/model, loadable by evaluate and GRPO."""
    trainer.save_model(str(run.model_dir))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(run.model_dir))


def summarise_log_history(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Loss curves from trainer.state.log_history: first/last values and the eval curve."""
    train = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]
    summary: dict[str, Any] = {
        "train_loss_curve": [[step, float(loss)] for step, loss in train],
        "eval_loss_curve": [[step, float(loss)] for step, loss in evals],
    }
    if train:
        summary["train_loss_first"], summary["train_loss_last"] = float(train[0][1]), float(train[-1][1])
    if evals:
        summary["eval_loss_first"], summary["eval_loss_last"] = float(evals[0][1]), float(evals[-1][1])
    final = next((entry for entry in reversed(history) if "train_runtime" in entry), None)
    if final:
        summary["train_runtime_s"] = float(final["train_runtime"])
        summary["train_steps_per_s"] = float(final.get("train_steps_per_second", math.nan))
    return summary
