"""One table for the pipeline: majority baseline, after SFT, after GRPO, from evaluate's metrics.json files.

    python scripts/pipeline_table.py outputs/evaluate/runs/demo_sft outputs/evaluate/runs/demo_grpo

Each argument is an evaluation folder (`python -m skinderm.evaluate ...` output); its label is the training
stage it evaluated. The majority-class baseline is computed on the same split by the first evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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


def rows(eval_dirs: list[Path]) -> list[list[str]]:
    table: list[list[str]] = []
    for index, folder in enumerate(eval_dirs):
        path = folder / "metrics.json"
        if not path.is_file():
            raise SystemExit(
                f"error: {path} not found; pass folders written by `python -m skinderm.evaluate`"
            )
        metrics = json.loads(path.read_text())
        if index == 0:
            baseline = metrics.get("majority_baseline") or {}
            table.append(
                [f"majority class ({baseline.get('class')})", _number(baseline.get("balanced_accuracy")),
                 _number(baseline.get("accuracy")), "-", "-", "-", str(metrics.get("n"))]
            )  # fmt: skip
        evaluation = metrics.get("evaluation") or {}
        run = evaluation.get("run")
        # Training runs live in outputs/<stage>/runs/<time>/: name the row by that stage.
        label = f"after {Path(run).parents[1].name} ({Path(run).name})" if run else "zero-shot"
        table.append(
            [label, _interval(metrics, "balanced_accuracy"), _number(metrics.get("accuracy")),
             _number(metrics.get("spatial_accuracy")), _number((metrics.get("bbox") or {}).get("mean_iou")),
             _number(metrics.get("parse_rate")), str(metrics.get("n"))]
        )  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    header = ["model", "balanced acc [95% CI]", "accuracy", "location acc", "box mean IoU", "parse rate", "n"]
    body = rows(args.eval_dirs)
    widths = [max(len(header[i]), *(len(row[i]) for row in body)) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in body:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
