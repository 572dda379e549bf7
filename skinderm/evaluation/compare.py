"""Paired comparison of two evaluations of the same images: is B better than A, and by how much?

Two runs evaluated on one split answer the same images, and most of the variation between resamples
(which lesions happen to be drawn, easy or hard) is shared by both. Their two separate intervals
overlap even when B is better on nearly every image; the interval of the difference, resampling
lesions once and scoring both runs on that resample (`bootstrap.paired_bootstrap`), does not.

`python -m skinderm.compare runs=[A,B]` (skinderm/compare.py, conf/compare.yaml) is the command; A and B
are `skinderm.evaluate` folders, or training runs whose evaluation on the split exists. Two evaluations
are compared only when they scored the same split of the same dataset, the same images and the same
ground truth; anything else is refused in one line that names what differs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from skinderm.core.runs import (
    METRICS_FILE,
    MODEL_DIR,
    PREDICTIONS_FILE,
    RESOLVED_CONFIG_FILE,
    RunFolder,
    load_run_config,
)
from skinderm.data.classes import CLASS_CODES
from skinderm.evaluation.bootstrap import (
    ACCURACY,
    BBOX_MEAN_IOU,
    MASK_MEAN_IOU,
    PARSE_RATE,
    SPATIAL_ACCURACY,
    BalancedAccuracyStatistic,
    MacroF1Statistic,
    Statistic,
    paired_bootstrap,
)
from skinderm.evaluation.export import _recorded_log_dirs, find_evaluations
from skinderm.evaluation.metrics import is_missing
from skinderm.evaluation.report import read_predictions

log = logging.getLogger(__name__)

COMPARE_FILE = "compare.json"
TABLE_FILE = "compare.md"
# The split a training run's evaluation is looked up on when `split` is not set.
DEFAULT_SPLIT = "test"
# (key, label) of every headline metric, in table order; keys are compute_metrics' / bootstrap's names.
HEADLINE_METRICS: tuple[tuple[str, str], ...] = (
    ("balanced_accuracy", "balanced accuracy"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro F1"),
    ("bbox_mean_iou", "box mean IoU"),
    ("mask_mean_iou", "mask (outline) mean IoU"),
    ("spatial_accuracy", "location accuracy"),
    ("parse_rate", "parse rate"),
)
# Ground-truth fields both evaluations must agree on, image by image.
TRUTH_KEYS: tuple[str, ...] = ("lesion_id", "dx_true", "bbox_true", "location_true")
_EXAMPLES = 3


# --------------------------------------------------------------------------------------------------
# Config


# --------------------------------------------------------------------------------------------------
# Evaluations: loading, finding a training run's, checking that two are comparable


@dataclass(frozen=True)
class Evaluation:
    """One `skinderm.evaluate` folder: its prediction records and what it evaluated (metrics' context)."""

    folder: Path
    predictions: list[dict[str, Any]]
    context: dict[str, Any]

    @property
    def stage(self) -> str | None:
        return run_stage(self.context.get("run"))

    @property
    def label(self) -> str:
        """'after sft (<time>)' for a training run, '<model> zero-shot' without one."""
        run = self.context.get("run")
        if not run:
            return f"{self.context.get('model') or 'base model'} zero-shot"
        return f"after {self.stage or 'training'} ({Path(str(run)).name})"


def run_stage(run: str | None) -> str | None:
    """The training stage of a run folder from where it sits (outputs/<stage>/runs|multiruns/...), or None."""
    if not run:
        return None
    parts = Path(str(run)).parts
    for index in range(len(parts) - 1, 0, -1):
        if parts[index] in ("runs", "multiruns"):
            return parts[index - 1]
    return None


def is_evaluation_folder(folder: Path) -> bool:
    return (folder / PREDICTIONS_FILE).is_file() and (folder / METRICS_FILE).is_file()


def is_training_run(folder: Path) -> bool:
    return (folder / MODEL_DIR).is_dir() and (folder / RESOLVED_CONFIG_FILE).is_file()


def _read_context(folder: Path) -> dict[str, Any]:
    path = folder / METRICS_FILE
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not readable as JSON ({error})") from None
    context = metrics.get("evaluation") if isinstance(metrics, dict) else None
    if not isinstance(context, dict) or not context.get("split"):
        raise ValueError(
            f"{path} records no evaluated split (no 'evaluation' block): pass folders written by "
            "`python -m skinderm.evaluate`"
        )
    return context


def load_evaluation(folder: str | Path) -> Evaluation:
    """Read an evaluation folder (predictions.jsonl + metrics.json); ValueError naming what is missing."""
    path = Path(folder).expanduser()
    if not is_evaluation_folder(path):
        raise FileNotFoundError(
            f"{path}: no {PREDICTIONS_FILE} and {METRICS_FILE}; pass a `python -m skinderm.evaluate` folder "
            "or a training run that has been evaluated"
        )
    predictions = read_predictions(path / PREDICTIONS_FILE)
    if not predictions:
        raise ValueError(f"{path / PREDICTIONS_FILE} is empty")
    return Evaluation(path, predictions, _read_context(path))


def _subset_key(context: Mapping[str, Any]) -> tuple[Any, ...]:
    return (context.get("dataset"), _normal_root(context.get("dataset_root")), context.get("split"),
            context.get("max_samples"))  # fmt: skip


def run_evaluations(run_dir: Path, log_dir: str | Path, split: str) -> list[Path]:
    """Finished evaluations of training run `run_dir` on `split` (newest per dataset and subset)."""
    log_dirs = [Path(log_dir), *_recorded_log_dirs(run_dir, load_run_config(run_dir))]
    return [
        folder
        for folder in find_evaluations(run_dir, log_dirs)
        if _read_context(folder).get("split") == split
    ]


def _candidates(reference: str, log_dir: str | Path, split: str | None) -> tuple[list[Path], bool]:
    """(evaluation folders `reference` may mean, whether it named an evaluation folder itself)."""
    path = Path(reference).expanduser()
    if is_evaluation_folder(path):
        return [path], True
    if not path.is_dir():
        raise FileNotFoundError(
            f"{reference}: no such folder; pass a skinderm.evaluate folder or a training run"
        )
    if not is_training_run(path):
        raise FileNotFoundError(
            f"{reference}: neither an evaluation folder ({PREDICTIONS_FILE} + {METRICS_FILE}) nor a training "
            f"run ({MODEL_DIR}/ + {RESOLVED_CONFIG_FILE})"
        )
    on = split or DEFAULT_SPLIT
    found = run_evaluations(path, log_dir, on)
    if not found:
        raise FileNotFoundError(
            f"{reference}: no finished evaluation of this run on split {on} under {log_dir}; run "
            f"`python -m skinderm.evaluate run={reference} split={on}` first"
        )
    return found, False


def choose_evaluations(
    references: Sequence[str], log_dir: str | Path, split: str | None
) -> tuple[Path, Path]:
    """The two evaluation folders `runs=[A,B]` names: a training run's is the one on the other's subset.

    Where both are training runs with evaluations of several subsets (datasets, max_samples) in common,
    the whole split is preferred; otherwise the choice is refused as ambiguous.
    """
    (found_a, explicit_a), (found_b, explicit_b) = (_candidates(str(r), log_dir, split) for r in references)
    if explicit_a and explicit_b:
        return found_a[0], found_b[0]
    keys_a = {_subset_key(_read_context(f)): f for f in found_a}
    keys_b = {_subset_key(_read_context(f)): f for f in found_b}
    common = [key for key in keys_a if key in keys_b]
    if not common:
        if explicit_a or explicit_b:  # the explicit one fixes the subset: let check_comparable name it
            return found_a[0], found_b[0]
        raise ValueError(
            f"runs={list(references)}: no evaluation of both on one dataset/split/subset (A: "
            f"{_describe_keys(keys_a)}; B: {_describe_keys(keys_b)}); evaluate both the same way"
        )
    if len(common) > 1:
        whole = [key for key in common if key[3] is None]
        if len(whole) != 1:
            raise ValueError(
                f"runs={list(references)}: both runs have evaluations of "
                f"{_describe_keys(dict.fromkeys(common))}; pass the two evaluation folders instead"
            )
        common = whole
    return keys_a[common[0]], keys_b[common[0]]


def _describe_keys(keys: Mapping[tuple[Any, ...], Any]) -> str:
    return ", ".join(
        f"{dataset}/{split}" + ("" if subset is None else f" max_samples={subset}")
        for dataset, _, split, subset in keys
    )


def _normal_root(root: Any) -> str | None:
    if is_missing(root) or str(root) in ("", "None", "null"):
        return None
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(root))))


def _examples(items: Sequence[Any]) -> str:
    shown = ", ".join(str(item) for item in list(items)[:_EXAMPLES])
    return shown + (", ..." if len(items) > _EXAMPLES else "")


def _by_image(evaluation: Evaluation, name: str) -> dict[Any, dict[str, Any]]:
    records: dict[Any, dict[str, Any]] = {}
    for record in evaluation.predictions:
        image_id = record.get("image_id")
        if image_id in records:
            raise ValueError(
                f"{name} ({evaluation.folder}) lists image {image_id!r} twice: not one evaluation"
            )
        records[image_id] = record
    return records


def _same_value(a: Any, b: Any) -> bool:
    if is_missing(a) and is_missing(b):
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(float(x) == float(y) for x, y in zip(a, b, strict=True))
    return a == b


def check_comparable(a: Evaluation, b: Evaluation) -> None:
    """ValueError, in one line naming what differs, unless A and B scored the same images of one split.

    Checked in order: split, dataset, dataset root; then the image set; then the ground truth of each
    image (lesion, diagnosis, box, location, whether a mask exists).
    """
    differences = []
    for key, what in (("split", "split"), ("dataset", "dataset"), ("dataset_root", "dataset root")):
        value_a, value_b = a.context.get(key), b.context.get(key)
        if key == "dataset_root":
            value_a, value_b = _normal_root(value_a), _normal_root(value_b)
        if value_a != value_b:
            differences.append(f"{what} differs (A: {value_a}, B: {value_b})")
    if differences:
        raise ValueError(f"cannot pair A={a.folder} and B={b.folder}: {'; '.join(differences)}")

    images_a, images_b = _by_image(a, "A"), _by_image(b, "B")
    only_a = [i for i in images_a if i not in images_b]
    only_b = [i for i in images_b if i not in images_a]
    if only_a or only_b:
        raise ValueError(
            f"cannot pair A={a.folder} and B={b.folder}: image set differs ({len(only_a)} of {len(images_a)} "
            f"images only in A: {_examples(only_a) or '-'}; {len(only_b)} of {len(images_b)} only in B: "
            f"{_examples(only_b) or '-'}); evaluate both on the same split and max_samples"
        )
    for key in (*TRUTH_KEYS, "mask_iou"):
        if key == "mask_iou":
            differ = [
                i for i in images_a if is_missing(images_a[i].get(key)) != is_missing(images_b[i].get(key))
            ]
            what = "mask availability"
        else:
            differ = [i for i in images_a if not _same_value(images_a[i].get(key), images_b[i].get(key))]
            what = key
        if differ:
            first = differ[0]
            raise ValueError(
                f"cannot pair A={a.folder} and B={b.folder}: ground truth differs, {what} on {len(differ)} "
                f"images (e.g. {first}: A {images_a[first].get(key)!r}, B {images_b[first].get(key)!r}); "
                "both must be scored against one annotation"
            )


def aligned_predictions(a: Evaluation, b: Evaluation) -> list[dict[str, Any]]:
    """B's records in A's image order (evaluate writes split order, but a subset or merge need not)."""
    images_b = _by_image(b, "B")
    return [images_b[record["image_id"]] for record in a.predictions]


# --------------------------------------------------------------------------------------------------
# The comparison


def headline_statistics(
    records: Sequence[Mapping[str, Any]], labels: Sequence[str] = CLASS_CODES
) -> dict[str, Statistic]:
    """The statistic of every headline metric these records define (box/mask/location only with truth)."""
    statistics: dict[str, Statistic] = {
        "balanced_accuracy": BalancedAccuracyStatistic(labels),
        "accuracy": ACCURACY,
        "macro_f1": MacroF1Statistic(labels),
        "bbox_mean_iou": BBOX_MEAN_IOU,
        "mask_mean_iou": MASK_MEAN_IOU,
        "spatial_accuracy": SPATIAL_ACCURACY,
        "parse_rate": PARSE_RATE,
    }
    truth = {"bbox_mean_iou": "bbox_true", "mask_mean_iou": "mask_iou", "spatial_accuracy": "location_true"}
    for name, key in truth.items():
        if all(is_missing(r.get(key)) for r in records):
            del statistics[name]
    return statistics


def _side(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "folder": str(evaluation.folder),
        "run": evaluation.context.get("run"),
        "stage": evaluation.stage,
        "label": evaluation.label,
        "model": evaluation.context.get("model"),
    }


def compare_evaluations(
    a: Evaluation,
    b: Evaluation,
    *,
    group_key: str = "lesion_id",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """B - A of every headline metric with its paired lesion-bootstrap interval (what compare.json holds).

    metrics[name] is None where neither run can define it (no true boxes, masks or locations), else
    {"label", "difference", "low", "high", "excludes_zero", "n_undefined", "a": {estimate, low, high},
    "b": {...}}; the per-run intervals come from the same resamples as the difference.
    """
    check_comparable(a, b)
    records_b = aligned_predictions(a, b)
    statistics = headline_statistics(a.predictions)
    intervals = paired_bootstrap(
        a.predictions, records_b, statistics,
        group_key=group_key, n_resamples=n_resamples, seed=seed, confidence=confidence,
    )  # fmt: skip
    metrics: dict[str, Any] = {}
    for name, label in HEADLINE_METRICS:
        interval = intervals.get(name)
        if interval is None:
            metrics[name] = None
            continue
        low, high = interval["low"], interval["high"]
        metrics[name] = {
            "label": label,
            "difference": interval["estimate"],
            "low": low,
            "high": high,
            "excludes_zero": None if low is None or high is None else bool(low > 0 or high < 0),
            "n_undefined": interval["n_undefined"],
            "a": {key: interval["a"][key] for key in ("estimate", "low", "high")},
            "b": {key: interval["b"][key] for key in ("estimate", "low", "high")},
        }
    any_interval = next(iter(intervals.values()))
    return {
        "a": _side(a),
        "b": _side(b),
        "dataset": a.context.get("dataset"),
        "dataset_root": a.context.get("dataset_root"),
        "split": a.context.get("split"),
        "n_images": len(a.predictions),
        "n_groups": any_interval["n_groups"],
        "bootstrap": {
            "paired": True,
            "group_key": group_key,
            "n_resamples": int(n_resamples),
            "seed": int(seed),
            "confidence": float(confidence),
        },
        "metrics": metrics,
    }


# --------------------------------------------------------------------------------------------------
# Printing


def signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def format_difference(entry: Mapping[str, Any] | None) -> str:
    """'+0.017 [+0.013, +0.022]' for one metric's paired difference ('-' where it is undefined)."""
    if not entry or entry.get("difference") is None:
        return "-"
    if entry.get("low") is None or entry.get("high") is None:
        return signed(entry["difference"])
    return f"{signed(entry['difference'])} [{signed(entry['low'])}, {signed(entry['high'])}]"


def _value(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("estimate") is None:
        return "-"
    if entry.get("low") is None:
        return f"{entry['estimate']:.3f}"
    return f"{entry['estimate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def difference_name(result: Mapping[str, Any]) -> str:
    """'GRPO - SFT' when both sides are training stages, else 'B - A'."""
    stage_a, stage_b = result["a"].get("stage"), result["b"].get("stage")
    if stage_a and stage_b and stage_a != stage_b:
        return f"{stage_b.upper()} - {stage_a.upper()}"
    return "B - A"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table that is valid markdown and lines up in a terminal."""
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (width + 2) for width in widths) + "|",
    ]
    lines.extend(
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        for row in rows
    )
    return "\n".join(lines)


def format_comparison(result: Mapping[str, Any]) -> str:
    """The comparison as a title, the two runs, and one row per metric: A, B, B - A [interval]."""
    boot = result["bootstrap"]
    percent = f"{100 * boot['confidence']:g}%"
    name = difference_name(result)
    rows = [
        [entry["label"], _value(entry["a"]), _value(entry["b"]), format_difference(entry),
         "yes" if entry["excludes_zero"] else "no"]
        for entry in (result["metrics"][key] for key, _ in HEADLINE_METRICS)
        if entry is not None
    ]  # fmt: skip
    header = ["metric", "A", "B", f"{name} [{percent} paired CI]", "excludes 0"]
    return "\n".join(
        [
            f"Paired comparison on {result['dataset']}/{result['split']}: {result['n_images']} images, "
            f"{result['n_groups']} {boot['group_key']} groups resampled {boot['n_resamples']} times",
            f"  A = {result['a']['label']}: {result['a']['folder']}",
            f"  B = {result['b']['label']}: {result['b']['folder']}",
            "",
            markdown_table(header, rows),
        ]
    )


# --------------------------------------------------------------------------------------------------
# The command


def run_comparison(cfg: DictConfig) -> dict[str, Any]:
    """The compare command: compare.json and compare.md (the printed table) in cfg.paths.output_dir."""
    from skinderm.core.files import atomic_write_text, write_json_atomic

    out = RunFolder(Path(cfg.paths.output_dir))
    references = [str(reference) for reference in cfg.runs]
    folder_a, folder_b = choose_evaluations(references, cfg.paths.log_dir, cfg.split)
    a, b = load_evaluation(folder_a), load_evaluation(folder_b)
    if cfg.split is not None:
        for side, evaluation in (("A", a), ("B", b)):
            if evaluation.context.get("split") != cfg.split:
                raise ValueError(
                    f"{side}={evaluation.folder} is an evaluation on split "
                    f"{evaluation.context.get('split')}, not split={cfg.split}"
                )
    result = compare_evaluations(
        a, b,
        group_key=str(cfg.group_key),
        n_resamples=int(cfg.bootstrap.n_resamples),
        seed=int(cfg.bootstrap.seed),
        confidence=float(cfg.bootstrap.confidence),
    )  # fmt: skip
    result["runs"] = references
    out.save_resolved_config(cfg)
    table = format_comparison(result)
    write_json_atomic(out.path / COMPARE_FILE, result)
    atomic_write_text(out.path / TABLE_FILE, table + "\n")
    out.mark_finished()
    result["output_dir"] = str(out.path)
    result["table"] = table
    return result
