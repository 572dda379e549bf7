"""The `skinderm.evaluate` and `skinderm.predict` commands: choose the model and data, answer, score, write.

Importing this module loads no torch (the predict command checks its image before the model stack loads).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from skinderm.core.files import to_plain
from skinderm.evaluation.choice import (
    ModelChoice,
    choose_dataset,
    choose_model,
    effective_config,
    load_chosen_model,
    load_evaluation_records,
)
from skinderm.evaluation.report import write_predictions

if TYPE_CHECKING:
    from skinderm.conversations import ExampleBuilder

log = logging.getLogger(__name__)


def run_evaluation(cfg: DictConfig, *, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """The evaluate command: predictions.jsonl, metrics.json, plots (and W&B) in cfg.paths.output_dir."""
    from skinderm.core.files import write_json_atomic
    from skinderm.core.hardware import configure_torch
    from skinderm.core.runs import METRICS_FILE, PREDICTIONS_FILE, RunFolder
    from skinderm.core.tracking import tracking_run
    from skinderm.data.splits import subsample
    from skinderm.evaluation.answering import evaluate_records
    from skinderm.evaluation.report import PLOTS_DIR, build_metrics, write_plots

    out = RunFolder(Path(cfg.paths.output_dir))
    choice = choose_model(cfg, overrides)
    dataset = choose_dataset(cfg, choice, overrides)
    effective = effective_config(cfg, choice, dataset)
    out.save_resolved_config(effective)
    builder = choice.builder()
    split_records = load_evaluation_records(dataset, str(cfg.split))
    records = subsample(split_records, cfg.max_samples, int(cfg.seed))
    log.info(
        "evaluating %s on %s/%s: %d of %d images", choice.description, dataset["name"], cfg.split,
        len(records), len(split_records),
    )  # fmt: skip
    configure_torch(effective)
    model, processor = load_chosen_model(choice, to_plain(cfg.hardware))

    max_new_tokens = choice.max_new_tokens(cfg.max_new_tokens)
    started = time.perf_counter()
    predictions, _ = evaluate_records(
        model,
        processor,
        records,
        builder,
        batch_size=int(cfg.batch_size),
        max_new_tokens=max_new_tokens,
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
        "max_new_tokens": max_new_tokens,
        "score_classes": bool(cfg.score_classes),
        "seconds": round(elapsed, 2),
        "images_per_s": round(len(records) / elapsed, 3) if elapsed > 0 else None,
    }
    metrics = build_metrics(
        predictions,
        n_resamples=int(cfg.bootstrap.n_resamples),
        seed=int(cfg.bootstrap.seed),
        context=context,
        baselines=evaluation_baselines(cfg, choice, dataset, records, builder),
    )
    write_predictions(out.path / PREDICTIONS_FILE, predictions)
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


def training_records(dataset: Mapping[str, Any], choice: ModelChoice) -> list[dict[str, Any]] | None:
    """The training split the baselines are fitted on: the scored dataset's own, or (for a dataset that is
    one test set, like ISIC 2018's) the run's training dataset's; None when there is none to read."""
    from skinderm.config import ConfigError

    candidates = [dataset]
    if choice.run_cfg is not None and "dataset" in choice.run_cfg:
        candidates.append(to_plain(choice.run_cfg.dataset))
    for candidate in candidates:
        try:
            return load_evaluation_records(candidate, "train")
        except (ConfigError, ValueError) as error:  # a test-only dataset, or an empty training split
            log.info("baselines: no training split in dataset %s (%s)", candidate.get("name"), error)
    return None


def _adjacent_credit(choice: ModelChoice) -> float:
    """The spatial reward's partial credit the run was trained with (the default for zero-shot models)."""
    from skinderm.rewards.spatial import DEFAULT_ADJACENT_CREDIT

    if choice.run_cfg is None:
        return DEFAULT_ADJACENT_CREDIT
    value = OmegaConf.select(choice.run_cfg, "reward.spatial.adjacent_credit", default=None)
    return DEFAULT_ADJACENT_CREDIT if value is None else float(value)


def evaluation_baselines(
    cfg: DictConfig,
    choice: ModelChoice,
    dataset: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    builder: ExampleBuilder,
) -> dict[str, Any] | None:
    """metrics.json's `baselines` (skinderm.evaluation.baselines), fitted on the training split and scored on
    the evaluated `records`; masks are compared at the model input size, where the mask metrics are.
    None when no training split can be read (then there is nothing to fit a baseline on)."""
    from skinderm.evaluation.baselines import compute_baselines, read_oracle

    train = training_records(dataset, choice)
    if train is None:
        return None
    oracle = read_oracle(dataset.get("root"), str(cfg.split), dataset.get("splits"))
    return compute_baselines(
        train,
        records,
        adjacent_credit=_adjacent_credit(choice),
        size_of=builder.model_size,
        outline="polygon" in builder.fields,
        oracle=oracle,
    )


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
    model, processor = load_chosen_model(choice, to_plain(cfg.hardware))
    image = load_image(image_path, model_size)
    completion = generate_answers(
        model, processor, [image], builder.prompt, batch_size=1,
        max_new_tokens=choice.max_new_tokens(cfg.max_new_tokens),
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
