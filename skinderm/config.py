"""Config schemas: a misspelled key or a wrong type fails at once, with one line naming the key.

Hydra's struct mode already rejects unknown keys given on the command line. These schemas also catch
typos inside YAML files (a user's own `model/my_model.yaml`, an experiment overlay) and wrong value types,
before any data or model is loaded. Each group option is checked against the schema of its `name`.
Values are checked too, from one table of ranges (`TRAIN_RANGES`, shared with evaluate and predict) plus
a few rules between keys (answer fields, the pixel budget, GRPO's batch/group size), so that e.g.
`stage.per_device_train_batch_size=0` is one line naming the key instead of torch's error minutes later.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import math
import os
import re
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from skinderm.answers import ANSWER_FIELDS
from skinderm.coordinates import check_pixel_budget
from skinderm.core.errors import ConfigError
from skinderm.core.files import to_plain

# Errors our code raises for things a user can fix (bad paths, data or settings). Their messages name the
# file or key and the fix, so the command line shows that one line instead of a traceback.
# (skinderm.data.errors.DataError is a ValueError.)
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
)


# A full disk or quota: the writer (ours, torch, safetensors, PIL) raises OSError with one of these.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


@contextlib.contextmanager
def user_errors_as_messages(cfg: DictConfig | None = None) -> Iterator[None]:
    """Turn a user-fixable error into `error: <one line>` and exit code 2; the traceback goes to a file.

    User-fixable: USER_ERRORS, and an OSError for a full disk or quota anywhere in the error's chain
    (a library may wrap it). SKINDERM_DEBUG=1 (or HYDRA_FULL_ERROR=1) re-raises instead, for debugging.
    """
    try:
        yield
    except Exception as error:
        message = user_error_message(error, cfg)
        debugging = os.environ.get("SKINDERM_DEBUG") == "1" or os.environ.get("HYDRA_FULL_ERROR") == "1"
        if message is None or debugging:
            raise
        where = _write_traceback(cfg)
        hint = f" (traceback: {where})" if where else " (SKINDERM_DEBUG=1 shows the traceback)"
        print(f"error: {message}{hint}", file=sys.stderr)
        sys.exit(2)


def user_error_message(error: BaseException, cfg: DictConfig | None = None) -> str | None:
    """The one-line message for a user-fixable error, or None for a bug (which keeps its traceback)."""
    disk_full = _disk_full_error(error)
    if disk_full is not None:
        target = disk_full.filename or disk_full.filename2
        where = str(target) if target else f"the run folder {_output_dir(cfg) or '(unknown)'}"
        return f"no space left on device writing {where}: free space or point paths.root_dir elsewhere"
    if isinstance(error, USER_ERRORS):
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    return None


def _disk_full_error(error: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in `error`'s cause/context chain, if any (loops are cut)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def _output_dir(cfg: DictConfig | None) -> str | None:
    try:
        return str(cfg.paths.output_dir) if cfg is not None else None
    except Exception:  # unresolvable outside a Hydra job
        return None


def _write_traceback(cfg: DictConfig | None) -> Path | None:
    """Write the traceback to <output_dir>/error.txt; None when that cannot be done (never raises)."""
    path: Path | None = None
    try:
        folder = Path(cfg.paths.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "error.txt"
        path.write_text(traceback.format_exc())
        return path
    except Exception:  # no usable run folder, or the disk is full: the message alone must do
        if path is not None:
            with contextlib.suppress(Exception):
                path.unlink(missing_ok=True)  # a cut-off traceback file would only mislead
        return None


# --- choices: the allowed values of a key are its type ----------------------------------------------------
def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str-valued Enum whose member names are the allowed strings: a schema field of this type makes
    OmegaConf refuse any other value with "expected one of [...]" (one line naming the key)."""
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


OnError = _choices("OnError", ("raise", "skip"))
# Weight precisions (hardware.precision, export's dtype).
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
Precision = _choices("Precision", DTYPES)
ClassWeighting = _choices("ClassWeighting", ("none", "inverse_frequency"))
LoggerMode = _choices("LoggerMode", ("offline", "online", "disabled"))
SyntheticStyle = _choices("SyntheticStyle", ("simple", "dermoscopy"))
Acquisition = _choices("Acquisition", ("standard", "shifted"))
# SFT examples and GRPO prompts alike (skinderm/training/sampling.py).
ClassBalance = _choices("ClassBalance", ("none", "balanced", "sqrt"))
# GRPO's advantage per token (skinderm/training/credit.py).
Credit = _choices("Credit", ("sequence", "field"))
Baseline = _choices("Baseline", ("group", "greedy"))


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
    style: SyntheticStyle = SyntheticStyle.simple  # type: ignore[valid-type, attr-defined]
    acquisition: Acquisition = Acquisition.standard  # type: ignore[valid-type, attr-defined]


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
    on_error: OnError = MISSING  # type: ignore[valid-type]
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
    gradient_accumulation_steps: int = MISSING
    learning_rate: float = MISSING
    lr_scheduler_type: str = MISSING
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    max_grad_norm: float = MISSING
    logging_steps: int = MISSING
    save_steps: int = MISSING
    save_total_limit: int | None = None
    # Other fields of TRL's SFTConfig / GRPOConfig, checked against them by skinderm.training.common.
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTStageSchema(CommonStageSchema):
    per_device_eval_batch_size: int = MISSING
    class_balance: ClassBalance = MISSING  # type: ignore[valid-type]
    lr_multipliers: dict[str, float] | None = None
    field_loss_weights: dict[str, float] | None = None
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
    disable_dropout: bool = MISSING
    class_balance: ClassBalance = MISSING  # type: ignore[valid-type]
    credit: Credit = MISSING  # type: ignore[valid-type]
    baseline: Baseline = MISSING  # type: ignore[valid-type]
    train_max_samples: int | None = None


# --- reward --------------------------------------------------------------------------------------------
@dataclass
class RewardWeightsSchema:
    diagnosis: float = MISSING
    spatial: float = MISSING
    bbox: float = MISSING
    outline: float = MISSING
    format: float = MISSING
    # Retired (replaced by bbox + outline): null in conf/reward/default.yaml so that an old override
    # reaches the one-line message of skinderm.rewards.retired_key_error instead of Hydra's "not in struct".
    iou: float | None = None


@dataclass
class DiagnosisRewardSchema:
    class_weighting: ClassWeighting = MISSING  # type: ignore[valid-type]


@dataclass
class FormatRewardSchema:
    required_fields: list[str] = MISSING


@dataclass
class SpatialRewardSchema:
    adjacent_credit: float = MISSING


@dataclass
class OutlineRewardSchema:
    box_fallback: bool = MISSING


@dataclass
class RewardSchema:
    weights: RewardWeightsSchema = field(default_factory=RewardWeightsSchema)
    iou_kind: str | None = None  # retired, like weights.iou
    diagnosis: DiagnosisRewardSchema = field(default_factory=DiagnosisRewardSchema)
    spatial: SpatialRewardSchema = field(default_factory=SpatialRewardSchema)
    outline: OutlineRewardSchema = field(default_factory=OutlineRewardSchema)
    format: FormatRewardSchema = field(default_factory=FormatRewardSchema)


# --- hardware, logger, top level -----------------------------------------------------------------------
@dataclass
class HardwareSchema:
    name: str = MISSING
    use_cpu: bool = MISSING
    precision: Precision = MISSING  # type: ignore[valid-type]
    tf32: bool = MISSING
    gradient_checkpointing: bool = MISSING
    attn_implementation: str | None = None
    torch_threads: int | None = None
    dataloader_num_workers: int = MISSING
    # The accelerate file `scripts/launch.sh <option>` launches with (conf/-relative).
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
    mode: LoggerMode = MISSING  # type: ignore[valid-type]
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


def check_schema(node: Any, schema: type, key: str, *, where_to_fix: str | None = None) -> None:
    """Merge `node` onto `schema`: an unknown key or a value of the wrong type is one ConfigError naming it.

    `key` is the node's dotted path ("" for a whole entrypoint config); `where_to_fix` says where the
    value comes from (default: "in conf/<group>/ or on the command line").
    """
    try:
        OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as error:
        bad_key = getattr(error, "full_key", None) or getattr(error, "key", None) or ""
        reason = str(error).splitlines()[0]
        where = f"{key}.{bad_key}" if key and bad_key else (bad_key or key or "config")
        fix = where_to_fix or (
            f"in conf/{key.split('.')[0]}/ or on the command line" if key else "on the command line"
        )
        raise ConfigError(f"config key '{where}': {reason} (check the spelling/type {fix})") from None


def _one_of(value: Any, allowed: set[str] | tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}' = {value!r}: expected one of {sorted(allowed)}")


# --- value ranges --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """Allowed values of one numeric key: [low, high] (ends open where said), finite; None passes if optional.

    The schemas check types; these rules check values, so `stage.per_device_train_batch_size=0` fails
    here with the key's name instead of deep inside torch after the data is prepared.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool):
            return False
        try:
            number = float(value)
        except (TypeError, ValueError):
            return False
        if not math.isfinite(number) or (self.integer and not number.is_integer()):
            return False
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        return not (self.high is not None and (number >= self.high if self.high_open else number > self.high))

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"

        def show(bound: float) -> str:
            return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"

        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {show(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {show(self.high)}")
        text = f"{kind} {' and '.join(parts)}".strip()
        return f"{text} (or null)" if self.optional else text


COUNT = Range(low=1, integer=True)
OPTIONAL_COUNT = Range(low=1, integer=True, optional=True)
NON_NEGATIVE_INT = Range(low=0, integer=True)
POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
FRACTION = Range(low=0, high=1)
# numpy's legacy seeding (transformers.set_seed) takes 0 .. 2**32 - 1.
SEED = Range(low=0, high=2**32 - 1, integer=True)

# Train config (conf/train.yaml and its groups). Keys absent from the composed config are skipped, so the
# SFT-only and GRPO-only rules share one table.
TRAIN_RANGES: dict[str, Range] = {
    "seed": SEED,
    "dataset.synthetic.num_images": COUNT,
    "dataset.synthetic.seed": SEED,
    "dataset.synthetic.image_width": COUNT,
    "dataset.synthetic.image_height": COUNT,
    "dataset.synthetic.max_images_per_lesion": COUNT,
    "dataset.synthetic.multi_component_fraction": FRACTION,
    "dataset.synthetic.missing_mask_fraction": FRACTION,
    "dataset.splits.val_fraction": Range(low=0, high=1, high_open=True),
    "dataset.splits.test_fraction": Range(low=0, high=1, high_open=True),
    "dataset.splits.seed": SEED,
    "model.min_pixels": COUNT,
    "model.max_pixels": COUNT,
    "model.lora.r": COUNT,
    "model.lora.alpha": POSITIVE,
    "model.lora.dropout": Range(low=0, high=1, high_open=True),
    "stage.max_steps": COUNT,
    "stage.per_device_train_batch_size": COUNT,
    "stage.per_device_eval_batch_size": COUNT,
    "stage.gradient_accumulation_steps": COUNT,
    "stage.learning_rate": POSITIVE,
    "stage.warmup_steps": NON_NEGATIVE_INT,
    "stage.weight_decay": NON_NEGATIVE,
    "stage.max_grad_norm": NON_NEGATIVE,  # 0 = no clipping (transformers)
    "stage.logging_steps": COUNT,
    "stage.save_steps": COUNT,
    "stage.save_total_limit": OPTIONAL_COUNT,
    "stage.eval_steps": COUNT,
    "stage.eval_max_samples": OPTIONAL_COUNT,
    "stage.max_length": OPTIONAL_COUNT,
    "stage.num_generations": Range(low=2, integer=True),  # GRPO's advantage needs a group of >= 2
    "stage.max_completion_length": COUNT,
    "stage.temperature": POSITIVE,
    "stage.top_p": Range(low=0, high=1, low_open=True),
    "stage.beta": NON_NEGATIVE,
    "stage.num_iterations": COUNT,
    "stage.train_max_samples": OPTIONAL_COUNT,
    "reward.weights.diagnosis": NON_NEGATIVE,
    "reward.weights.spatial": NON_NEGATIVE,
    "reward.weights.bbox": NON_NEGATIVE,
    "reward.weights.outline": NON_NEGATIVE,
    "reward.spatial.adjacent_credit": Range(low=0, high=1),  # above 1 a neighbour out-pays the true cell
    "reward.weights.format": NON_NEGATIVE,
    "hardware.torch_threads": OPTIONAL_COUNT,
    "hardware.dataloader_num_workers": NON_NEGATIVE_INT,
    "hardware.vllm_gpu_memory_utilization": Range(low=0, high=1, low_open=True),
    "logger.log_completions": NON_NEGATIVE_INT,
    "answer.polygon_max_points": Range(low=3, integer=True),  # a polygon needs 3 points
    "eval.num_samples": NON_NEGATIVE_INT,  # 0 = skip the post-training check
    "eval.batch_size": COUNT,
    "eval.max_new_tokens": COUNT,
}

_ABSENT = object()


def check_ranges(cfg: DictConfig, rules: Mapping[str, Range], *, top_level_file: str) -> None:
    """Apply a table of Range rules; the first value out of range is one ConfigError naming key and fix."""
    for key, allowed in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT or OmegaConf.is_config(value):
            continue
        if not allowed.allows(value):
            raise ConfigError(
                f"config key '{key}' = {value!r}: must be {allowed.describe()}; "
                f"set {key}=<value> on the command line or in {_where_defined(key, top_level_file)}"
            )


def _where_defined(key: str, top_level_file: str) -> str:
    group = key.split(".")[0]
    return f"conf/{group}/" if group in CONFIG_GROUPS else top_level_file


CONFIG_GROUPS = ("dataset", "model", "stage", "reward", "hardware", "logger", "paths")


def check_answer_fields(fields: Any, key: str = "answer.fields") -> None:
    """One or more known answer fields, each once: the prompt and the targets are built from this list."""
    values = (
        list(fields) if isinstance(fields, Sequence | ListConfig) and not isinstance(fields, str) else None
    )
    example = f"{key}=[{','.join(ANSWER_FIELDS[:3])}]"
    if not values:
        raise ConfigError(
            f"config key '{key}' = {to_plain(fields)!r}: list one or more of {list(ANSWER_FIELDS)}, "
            f"e.g. {example}"
        )
    unknown = [value for value in values if value not in ANSWER_FIELDS]
    if unknown:
        raise ConfigError(
            f"config key '{key}': unknown field(s) {unknown}; choose from {list(ANSWER_FIELDS)}, "
            f"e.g. {example}"
        )
    repeated = sorted({str(value) for value in values if values.count(value) > 1})
    if repeated:
        raise ConfigError(
            f"config key '{key}': {repeated} listed more than once; list each field once, e.g. {example}"
        )


def check_model_budget(model: DictConfig, key: str = "model") -> None:
    """model.min_pixels / model.max_pixels: a budget every image can be pre-resized into (see coordinates)."""
    try:
        check_pixel_budget(int(model.min_pixels), int(model.max_pixels))
    except ValueError as error:
        prefix = "" if key == "model" else f"{key}: "
        raise ConfigError(f"{prefix}{error}") from None


@dataclass
class TrainTopSchema:
    """Top-level scalars of conf/train.yaml (the groups have their own schemas)."""

    task_name: str = MISSING
    seed: int = MISSING
    resume: str | None = None
    optimized_metric: str | None = None


def validate_config(cfg: DictConfig) -> None:
    """Check every group against its schema and the few cross-key rules; raise ConfigError."""
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {unknown}; known: {sorted(TOP_LEVEL_KEYS)}")
    _one_of(cfg.stage.get("name"), tuple(STAGE_SCHEMAS), "stage.name")
    _one_of(cfg.logger.get("name"), tuple(LOGGER_SCHEMAS), "logger.name")
    top = {key: cfg.get(key) for key in ("task_name", "seed", "resume", "optimized_metric") if key in cfg}
    check_schema(
        OmegaConf.create(top), TrainTopSchema, "", where_to_fix="on the command line or in conf/train.yaml"
    )
    check_schema(cfg.dataset, DatasetSchema, "dataset")
    check_schema(cfg.model, ModelSchema, "model")
    check_schema(cfg.stage, STAGE_SCHEMAS[cfg.stage.name], "stage")
    check_schema(cfg.reward, RewardSchema, "reward")
    check_schema(cfg.hardware, HardwareSchema, "hardware")
    check_schema(cfg.logger, LOGGER_SCHEMAS[cfg.logger.name], "logger")
    check_schema(cfg.answer, AnswerSchema, "answer", where_to_fix="on the command line or in conf/train.yaml")
    check_schema(cfg.eval, EvalSchema, "eval", where_to_fix="on the command line or in conf/train.yaml")
    _one_of(cfg.dataset.name, TRAINABLE_DATASETS, "dataset (for training)")
    check_ranges(cfg, TRAIN_RANGES, top_level_file="conf/train.yaml")
    _check_cross_key_rules(cfg)
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


def _check_cross_key_rules(cfg: DictConfig) -> None:
    """Rules between keys, checked before any data or model is touched."""
    check_answer_fields(cfg.answer.fields)
    check_answer_fields(cfg.reward.format.required_fields, "reward.format.required_fields")
    check_model_budget(cfg.model)
    splits = cfg.dataset.splits
    if float(splits.val_fraction) + float(splits.test_fraction) >= 1:
        raise ConfigError(
            f"config keys 'dataset.splits.val_fraction' + 'dataset.splits.test_fraction' = "
            f"{splits.val_fraction} + {splits.test_fraction}: must be < 1 to leave images for training, "
            "e.g. dataset.splits.val_fraction=0.1 dataset.splits.test_fraction=0.2"
        )
    from skinderm.rewards import retired_key_error

    retired = retired_key_error(to_plain(cfg.reward))
    if retired is not None:
        raise ConfigError(f"config key {retired}")
    weights = {name: value for name, value in cfg.reward.weights.items() if value is not None}
    if not any(float(weights[name]) > 0 for name in weights):
        raise ConfigError(
            f"config keys 'reward.weights.*' are all 0 ({dict(weights)}): set at least one > 0, "
            "e.g. reward.weights.diagnosis=1"
        )
    if cfg.stage.name == "grpo":
        batch, group = int(cfg.stage.per_device_train_batch_size), int(cfg.stage.num_generations)
        if batch % group:
            raise ConfigError(
                f"config key 'stage.per_device_train_batch_size' = {batch} must be a multiple of "
                f"stage.num_generations = {group} (each prompt's {group} completions share a batch); "
                f"e.g. stage.per_device_train_batch_size={max(group, batch - batch % group)}"
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
                "a running `trl vllm-serve --model <base model>` (model.name_or_path for a LoRA Stage 1; "
                "TRL syncs the trained weights; docs/scaling.md)"
            )


# --- evaluate and predict (conf/evaluate.yaml, conf/predict.yaml) ----------------------------------------
# The splits `skinderm.evaluate split=` can score.
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class BootstrapSchema:
    n_resamples: int = MISSING
    seed: int = MISSING
    confidence: float = 0.95  # conf/compare.yaml sets it; evaluate reports 95% intervals


@dataclass
class EvaluateSchema:
    task_name: str = MISSING
    seed: int = MISSING
    run: str | None = None
    split: str = MISSING
    batch_size: int = MISSING
    max_new_tokens: int | None = None
    max_samples: int | None = None
    score_classes: bool = MISSING
    bootstrap: BootstrapSchema = field(default_factory=BootstrapSchema)
    plots: bool = MISSING
    answer: AnswerSchema = field(default_factory=AnswerSchema)
    dataset: DatasetSchema = field(default_factory=DatasetSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    hardware: HardwareSchema = field(default_factory=HardwareSchema)
    logger: Any = None
    paths: Any = None
    hydra: Any = None


@dataclass
class PredictSchema:
    task_name: str = MISSING
    seed: int = MISSING
    run: str | None = None
    image: str | None = None
    out: str | None = None
    max_new_tokens: int | None = None
    score_classes: bool = MISSING
    answer: AnswerSchema = field(default_factory=AnswerSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    hardware: HardwareSchema = field(default_factory=HardwareSchema)
    paths: Any = None
    hydra: Any = None


def _shared_ranges(*prefixes: str) -> dict[str, Range]:
    """The training table's rules for the groups an entrypoint shares with conf/train.yaml."""
    return {key: rule for key, rule in TRAIN_RANGES.items() if key.split(".")[0] in prefixes}


# Value rules of conf/evaluate.yaml and conf/predict.yaml (types come from the schemas above).
EVALUATE_RANGES: dict[str, Range] = {
    "seed": SEED,
    "batch_size": COUNT,
    "max_new_tokens": OPTIONAL_COUNT,
    "max_samples": OPTIONAL_COUNT,
    "bootstrap.n_resamples": NON_NEGATIVE_INT,
    "bootstrap.seed": SEED,
    **_shared_ranges("dataset", "model", "hardware", "logger", "answer"),
}
PREDICT_RANGES: dict[str, Range] = {
    "seed": SEED,
    "max_new_tokens": OPTIONAL_COUNT,
    **_shared_ranges("model", "hardware", "answer"),
}


def validate_evaluate_config(cfg: DictConfig) -> None:
    """Schema and value checks of a composed conf/evaluate.yaml; raises ConfigError (one line)."""
    check_schema(cfg, EvaluateSchema, "", where_to_fix="on the command line or in conf/evaluate.yaml")
    if cfg.logger.name not in LOGGER_SCHEMAS:
        raise ConfigError(
            f"config key 'logger.name' = {cfg.logger.name!r}: expected one of {list(LOGGER_SCHEMAS)}"
        )
    check_schema(cfg.logger, LOGGER_SCHEMAS[cfg.logger.name], "logger")
    if cfg.split not in SPLITS:
        raise ConfigError(f"config key 'split' = {cfg.split!r}: expected one of {list(SPLITS)}")
    from skinderm.data.isic2018 import DATASET_NAME as ISIC2018_TEST

    rules = EVALUATE_RANGES
    if cfg.dataset.name == ISIC2018_TEST:  # one test set, no split fractions (its test_fraction is 1)
        rules = {key: rule for key, rule in rules.items() if not key.startswith("dataset.splits.")}
    check_ranges(cfg, rules, top_level_file="conf/evaluate.yaml")
    check_answer_fields(cfg.answer.fields)
    check_model_budget(cfg.model)


def validate_predict_config(cfg: DictConfig) -> None:
    """Schema and value checks of a composed conf/predict.yaml; raises ConfigError (one line)."""
    check_schema(cfg, PredictSchema, "", where_to_fix="on the command line or in conf/predict.yaml")
    check_ranges(cfg, PREDICT_RANGES, top_level_file="conf/predict.yaml")
    check_answer_fields(cfg.answer.fields)
    check_model_budget(cfg.model)
    if not cfg.image:
        raise ConfigError(
            "config key 'image' is required: python -m skinderm.predict image=/path/to/lesion.jpg"
        )


# --- compare and export (conf/compare.yaml, conf/export.yaml) ---------------------------------------------
@dataclass
class CompareSchema:
    task_name: str = MISSING
    runs: Any = MISSING
    split: str | None = None
    group_key: str = MISSING
    bootstrap: BootstrapSchema = field(default_factory=BootstrapSchema)
    paths: Any = None
    hydra: Any = field(default=None)


COMPARE_RANGES: dict[str, Range] = {
    "bootstrap.n_resamples": Range(low=1, integer=True),
    "bootstrap.seed": SEED,
    "bootstrap.confidence": Range(low=0, high=1, low_open=True, high_open=True),
}


def validate_compare_config(cfg: DictConfig) -> None:
    """Schema and value checks of a composed conf/compare.yaml; raises ConfigError (one line)."""
    check_schema(cfg, CompareSchema, "", where_to_fix="on the command line or in conf/compare.yaml")
    check_ranges(cfg, COMPARE_RANGES, top_level_file="conf/compare.yaml")
    runs = cfg.runs
    if (
        not (OmegaConf.is_list(runs) or isinstance(runs, list))
        or len(runs) != 2
        or any(r is None or not str(r) for r in runs)
    ):
        raise ConfigError(
            f"config key 'runs' = {OmegaConf.to_container(runs) if OmegaConf.is_config(runs) else runs!r}: "
            "expected two evaluations, runs=[A,B] (skinderm.evaluate folders or training runs); "
            "B - A is reported"
        )
    if cfg.split is not None and cfg.split not in SPLITS:
        raise ConfigError(f"config key 'split' = {cfg.split!r}: expected one of {list(SPLITS)} or null")
    if not str(cfg.group_key).strip():
        raise ConfigError(
            "config key 'group_key' is empty: lesion_id (or image_id for an image-level bootstrap)"
        )


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ExportSchema:
    task_name: str = MISSING
    run: str = MISSING
    out: str | None = None
    dtype: str | None = None
    max_new_tokens: int | None = None
    license: str | None = None
    base_model_path: str | None = None
    push_to_hub: str | None = None
    private: bool = MISSING
    paths: Any = None
    hydra: Any = field(default=None)


def validate_export_config(cfg: DictConfig) -> None:
    """Schema and value checks of a composed conf/export.yaml; raises ConfigError (one line)."""
    check_schema(cfg, ExportSchema, "", where_to_fix="on the command line or in conf/export.yaml")
    check_ranges(cfg, {"max_new_tokens": OPTIONAL_COUNT}, top_level_file="conf/export.yaml")
    if cfg.run in (None, "", "null", "none"):
        raise ConfigError("config key 'run' is required: run=latest or run=<training run folder>")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise ConfigError(f"config key 'dtype' = {cfg.dtype!r}: expected one of {list(DTYPES)} or null")
    if cfg.push_to_hub is not None and not _REPO_ID.match(str(cfg.push_to_hub)):
        raise ConfigError(
            f"config key 'push_to_hub' = {cfg.push_to_hub!r}: expected a Hub repo id such as me/skinderm-sft"
        )
