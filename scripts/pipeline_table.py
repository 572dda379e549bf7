"""One table for the pipeline: ceiling, baselines, after SFT, after GRPO, and the paired GRPO - SFT gap.

    python scripts/pipeline_table.py outputs/evaluate/runs/demo_sft outputs/evaluate/runs/demo_grpo \
        --compare outputs/compare/runs/demo

Each positional argument is an evaluation folder (`python -m skinderm.evaluate ...` output); its label is the
training stage it evaluated. The first evaluation's metrics.json gives the rows above the models: its
`baselines` block (fitted on the training split, skinderm.evaluation.baselines) as an "oracle ceiling" row
(the synthetic data's Bayes classifier; absent for real data) and a "majority / centre prior" row (the
majority training class, the majority training cell with the best constant answer's spatial reward, the mean
training box and mask); an older metrics.json without that block gives the scored split's majority class.
`--compare` takes a `python -m skinderm.compare runs=[A,B]` folder of two of these evaluations and adds its
"B - A" row: each metric's paired difference with its lesion-resampled 95% interval, the number that says
whether B beats A (two unpaired intervals on the same images do not). `--per-class` adds recall per class,
under the oracle's own per-class recall where the synthetic data's oracle file lists it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from skinderm.evaluation.compare import COMPARE_FILE, difference_name, format_difference

# "outline IoU" is evaluation's mask_mean_iou: the predicted polygon vs the lesion mask (the filled box for
# a run taught no outline).
HEADER = ["model", "balanced acc [95% CI]", "accuracy", "location acc", "box mean IoU", "outline IoU",
          "parse rate", "n"]  # fmt: skip
# compare.json metric of each column after "model" (None: no difference is shown there).
COMPARE_COLUMNS = ["balanced_accuracy", "accuracy", "spatial_accuracy", "bbox_mean_iou", "mask_mean_iou",
                   "parse_rate"]  # fmt: skip


def _interval(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "-"
    ci = ((metrics.get("bootstrap") or {}).get(key)) or {}
    if ci.get("low") is not None and ci.get("high") is not None:
        return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
    return f"{value:.3f}"


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; pass folders written by `python -m {what}`")
    return json.loads(path.read_text())


def baseline_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The rows above the models: oracle ceiling (when known) and majority / centre prior, from `baselines`;
    the scored split's majority class for a metrics.json written before baselines existed."""
    baselines = metrics.get("baselines")
    if not baselines:
        baseline = metrics.get("majority_baseline") or {}
        return [
            [f"majority class ({baseline.get('class')})", _number(baseline.get("balanced_accuracy")),
             _number(baseline.get("accuracy")), "-", "-", "-", "-", str(metrics.get("n"))]
        ]  # fmt: skip
    table: list[list[str]] = []
    oracle = baselines.get("oracle")
    if oracle:
        n = oracle.get("n_images")
        table.append(
            ["oracle ceiling (Bayes on latents)", _number(oracle.get("balanced_accuracy")),
             _number(oracle.get("accuracy")), "-", "-", "-", "-", "-" if n is None else str(n)]
        )  # fmt: skip
    majority = baselines.get("majority_class") or {}
    location = baselines.get("majority_location") or {}
    spatial = baselines.get("constant_spatial_reward") or {}
    location_cell = _number(location.get("accuracy"))
    if spatial:
        location_cell += f" (reward {spatial['reward']:.3f})"
    names = [str(majority.get("class", "-")), str(location.get("cell", "-"))]
    table.append(
        [f"majority / centre prior ({', '.join(names)})", _number(majority.get("balanced_accuracy")),
         _number(majority.get("accuracy")), location_cell, _number(baselines.get("centre_prior_box_iou")),
         _number(baselines.get("centre_prior_mask_iou")), "-", str(metrics.get("n"))]
    )  # fmt: skip
    return table


def rows(eval_dirs: list[Path]) -> list[list[str]]:
    table: list[list[str]] = []
    for index, folder in enumerate(eval_dirs):
        metrics = _read_json(folder / "metrics.json", "skinderm.evaluate")
        if index == 0:
            table.extend(baseline_rows(metrics))
        evaluation = metrics.get("evaluation") or {}
        run = evaluation.get("run")
        # Training runs live in outputs/<stage>/runs/<time>/: name the row by that stage.
        label = f"after {Path(run).parents[1].name} ({Path(run).name})" if run else "zero-shot"
        table.append(
            [label, _interval(metrics, "balanced_accuracy"), _number(metrics.get("accuracy")),
             _number(metrics.get("spatial_accuracy")), _number((metrics.get("bbox") or {}).get("mean_iou")),
             _number(metrics.get("mask_mean_iou")), _number(metrics.get("parse_rate")), str(metrics.get("n"))]
        )  # fmt: skip
    return table


def difference_row(compare_dir: Path, eval_dirs: list[Path]) -> list[str]:
    """The "B - A (paired)" row of a skinderm.compare folder, which must compare two of `eval_dirs`."""
    result = _read_json(compare_dir / COMPARE_FILE, "skinderm.compare")
    shown = {folder.resolve() for folder in eval_dirs}
    for side in ("a", "b"):
        if Path(result[side]["folder"]).resolve() not in shown:
            raise SystemExit(
                f"error: {compare_dir / COMPARE_FILE} compares {result[side]['folder']}, which is not one of "
                f"the evaluations in this table ({', '.join(str(folder) for folder in eval_dirs)})"
            )
    percent = f"{100 * result['bootstrap']['confidence']:g}%"
    cells = [format_difference(result["metrics"].get(key)) for key in COMPARE_COLUMNS]
    return [f"{difference_name(result)} (paired, {percent} CI)", *cells, str(result["n_images"])]


def per_class_rows(eval_dirs: list[Path]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of recall per class: the oracle's (when its file lists it), then each evaluation's."""
    evaluations = [_read_json(folder / "metrics.json", "skinderm.evaluate") for folder in eval_dirs]
    classes = sorted({code for metrics in evaluations for code in metrics.get("per_class") or {}})
    table: list[list[str]] = []
    oracle = ((evaluations[0].get("baselines") or {}).get("oracle") or {}).get("recall_per_class")
    if oracle:
        table.append(["oracle ceiling", *(_number(oracle.get(code)) for code in classes)])
    for metrics in evaluations:
        run = (metrics.get("evaluation") or {}).get("run")
        label = f"after {Path(run).parents[1].name}" if run else "zero-shot"
        recalls = metrics.get("per_class") or {}
        table.append([label, *(_number((recalls.get(code) or {}).get("recall")) for code in classes)])
    return ["recall per class", *classes], table


def _print(header: list[str], body: list[list[str]]) -> None:
    widths = [max(len(header[i]), *(len(row[i]) for row in body)) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in body:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dirs", nargs="+", type=Path)
    parser.add_argument(
        "--compare", type=Path, action="append", default=[], help="a skinderm.compare output folder"
    )
    parser.add_argument(
        "--per-class", action="store_true", help="also print recall per class (the oracle's when known)"
    )
    args = parser.parse_args(argv)
    body = rows(args.eval_dirs)
    body.extend(difference_row(folder, args.eval_dirs) for folder in args.compare)
    _print(HEADER, body)
    if args.per_class:
        print()
        _print(*per_class_rows(args.eval_dirs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
