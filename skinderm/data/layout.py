"""HAM10000's file and folder names, and how to find them in a downloaded copy.

The release circulates in several spellings (Harvard Dataverse, Kaggle mirrors, ISIC archives), so
discovery matches names case-insensitively and sniffs the metadata delimiter instead of trusting
the extension. Every other module asks this one for paths; nobody else spells a HAM10000 name.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from skinderm.data.errors import DataError, DataFileNotFoundError

try:  # POSIX only; elsewhere the lock is a no-op (single-process use).
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Metadata: Kaggle ships a comma-separated `.csv`; Dataverse a tab-separated file with no
# extension (or `.tab`, Dataverse's name for ingested tables). Searched in this order.
METADATA_FILENAMES: tuple[str, ...] = (
    "HAM10000_metadata.csv",
    "HAM10000_metadata",
    "HAM10000_metadata.tab",
    "HAM10000_metadata.txt",
)
REQUIRED_METADATA_COLUMNS: tuple[str, ...] = (
    "lesion_id",
    "image_id",
    "dx",
    "dx_type",
    "age",
    "sex",
    "localization",
)
# Older copies of the metadata lack `dataset`; readers fill it with nulls.
OPTIONAL_METADATA_COLUMNS: tuple[str, ...] = ("dataset",)
METADATA_COLUMNS: tuple[str, ...] = REQUIRED_METADATA_COLUMNS + OPTIONAL_METADATA_COLUMNS

# Image folders: the canonical names first; discovery also accepts `part1`/`part2`, any letter case
# (Kaggle has lower-case duplicates) and a single unsplit `HAM10000_images/`.
IMAGE_FOLDER_NAMES: tuple[str, ...] = ("HAM10000_images_part_1", "HAM10000_images_part_2")
IMAGE_FOLDER_PATTERN = re.compile(r"ham10000_images(_part_?[12])?", re.IGNORECASE)
MASK_FOLDER_NAME = "HAM10000_segmentations_lesion_tschandl"

IMAGE_ID_PATTERN = re.compile(r"ISIC_\d{7}")
LESION_ID_PATTERN = re.compile(r"HAM_\d{7}")
IMAGE_FILE_PATTERN = re.compile(r"(ISIC_\d{7})\.jpe?g", re.IGNORECASE)
MASK_FILE_PATTERN = re.compile(r"(ISIC_\d{7})_segmentation\.png", re.IGNORECASE)

# Files this project writes beside the data (derived, safe to delete and rebuild).
ANNOTATIONS_JSON = "ham10000_with_spatial_data.json"
ANNOTATIONS_CSV = "ham10000_with_spatial_data.csv"
SPLITS_CSV = "splits.csv"
SPLITS_PARAMS_JSON = "splits.params.json"
# Counts of the last annotation (skips per reason, mask counts, on_error): what a reuse reports.
ANNOTATIONS_SUMMARY_JSON = "ham10000_with_spatial_data.summary.json"
# Every image left out under dataset.on_error=skip: image_id, file, reason, line, detail.
SKIPPED_CSV = "skipped.csv"
# Written by the synthetic generator only.
SYNTHETIC_GROUND_TRUTH_CSV = "synthetic_ground_truth.csv"
COMPLETE_MARKER = ".complete"  # written last: the dataset is complete
SYNTHETIC_MARKER = ".synthetic"  # written first: the folder is the generator's (even if interrupted)
SYNTHESIZE_LOCK = ".synthesize.lock"  # inside the dataset folder, so nothing is left beside it
PREPARE_LOCK = ".prepare.lock"  # in the annotations folder: one rank prepares, the others wait


def image_filename(image_id: str) -> str:
    return f"{image_id}.jpg"


def mask_filename(image_id: str) -> str:
    return f"{image_id}_segmentation.png"


def find_metadata_file(root: str | Path) -> Path:
    """The metadata file under `root` (exact names first, then any letter case)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileNotFoundError(
            f"HAM10000 folder {root} does not exist (set dataset.root to the download)."
        )
    found = find_entry(root, METADATA_FILENAMES, folder=False)
    if found is not None:
        return found
    raise DataFileNotFoundError(
        f"No HAM10000 metadata in {root}: expected one of {', '.join(METADATA_FILENAMES)} "
        "(download it from Harvard Dataverse doi:10.7910/DVN/DBW86T or Kaggle)."
    )


def sniff_delimiter(path: str | Path) -> str:
    """Comma, tab or semicolon, read from the header line (file names lie about their format)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = handle.readline()
    except UnicodeDecodeError:
        raise DataError(
            f"Metadata file {path} is not UTF-8 text (a spreadsheet export in another encoding?): "
            "save it as CSV UTF-8 or re-download HAM10000_metadata."
        ) from None
    if not header.strip():
        raise DataError(f"Metadata file {path} is empty: re-download HAM10000_metadata.")
    try:
        return csv.Sniffer().sniff(header, delimiters=",\t;").delimiter
    except csv.Error:
        # One column only (or an unusual header): fall back on counting candidates.
        counts = {d: header.count(d) for d in (",", "\t", ";")}
        best = max(counts, key=lambda d: counts[d])
        if counts[best] == 0:
            raise DataError(
                f"Cannot tell the delimiter of {path}: its header {header.strip()[:80]!r} has no comma, "
                "tab or semicolon. Is this the HAM10000 metadata file?"
            ) from None
        return best


def find_image_folders(root: str | Path) -> list[Path]:
    """Every image folder directly under `root`, in sorted name order (canonical spellings first)."""
    root = Path(root)
    folders = [p for p in root.iterdir() if p.is_dir() and IMAGE_FOLDER_PATTERN.fullmatch(p.name)]
    # Sorting by the exact name puts upper-case (canonical) folders before Kaggle's lower-case copies.
    return sorted(folders, key=lambda p: p.name)


def find_mask_folder(root: str | Path) -> Path | None:
    """The segmentation folder under `root`, or None when masks were not downloaded."""
    return find_entry(Path(root), (MASK_FOLDER_NAME,), folder=True)


def find_entry(root: Path, names: Sequence[str], *, folder: bool) -> Path | None:
    """The first of `names` under `root` spelt exactly, else in any letter case (downloads and unzip tools
    change case); a folder or a file as asked; None when there is none."""
    kind = Path.is_dir if folder else Path.is_file
    for name in names:
        if kind(root / name):
            return root / name
    wanted = {name.lower() for name in names}
    for entry in sorted(root.iterdir()):
        if kind(entry) and entry.name.lower() in wanted:
            return entry
    return None
