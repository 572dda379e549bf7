"""Reader for the official ISIC 2018 Task 3 test set (1,512 dermoscopy images, the challenge leaderboard).

Layout, as the ISIC archive unzips it (letter case of names is not trusted):

    <root>/ISIC2018_Task3_Test_Input/ISIC_0034524.jpg ...     (also accepted: ISIC2018_Task3_Test_Images/)
    <root>/ISIC2018_Task3_Test_GroundTruth.csv                (or inside a *GroundTruth* folder)
    <root>/ISIC2018_Task3_Test_LesionGroupings.csv            (optional: image,lesion_id)

The ground truth is one-hot: header `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`, values 1.0/0.0. Records come
out in the shape `prepare_dataset` returns (docs/architecture.md), all in split "test", with no masks
(mask_available False, bbox/location None) and no patient metadata. Without a lesion grouping file
every image is its own lesion, so bootstrap intervals resample images. No torch here.

Each record also carries `score_weight`, the weight the challenge's own scorer (`isic-challenge-scoring`,
`load_csv.parse_truth_csv`) gives the image, because the leaderboard number is a weighted balanced
accuracy (skinderm.evaluation.metrics.weighted_balanced_accuracy): a truth file's `score_weight` column
when it has one, else 1.0, and always 0.0 for ISIC_0035068, which that scorer hard-codes. A listed image
of weight 0 whose file is absent is left out rather than raised on: it cannot change the official number.
See docs/isic_scoring.md.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from skinderm.data.annotation import RECORD_COLUMNS as ANNOTATION_COLUMNS
from skinderm.data.classes import CLASS_CODES
from skinderm.data.images import read_image_size
from skinderm.data.layout import IMAGE_FILE_PATTERN, IMAGE_ID_PATTERN, find_entry, sniff_delimiter

log = logging.getLogger(__name__)

DATASET_NAME = "isic2018_test"
IMAGE_FOLDER_NAMES: tuple[str, ...] = ("ISIC2018_Task3_Test_Input", "ISIC2018_Task3_Test_Images")
GROUND_TRUTH_NAME = "ISIC2018_Task3_Test_GroundTruth.csv"
# The challenge's column order; each column is one of our class codes in upper case.
GROUND_TRUTH_COLUMNS: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
_SHOWN = 5  # offending ids listed in an error message
# The per-image weight column of a challenge truth file; the scorer's own name for it.
SCORE_WEIGHT_COLUMN = "score_weight"
# Images the official scorer weighs 0 whatever the truth file says: `parse_truth_csv` in
# isic_challenge_scoring/load_csv.py sets score_weight and validation_weight of ISIC_0035068 to 0.0
# ("TODO: Move this to ground truth"); earlier releases listed it as EXCLUDE_LABELS of Task 3.
OFFICIAL_ZERO_WEIGHT_IMAGES: frozenset[str] = frozenset({"ISIC_0035068"})
# The columns of `prepare_dataset`'s frame (the annotation record, the split, absolute paths), plus the
# official scoring weight that the metrics honour.
RECORD_COLUMNS: tuple[str, ...] = (
    *ANNOTATION_COLUMNS, "split", "image_path_abs", "mask_path_abs", SCORE_WEIGHT_COLUMN,
)  # fmt: skip


def find_image_folder(root: Path) -> Path:
    """The test image folder under `root` (either official name, any letter case)."""
    found = find_entry(root, IMAGE_FOLDER_NAMES, folder=True)
    if found is not None:
        return found
    raise FileNotFoundError(
        f"No ISIC 2018 Task 3 test images in {root}: expected a folder {' or '.join(IMAGE_FOLDER_NAMES)}/ "
        "(unzip ISIC2018_Task3_Test_Input.zip there)"
    )


def _csv_candidates(root: Path) -> list[Path]:
    """CSV files in `root` and in its *GroundTruth* folders, whose name mentions GroundTruth."""
    folders = [root, *(p for p in sorted(root.iterdir()) if p.is_dir() and "groundtruth" in p.name.lower())]
    return [
        path
        for folder in folders
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix.lower() == ".csv" and "groundtruth" in path.name.lower()
    ]


def find_ground_truth(root: Path) -> Path:
    """The ground-truth CSV: the official name first, else the only *GroundTruth*.csv found."""
    candidates = _csv_candidates(root)
    official = [path for path in candidates if path.name.lower() == GROUND_TRUTH_NAME.lower()]
    if official:
        return official[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FileNotFoundError(
            f"No ISIC 2018 Task 3 ground truth in {root}: expected {GROUND_TRUTH_NAME} in it or in a "
            "*GroundTruth* folder (unzip ISIC2018_Task3_Test_GroundTruth.zip there)"
        )
    raise FileNotFoundError(
        f"Several ground-truth CSVs in {root} ({', '.join(str(p) for p in candidates)}); "
        f"keep one, or name the test one {GROUND_TRUTH_NAME}"
    )


def _score_weights(
    table: pd.DataFrame, columns: dict[str, str], image_ids: pd.Series, path: Path
) -> list[float]:
    """The official scorer's weight of each row: the score_weight column (default 1.0), ISIC_0035068 -> 0.

    Stricter than the scorer on bad values (it would silently give NaN or a negative-weighted recall):
    a weight that is not a finite number >= 0 is an error naming the image.
    """
    column = columns.get(SCORE_WEIGHT_COLUMN.upper())
    if column is None:
        weights = [1.0] * len(table)
    else:
        weights = []
        for image_id, raw in zip(image_ids, table[column], strict=True):
            try:
                weight = float(raw)
            except (TypeError, ValueError):
                weight = math.nan
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(
                    f"Ground truth {path}: image {image_id} has {SCORE_WEIGHT_COLUMN}={raw!r}; "
                    "expected a number >= 0"
                )
            weights.append(weight)
    return [
        0.0 if image_id in OFFICIAL_ZERO_WEIGHT_IMAGES else weight
        for image_id, weight in zip(image_ids, weights, strict=True)
    ]


def read_ground_truth(path: Path) -> pd.DataFrame:
    """image_id, dx (our lower-case code) and score_weight from the one-hot CSV, validated row by row.

    Other columns (the scorer's validation_weight, which only its secondary "validation" score uses)
    are ignored.
    """
    table = pd.read_csv(path, sep=sniff_delimiter(path), dtype=str, encoding="utf-8-sig")
    columns = {column.strip().upper(): column for column in table.columns}
    missing = [name for name in ("IMAGE", *GROUND_TRUTH_COLUMNS) if name not in columns]
    if missing:
        raise ValueError(
            f"Ground truth {path} lacks column(s) {missing}: expected the header "
            f"image,{','.join(GROUND_TRUTH_COLUMNS)}"
        )
    image_ids = table[columns["IMAGE"]].str.strip()
    bad_ids = image_ids[~image_ids.fillna("").str.fullmatch(IMAGE_ID_PATTERN.pattern)].tolist()
    if bad_ids:
        raise ValueError(
            f"Ground truth {path}: {len(bad_ids)} image ids are not ISIC_xxxxxxx: {bad_ids[:_SHOWN]}"
        )
    if image_ids.duplicated().any():
        repeated = image_ids[image_ids.duplicated()].tolist()
        raise ValueError(f"Ground truth {path} lists {len(repeated)} images twice: {repeated[:_SHOWN]}")
    try:
        onehot = table[[columns[name] for name in GROUND_TRUTH_COLUMNS]].astype(float)
    except ValueError as error:
        raise ValueError(f"Ground truth {path} holds a non-numeric class value ({error})") from None
    valid = onehot.isin([0.0, 1.0]).all(axis=1) & (onehot.sum(axis=1) == 1.0)
    if not valid.all():
        bad = image_ids[~valid].tolist()
        raise ValueError(
            f"Ground truth {path}: {len(bad)} rows are not one-hot (exactly one 1.0, the rest 0.0), "
            f"first: {bad[:_SHOWN]}"
        )
    codes = [name.lower() for name in GROUND_TRUTH_COLUMNS]
    assert set(codes) == set(CLASS_CODES)
    dx = [codes[index] for index in onehot.to_numpy().argmax(axis=1)]
    weights = _score_weights(table, columns, image_ids, path)
    if not any(weight > 0 for weight in weights):
        raise ValueError(f"Ground truth {path}: every image has {SCORE_WEIGHT_COLUMN} 0, nothing is scored")
    return pd.DataFrame({"image_id": image_ids.to_list(), "dx": dx, SCORE_WEIGHT_COLUMN: weights})


def read_lesion_groupings(root: Path) -> dict[str, str] | None:
    """{image_id: lesion_id} from a *LesionGroupings*.csv beside the data, or None when there is none."""
    for path in sorted(root.rglob("*.csv")):
        if "lesiongrouping" not in path.name.lower():
            continue
        table = pd.read_csv(path, sep=sniff_delimiter(path), dtype=str, encoding="utf-8-sig")
        columns = {column.strip().lower(): column for column in table.columns}
        if "image" not in columns or "lesion_id" not in columns:
            raise ValueError(f"Lesion groupings {path} need the columns image,lesion_id (got {list(table)})")
        log.info("ISIC 2018: lesion groupings from %s", path)
        return dict(
            zip(table[columns["image"]].str.strip(), table[columns["lesion_id"]].str.strip(), strict=True)
        )
    return None


def _image_size(path: Path) -> tuple[int, int]:
    """The checks annotation makes (`read_image_size`): truncation, the pixel limit, link loops."""
    return read_image_size(path)


def read_isic2018_test(root: str | Path, *, on_error: str = "raise") -> pd.DataFrame:
    """Every ground-truth image of the ISIC 2018 Task 3 test set as evaluation records (split "test").

    `on_error="raise"` stops at a listed image that is missing or unreadable; "skip" leaves such images
    out and logs how many (and `frame.attrs["skipped"]` lists [image_id, reason]). A missing image of
    score_weight 0 (ISIC_0035068) is left out and listed there under either setting: the official
    balanced accuracy does not count it, so its absence is no reason to stop.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"dataset.on_error={on_error!r}: use raise or skip")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset.root={root}: no such folder (the unzipped ISIC 2018 Task 3 test set)"
        )
    image_folder = find_image_folder(root)
    truth = read_ground_truth(find_ground_truth(root))
    files = {}
    for path in image_folder.iterdir():
        match = IMAGE_FILE_PATTERN.fullmatch(path.name)
        if match and path.is_file():
            files[match.group(1)] = path
    lesions = read_lesion_groupings(root) or {}

    records: list[dict[str, Any]] = []
    skipped: list[list[str]] = []
    for image_id, dx, weight in zip(truth["image_id"], truth["dx"], truth[SCORE_WEIGHT_COLUMN], strict=True):
        path = files.get(image_id)
        if path is None and weight == 0:
            log.info("ISIC 2018: %s (score weight 0) has no image in %s; left out", image_id, image_folder)
            skipped.append([image_id, f"no image file, and {SCORE_WEIGHT_COLUMN} 0: not scored officially"])
            continue
        try:
            if path is None:
                raise FileNotFoundError(f"Image {image_id} is in the ground truth but not in {image_folder}")
            width, height = _image_size(path)
        except (FileNotFoundError, ValueError) as error:
            if on_error == "raise":
                raise type(error)(
                    f"{error} (or set dataset.on_error=skip to leave such images out)"
                ) from None
            skipped.append([image_id, str(error)])
            continue
        records.append(
            _record(root, path, image_id, dx, lesions.get(image_id, image_id), width, height, weight)
        )
    if skipped:
        log.warning(
            "ISIC 2018: skipped %d listed images (missing or unreadable), first: %s", len(skipped), skipped[0]
        )
    unlisted = len(set(files) - set(truth["image_id"]))
    if unlisted:
        log.info(
            "ISIC 2018: %d images in %s have no ground truth and are not evaluated", unlisted, image_folder
        )
    frame = pd.DataFrame(records, columns=list(RECORD_COLUMNS))
    frame.attrs["skipped"] = skipped
    log.info("ISIC 2018 Task 3 test set %s: %d images", root, len(frame))
    return frame


def _record(
    root: Path, path: Path, image_id: str, dx: str, lesion_id: str, width: int, height: int, weight: float
) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "lesion_id": lesion_id,
        "dx": dx,
        "dx_type": None,
        "age": None,
        "sex": None,
        "localization": None,
        "dataset": DATASET_NAME,
        "image_path": path.relative_to(root).as_posix(),
        "mask_path": None,
        "image_width": int(width),
        "image_height": int(height),
        "mask_available": False,
        "bbox": None,
        "location": None,
        "spatial_description": None,
        "area_fraction": None,
        "n_components": None,
        "centroid": None,
        "split": "test",
        "image_path_abs": str(path),
        "mask_path_abs": None,
        SCORE_WEIGHT_COLUMN: float(weight),
    }
