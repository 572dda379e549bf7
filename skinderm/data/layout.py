"""HAM10000's file and folder names, and how to find them in a downloaded copy.

The release circulates in several spellings (Harvard Dataverse, Kaggle mirrors, ISIC archives), so
discovery matches names case-insensitively and sniffs the metadata delimiter instead of trusting
the extension. Every other module asks this one for paths; nobody else spells a HAM10000 name.
Also the two file-system helpers every writer of a dataset folder needs (atomic write, lock).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
import time
from collections.abc import Iterator
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
    for name in METADATA_FILENAMES:
        if (root / name).is_file():
            return root / name
    wanted = {name.lower() for name in METADATA_FILENAMES}
    for entry in sorted(root.iterdir()):
        if entry.is_file() and entry.name.lower() in wanted:
            return entry
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
    root = Path(root)
    exact = root / MASK_FOLDER_NAME
    if exact.is_dir():
        return exact
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and entry.name.lower() == MASK_FOLDER_NAME.lower():
            return entry
    return None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """`atomic_write_text` for bytes. Any OSError (a full disk: ENOSPC, EDQUOT) names `path`.

    Why: a failed write() reports no file name (and a failed open the temporary one), so the one-line
    message would not say which file could not be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_INFIX}{os.getpid()}")
    try:
        _write_new_file(tmp, data)
        os.replace(tmp, path)
    except OSError as error:
        raise _naming(error, path) from error
    finally:
        tmp.unlink(missing_ok=True)


def _write_new_file(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)


def _naming(error: OSError, path: Path) -> OSError:
    """The same kind of OSError (errno and text kept), with `filename` = `path`."""
    try:
        return type(error)(error.errno, error.strerror or str(error), str(path))
    except TypeError:  # pragma: no cover - an OSError subclass with another signature
        return OSError(error.errno, error.strerror or str(error), str(path))


# Temporary files of `atomic_write_bytes` are `.<name>.tmp-<pid>`; one older than this was left by a
# killed writer (a write takes well under a second) and is removed by `remove_stale_temp_files`.
TEMP_INFIX = ".tmp-"
_TEMP_PATTERN = re.compile(r"\..+\.tmp-\d+")
STALE_TEMP_SECONDS = 600.0


def is_temp_file_name(name: str) -> bool:
    """Whether `name` is one of `atomic_write_bytes`'s temporary files."""
    return _TEMP_PATTERN.fullmatch(name) is not None


def remove_stale_temp_files(folder: str | Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete our own temporary files in `folder` older than `older_than` seconds; warn, return them.

    Why: a writer killed between writing and renaming leaves `.<name>.tmp-<pid>` behind forever. Only
    that name pattern is touched (nothing of the user's), and only old files, so a writer that is
    running right now (another rank) keeps its file.
    """
    folder = Path(folder)
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in sorted(entries, key=lambda e: e.name):
        if not is_temp_file_name(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not entry.is_file(follow_symlinks=False) or now - info.st_mtime < older_than:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:  # removed meanwhile by another process
            continue
        removed.append(Path(entry.path))
    if removed:
        log.warning(
            "Removed %d temporary files left in %s by interrupted writes (first: %s)",
            len(removed), folder, removed[0].name,
        )  # fmt: skip
    return removed


@contextlib.contextmanager
def exclusive_lock(lock_path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (created if needed).

    Every rank of a multi-GPU launch prepares the same dataset folder; the lock makes one of them
    generate or annotate while the others wait and then reuse the result.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
