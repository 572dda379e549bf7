"""What can be wrong with a dataset, how it is reported, and where skipped items are written down.

Real downloads are messy (cut-off JPEGs, hand-edited metadata, masks from other tools). Every problem
either stops the run with a one-line `DataError` naming the file, row and what to do, or, with
`dataset.on_error=skip`, leaves the item out as a `SkippedItem` that is counted in the run's summary
and listed in `skipped.csv` beside the annotations. Nothing is dropped silently. The table of which
problem does what is in docs/data.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class DataError(ValueError):
    """Bad input data; the message is one line: which file (and row, column) and what to do.

    `reason` is one of `SKIP_REASONS` when the problem could instead be skipped with
    dataset.on_error=skip, else None (always fatal).
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep `reason` when sent between processes
        return (_rebuild_error, (type(self), str(self), self.reason))


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A file the dataset needs does not exist (also a FileNotFoundError for callers that expect one)."""


def _rebuild_error(cls: type[DataError], message: str, reason: str | None) -> DataError:
    return cls(message, reason=reason)


# Reason codes of skipped items, in the order summaries list them, with what each means.
SKIP_REASONS: dict[str, str] = {
    "bad_image_id": "metadata image_id is not an id like ISIC_0024306 (path characters included)",
    "bad_lesion_id": "metadata lesion_id is empty",
    "unknown_dx": "metadata dx is not one of the 7 class codes",
    "bad_age": "metadata age is not a number",
    "duplicate_image_id": "metadata lists the image_id more than once",
    "image_missing": "listed in the metadata, but no image file",
    "duplicate_image_file": "two different image files for the image_id (in two image folders)",
    "image_unreadable": "image file is not an image PIL can open (empty, corrupt, a symbolic link loop)",
    "image_truncated": "image file is cut off (no end-of-image marker, or its data stops early)",
    "image_too_large": "image has more pixels than PIL's decompression-bomb limit",
    "image_too_elongated": "image is more than 200:1 between its sides (Qwen2.5-VL's processor refuses it)",
    "mask_unreadable": "mask file cannot be decoded (or is a symbolic link loop)",
    "mask_size_mismatch": "mask size differs from its image's size",
}
SKIPPED_COLUMNS: tuple[str, ...] = ("image_id", "file", "reason", "line", "detail")


@dataclass(frozen=True)
class SkippedItem:
    """One image (metadata row) left out under dataset.on_error=skip, and why."""

    image_id: str  # as written in the metadata (may be the bad id itself)
    file: str  # the file at fault (metadata, image or mask), or the image file that was expected
    reason: str  # a key of SKIP_REASONS
    line: int | None  # metadata line, 1-based with the header as line 1 (as a spreadsheet shows it)
    detail: str  # the one-line message a raise would have shown

    def __post_init__(self) -> None:
        if self.reason not in SKIP_REASONS:
            raise ValueError(f"Unknown skip reason {self.reason!r}; use one of {list(SKIP_REASONS)}.")


def skip_counts(items: Iterable[SkippedItem]) -> dict[str, int]:
    """Count per reason, every reason present (zeros included) so that metric keys are stable."""
    counts = dict.fromkeys(SKIP_REASONS, 0)
    for item in items:
        counts[item.reason] += 1
    return counts


def format_counts(counts: Mapping[str, int]) -> str:
    """`"image_missing 2, unknown_dx 1"` (nonzero counts only, in SKIP_REASONS order), or `"none"`."""
    shown = [f"{reason} {count}" for reason, count in counts.items() if count]
    return ", ".join(shown) or "none"


def sort_items(items: Iterable[SkippedItem]) -> list[SkippedItem]:
    """Metadata line order (items without a line last), so skipped.csv reads alongside the metadata."""
    return sorted(items, key=lambda item: (item.line is None, item.line or 0))
