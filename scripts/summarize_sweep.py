"""Summarise a multirun sweep folder into one table: job overrides -> final reward components and val metrics.

    python scripts/summarize_sweep.py outputs/grpo/multiruns/2026-11-27_21-00-00
    python scripts/summarize_sweep.py outputs/grpo/multiruns/latest --csv sweep.csv

Reads each job's `.hydra/overrides.yaml` and `metrics.json`; jobs without metrics (failed or still running)
are listed with their status, never dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def job_row(job_dir: Path) -> dict[str, Any]:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    row: dict[str, Any] = {"job": job_dir.name, "overrides": " ".join(overrides or [])}
    metrics_file = job_dir / "metrics.json"
    if not metrics_file.is_file():
        row["status"] = "no metrics.json (failed or unfinished)"
        return row
    metrics = json.loads(metrics_file.read_text())
    row["status"] = "finished" if (job_dir / "FINISHED").is_file() else "metrics only"
    for key, trend in (metrics.get("reward_trends") or {}).items():
        name = key.removeprefix("rewards/").removesuffix("/mean")
        row[f"train {name} (last 10%)"] = trend.get("last_10pct")
    for key, value in (metrics.get("val_after") or metrics.get("val_generation") or {}).items():
        if isinstance(value, int | float):
            row[f"val {key}"] = value
    return row


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name)
    )
    if not jobs:
        raise SystemExit(f"error: {sweep_dir} holds no Hydra job folders (expected <sweep>/<n>/.hydra/)")
    return [job_row(job) for job in jobs]


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = [" | ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines.append("-+-".join("-" * width for width in widths))
    lines += [
        " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder, e.g. outputs/grpo/multiruns/<time>")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir
    if sweep_dir.name == "latest":
        candidates = sorted(p for p in sweep_dir.parent.iterdir() if p.is_dir())
        if not candidates:
            raise SystemExit(f"error: no sweep folders in {sweep_dir.parent}")
        sweep_dir = candidates[-1]
    if not sweep_dir.is_dir():
        raise SystemExit(f"error: {sweep_dir} is not a folder; pass outputs/<stage>/multiruns/<time>")
    rows = collect(sweep_dir)
    print(f"sweep: {sweep_dir} ({len(rows)} jobs)")
    print(format_table(rows))
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
