"""Read a HAM10000 folder (real or synthetic): metadata, image files and lesion masks.

Downloaded copies differ (comma or tab metadata, part-folder spellings, masks present or not), and a
wrong id in the metadata must not turn into a path outside the folder, so reading validates early and
says which file, row and column is wrong and what to do. With on_error="skip" a bad row is left out
and returned as a `SkippedItem` instead (counted and listed by the caller, never dropped silently).
"""

from __future__ import annotations

import csv
import filecmp
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from skinderm.data import layout
from skinderm.data.classes import CLASS_CODES
from skinderm.data.errors import DataError, DataFileNotFoundError, SkippedItem, format_counts, skip_counts

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("raise", "skip")
_SHOWN_IDS = 5  # how many offending ids an error message lists
_FIRST_DATA_LINE = 2  # line 1 is the header, as a spreadsheet numbers them
_NA_SPELLINGS = ["", "NA", "NaN", "nan", "N/A", "null", "None"]  # how exports spell "unknown age"
_PATH_CHARACTERS = ("/", "\\", "..", ":")


def check_on_error(on_error: str) -> OnError:
    """`on_error` itself, once known to be raise or skip (a typo must not silently mean either)."""
    if on_error not in ON_ERROR_CHOICES:
        raise DataError(f"dataset.on_error must be 'raise' or 'skip', got {on_error!r}.")
    return on_error  # type: ignore[return-value]


@dataclass(frozen=True)
class Metadata:
    """The metadata file read and checked: the usable rows, where each came from, and what was left out."""

    path: Path
    table: pd.DataFrame  # usable rows in file order; columns `layout.METADATA_COLUMNS` then extras
    lines: list[int]  # file line of each table row (header = line 1)
    skipped: list[SkippedItem]  # bad rows (on_error="skip" only)
    n_rows: int  # data rows in the file (blank lines not counted)


def read_metadata(root: str | Path) -> pd.DataFrame:
    """The validated metadata table of the HAM10000 folder `root`, in file order (any bad row raises).

    Columns: `layout.METADATA_COLUMNS` first (a missing `dataset` column is added as nulls), then
    any extra columns of the file. Ids and codes are strings; `age` is float with NaN when missing.
    """
    return load_metadata(root).table


def load_metadata(root: str | Path, on_error: OnError = "raise") -> Metadata:
    """Read and check the metadata of `root`; bad rows raise a `DataError` or, with "skip", are left out.

    A missing required column is always fatal (no row could be used). Row problems, checked in this
    order per row: image_id not an ISIC id (path characters included), empty lesion_id, unknown dx,
    non-numeric age, image_id listed twice (identical rows: the later ones are bad; differing rows:
    all of them, since which one is right cannot be told).
    """
    on_error = check_on_error(on_error)
    path = layout.find_metadata_file(root)
    table = _read_table(path)
    if table.empty:
        raise DataError(f"Metadata file {path} has a header but no rows: re-download HAM10000_metadata.")
    lines = [int(index) + _FIRST_DATA_LINE for index in table.index]
    problems = _row_problems(table, lines)
    skipped: list[SkippedItem] = []
    if problems:
        first = min(problems)
        column, message = problems[first][1:]
        if on_error == "raise":
            raise DataError(
                f"Metadata file {path}, line {lines[first]}, column {column}: {message} "
                f"({len(problems)} bad row(s) in all). Fix or remove those rows, or set "
                "dataset.on_error=skip to leave them out."
            )
        for position in sorted(problems):
            reason, column, message = problems[position]
            raw_id = table["image_id"].iloc[position]
            skipped.append(
                SkippedItem(
                    image_id=raw_id if isinstance(raw_id, str) else "",
                    file=str(path),
                    reason=reason,
                    line=lines[position],
                    detail=f"Metadata file {path}, line {lines[position]}, column {column}: {message}",
                )
            )
        log.warning(
            "Skipping %d bad metadata rows of %s (%s), first: %s",
            len(skipped), path, format_counts(skip_counts(skipped)), skipped[0].detail,
        )  # fmt: skip
    keep = [position for position in range(len(table)) if position not in problems]
    table = table.iloc[keep].reset_index(drop=True)
    table["age"] = pd.to_numeric(table["age"], errors="coerce").astype(float)
    extra = [column for column in table.columns if column not in layout.METADATA_COLUMNS]
    return Metadata(
        path=path,
        table=table[list(layout.METADATA_COLUMNS) + extra],
        lines=[lines[position] for position in keep],
        skipped=skipped,
        n_rows=len(lines),
    )


def _read_table(path: Path) -> pd.DataFrame:
    """The file as strings, column names normalised, blank lines dropped, index = data row (0-based)."""
    delimiter = layout.sniff_delimiter(path)
    try:
        table = pd.read_csv(
            path,
            sep=delimiter,
            dtype=str,
            keep_default_na=False,
            na_values=_NA_SPELLINGS,
            encoding="utf-8-sig",
            skipinitialspace=True,
            skip_blank_lines=False,  # keeps index + 2 equal to the file's line number
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split())  # pandas' messages span lines
        raise DataError(
            f"Cannot parse metadata file {path}: {reason}. Re-download HAM10000_metadata."
        ) from None
    known = {name.lower(): name for name in layout.METADATA_COLUMNS}
    _check_unique_header(path, delimiter, known)
    table.columns = [known.get(str(c).strip().lower(), str(c).strip()) for c in table.columns]
    missing = [column for column in layout.REQUIRED_METADATA_COLUMNS if column not in table.columns]
    if missing:
        raise DataError(
            f"Metadata file {path} lacks columns {missing} (found {list(table.columns)}); "
            "is this HAM10000_metadata? Expected " + ", ".join(layout.REQUIRED_METADATA_COLUMNS) + "."
        )
    if "dataset" not in table.columns:
        table["dataset"] = None
    blank = table.isna().all(axis=1)
    if blank.any():
        log.info("Ignoring %d empty lines of %s", int(blank.sum()), path)
        table = table[~blank]
    for column in ("lesion_id", "image_id", "dx", "dx_type", "sex", "localization", "dataset"):
        table[column] = table[column].map(lambda value: value.strip() if isinstance(value, str) else value)
    return table


def _check_unique_header(path: Path, delimiter: str, known: dict[str, str]) -> None:
    """Refuse a header that names a column twice (e.g. two dx columns).

    Why: pandas renames the second one to "dx.1" and reads on, so one of them would be used silently.
    Names are compared as the reader matches them (stripped; known columns in any letter case).
    """
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle, delimiter=delimiter), [])
    names = [known.get(cell.strip().lower(), cell.strip()) for cell in header]
    positions: dict[str, list[int]] = {}
    for number, name in enumerate(names, start=1):
        positions.setdefault(name, []).append(number)
    repeated = {name: numbers for name, numbers in positions.items() if len(numbers) > 1 and name}
    if repeated:
        shown = "; ".join(
            f"{name!r} in columns {', '.join(map(str, numbers))}" for name, numbers in repeated.items()
        )
        raise DataError(
            f"Metadata file {path} has a column more than once ({shown}); delete the extra column(s) so "
            "that each name appears once (which one is right cannot be told)."
        )


def _row_problems(table: pd.DataFrame, lines: list[int]) -> dict[int, tuple[str, str, str]]:
    """Row position -> (reason, column, message) of its first problem; rows without one are absent."""
    problems: dict[int, tuple[str, str, str]] = {}
    ages = pd.to_numeric(table["age"], errors="coerce")
    for position, (image_id, lesion_id, dx, age, age_number) in enumerate(
        zip(table["image_id"], table["lesion_id"], table["dx"], table["age"], ages, strict=True)
    ):
        if not (isinstance(image_id, str) and layout.IMAGE_ID_PATTERN.fullmatch(image_id)):
            problems[position] = ("bad_image_id", "image_id", _image_id_message(image_id))
        elif not (isinstance(lesion_id, str) and lesion_id):
            problems[position] = ("bad_lesion_id", "lesion_id", "empty; every image needs its lesion id")
        elif dx not in CLASS_CODES:
            problems[position] = ("unknown_dx", "dx", _dx_message(dx))
        elif isinstance(age, str) and pd.isna(age_number):
            problems[position] = ("bad_age", "age", f"{age!r} is not a number (leave it empty when unknown)")
    _duplicate_problems(table, lines, problems)
    return problems


def _image_id_message(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "empty; every row needs an id like ISIC_0024306"
    if any(character in value for character in _PATH_CHARACTERS):
        return f"{value!r} is not an id like ISIC_0024306 (ids name files: path characters are not allowed)"
    return f"{value!r} is not an id like ISIC_0024306"


def _dx_message(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "empty; every image needs its diagnosis (one of " + ", ".join(CLASS_CODES) + ")"
    hint = f"; did you mean {value.strip().lower()!r}?" if value.strip().lower() in CLASS_CODES else ""
    return f"{value!r} is not one of " + ", ".join(CLASS_CODES) + hint


def _duplicate_problems(
    table: pd.DataFrame, lines: list[int], problems: dict[int, tuple[str, str, str]]
) -> None:
    """Mark repeated image_ids among otherwise good rows (identical rows: the later ones; else all)."""
    good = [position for position in range(len(table)) if position not in problems]
    ids = table["image_id"].iloc[good]
    repeated = ids[ids.duplicated(keep=False)]
    columns = list(layout.METADATA_COLUMNS)
    values = table[columns].astype(object).where(table[columns].notna(), None)
    for image_id, group in repeated.groupby(repeated, sort=False):
        positions = [good[i] for i in (ids.index.get_indexer(group.index))]
        shown = ", ".join(str(lines[p]) for p in positions)
        rows = {tuple(values.iloc[p]) for p in positions}
        if len(rows) == 1:
            first_line = lines[positions[0]]
            for position in positions[1:]:
                message = (
                    f"listed more than once: {image_id} (line {lines[position]} repeats line {first_line})"
                )
                problems[position] = ("duplicate_image_id", "image_id", message)
        else:
            for position in positions:
                message = (
                    f"listed more than once: {image_id} (lines {shown}) with different values; "
                    "keep the right row"
                )
                problems[position] = ("duplicate_image_id", "image_id", message)


def find_images(root: str | Path) -> dict[str, Path]:
    """image_id -> JPEG path over every image folder spelling; the first folder (sorted) wins duplicates.

    Kaggle's copy holds each image twice (upper- and lower-case folders); that is not an error.
    `index_dataset` checks that copies of a listed image agree (`image_copies`).
    """
    return {image_id: paths[0] for image_id, paths in image_copies(root).items()}


def image_copies(root: str | Path) -> dict[str, list[Path]]:
    """image_id -> every file of that id, one per image folder, in folder order (sorted by id)."""
    copies: dict[str, list[Path]] = {}
    for folder in layout.find_image_folders(root):
        for image_id, path in _scan(folder, layout.IMAGE_FILE_PATTERN).items():
            copies.setdefault(image_id, []).append(path)
    return dict(sorted(copies.items()))


def find_masks(root: str | Path) -> dict[str, Path]:
    """image_id -> segmentation PNG path; empty when the mask folder was not downloaded."""
    folder = layout.find_mask_folder(root)
    return {} if folder is None else dict(sorted(_scan(folder, layout.MASK_FILE_PATTERN).items()))


def _scan(folder: Path, pattern) -> dict[str, Path]:
    """Files named like `pattern` in `folder`; symbolic links that lead nowhere are kept too.

    Why: a link loop or a dangling link is the user's file gone wrong, not an absent one: reading it
    says so (`images.file_error`), where leaving it out would report "missing" or crash on the loop.
    """
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if not match:
                continue
            try:
                usable = entry.is_file()
            except OSError:  # a symbolic link loop (ELOOP)
                usable = True
            if usable or entry.is_symlink():
                found[match.group(1)] = Path(entry.path)
    return found


Conflict = tuple[str, Path, Path]  # (image_id, the copy used, a copy with other content)


def _compare_copies(copies: dict[str, list[Path]], ids: set[str]) -> tuple[list[Conflict], list[Conflict]]:
    """(conflicting copies, identical copies in folders that differ beyond letter case) of listed ids.

    Kaggle's lower-case folders repeat the canonical ones: those copies are compared by size only (a
    full read of 10k pairs would double annotation's I/O); copies in really different folders (part_1
    and part_2) byte by byte.
    """
    conflicts: list[Conflict] = []
    identical: list[Conflict] = []
    for image_id, paths in copies.items():
        if len(paths) < 2 or image_id not in ids:
            continue
        first = paths[0]
        for other in paths[1:]:
            same_folder = first.parent.name.lower() == other.parent.name.lower()
            try:
                equal = (
                    first.stat().st_size == other.stat().st_size
                    if same_folder
                    else filecmp.cmp(first, other, shallow=False)
                )
            except OSError:  # a link loop or dangling link: reading the copy used reports it
                continue
            if not equal:
                conflicts.append((image_id, first, other))
            elif not same_folder:
                identical.append((image_id, first, other))
    return conflicts, identical


@dataclass(frozen=True)
class Ham10000Index:
    """A HAM10000 folder resolved to files: metadata rows that have an image, and where things are."""

    root: Path
    metadata_path: Path
    metadata: pd.DataFrame  # usable rows whose image exists, in metadata order
    images: dict[str, Path]
    masks: dict[str, Path]
    missing_images: list[str] = field(default_factory=list)  # metadata ids without an image (skipped)
    skipped: list[SkippedItem] = field(default_factory=list)  # bad metadata rows + missing images
    lines: dict[str, int] = field(default_factory=dict)  # image_id -> metadata line, for messages
    n_listed: int = 0  # data rows of the metadata file


def index_dataset(root: str | Path, on_error: OnError = "raise") -> Ham10000Index:
    """Read the metadata and match it to image and mask files.

    A bad metadata row or a row without an image raises (naming the file, line and what to do) or,
    with `on_error="skip"`, is left out and listed in `skipped` (and its id in `missing_images` when
    the image is missing). Images that the metadata does not list are ignored (and logged): the
    metadata defines the dataset.
    """
    on_error = check_on_error(on_error)
    root = Path(root)
    metadata = load_metadata(root, on_error)
    table = metadata.table
    copies = image_copies(root)
    images = {image_id: paths[0] for image_id, paths in copies.items()}
    if not images:
        raise DataFileNotFoundError(
            f"No images in {root}: expected ISIC_xxxxxxx.jpg files in "
            f"{' and '.join(layout.IMAGE_FOLDER_NAMES)}/ (unzip both image archives there)."
        )
    masks = find_masks(root)
    lines = dict(zip(table["image_id"], metadata.lines, strict=True))
    has_image = table["image_id"].isin(images.keys())
    missing = table.loc[~has_image, "image_id"].tolist()
    folders = ",".join(folder.name for folder in layout.find_image_folders(root))
    if missing and on_error == "raise":
        first = ", ".join(f"{image_id} (line {lines[image_id]})" for image_id in missing[:_SHOWN_IDS])
        raise DataFileNotFoundError(
            f"{len(missing)} of {len(table)} images listed in {metadata.path} are missing under {root}/"
            f"{{{folders}}} (first: {first}). Unzip both image archives, or set dataset.on_error=skip "
            "to leave them out."
        )
    conflicts, identical = _compare_copies(copies, set(table["image_id"]))
    if identical:
        image_id, first, other = identical[0]
        log.warning(
            "%d images are in two image folders with identical content (first: %s in %s and %s); using "
            "the copy in %s",
            len(identical), image_id, first.parent, other.parent, first.parent.name,
        )  # fmt: skip
    skipped = list(metadata.skipped)
    differing: dict[str, tuple[Path, str]] = {}  # image_id -> (the other copy, message)
    for image_id, first, other in conflicts:
        message = (
            f"Image {image_id} (metadata line {lines[image_id]}) has two different files, {first} and "
            f"{other}: delete the wrong one (which is right cannot be told)"
        )
        differing.setdefault(image_id, (other, message))
    if differing and on_error == "raise":
        _, message = differing[min(differing, key=lambda image_id: lines[image_id])]
        raise DataError(
            f"{message} [{len(differing)} image(s) with differing copies: set dataset.on_error=skip to "
            "leave them out and list them in skipped.csv]",
            reason="duplicate_image_file",
        )
    for image_id, (other, message) in differing.items():
        skipped.append(SkippedItem(image_id, str(other), "duplicate_image_file", lines[image_id], message))
    if differing:
        has_image &= ~table["image_id"].isin(differing.keys())
        log.warning(
            "Skipping %d images with two different files (first: %s)", len(differing), next(iter(differing))
        )
    for image_id in missing:
        expected = f"{root}/{{{folders}}}/{layout.image_filename(image_id)}"
        skipped.append(
            SkippedItem(
                image_id=image_id,
                file=expected,
                reason="image_missing",
                line=lines[image_id],
                detail=f"Image {image_id} (metadata line {lines[image_id]}) is missing: no {expected}",
            )
        )
    if missing:
        log.warning(
            "Skipping %d metadata rows without an image (first: %s)", len(missing), missing[:_SHOWN_IDS]
        )
    unlisted = len(set(images) - set(table["image_id"]) - {item.image_id for item in metadata.skipped})
    if unlisted:
        log.info("Ignoring %d image files that %s does not list", unlisted, metadata.path.name)
    return Ham10000Index(
        root=root,
        metadata_path=metadata.path,
        metadata=table[has_image].reset_index(drop=True),
        images=images,
        masks=masks,
        missing_images=missing,
        skipped=skipped,
        lines=lines,
        n_listed=metadata.n_rows,
    )
