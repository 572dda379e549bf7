"""One table for the pipeline: majority baseline, after SFT, after GRPO, and the paired GRPO - SFT difference.

    python scripts/pipeline_table.py outputs/evaluate/runs/demo_sft outputs/evaluate/runs/demo_grpo \
        --compare outputs/compare/runs/demo

Each positional argument is an evaluation folder (`python -m skinderm.evaluate ...` output); its label is the
training stage it evaluated. The majority-class baseline is computed on the same split by the first
evaluation. `--compare` takes a `python -m skinderm.compare runs=[A,B]` folder of two of these evaluations and
adds its "B - A" row: each metric's paired difference with its lesion-resampled 95% interval, the number
that says whether B beats A (two unpaired intervals on the same images do not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from skinderm.evaluation.compare import COMPARE_FILE, difference_name, format_difference

HEADER = ["model", "balanced acc [95% CI]", "accuracy", "location acc", "box mean IoU", "mask IoU",
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


def rows(eval_dirs: list[Path]) -> list[list[str]]:
    table: list[list[str]] = []
    for index, folder in enumerate(eval_dirs):
        metrics = _read_json(folder / "metrics.json", "skinderm.evaluate")
        if index == 0:
            baseline = metrics.get("majority_baseline") or {}
            table.append(
                [f"majority class ({baseline.get('class')})", _number(baseline.get("balanced_accuracy")),
                 _number(baseline.get("accuracy")), "-", "-", "-", "-", str(metrics.get("n"))]
            )  # fmt: skip
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dirs", nargs="+", type=Path)
    parser.add_argument(
        "--compare", type=Path, action="append", default=[], help="a skinderm.compare output folder"
    )
    args = parser.parse_args(argv)
    body = rows(args.eval_dirs)
    body.extend(difference_row(folder, args.eval_dirs) for folder in args.compare)
    widths = [max(len(HEADER[i]), *(len(row[i]) for row in body)) for i in range(len(HEADER))]
    print(" | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in body:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
