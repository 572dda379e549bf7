"""Read a HAM10000 folder (real or synthetic): metadata, image files and lesion masks.

Downloaded copies differ (comma or tab metadata, part-folder spellings, masks present or not), and a
wrong id in the metadata must not turn into a path outside the folder, so reading validates early and
says which file, row and column is wrong and what to do.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from skinderm.data import layout
from skinderm.data.classes import CLASS_CODES

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
_SHOWN_IDS = 5  # how many offending ids an error message lists


def read_metadata(root: str | Path) -> pd.DataFrame:
    """The validated metadata table of the HAM10000 folder `root`, in file order.

    Columns: `layout.METADATA_COLUMNS` first (a missing `dataset` column is added as nulls), then
    any extra columns of the file. Ids and codes are strings; `age` is float with NaN when missing.
    """
    path = layout.find_metadata_file(root)
    delimiter = layout.sniff_delimiter(path)
    try:
        table = pd.read_csv(
            path,
            sep=delimiter,
            dtype=str,
            keep_default_na=False,
            na_values=["", "NA", "NaN", "nan", "N/A", "null", "None"],  # how exports spell "unknown age"
            encoding="utf-8-sig",
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(
            f"Cannot parse metadata file {path}: {error}. Re-download HAM10000_metadata."
        ) from None
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in layout.REQUIRED_METADATA_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(
            f"Metadata file {path} lacks columns {missing} (found {list(table.columns)}); "
            "is this HAM10000_metadata? Expected " + ", ".join(layout.REQUIRED_METADATA_COLUMNS) + "."
        )
    if "dataset" not in table.columns:
        table["dataset"] = None
    for column in ("lesion_id", "image_id", "dx", "dx_type", "sex", "localization", "dataset"):
        table[column] = table[column].map(lambda value: value.strip() if isinstance(value, str) else value)

    is_image_id = lambda v: isinstance(v, str) and layout.IMAGE_ID_PATTERN.fullmatch(v)  # noqa: E731
    _check_column(path, table, "image_id", is_image_id, "an id like ISIC_0024306")
    _check_column(path, table, "lesion_id", lambda v: isinstance(v, str) and v != "", "a non-empty lesion id")
    _check_column(path, table, "dx", lambda v: v in CLASS_CODES, "one of " + ", ".join(CLASS_CODES))
    duplicated = table["image_id"][table["image_id"].duplicated(keep=False)]
    if not duplicated.empty:
        rows = ", ".join(f"{image_id} (line {index + 2})" for index, image_id in duplicated.head(6).items())
        raise ValueError(
            f"Metadata file {path} lists {duplicated.nunique()} image_id(s) more than once: {rows}. "
            "Remove the duplicate rows."
        )
    try:
        table["age"] = pd.to_numeric(table["age"], errors="raise").astype(float)
    except (ValueError, TypeError):
        bad = table["age"][pd.to_numeric(table["age"], errors="coerce").isna() & table["age"].notna()]
        index, value = next(iter(bad.items()))
        raise ValueError(
            f"Metadata file {path}, line {index + 2}, column age: {value!r} is not a number "
            "(leave it empty when unknown)."
        ) from None
    extra = [column for column in table.columns if column not in layout.METADATA_COLUMNS]
    return table[list(layout.METADATA_COLUMNS) + extra].reset_index(drop=True)


def _check_column(path: Path, table: pd.DataFrame, column: str, is_valid, expected: str) -> None:
    bad = table[column][~table[column].map(lambda value: bool(is_valid(value)))]
    if bad.empty:
        return
    index, value = next(iter(bad.items()))
    raise ValueError(
        f"Metadata file {path}, line {index + 2}, column {column}: {value!r} is not {expected} "
        f"({len(bad)} bad row(s) in all). Fix or remove those rows."
    )


def find_images(root: str | Path) -> dict[str, Path]:
    """image_id -> JPEG path over every image folder spelling; the first folder (sorted) wins duplicates.

    Kaggle's copy holds each image twice (upper- and lower-case folders); that is not an error.
    """
    images: dict[str, Path] = {}
    for folder in layout.find_image_folders(root):
        for image_id, path in _scan(folder, layout.IMAGE_FILE_PATTERN).items():
            images.setdefault(image_id, path)
    return dict(sorted(images.items()))


def find_masks(root: str | Path) -> dict[str, Path]:
    """image_id -> segmentation PNG path; empty when the mask folder was not downloaded."""
    folder = layout.find_mask_folder(root)
    return {} if folder is None else dict(sorted(_scan(folder, layout.MASK_FILE_PATTERN).items()))


def _scan(folder: Path, pattern) -> dict[str, Path]:
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match and entry.is_file():
                found[match.group(1)] = Path(entry.path)
    return found


@dataclass(frozen=True)
class Ham10000Index:
    """A HAM10000 folder resolved to files: metadata rows that have an image, and where things are."""

    root: Path
    metadata_path: Path
    metadata: pd.DataFrame  # rows whose image exists, in metadata order
    images: dict[str, Path]
    masks: dict[str, Path]
    missing_images: list[str] = field(default_factory=list)  # metadata ids without an image (skipped)


def index_dataset(root: str | Path, on_error: OnError = "raise") -> Ham10000Index:
    """Read the metadata and match it to image and mask files.

    A metadata row without an image raises (listing the count and the first ids) or, with
    `on_error="skip"`, is dropped and reported in `missing_images`. Images that the metadata does
    not list are ignored (and logged): the metadata defines the dataset.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    root = Path(root)
    metadata = read_metadata(root)
    metadata_path = layout.find_metadata_file(root)
    images = find_images(root)
    if not images:
        raise FileNotFoundError(
            f"No images in {root}: expected ISIC_xxxxxxx.jpg files in "
            f"{' and '.join(layout.IMAGE_FOLDER_NAMES)}/ (unzip both image archives there)."
        )
    masks = find_masks(root)
    has_image = metadata["image_id"].isin(images.keys())
    missing = metadata.loc[~has_image, "image_id"].tolist()
    if missing and on_error == "raise":
        raise FileNotFoundError(
            f"{len(missing)} of {len(metadata)} images listed in {metadata_path} are missing under {root} "
            f"(first: {', '.join(missing[:_SHOWN_IDS])}). Unzip both image archives, or set "
            "dataset.on_error=skip to leave them out."
        )
    if missing:
        log.warning(
            "Skipping %d metadata rows without an image (first: %s)", len(missing), missing[:_SHOWN_IDS]
        )
    unlisted = len(set(images) - set(metadata["image_id"]))
    if unlisted:
        log.info("Ignoring %d image files that %s does not list", unlisted, metadata_path.name)
    return Ham10000Index(
        root=root,
        metadata_path=metadata_path,
        metadata=metadata[has_image].reset_index(drop=True),
        images=images,
        masks=masks,
        missing_images=missing,
    )
