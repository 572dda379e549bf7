"""Evaluate a model on records: generate, parse, score, write predictions and metrics.

Importing this module loads no torch (the predict command checks its image before the model stack loads).

Two layers. `evaluate_records` is the library call (training's post-run check and GRPO use it): greedy
answers + prediction records + metrics for records already in memory. `run_evaluation` and
`run_prediction` are the `skinderm.evaluate` / `skinderm.predict` commands: they decide which model and
answer format to use (a training run, or a base model zero-shot), load the data, and write the report.

A run fixes what the model was taught: its pixel budget (model.min_pixels/max_pixels) and its answer
fields come from the run's config_resolved.yaml, and overriding them is an error. The run's dataset is
used unless the command line names another (`dataset=...`); `dataset.key=value` overrides apply on top
of whichever dataset is used. `model.key=value` overrides (e.g. model.name_or_path, where an adapter's
base checkpoint lives on this machine) apply to the run's base model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from skinderm.config import (
    COUNT,
    LOGGER_SCHEMAS,
    NON_NEGATIVE_INT,
    OPTIONAL_COUNT,
    SEED,
    TRAIN_RANGES,
    AnswerSchema,
    ConfigError,
    DatasetSchema,
    HardwareSchema,
    ModelSchema,
    Range,
    check_answer_fields,
    check_model_budget,
    check_ranges,
    check_schema,
)
from skinderm.conversations import ExampleBuilder
from skinderm.evaluation.metrics import compute_metrics
from skinderm.evaluation.report import write_predictions as _write_predictions

log = logging.getLogger(__name__)

# The headline numbers, printed and put at the top of metrics files.
HEADLINE_KEYS = ("n", "parse_rate", "accuracy", "balanced_accuracy", "spatial_accuracy")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Keys of the model group a run fixes (answers are in the pixel space they define).
RUN_FIXED_MODEL_KEYS: tuple[str, ...] = ("min_pixels", "max_pixels")


# --------------------------------------------------------------------------------------------------
# The library call


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
    generation across ranks needs, see skinderm.training.evaluate_after).
    """
    from skinderm.evaluation.generation import LazyImages, generate_answers, prediction_record

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


def write_predictions(path: Path, predictions: Sequence[Mapping[str, Any]]) -> None:
    """predictions.jsonl: one JSON object per image."""
    _write_predictions(Path(path), predictions)


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers a reader wants first (plus mean box IoU when boxes were scored)."""
    summary = {key: metrics.get(key) for key in HEADLINE_KEYS}
    bbox = metrics.get("bbox") or {}
    summary["bbox_mean_iou"] = bbox.get("mean_iou")
    summary["majority_balanced_accuracy"] = (metrics.get("majority_baseline") or {}).get("balanced_accuracy")
    return summary


# --------------------------------------------------------------------------------------------------
# Config: validation and which model / answer format / dataset to use


@dataclass
class BootstrapSchema:
    n_resamples: int = MISSING
    seed: int = MISSING


@dataclass
class EvaluateSchema:
    task_name: str = MISSING
    seed: int = MISSING
    run: str | None = None
    split: str = MISSING
    batch_size: int = MISSING
    max_new_tokens: int = MISSING
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
    max_new_tokens: int = MISSING
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
    "max_new_tokens": COUNT,
    "max_samples": OPTIONAL_COUNT,
    "bootstrap.n_resamples": NON_NEGATIVE_INT,
    "bootstrap.seed": SEED,
    **_shared_ranges("dataset", "model", "hardware", "logger", "answer"),
}
PREDICT_RANGES: dict[str, Range] = {
    "seed": SEED,
    "max_new_tokens": COUNT,
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


def command_line_overrides() -> list[str]:
    """The overrides of this Hydra job (`key=value`, `group=option`), or [] outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError, AttributeError):
        return []


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _group_overrides(overrides: Sequence[str], group: str) -> tuple[bool, list[str]]:
    """(the group option itself was chosen, keys under the group that were set) for one config group."""
    keys = [_override_key(item) for item in overrides]
    return group in keys, [key[len(group) + 1 :] for key in keys if key.startswith(group + ".")]


@dataclass(frozen=True)
class ModelChoice:
    """Which model answers, in which format: a training run, or the model group zero-shot."""

    run_dir: Path | None
    model: dict[str, Any]
    answer: dict[str, Any]
    model_overrides: dict[str, Any]
    run_cfg: DictConfig | None

    @property
    def description(self) -> str:
        return str(self.run_dir) if self.run_dir else f"{self.model['name']} (zero-shot)"

    def builder(self) -> ExampleBuilder:
        return ExampleBuilder(
            fields=tuple(self.answer["fields"]),
            min_pixels=int(self.model["min_pixels"]),
            max_pixels=int(self.model["max_pixels"]),
            polygon_max_points=int(self.answer.get("polygon_max_points", 16)),
        )


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def choose_model(cfg: DictConfig, overrides: Sequence[str] | None = None) -> ModelChoice:
    """The model and answer format of this command: from `cfg.run`'s folder, or cfg.model zero-shot."""
    from skinderm.models.checkpoints import load_run_config, resolve_run

    overrides = command_line_overrides() if overrides is None else list(overrides)
    if cfg.run in (None, "", "null", "none"):
        return ModelChoice(None, _plain(cfg.model), _plain(cfg.answer), {}, None)

    run_dir = resolve_run(cfg.run, cfg.paths.log_dir)
    run_cfg = load_run_config(run_dir)
    model_group, model_keys = _group_overrides(overrides, "model")
    if model_group:
        raise ConfigError(
            f"model=... cannot be combined with run={cfg.run}: a run fixes its model; "
            "use run=null to evaluate a model group zero-shot"
        )
    fixed = sorted({key.split(".")[0] for key in model_keys} & set(RUN_FIXED_MODEL_KEYS))
    if fixed:
        raise ConfigError(
            f"model.{fixed[0]} is fixed by the run {run_dir} (its answers are in that pixel space); "
            "drop the override"
        )
    answer_group, answer_keys = _group_overrides(overrides, "answer")
    if answer_group or answer_keys:
        raise ConfigError(f"answer.* is fixed by the run {run_dir} (what it was taught); drop the override")

    model = _plain(run_cfg.model)
    try:  # a run saved before budgets were checked: say so before any data or model loads
        check_model_budget(OmegaConf.create({key: model.get(key) for key in RUN_FIXED_MODEL_KEYS}))
    except ConfigError as error:
        raise ConfigError(f"run {run_dir} (its config_resolved.yaml): {error}") from None
    model_overrides: dict[str, Any] = {}
    for key in model_keys:
        top = key.split(".")[0]
        model_overrides[top] = _plain(OmegaConf.select(cfg.model, top))
    model.update(model_overrides)
    return ModelChoice(run_dir, model, _plain(run_cfg.answer), model_overrides, run_cfg)


def choose_dataset(
    cfg: DictConfig, choice: ModelChoice, overrides: Sequence[str] | None = None
) -> dict[str, Any]:
    """The dataset config to evaluate on: the run's, unless `dataset=...` was given; key overrides on top."""
    overrides = command_line_overrides() if overrides is None else list(overrides)
    group, keys = _group_overrides(overrides, "dataset")
    if choice.run_cfg is None or group or "dataset" not in choice.run_cfg:
        return _plain(cfg.dataset)
    dataset = OmegaConf.create(_plain(choice.run_cfg.dataset))
    for key in keys:
        OmegaConf.update(dataset, key, _plain(OmegaConf.select(cfg.dataset, key)), merge=False)
    return _plain(dataset)


# --------------------------------------------------------------------------------------------------
# Data and model


def load_evaluation_records(dataset_cfg: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    """Records of one split of the configured dataset (HAM10000, synthetic, or the ISIC 2018 test set)."""
    from skinderm.data.isic2018 import DATASET_NAME as ISIC2018_TEST
    from skinderm.data.isic2018 import read_isic2018_test
    from skinderm.data.prepare import frame_to_records

    if dataset_cfg.get("name") == ISIC2018_TEST:
        if split != "test":
            raise ConfigError(f"dataset={ISIC2018_TEST} is one test set: use split=test (got split={split})")
        root = dataset_cfg.get("root")
        if root in (None, "", "???"):
            raise ConfigError(
                f"config key 'dataset.root' is required for dataset={ISIC2018_TEST}: the folder holding "
                "ISIC2018_Task3_Test_Input/ and the ground-truth CSV"
            )
        frame = read_isic2018_test(root, on_error=str(dataset_cfg.get("on_error", "raise")))
    else:
        from skinderm.data.prepare import prepare_dataset

        frame = prepare_dataset(dataset_cfg)
    records = frame_to_records(frame[frame["split"] == split])
    if not records:
        raise ValueError(
            f"dataset {dataset_cfg.get('name')} at {dataset_cfg.get('root')}: split {split!r} is empty"
        )
    return records


def _device(hardware: Mapping[str, Any]) -> str:
    import torch

    if hardware.get("use_cpu"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    log.warning("hardware=%s asks for a GPU but CUDA is not available: running on CPU", hardware.get("name"))
    return "cpu"


def load_chosen_model(choice: ModelChoice, hardware: Mapping[str, Any]) -> tuple[Any, Any]:
    """(model, processor) of a ModelChoice on the configured device and dtype, ready for inference."""
    from skinderm.models.checkpoints import load_run_model
    from skinderm.models.loading import load_model_and_processor

    dtype, attention = str(hardware["precision"]), hardware.get("attn_implementation")
    if choice.run_dir is not None:
        model, processor = load_run_model(
            choice.run_dir,
            torch_dtype=dtype,
            attn_implementation=attention,
            merge_adapter=True,
            model_overrides=choice.model_overrides,
        )
    else:
        model, processor = load_model_and_processor(
            choice.model, torch_dtype=dtype, attn_implementation=attention
        )
    model.to(_device(hardware))
    model.eval()
    return model, processor


# --------------------------------------------------------------------------------------------------
# python -m skinderm.evaluate


def _effective_config(cfg: DictConfig, choice: ModelChoice, dataset: Mapping[str, Any]) -> DictConfig:
    """The config actually used (the run's model and answer, the chosen dataset): saved and sent to W&B."""
    effective = cfg.copy()
    with open_dict(effective):
        effective.model = choice.model
        effective.answer = choice.answer
        effective.dataset = dict(dataset)
        effective.run = None if choice.run_dir is None else str(choice.run_dir)
    return effective


def run_evaluation(cfg: DictConfig, *, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """The evaluate command: predictions.jsonl, metrics.json, plots (and W&B) in cfg.paths.output_dir."""
    from skinderm.core.files import write_json_atomic
    from skinderm.core.hardware import configure_torch
    from skinderm.core.runs import RunFolder
    from skinderm.core.tracking import tracking_run
    from skinderm.data.splits import subsample
    from skinderm.evaluation.report import (
        METRICS_FILE,
        PLOTS_DIR,
        PREDICTIONS_FILE,
        build_metrics,
        write_plots,
    )

    out = RunFolder(Path(cfg.paths.output_dir))
    choice = choose_model(cfg, overrides)
    dataset = choose_dataset(cfg, choice, overrides)
    effective = _effective_config(cfg, choice, dataset)
    out.save_resolved_config(effective)
    builder = choice.builder()
    split_records = load_evaluation_records(dataset, str(cfg.split))
    records = subsample(split_records, cfg.max_samples, int(cfg.seed))
    log.info(
        "evaluating %s on %s/%s: %d of %d images", choice.description, dataset["name"], cfg.split,
        len(records), len(split_records),
    )  # fmt: skip
    configure_torch(effective)
    model, processor = load_chosen_model(choice, _plain(cfg.hardware))

    started = time.perf_counter()
    predictions, _ = evaluate_records(
        model,
        processor,
        records,
        builder,
        batch_size=int(cfg.batch_size),
        max_new_tokens=int(cfg.max_new_tokens),
        desc=f"{cfg.split} answers",
        score_classes=bool(cfg.score_classes),
    )
    elapsed = time.perf_counter() - started
    context = {
        "run": None if choice.run_dir is None else str(choice.run_dir),
        "model": choice.model.get("name"),
        "base_model": choice.model.get("name_or_path"),
        "dataset": dataset["name"],
        "dataset_root": str(dataset.get("root")),
        "split": str(cfg.split),
        "n_split": len(split_records),
        "max_samples": cfg.max_samples,
        "answer_fields": list(choice.answer["fields"]),
        "batch_size": int(cfg.batch_size),
        "max_new_tokens": int(cfg.max_new_tokens),
        "score_classes": bool(cfg.score_classes),
        "seconds": round(elapsed, 2),
        "images_per_s": round(len(records) / elapsed, 3) if elapsed > 0 else None,
    }
    metrics = build_metrics(
        predictions, n_resamples=int(cfg.bootstrap.n_resamples), seed=int(cfg.bootstrap.seed), context=context
    )
    _write_predictions(out.path / PREDICTIONS_FILE, predictions)
    write_json_atomic(out.path / METRICS_FILE, metrics)
    image_paths = {record["image_id"]: record["image_path_abs"] for record in records}
    plots = (
        write_plots(
            predictions, metrics, out.path / PLOTS_DIR, image_paths, title=f"{dataset['name']}/{cfg.split}"
        )
        if cfg.plots
        else {}
    )
    with tracking_run(effective, out.path, job_type="evaluate") as tracker:
        if tracker is not None:
            from skinderm.evaluation.report import log_to_wandb

            log_to_wandb(tracker, metrics, plots, predictions, image_paths)
    out.mark_finished()
    metrics["output_dir"] = str(out.path)
    return metrics


# --------------------------------------------------------------------------------------------------
# python -m skinderm.predict


def check_image(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image the model can be shown; one-line FileNotFoundError / ValueError otherwise.

    Run before the model loads, so a typo in the path, a damaged file (symbolic link loop, truncated data,
    also a cut-off JPEG with an end marker appended), a decompression bomb or an aspect ratio Qwen2.5-VL's
    processor refuses fails in a second instead of after minutes of loading. The file checks are the
    data layer's (`read_image_size`), the same ones annotation makes.
    """
    from skinderm.coordinates import check_aspect_ratio
    from skinderm.data.images import read_image_size

    path = Path(path).expanduser()
    if not path.exists() and not path.is_symlink():  # a link loop "does not exist" but is a link
        raise FileNotFoundError(f"image={path}: no such file")
    size = read_image_size(path)
    try:
        check_aspect_ratio(*size)
    except ValueError as error:
        raise ValueError(f"image={path}: {error}") from None
    return size


def run_prediction(cfg: DictConfig, *, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """The predict command: the answer for one image in ORIGINAL pixels, and an overlay PNG."""
    from skinderm.answers import parse_answer
    from skinderm.coordinates import model_input_size
    from skinderm.data.images import load_image
    from skinderm.evaluation.generation import answer_in_original_space, generate_answers
    from skinderm.evaluation.report import class_name, draw_overlay

    image_path = Path(str(cfg.image)).expanduser().resolve()
    original_size = check_image(image_path)
    choice = choose_model(cfg, overrides)
    builder = choice.builder()
    try:
        model_size = model_input_size(
            *original_size, min_pixels=builder.min_pixels, max_pixels=builder.max_pixels
        )
    except ValueError as error:  # e.g. a run saved with a budget that cannot be honoured
        raise ValueError(f"image={image_path} with {choice.description}: {error}") from None
    from transformers import set_seed

    from skinderm.core.hardware import configure_torch

    configure_torch(cfg)
    set_seed(int(cfg.seed))
    model, processor = load_chosen_model(choice, _plain(cfg.hardware))
    image = load_image(image_path, model_size)
    completion = generate_answers(
        model, processor, [image], builder.prompt, batch_size=1, max_new_tokens=int(cfg.max_new_tokens),
        desc="answer",
    )[0]  # fmt: skip
    parsed = parse_answer(completion)
    bbox, polygon = answer_in_original_space(parsed, model_size, original_size)
    result: dict[str, Any] = {
        "image": str(image_path),
        "image_size": list(original_size),
        "model": choice.description,
        "parse_ok": parsed.parse_ok,
        "diagnosis": parsed.diagnosis,
        "diagnosis_name": class_name(parsed.diagnosis),
        "location": parsed.location,
        "bbox_2d": bbox,
        "polygon": polygon,
    }
    if cfg.score_classes:
        from skinderm.evaluation.scoring import class_probabilities

        probs = class_probabilities(model, processor, [image], builder.prompt, fields=builder.fields)[0]
        result["class_probs"] = {code: round(p, 6) for code, p in probs.items()}
    result["completion"] = completion

    out_path = (
        Path(str(cfg.out)).expanduser()
        if cfg.out
        else Path(cfg.paths.output_dir) / f"{image_path.stem}_overlay.png"
    )
    label = parsed.diagnosis or "unparsed"
    if parsed.diagnosis:
        label += f" ({class_name(parsed.diagnosis)})"
    if parsed.location:
        label += f"  {parsed.location}"
    overlay = draw_overlay(load_image(image_path), pred_box=bbox, pred_polygon=polygon, label=label)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    overlay.save(out_path, format="PNG")
    result["overlay"] = str(out_path)
    return result
