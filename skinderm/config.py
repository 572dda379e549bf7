"""Config schemas: a misspelled key or a wrong type fails at once, with one line naming the key.

Hydra's struct mode already rejects unknown keys given on the command line. These schemas also catch
typos inside YAML files (a user's own `model/my_model.yaml`, an experiment overlay) and wrong value types,
before any data or model is loaded. Each group option is checked against the schema of its `name`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from skinderm.answers import ANSWER_FIELDS


class ConfigError(ValueError):
    """A user-fixable configuration problem; its message is one line naming the key."""


# Errors our code raises for things a user can fix (bad paths, data or settings). Their messages name the
# file or key and the fix, so the command line shows that one line instead of a traceback.
# (skinderm.data.errors.DataError is a ValueError.)
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
)


@contextlib.contextmanager
def user_errors_as_messages(cfg: DictConfig | None = None) -> Iterator[None]:
    """Turn a user-fixable error into `error: <one line>` and exit code 2; the traceback goes to a file.

    SKINDERM_DEBUG=1 (or HYDRA_FULL_ERROR=1) re-raises instead, for debugging.
    """
    try:
        yield
    except USER_ERRORS as error:
        if os.environ.get("SKINDERM_DEBUG") == "1" or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = _write_traceback(cfg)
        hint = f" (traceback: {where})" if where else " (SKINDERM_DEBUG=1 shows the traceback)"
        print(f"error: {message}{hint}", file=sys.stderr)
        sys.exit(2)


def _write_traceback(cfg: DictConfig | None) -> Path | None:
    try:
        folder = Path(cfg.paths.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "error.txt"
        path.write_text(traceback.format_exc())
        return path
    except Exception:  # no usable run folder: the message alone must do
        return None


# --- dataset -------------------------------------------------------------------------------------------
@dataclass
class SyntheticSchema:
    num_images: int = MISSING
    seed: int = MISSING
    image_width: int = MISSING
    image_height: int = MISSING
    class_counts: dict[str, int] | None = None
    max_images_per_lesion: int = MISSING
    multi_component_fraction: float = MISSING
    missing_mask_fraction: float = MISSING


@dataclass
class SplitsSchema:
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    seed: int = MISSING


@dataclass
class DatasetSchema:
    name: str = MISSING
    root: str = MISSING
    synthetic: SyntheticSchema | None = None
    splits: SplitsSchema = field(default_factory=SplitsSchema)
    on_error: str = MISSING
    annotations_dir: str | None = None


# --- model ---------------------------------------------------------------------------------------------
@dataclass
class LoraSchema:
    enabled: bool = MISSING
    r: int = MISSING
    alpha: int = MISSING
    dropout: float = MISSING
    target_modules: list[str] = MISSING


@dataclass
class ModelSchema:
    name: str = MISSING
    name_or_path: str = MISSING
    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    min_pixels: int = MISSING
    max_pixels: int = MISSING
    freeze_vision_tower: bool = MISSING
    lora: LoraSchema = field(default_factory=LoraSchema)
    tiny: dict[str, Any] | None = None


# --- stage ---------------------------------------------------------------------------------------------
@dataclass
class CommonStageSchema:
    name: str = MISSING
    max_steps: int = MISSING
    per_device_train_batch_size: int = MISSING
    per_device_eval_batch_size: int = MISSING
    gradient_accumulation_steps: int = MISSING
    learning_rate: float = MISSING
    lr_scheduler_type: str = MISSING
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    max_grad_norm: float = MISSING
    logging_steps: int = MISSING
    save_steps: int = MISSING
    save_total_limit: int | None = None


@dataclass
class SFTStageSchema(CommonStageSchema):
    class_balanced_sampling: bool = MISSING
    lr_multipliers: dict[str, float] | None = None
    eval_steps: int = MISSING
    eval_max_samples: int | None = None
    max_length: int | None = None


@dataclass
class GRPOStageSchema(CommonStageSchema):
    init_from: str | None = None
    merge_adapter: bool = MISSING
    num_generations: int = MISSING
    max_completion_length: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    beta: float = MISSING
    loss_type: str = MISSING
    scale_rewards: str = MISSING
    num_iterations: int = MISSING
    train_max_samples: int | None = None


# --- reward --------------------------------------------------------------------------------------------
@dataclass
class RewardWeightsSchema:
    diagnosis: float = MISSING
    spatial: float = MISSING
    iou: float = MISSING
    format: float = MISSING


@dataclass
class DiagnosisRewardSchema:
    class_weighting: str = MISSING


@dataclass
class FormatRewardSchema:
    required_fields: list[str] = MISSING


@dataclass
class RewardSchema:
    weights: RewardWeightsSchema = field(default_factory=RewardWeightsSchema)
    iou_kind: str = MISSING
    diagnosis: DiagnosisRewardSchema = field(default_factory=DiagnosisRewardSchema)
    format: FormatRewardSchema = field(default_factory=FormatRewardSchema)


# --- hardware, logger, top level -----------------------------------------------------------------------
@dataclass
class HardwareSchema:
    name: str = MISSING
    use_cpu: bool = MISSING
    precision: str = MISSING
    tf32: bool = MISSING
    gradient_checkpointing: bool = MISSING
    attn_implementation: str | None = None
    torch_threads: int | None = None
    dataloader_num_workers: int = MISSING
    # The accelerate config this option is meant to be launched with (documentation + `scripts/launch.sh`).
    accelerate_config: str | None = None
    # DDP: false skips the per-step search for unused parameters (transformers' default is true for LoRA).
    ddp_find_unused_parameters: bool | None = None
    # Write <run>/data_shards/rank<k>.txt: the image_ids each rank's training dataloader collated.
    record_shards: bool = False
    # QLoRA: 4-bit NF4 base weights (bitsandbytes), LoRA adapters trained on top.
    load_in_4bit: bool = False
    # GRPO sampling with vLLM (an extra): null (transformers generate) | colocate | server.
    vllm: str | None = None
    vllm_gpu_memory_utilization: float = 0.3
    vllm_server_base_url: str | None = None


@dataclass
class WandbLoggerSchema:
    name: str = MISSING
    project: str = MISSING
    entity: str | None = None
    mode: str = MISSING
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_completions: int = MISSING


@dataclass
class NoLoggerSchema:
    name: str = MISSING


@dataclass
class AnswerSchema:
    fields: list[str] = MISSING
    polygon_max_points: int = MISSING


@dataclass
class EvalSchema:
    num_samples: int = MISSING
    batch_size: int = MISSING
    max_new_tokens: int = MISSING


# isic2018_test has no train split and no masks: it is for `python -m skinderm.evaluate`.
TRAINABLE_DATASETS = ("synthetic", "ham10000")
STAGE_SCHEMAS: dict[str, type] = {"sft": SFTStageSchema, "grpo": GRPOStageSchema}
LOGGER_SCHEMAS: dict[str, type] = {"wandb": WandbLoggerSchema, "none": NoLoggerSchema}
TOP_LEVEL_KEYS = {
    "dataset",
    "model",
    "stage",
    "reward",
    "hardware",
    "logger",
    "paths",
    "task_name",
    "seed",
    "answer",
    "eval",
    "optimized_metric",
    "hydra",
    "experiment",
    "resume",
}


def _check(node: Any, schema: type, key: str) -> None:
    try:
        OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as error:
        bad_key = getattr(error, "full_key", None) or getattr(error, "key", None) or ""
        reason = str(error).splitlines()[0]
        where = f"{key}.{bad_key}" if bad_key else key
        raise ConfigError(
            f"config key '{where}': {reason} (check the spelling/type in conf/{key}/ or the command line)"
        ) from None


def _one_of(value: Any, allowed: set[str] | tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}' = {value!r}: expected one of {sorted(allowed)}")


def validate_config(cfg: DictConfig) -> None:
    """Check every group against its schema and the few cross-key rules; raise ConfigError."""
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {unknown}; known: {sorted(TOP_LEVEL_KEYS)}")
    _one_of(cfg.stage.get("name"), tuple(STAGE_SCHEMAS), "stage.name")
    _one_of(cfg.logger.get("name"), tuple(LOGGER_SCHEMAS), "logger.name")
    _check(cfg.dataset, DatasetSchema, "dataset")
    _check(cfg.model, ModelSchema, "model")
    _check(cfg.stage, STAGE_SCHEMAS[cfg.stage.name], "stage")
    _check(cfg.reward, RewardSchema, "reward")
    _check(cfg.hardware, HardwareSchema, "hardware")
    _check(cfg.logger, LOGGER_SCHEMAS[cfg.logger.name], "logger")
    _check(cfg.answer, AnswerSchema, "answer")
    _check(cfg.eval, EvalSchema, "eval")
    _one_of(cfg.dataset.on_error, ("raise", "skip"), "dataset.on_error")
    _one_of(cfg.dataset.name, TRAINABLE_DATASETS, "dataset (for training)")
    _one_of(cfg.hardware.precision, ("float32", "bfloat16", "float16"), "hardware.precision")
    _one_of(cfg.reward.iou_kind, ("mask", "bbox"), "reward.iou_kind")
    _one_of(
        cfg.reward.diagnosis.class_weighting,
        ("none", "inverse_frequency"),
        "reward.diagnosis.class_weighting",
    )
    if cfg.logger.name == "wandb":
        _one_of(cfg.logger.mode, ("offline", "online", "disabled"), "logger.mode")
    for answer_field in cfg.answer.fields:
        _one_of(answer_field, ANSWER_FIELDS, "answer.fields")
    if OmegaConf.is_missing(cfg.dataset, "root"):
        raise ConfigError(
            f"config key 'dataset.root' is required for dataset={cfg.dataset.name}: "
            "pass dataset.root=/path/to/HAM10000 (the folder holding HAM10000_metadata.csv)"
        )
    _check_hardware_switches(cfg)
    if cfg.model.trust_remote_code:
        import logging

        logging.getLogger(__name__).warning(
            "model.trust_remote_code=true: code from the model folder will run"
        )


SHARDED_HARDWARE = ("fsdp", "deepspeed_zero3")


def _check_hardware_switches(cfg: DictConfig) -> None:
    """QLoRA and vLLM: what they need, checked before any model loads."""
    hardware = cfg.hardware
    if hardware.load_in_4bit:
        if not cfg.model.lora.enabled:
            raise ConfigError(
                "hardware.load_in_4bit=true: 4-bit weights are frozen, QLoRA trains LoRA adapters on them; "
                "set model.lora.enabled=true"
            )
        if cfg.stage.get("merge_adapter"):
            raise ConfigError(
                "hardware.load_in_4bit=true with stage.merge_adapter=true: an adapter cannot be folded into "
                "4-bit weights; drop stage.merge_adapter (GRPO then continues the Stage 1 adapter)"
            )
        if hardware.name in SHARDED_HARDWARE:
            raise ConfigError(
                f"hardware.load_in_4bit=true with hardware={hardware.name}: sharding 4-bit weights is not "
                "set up here; use hardware=gpu or hardware=multi_gpu (DDP) for QLoRA"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "hardware.load_in_4bit=true needs bitsandbytes, which is not installed: "
                "pip install -e '.[qlora]'"
            )
    if hardware.vllm is not None:
        _one_of(hardware.vllm, ("colocate", "server"), "hardware.vllm")
        if cfg.stage.name != "grpo":
            raise ConfigError(
                f"hardware.vllm={hardware.vllm}: vLLM samples GRPO completions; stage={cfg.stage.name} "
                "does not sample, drop hardware.vllm"
            )
        if hardware.use_cpu:
            raise ConfigError(
                f"hardware.vllm={hardware.vllm}: vLLM generates on CUDA GPUs; use it with hardware=gpu or "
                "hardware=multi_gpu"
            )
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                f"hardware.vllm={hardware.vllm} needs vLLM, which is not installed: pip install -e '.[vllm]' "
                "on the GPU machine (or drop hardware.vllm to sample with transformers' generate)"
            )
        if hardware.vllm == "server" and not hardware.vllm_server_base_url:
            raise ConfigError(
                "hardware.vllm=server needs hardware.vllm_server_base_url=http://<host>:8000, the address of "
                "a running `trl vllm-serve --model <Stage 1 model folder>`"
            )
