"""`skipped.csv`: every image left out under `dataset.on_error=skip`, one row each, beside the annotations."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import astuple, fields
from pathlib import Path

from skinderm.core import files
from skinderm.data import layout
from skinderm.data.errors import SKIPPED_COLUMNS, DataError, SkippedItem, sort_items


def write_skipped_csv(items: Iterable[SkippedItem], out_dir: str | Path) -> Path | None:
    """Write `skipped.csv` in `out_dir` if anything was skipped, else remove a stale one; its path or None."""
    path = Path(out_dir) / layout.SKIPPED_CSV
    items = sort_items(items)
    if not items:
        path.unlink(missing_ok=True)
        return None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SKIPPED_COLUMNS)
    for item in items:
        writer.writerow(["" if value is None else value for value in astuple(item)])
    files.atomic_write_text(path, buffer.getvalue())
    return path


def read_skipped_csv(out_dir: str | Path) -> list[SkippedItem]:
    """The items `write_skipped_csv` wrote in `out_dir` (an empty list when there is no skipped.csv)."""
    path = Path(out_dir) / layout.SKIPPED_CSV
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = [field.name for field in fields(SkippedItem)]
    if rows and set(names) - set(rows[0]):
        raise DataError(
            f"{path} lacks columns {sorted(set(names) - set(rows[0]))}; delete it and re-annotate."
        )
    try:
        return [
            SkippedItem(
                **{**{name: row[name] for name in names}, "line": int(row["line"]) if row["line"] else None}
            )
            for row in rows
        ]
    except ValueError as error:
        raise DataError(
            f"{path} is not a skipped.csv this tool wrote ({error}); delete it and re-annotate."
        ) from None
