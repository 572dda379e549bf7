"""Lesion masks -> geometry (box, 3x3 location, area, components), for one mask and a whole dataset.

One definition everywhere: the box is the bounding box of the LARGEST 8-connected component of
`mask > 127`, in original pixels with an exclusive end (x2 = x1 + width), and the location is the
grid cell of that component's centroid. `cv2.connectedComponentsWithStats` (connectivity 8) is the
reference; `annotate_mask` computes exactly the same with border following (contours) and pixel
sums inside the lesion's rows only (labels only for several components): ~20x cheaper than the
stats pass and ~2x cheaper than contours + moments over the whole image, tested bit-identical.
The seed took the largest `findContours` contour by polygon area instead, which differs for masks
with holes or near-equal components. No torch here: workers stay light.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from skinderm.core import files
from skinderm.data import layout
from skinderm.data.classes import location_from_point, spatial_description
from skinderm.data.errors import (
    SKIP_REASONS,
    DataError,
    DataFileNotFoundError,
    SkippedItem,
    format_counts,
    skip_counts,
    sort_items,
)
from skinderm.data.ham10000 import OnError, check_on_error, index_dataset
from skinderm.data.images import check_image_aspect, decode_mask, read_image_size
from skinderm.data.skipped import write_skipped_csv

log = logging.getLogger(__name__)

# The record schema of docs/architecture.md, in column order.
RECORD_COLUMNS: tuple[str, ...] = (
    "image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization", "dataset",
    "image_path", "mask_path", "image_width", "image_height", "mask_available",
    "bbox", "location", "spatial_description", "area_fraction", "n_components", "centroid",
)  # fmt: skip
_METADATA_FIELDS = ("lesion_id", "dx", "dx_type", "age", "sex", "localization", "dataset")
_AUTO_WORKER_MIN_ITEMS = 200  # below this many images per worker, processes cost more than they save

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class MaskGeometry:
    """Geometry of one mask; every field but `n_components` is None for an empty mask."""

    bbox: list[int] | None  # [x1, y1, x2, y2] of the largest component, exclusive end
    location: str | None  # "{v}-{h}" cell of that component's centroid
    spatial_description: str | None
    area_fraction: float | None  # all lesion pixels / image pixels
    n_components: int
    centroid: list[float] | None  # [cx, cy] of the largest component

    def as_dict(self) -> dict[str, Any]:
        return {
            "bbox": self.bbox,
            "location": self.location,
            "spatial_description": self.spatial_description,
            "area_fraction": self.area_fraction,
            "n_components": self.n_components,
            "centroid": self.centroid,
        }


EMPTY_GEOMETRY = MaskGeometry(None, None, None, None, 0, None)


def annotate_mask(mask: np.ndarray) -> MaskGeometry:
    """Geometry of a lesion mask: (H, W) or (H, W, C) (maximum over the first 3 channels, as in
    `decode_mask`), any dtype, lesion = > 127.

    Boolean masks count True as lesion. Resized or lossy masks carry values other than 0/255, hence
    the threshold rather than `!= 0`.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[:, :, :3].max(axis=2)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"A mask must be a non-empty (H, W) or (H, W, C) array, got shape {mask.shape}.")
    if mask.dtype == np.uint8:
        return _annotate_uint8(np.ascontiguousarray(mask), threshold=True)[0]
    binary = mask.view(np.uint8) if mask.dtype == np.bool_ else (mask > 127).astype(np.uint8)
    return _annotate_uint8(np.ascontiguousarray(binary), threshold=False)[0]


def _annotate_uint8(values: np.ndarray, *, threshold: bool) -> tuple[MaskGeometry, np.ndarray]:
    """`annotate_mask` of a contiguous uint8 mask (lesion = > 127 if `threshold`, else values are 0/1),
    and the band of rows that hold any nonzero value (all other rows are 0: checks can skip them).

    Every step after decoding is sized to the lesion, not the image (issue 4: annotation at the decode
    floor): one SIMD row-sum pass finds the band of rows with any nonzero value; thresholding and
    border following (contours) run on that band only. Outer borders of 8-connected components are
    the top-level contours of RETR_CCOMP (holes are level 2; a component inside another's hole is top
    level again). Most masks have one component, whose box is its contour's and whose area and
    centroid come from row/column sums of its box: exact integers, like the stats pass.
    """
    height, width = values.shape
    nonzero_rows = cv2.reduce(values, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0].nonzero()[0]
    if not nonzero_rows.size:
        return EMPTY_GEOMETRY, values[:0]
    top = int(nonzero_rows[0])
    raw_band = band = values[top : int(nonzero_rows[-1]) + 1]
    if threshold:
        band = cv2.threshold(band, 127, 1, cv2.THRESH_BINARY)[1]
    # Run linking (2-3x faster than border following) tells the common case apart: exactly one
    # contour is one component without holes (tested equal to findContours on random masks). Its
    # hierarchy does not mark holes, so anything else goes through findContours.
    runs = cv2.findContoursLinkRuns(band)[0]
    if len(runs) == 1:
        x, y, w, h = cv2.boundingRect(runs[0])
        area, sum_x, sum_y = _pixel_sums(band[y : y + h, x : x + w])
        centroid = _centroid(x, y + top, area, sum_x, sum_y)
        return _geometry([x, y + top, x + w, y + top + h], centroid, area, 1, width, height), raw_band
    if len(runs) == 0:  # nonzero values, none above 127
        return EMPTY_GEOMETRY, raw_band
    contours, hierarchy = cv2.findContours(band, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(0, top))
    outer = [contours[int(i)] for i in np.flatnonzero(hierarchy[0, :, 3] < 0)]
    if len(outer) == 1:  # one component with holes
        x, y, w, h = cv2.boundingRect(outer[0])
        area, sum_x, sum_y = _pixel_sums(band[y - top : y - top + h, x : x + w])
        centroid = _centroid(x, y, area, sum_x, sum_y)
        return _geometry([x, y, x + w, y + h], centroid, area, 1, width, height), raw_band
    # Several components: each one's pixels as a 0/1 crop of its own box.
    regions = _filled_regions(outer) if len(outer) == len(contours) else _labelled_regions(band, top, outer)
    total_area = sum(area for area, _, _, _ in regions)
    # Largest area; ties go to the component met first in raster order, as in `_geometry_by_labels`.
    # A border starts at its component's first pixel in raster order.
    _, _, bbox, region = max(regions, key=lambda item: (item[0], -item[1][0], -item[1][1]))
    area, sum_x, sum_y = _pixel_sums(region)
    centroid = _centroid(bbox[0], bbox[1], area, sum_x, sum_y)
    return _geometry(bbox, centroid, total_area, len(outer), width, height), raw_band


Region = tuple[int, tuple[int, int], list[int], np.ndarray]  # (area, first pixel (y, x), box, 0/1 crop)


def _filled_regions(outer: Sequence[np.ndarray]) -> list[Region]:
    """Components of a mask without holes: each outer border, filled, is exactly its component's pixels
    (tested against labels), so no labelling pass is needed."""
    regions: list[Region] = []
    for contour in outer:
        x, y, w, h = cv2.boundingRect(contour)
        region = np.zeros((h, w), dtype=np.uint8)
        cv2.drawContours(region, [contour], -1, 1, cv2.FILLED, offset=(-x, -y))
        start_x, start_y = contour[0, 0]
        regions.append((cv2.countNonZero(region), (int(start_y), int(start_x)), [x, y, x + w, y + h], region))
    return regions


def _labelled_regions(band: np.ndarray, top: int, outer: Sequence[np.ndarray]) -> list[Region]:
    """Components when some have holes (a hole may hold another component): labels of the box around
    all of them, then each component inside its own box."""
    boxes = [cv2.boundingRect(contour) for contour in outer]
    left, right = min(b[0] for b in boxes), max(b[0] + b[2] for b in boxes)
    bottom = max(b[1] + b[3] for b in boxes)
    _, labels = cv2.connectedComponents(band[: bottom - top, left:right], connectivity=8, ltype=cv2.CV_32S)
    regions: list[Region] = []
    for contour, (x, y, w, h) in zip(outer, boxes, strict=True):
        start_x, start_y = contour[0, 0]
        label = labels[start_y - top, start_x - left]
        region = (labels[y - top : y - top + h, x - left : x - left + w] == label).view(np.uint8)
        regions.append((cv2.countNonZero(region), (int(start_y), int(start_x)), [x, y, x + w, y + h], region))
    return regions


def _pixel_sums(crop: np.ndarray) -> tuple[int, int, int]:
    """(pixel count, sum of x, sum of y) of a 0/1 uint8 crop, local coordinates, exact integers."""
    height, width = crop.shape
    column_counts = cv2.reduce(crop, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[0]
    row_counts = cv2.reduce(crop, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0]
    ramp = _RAMP if max(height, width) <= len(_RAMP) else np.arange(max(height, width), dtype=np.float64)
    # float64 dot products are exact here: every partial sum is an integer below 2**53.
    return int(column_counts.sum()), int(column_counts @ ramp[:width]), int(row_counts @ ramp[:height])


_RAMP = np.arange(4096, dtype=np.float64)  # 0, 1, 2, ...: weights for sums of coordinates


def _centroid(x: int, y: int, area: int, sum_x: int, sum_y: int) -> tuple[float, float]:
    """Centroid from local sums of a box at (x, y): (offset * area + sum) / area, from exact integers,
    so that every path gives the stats pass's centroid bit for bit."""
    return (x * area + sum_x) / area, (y * area + sum_y) / area


def _geometry_by_labels(binary: np.ndarray) -> MaskGeometry:
    """The definition itself, in one `connectedComponentsWithStats` pass: the reference the fast paths
    of `annotate_mask` are tested against (bit-identical results)."""
    height, width = binary.shape
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return EMPTY_GEOMETRY
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = _largest_label(labels, stats)
    x, y, w, h = (int(v) for v in stats[largest, :4])
    centroid = (float(centroids[largest][0]), float(centroids[largest][1]))
    return _geometry([x, y, x + w, y + h], centroid, float(areas.sum()), count - 1, width, height)


def _largest_label(labels: np.ndarray, stats: np.ndarray) -> int:
    """The label of the largest component (most pixels); ties: the component met first in raster order.
    (OpenCV's label order is not raster order: its block-based algorithms number components by 2x2 blocks.)"""
    areas = stats[1:, cv2.CC_STAT_AREA]
    tied = 1 + np.flatnonzero(areas == areas.max())
    return int(min(tied, key=lambda label: int(np.argmax(labels.ravel() == label))))


def largest_component(mask: np.ndarray) -> np.ndarray | None:
    """THE lesion: a boolean mask of the largest 8-connected component of a mask (lesion = > 127, or True),
    the component whose box, location and centroid annotation records; None for an empty mask.

    The outline taught as `polygon` is this component's outer boundary (`skinderm.conversations`), so box,
    location and outline always describe the same lesion.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[:, :, :3].max(axis=2)
    binary = mask.view(np.uint8) if mask.dtype == np.bool_ else (mask > 127).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(binary), connectivity=8)
    if count <= 1:
        return None
    return labels == _largest_label(labels, stats)


def _geometry(
    bbox: list[int],
    centroid: tuple[float, float],
    total_area: float,
    n_components: int,
    width: int,
    height: int,
) -> MaskGeometry:
    location = location_from_point(centroid[0], centroid[1], width, height)
    return MaskGeometry(
        bbox=[int(v) for v in bbox],
        location=location,
        spatial_description=spatial_description(location),
        area_fraction=round(total_area / (width * height), 6),
        n_components=n_components,
        centroid=[round(centroid[0], 2), round(centroid[1], 2)],
    )


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file decoded to (H, W) contiguous uint8, 0..255 (16-bit and colour masks: `decode_mask`)."""
    return decode_mask(path).values


def annotate_mask_file(path: str | Path) -> MaskGeometry:
    """`annotate_mask(read_mask(path))`: the per-mask unit of work of dataset annotation."""
    return _annotate_uint8(read_mask(path), threshold=True)[0]


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def parallel_map(
    function: Callable[[T], R], items: Sequence[T], *, workers: int, desc: str = "", unit: str = "it"
) -> list[R]:
    """`[function(item) for item in items]`, in order, in `workers` spawned processes when > 1.

    Spawn (not fork) so that a caller that already imported torch or started threads is safe.
    `function` must be importable (module level). Results are identical whatever `workers` is.
    """
    progress = {"desc": desc, "unit": unit, "total": len(items), "disable": None}
    if workers <= 1 or len(items) <= 1:
        return _map_in_this_process(function, items, progress)
    if not _spawn_can_import_main():
        log.warning("Running in one process: workers cannot re-import a main script read from stdin")
        return _map_in_this_process(function, items, progress)
    workers = min(workers, len(items))
    chunksize = max(1, min(256, len(items) // (workers * 8)))
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker) as pool:
        return list(tqdm(pool.imap(function, items, chunksize=chunksize), **progress))


def _map_in_this_process(function: Callable[[T], R], items: Sequence[T], progress: dict[str, Any]) -> list[R]:
    """The one-process map, with OpenCV on one thread meanwhile as in the workers: its own threads cost
    more than they save on one mask (+60% per-mask annotation time measured with the default 2)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return [function(item) for item in tqdm(items, **progress)]
    finally:
        cv2.setNumThreads(threads)


def _spawn_can_import_main() -> bool:
    """Spawned workers re-run the main script; code piped into `python -` has none to re-run.

    Without this check the pool would restart crashing workers forever.
    """
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or Path(main_file).is_file()


Problem = tuple[str, str, str]  # (reason, file, one-line message)
# Per-mask findings that `annotate_dataset` counts and warns about (flag -> summary key).
_MASK_FLAGS: dict[str, str] = {
    "_nonbinary": "masks_nonbinary",
    "_faint": "masks_faint",
    "_16bit": "masks_16bit",
    "_color": "masks_color",
    "_full": "masks_full",
}


# Bump when a rule of mask -> geometry or of what is checked changes: cached annotations of another
# version are redone (the version is written into ham10000_with_spatial_data.summary.json).
ANNOTATION_VERSION = 2


def _annotate_item(item: tuple[str, str, str | None]) -> tuple[dict[str, Any] | None, Problem | None]:
    """(image size + mask geometry, None) or (None, problem) for one image.

    The image is checked (`read_image_size`: end marker and a reduced decode). Besides the record
    fields the result carries the flags of `_MASK_FLAGS`: `_nonbinary` (mask values other than 0 and
    255, thresholded at > 127), `_faint` (nonzero mask pixels, none above 127: most likely a 0/1
    mask), `_16bit` (a 16-bit file), `_color` (channels that differ) and `_full` (every pixel lesion).
    """
    _, image_path, mask_path = item
    try:
        width, height = read_image_size(image_path)
        check_image_aspect(image_path, width, height)
    except DataError as error:
        return None, (error.reason or "image_unreadable", image_path, str(error))
    result: dict[str, Any] = {
        "image_width": width,
        "image_height": height,
        **dict.fromkeys(_MASK_FLAGS, False),
    }
    if mask_path is None:
        result.update(mask_available=False, **EMPTY_GEOMETRY.as_dict())
        result["n_components"] = None
        return result, None
    try:
        decoded = decode_mask(mask_path)
    except DataError as error:  # a mask listed a moment ago that vanished counts as unreadable
        return None, ("mask_unreadable", mask_path, str(error))
    mask = decoded.values
    if mask.shape != (height, width):
        rotated = " (rotated?)" if mask.shape == (width, height) else ""
        return None, (
            "mask_size_mismatch",
            mask_path,
            f"Mask file {mask_path} is {mask.shape[1]}x{mask.shape[0]}{rotated} but its image {image_path} "
            f"is {width}x{height}; masks must have their image's size (re-extract the segmentation archive).",
        )
    geometry, nonzero_rows = _annotate_uint8(mask, threshold=True)  # decode_mask: contiguous uint8
    result["_nonbinary"] = nonzero_rows.size > 0 and cv2.countNonZero(cv2.inRange(nonzero_rows, 1, 254)) > 0
    result["_faint"] = geometry.n_components == 0 and nonzero_rows.size > 0
    result["_16bit"] = decoded.bit_depth != 8
    result["_color"] = decoded.color
    result["_full"] = geometry.area_fraction == 1.0
    result.update(mask_available=geometry.n_components > 0, **geometry.as_dict())
    return result, None


def _json_cell(value: Any) -> Any:
    """Metadata cell -> JSON value (NaN -> None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def annotate_dataset(
    root: str | Path,
    out_dir: str | Path | None = None,
    workers: int | None = None,
    on_error: OnError = "raise",
) -> pd.DataFrame:
    """Annotate every metadata image of the HAM10000 folder `root`; write json + csv into `out_dir`.

    Returns the records as a DataFrame (columns `RECORD_COLUMNS`). A bad metadata row, a missing,
    unreadable or truncated image, an undecodable mask or one of another size than its image raises a
    `DataError` naming the file (and metadata line) or, with on_error="skip", is left out, counted and
    listed in `skipped.csv` beside the json. A missing or empty mask is no error: the image keeps its
    diagnosis without geometry. Non-binary masks are thresholded (> 127) and counted. No usable image
    at all is always an error. What happened is in `df.attrs` (keys: `ATTRS_KEYS`, see
    `annotation_attrs`) and in `ANNOTATIONS_SUMMARY_JSON`. The files are byte-identical whatever
    `workers` is.
    """
    on_error = check_on_error(on_error)
    root = Path(root)
    out_dir = root if out_dir is None else Path(out_dir)
    files.remove_stale_temp_files(out_dir)
    index = index_dataset(root, on_error=on_error)
    metadata = index.metadata
    items = [
        (
            image_id,
            str(index.images[image_id]),
            str(index.masks[image_id]) if image_id in index.masks else None,
        )
        for image_id in metadata["image_id"]
    ]
    if workers is None:
        workers = min(default_workers(), max(1, len(items) // _AUTO_WORKER_MIN_ITEMS))
    results = parallel_map(_annotate_item, items, workers=workers, desc="annotate", unit="img")

    problems = [
        (image_id, problem) for (image_id, _, _), (_, problem) in zip(items, results, strict=True) if problem
    ]
    if problems and on_error == "raise":
        image_id, (reason, _, message) = problems[0]
        raise DataError(
            f"{message} [metadata line {index.lines[image_id]}; {len(problems)} unusable image(s) in all: "
            "set dataset.on_error=skip to leave them out and list them in skipped.csv]",
            reason=reason,
        )
    skipped = list(index.skipped)
    records: list[dict[str, Any]] = []
    flagged: dict[str, list[str]] = {flag: [] for flag in _MASK_FLAGS}  # flag -> image ids
    for row, (image_id, image_path, mask_path), (result, problem) in zip(
        metadata.itertuples(index=False), items, results, strict=True
    ):
        if problem is not None:
            reason, file, message = problem
            skipped.append(SkippedItem(image_id, file, reason, index.lines[image_id], message))
            continue
        for flag, ids in flagged.items():
            if result.pop(flag):
                ids.append(image_id)
        record: dict[str, Any] = {"image_id": image_id}
        record.update({name: _json_cell(getattr(row, name)) for name in _METADATA_FIELDS})
        record["image_path"] = Path(image_path).relative_to(root).as_posix()
        record["mask_path"] = None if mask_path is None else Path(mask_path).relative_to(root).as_posix()
        record.update(result)
        records.append({name: record[name] for name in RECORD_COLUMNS})
    skipped = sort_items(skipped)
    _warn_about_masks(flagged)

    out_dir.mkdir(parents=True, exist_ok=True)
    skipped_csv = write_skipped_csv(skipped, out_dir)
    if not records:
        counts = format_counts(skip_counts(skipped))
        raise DataError(
            f"No usable images left in {root}: all {index.n_listed} rows of {index.metadata_path.name} "
            f"were skipped ({counts}); each is listed in {skipped_csv}. Fix those files "
            "(docs/data.md, Troubleshooting: data)."
        )
    summary = {
        "annotation_version": ANNOTATION_VERSION,
        "on_error": on_error,
        "images_listed": index.n_listed,
        "images_used": len(records),
        "skip_counts": skip_counts(skipped),
        "masks_missing": sum(1 for r in records if r["mask_path"] is None),
        "masks_empty": sum(1 for r in records if r["mask_path"] is not None and not r["mask_available"]),
        **{key: len(flagged[flag]) for flag, key in _MASK_FLAGS.items()},
    }
    frame = records_to_frame(records)
    json_path = out_dir / layout.ANNOTATIONS_JSON
    csv_path = out_dir / layout.ANNOTATIONS_CSV
    files.atomic_write_text(out_dir / layout.ANNOTATIONS_SUMMARY_JSON, json.dumps(summary, indent=1) + "\n")
    files.atomic_write_text(csv_path, _records_csv(frame))
    files.atomic_write_text(json_path, _records_json(records))  # last: its mtime marks a complete run
    frame.attrs.update(annotation_attrs(summary, skipped, out_dir))
    log.info("Annotated %s -> %s: %s", root, json_path, format_data_summary(frame.attrs))
    return frame


_MASK_WARNINGS: dict[str, str] = {
    "_nonbinary": "%d masks hold values other than 0 and 255 (first: %s); thresholded at > 127",
    "_faint": "%d masks have nonzero pixels but none above 127 (0/1 masks? first: %s); they count as empty: "
    "rescale them to 0/255",
    "_16bit": "%d masks are 16-bit PNGs (first: %s); read at their bit depth: values up to 255 as 8-bit, "
    "larger ones scaled from 0-65535 (lesion = above half the range)",
    "_color": "%d masks have colour channels that differ (first: %s); lesion = any colour channel above 127: "
    "check that the lesion is the coloured part",
    "_full": "%d masks mark the whole image as lesion (first: %s): a wrong or inverted mask? They are kept "
    "(box = the whole image); fix or delete them and re-annotate",
}


def _warn_about_masks(flagged: dict[str, list[str]]) -> None:
    """One warning per kind of odd mask, with the count and the first ids (the counts go in the summary)."""
    for flag, ids in flagged.items():
        if ids:
            log.warning(_MASK_WARNINGS[flag], len(ids), ids[:5])


# df.attrs keys set by `annotate_dataset` and `prepare_dataset` (fresh or reused annotations alike).
ATTRS_KEYS: tuple[str, ...] = (
    "json_path", "csv_path", "skipped_csv", "missing_images", "skipped", "skip_counts",
    "masks_missing", "masks_empty", "masks_nonbinary", "masks_faint", "masks_16bit", "masks_color",
    "masks_full", "data_summary",
)  # fmt: skip


# Mask counts of the summary, in order: no mask file, no lesion pixel, then the findings of `_MASK_FLAGS`.
MASK_COUNT_KEYS: tuple[str, ...] = ("masks_missing", "masks_empty", *_MASK_FLAGS.values())


def annotation_attrs(
    summary: dict[str, Any], skipped: Sequence[SkippedItem], out_dir: Path
) -> dict[str, Any]:
    """What a records frame carries in `attrs` about its annotation run (see `ATTRS_KEYS`).

    `data_summary` is flat (str -> int) for metrics files: images_listed, images_used, skipped_total,
    skipped_<reason> for every reason of `SKIP_REASONS`, then the mask counts of `MASK_COUNT_KEYS`.
    """
    counts = {reason: int(summary["skip_counts"].get(reason, 0)) for reason in SKIP_REASONS}
    skipped_csv = out_dir / layout.SKIPPED_CSV
    data_summary = {
        "images_listed": int(summary["images_listed"]),
        "images_used": int(summary["images_used"]),
        "skipped_total": sum(counts.values()),
        **{f"skipped_{reason}": count for reason, count in counts.items()},
        **{key: int(summary[key]) for key in MASK_COUNT_KEYS},
    }
    return {
        "json_path": str(out_dir / layout.ANNOTATIONS_JSON),
        "csv_path": str(out_dir / layout.ANNOTATIONS_CSV),
        "skipped_csv": str(skipped_csv) if skipped else None,
        "missing_images": [item.image_id for item in skipped if item.reason == "image_missing"],
        "skipped": [[item.image_id, item.detail] for item in skipped if item.reason != "image_missing"],
        "skip_counts": counts,
        **{key: data_summary[key] for key in MASK_COUNT_KEYS},
        "data_summary": data_summary,
    }


def format_data_summary(attrs: dict[str, Any]) -> str:
    """One line for logs: images used of listed, skips per reason (and where they are listed), masks."""
    summary = attrs["data_summary"]
    where = f"; listed in {attrs['skipped_csv']}" if attrs.get("skipped_csv") else ""
    odd = "".join(
        f", {summary[key]} {label}"
        for key, label in (
            ("masks_16bit", "16-bit"),
            ("masks_color", "colour"),
            ("masks_full", "whole-image"),
        )
        if summary[key]
    )
    return (
        f"{summary['images_used']} of {summary['images_listed']} listed images used, "
        f"{summary['skipped_total']} skipped ({format_counts(attrs['skip_counts'])}{where}); masks: "
        f"{summary['masks_missing']} missing, {summary['masks_empty']} empty, "
        f"{summary['masks_nonbinary']} non-binary (thresholded at > 127){odd}"
    )


def read_annotation_summary(out_dir: str | Path) -> dict[str, Any] | None:
    """The summary `annotate_dataset` wrote in `out_dir`, or None when absent or unreadable."""
    path = Path(out_dir) / layout.ANNOTATIONS_SUMMARY_JSON
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    # A summary of another annotation version was made by other rules (e.g. before 16-bit and colour
    # masks were read at their depth, or without the newer counts): redo it.
    needed = {"on_error", "images_listed", "images_used", "skip_counts", *MASK_COUNT_KEYS}
    if not isinstance(summary, dict) or not needed <= set(summary):
        return None
    return summary if summary.get("annotation_version") == ANNOTATION_VERSION else None


def _records_json(records: Iterable[dict[str, Any]]) -> str:
    """A JSON list, one record per line: valid JSON that still diffs and greps line by line."""
    lines = [json.dumps(record, ensure_ascii=False, allow_nan=False) for record in records]
    return "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"


def _records_csv(frame: pd.DataFrame) -> str:
    table = frame.copy()
    for column in ("bbox", "centroid"):
        table[column] = [None if value is None else json.dumps(value) for value in table[column]]
    return table.to_csv(index=False, lineterminator="\n")


def records_to_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Records -> DataFrame with stable dtypes (nullable ints, lists kept as Python lists)."""
    frame = pd.DataFrame(list(records), columns=list(RECORD_COLUMNS))
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce").astype(float)
    frame["area_fraction"] = pd.to_numeric(frame["area_fraction"], errors="coerce").astype(float)
    for column in ("image_width", "image_height", "n_components"):
        frame[column] = frame[column].astype("Int64")
    frame["mask_available"] = frame["mask_available"].astype(bool)
    for column in ("bbox", "centroid", "mask_path", "location", "spatial_description", "dataset"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def load_annotations(root_or_out_dir: str | Path) -> pd.DataFrame:
    """The records written by `annotate_dataset`, from a folder (or the json file itself)."""
    path = Path(root_or_out_dir)
    if path.is_dir():
        path = path / layout.ANNOTATIONS_JSON
    if not path.is_file():
        raise DataFileNotFoundError(
            f"No annotations at {path}: run `python -m skinderm.annotate dataset.root=<HAM10000 folder>`."
        )
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(
            f"Annotation file {path} is not valid JSON ({error}); delete it and re-annotate."
        ) from None
    if not isinstance(records, list) or any(not isinstance(r, dict) for r in records):
        raise DataError(
            f"Annotation file {path} must hold a JSON list of records; delete it and re-annotate."
        )
    missing = sorted({c for c in RECORD_COLUMNS if records and c not in records[0]})
    if missing:
        raise DataError(f"Annotation file {path} lacks columns {missing}; delete it and re-annotate.")
    return records_to_frame(records)
