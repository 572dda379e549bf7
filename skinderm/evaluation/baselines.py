"""What a model that looks at nothing scores, beside every metric: baselines from the TRAINING split.

A number means little without the score of an answer that ignores the image. On HAM10000-like data
most lesions sit in the centre cell and many fill the frame, so a constant "center-center" or the
mean training box already earns much of the location and IoU metrics; a model has learnt something
only where it beats these. Each baseline is fitted on the training split (what a model could know
without the test image) and scored on the images evaluation scores:

- `majority_class`: always the most common training class (its accuracy and balanced accuracy).
- `majority_location`: always the most common training 3x3 cell; its location accuracy.
- `constant_spatial_reward`: the best constant cell under the GRPO spatial reward (its partial credit
  `reward.spatial.adjacent_credit` included), chosen on the scored split itself: the most a constant
  answer can earn there, so an upper bound on every constant answer.
- `centre_prior_box_iou`: the mean of the normalised training boxes, scaled to each scored image,
  scored with `skinderm.geometry.box_iou` (the metric's and the reward's IoU).
- `centre_prior_mask_iou` / `centre_prior_outline_iou`: the mean training mask (pixel-wise mean of the
  normalised training masks) scaled to each scored image and thresholded to the mean training lesion
  area (`prior_level`), against the mask the mask metric uses (the whole lesion mask) or the outline
  term's target (`outline_target`). IoU is
  invariant under scaling both regions by the same factors, so averaging in a normalised square grid
  and rescaling loses only discretisation.
- `oracle`: the synthetic dataset's Bayes ceiling (`synthetic_oracle.json`), None for other data.

Pure functions over dataset records (`skinderm.data.prepare.frame_to_records` dicts: dx, location, bbox,
image_width, image_height, mask_available, mask_path_abs); masks are read from their paths.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from skinderm.data.classes import CLASS_CODES, LOCATIONS
from skinderm.data.dermoscopy import DEFAULT_SPLIT_PARAMS, SYNTHETIC_ORACLE_JSON
from skinderm.geometry import box_iou, is_missing_box, valid_box
from skinderm.rewards.spatial import DEFAULT_ADJACENT_CREDIT, check_adjacent_credit, location_score

log = logging.getLogger(__name__)

Record = Mapping[str, Any]
SizeOf = Callable[[Record], tuple[int, int]]
# The normalised grid the training masks are averaged on (width = height).
MASK_GRID = 128
# At most this many training masks are averaged (evenly spaced over the split): the pixel-wise mean of
# 2000 masks has a standard error <= 0.011, far below what moves the threshold, and reading all of
# HAM10000's ~7000 masks would add tens of seconds to every evaluation.
MAX_TRAIN_MASKS = 2000


def _location(record: Record) -> str | None:
    value = record.get("location")
    return value if isinstance(value, str) and value in LOCATIONS else None


def _mask_path(record: Record) -> str | None:
    path = record.get("mask_path_abs")
    return path if record.get("mask_available") and isinstance(path, str) and path else None


def original_size(record: Record) -> tuple[int, int]:
    """(width, height) of the record's image in original pixels (the space `bbox` is in)."""
    return int(record["image_width"]), int(record["image_height"])


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------------------------------
# Diagnosis and location


def majority_class(train: Sequence[Record], scored: Sequence[Record]) -> dict[str, Any] | None:
    """The most common training class (ties: label order) and what always answering it scores.

    Balanced accuracy of a constant answer is 1 / (classes present) when the class is present in the
    scored split, else 0: mean recall gives it full recall on its own class only.
    """
    counts = Counter(str(r["dx"]) for r in train if r.get("dx") in CLASS_CODES)
    truths = [str(r["dx"]) for r in scored if r.get("dx") in CLASS_CODES]
    if not counts or not truths:
        return None
    code = max(CLASS_CODES, key=lambda c: (counts[c], -CLASS_CODES.index(c)))
    present = set(truths)
    return {
        "class": code,
        "accuracy": sum(t == code for t in truths) / len(truths),
        "balanced_accuracy": (1.0 / len(present)) if code in present else 0.0,
        "n": len(truths),
    }


def majority_location(train: Sequence[Record], scored: Sequence[Record]) -> dict[str, Any] | None:
    """The most common training cell (ties: LOCATIONS order) and its accuracy on the scored images with a
    true location (the images `spatial_accuracy` counts); None without locations on either side."""
    counts = Counter(cell for cell in map(_location, train) if cell is not None)
    truths = [cell for cell in map(_location, scored) if cell is not None]
    if not counts or not truths:
        return None
    cell = max(LOCATIONS, key=lambda c: (counts[c], -LOCATIONS.index(c)))
    return {"cell": cell, "accuracy": sum(t == cell for t in truths) / len(truths), "n": len(truths)}


def constant_spatial_reward(
    scored: Sequence[Record], adjacent_credit: float = DEFAULT_ADJACENT_CREDIT
) -> dict[str, Any] | None:
    """The best constant cell under the spatial reward on the scored images, and its mean reward.

    Every cell is tried (ties: LOCATIONS order), each scored by `location_score`, the reward's own
    function; also each cell's mean, so a reader sees how flat the landscape is.
    """
    credit = check_adjacent_credit(adjacent_credit)
    truths = [cell for cell in map(_location, scored) if cell is not None]
    if not truths:
        return None
    per_cell = {cell: float(np.mean([location_score(cell, t, credit) for t in truths])) for cell in LOCATIONS}
    best = max(LOCATIONS, key=lambda c: (per_cell[c], -LOCATIONS.index(c)))
    return {
        "cell": best,
        "reward": per_cell[best],
        "adjacent_credit": credit,
        "per_cell": per_cell,
        "n": len(truths),
    }


# --------------------------------------------------------------------------------------------------
# Boxes


def mean_normalised_box(train: Sequence[Record]) -> tuple[float, float, float, float] | None:
    """Mean of the valid training boxes as fractions of their image: (x1/W, y1/H, x2/W, y2/H)."""
    boxes = []
    for record in train:
        box = None if is_missing_box(record.get("bbox")) else valid_box(record.get("bbox"))
        if box is None:
            continue
        width, height = original_size(record)
        boxes.append((box[0] / width, box[1] / height, box[2] / width, box[3] / height))
    if not boxes:
        return None
    x1, y1, x2, y2 = (float(v) for v in np.mean(np.asarray(boxes), axis=0))
    return (x1, y1, x2, y2)


def scaled_box(box: Sequence[float], size: tuple[int, int]) -> list[float]:
    """A normalised box in the pixels of an image of `size` = (width, height)."""
    width, height = size
    return [box[0] * width, box[1] * height, box[2] * width, box[3] * height]


def centre_prior_box_iou(train: Sequence[Record], scored: Sequence[Record]) -> dict[str, Any] | None:
    """Mean box IoU of the mean training box, scaled to each scored image, over the images with a true box
    (those `bbox.mean_iou` counts: `record_iou` scores every present box, an invalid one 0)."""
    box = mean_normalised_box(train)
    truths = [r for r in scored if not is_missing_box(r.get("bbox"))]
    if box is None or not truths:
        return None
    ious = [box_iou(scaled_box(box, original_size(r)), r["bbox"]) for r in truths]
    return {"mean_iou": float(np.mean(ious)), "box": [round(v, 4) for v in box], "n": len(ious)}


# --------------------------------------------------------------------------------------------------
# Masks


def _evenly_spaced(items: Sequence[Any], limit: int) -> list[Any]:
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def mean_training_mask(
    train: Sequence[Record], *, grid: int = MASK_GRID, max_masks: int = MAX_TRAIN_MASKS
) -> tuple[np.ndarray, int] | None:
    """(pixel-wise mean of the normalised training masks on a grid x grid square, masks averaged), or None
    without readable masks. Unreadable masks are skipped (the metric gives such an image no mask IoU)."""
    from skinderm.data.errors import DataError
    from skinderm.data.images import load_mask

    total = np.zeros((grid, grid), dtype=np.float64)
    used = 0
    for path in _evenly_spaced([p for p in map(_mask_path, train) if p is not None], max_masks):
        try:
            total += load_mask(path, (grid, grid))
        except (DataError, OSError) as error:
            log.warning("centre prior: %s; mask left out of the mean", error)
            continue
        used += 1
    return (total / used, used) if used else None


def prior_level(mean_mask: np.ndarray) -> float:
    """The threshold that gives the prior the mean training lesion area: the k-th highest pixel of the
    mean mask, k = its mean (the mean area fraction) times its size.

    A fixed 0.5 would be empty wherever lesions are spread out (the `simple` style's uniform 3x3 placement
    leaves every pixel of the mean below 0.5: a baseline of 0 that says nothing); where lesions pile up in
    the centre (HAM10000, `dermoscopy`) the two nearly agree."""
    values = np.sort(mean_mask, axis=None)[::-1]
    k = round(float(mean_mask.mean()) * values.size)
    return float(values[k - 1]) if k >= 1 and values[k - 1] > 0 else float("inf")


def prior_mask(mean_mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mean mask scaled to `size` = (width, height) (bilinear), then thresholded at its `prior_level`."""
    scaled = cv2.resize(mean_mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    return scaled >= prior_level(scaled)


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two boolean masks of one shape (0 when both are empty)."""
    union = int(np.count_nonzero(predicted | truth))
    return int(np.count_nonzero(predicted & truth)) / union if union else 0.0


def centre_prior_mask_iou(
    mean_mask: tuple[np.ndarray, int] | None,
    scored: Sequence[Record],
    *,
    size_of: SizeOf = original_size,
    target: str = "mask",
) -> dict[str, Any] | None:
    """Mean IoU of the thresholded mean training mask with each scored image's truth, at `size_of(record)`
    (evaluation passes the model input size, the space the mask metrics are measured in).

    target "mask" compares with the whole lesion mask (`mask_mean_iou`'s truth); "outline" with the
    outline reward's target, the largest component's filled outer outline (`outline_mean_iou`'s truth).
    """
    from skinderm.rewards.iou import load_mask, load_outline_truth

    if target not in ("mask", "outline"):
        raise ValueError(f"target must be 'mask' or 'outline', got {target!r}")
    if mean_mask is None:
        return None
    loader = load_mask if target == "mask" else load_outline_truth
    ious = []
    for record in scored:
        path = _mask_path(record)
        if path is None:
            continue
        width, height = size_of(record)
        truth = loader.__wrapped__(path, width, height)  # uncached: each mask is read once here
        if truth is not None:
            ious.append(mask_iou(prior_mask(mean_mask[0], (width, height)), truth.mask))
    if not ious:
        return None
    area = float(np.mean(prior_mask(mean_mask[0], mean_mask[0].shape[::-1])))
    return {"mean_iou": float(np.mean(ious)), "prior_area_fraction": area, "n_train_masks": mean_mask[1],
            "n": len(ious)}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Ceiling


def read_oracle(
    root: str | Path | None, split: str, split_params: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The synthetic Bayes oracle's scores on `split` from `<root>/synthetic_oracle.json`, or None.

    None when the file is absent (real data has no known ceiling) or has no entry for the split. When the
    file was computed on other split parameters than the dataset's (`split_params`: dataset.splits, whose
    missing keys take prepare_dataset's defaults), its images are not the scored ones: then None too,
    with a warning, rather than a ceiling of other images. The entry covers the whole split (its
    n_images), also when evaluation scored a `max_samples` subsample of it.
    """
    if root in (None, "", "???"):
        return None
    path = Path(str(root)).expanduser() / SYNTHETIC_ORACLE_JSON
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    entry = report.get(split)
    if not isinstance(entry, Mapping):
        return None
    written = report.get("split_params")
    if isinstance(written, Mapping):
        used = {**DEFAULT_SPLIT_PARAMS, **dict(split_params or {})}  # prepare_dataset's defaults fill gaps
        differing = sorted(k for k in written if k in used and used[k] != written[k])
        if differing:
            log.warning(
                "%s was computed on other splits (%s differ): no oracle ceiling reported", path, differing
            )
            return None
    return {**dict(entry), "source": str(path)}


# --------------------------------------------------------------------------------------------------
# All of them


def compute_baselines(
    train: Sequence[Record],
    scored: Sequence[Record],
    *,
    adjacent_credit: float = DEFAULT_ADJACENT_CREDIT,
    size_of: SizeOf = original_size,
    outline: bool = False,
    oracle: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `baselines` block of metrics.json (see the module docstring); a baseline without the data it
    needs (no locations, boxes or masks) is None. `outline` adds the outline target's centre prior (for
    runs taught polygons, whose metrics carry outline_mean_iou)."""
    mean_mask = mean_training_mask(train) if any(_mask_path(r) for r in scored) else None
    mask = centre_prior_mask_iou(mean_mask, scored, size_of=size_of)
    box = centre_prior_box_iou(train, scored)
    baselines: dict[str, Any] = {
        "fitted_on": "train",
        "n_train": len(train),
        "majority_class": majority_class(train, scored),
        "majority_location": majority_location(train, scored),
        "constant_spatial_reward": constant_spatial_reward(scored, adjacent_credit),
        "centre_prior_box_iou": None if box is None else box["mean_iou"],
        "centre_prior_box": box,
        "centre_prior_mask_iou": None if mask is None else mask["mean_iou"],
        "centre_prior_mask": mask,
        "oracle": None if oracle is None else dict(oracle),
    }
    if outline:
        outline_prior = centre_prior_mask_iou(mean_mask, scored, size_of=size_of, target="outline")
        baselines["centre_prior_outline_iou"] = None if outline_prior is None else outline_prior["mean_iou"]
    return baselines
