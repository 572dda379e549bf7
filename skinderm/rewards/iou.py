"""Box and mask IoU rewards, in the pixel space of the image the model saw.

Continuous IoU, not "any four numbers" (the seed's TRL script paid 0.08 for any box): a box earns
what it overlaps. All coordinates (answers and the `bbox_2d` column) are model-space pixels, the
space of Qwen2.5-VL grounding after smart_resize; boxes are [x1, y1, x2, y2] with x2, y2 exclusive.
Box IoU and the rule for bad boxes are skinderm.geometry's, the same evaluation scores with: an
inverted, zero-area or non-finite box is void (the parser drops it) and earns 0.

Mask IoU rasterises the answer's `polygon` with OpenCV's `fillPoly`, which fills self-intersecting
polygons by the EVEN-ODD rule (the inner pentagon of a pentagram stays empty; a bow-tie fills its
two triangles) and clips the polygon to the canvas exactly. Vertices are rounded to the nearest
pixel and boundary pixels count as inside. Without a polygon of >= 3 valid points, the answer's box
(filled) is compared with the mask instead; without either, the reward is 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from skinderm.answers import ParsedAnswer
from skinderm.data.errors import DataError
from skinderm.data.images import load_mask as read_lesion_mask
from skinderm.geometry import box_iou, clip_box
from skinderm.rewards._common import (
    RewardFunction,
    checked_scores,
    ground_truth_column,
    parse_completions,
    truth_box,
    truth_path,
    truth_size,
)

log = logging.getLogger(__name__)

# Masks are re-read for every generation of a group; 256 model-size masks are ~70 MB at 588x448.
MASK_CACHE_SIZE = 256
IOU_KINDS: tuple[str, ...] = ("mask", "bbox")


@dataclass(frozen=True)
class MaskTruth:
    """A ground-truth mask at model size: pixels, their summed-area table (O(1) box sums), area."""

    mask: np.ndarray  # bool, (height, width), read-only
    integral: np.ndarray  # int64, (height + 1, width + 1), read-only
    area: int

    @classmethod
    def from_array(cls, mask: np.ndarray) -> MaskTruth:
        mask = np.ascontiguousarray(mask, dtype=bool)
        integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
        integral[1:, 1:] = mask.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
        mask.flags.writeable = False
        integral.flags.writeable = False
        return cls(mask=mask, integral=integral, area=int(integral[-1, -1]))

    @property
    def size(self) -> tuple[int, int]:
        return self.mask.shape[1], self.mask.shape[0]


@lru_cache(maxsize=MASK_CACHE_SIZE)
def load_mask(path: str, width: int, height: int) -> MaskTruth | None:
    """The mask at `path` as lesion pixels (`skinderm.data.images.load_mask`), at width x height.

    None (with one warning per path and size) when the file is missing or unreadable: the reward
    is then 0 for that image rather than a crash in the middle of training.
    """
    try:  # the data layer's one mask decoder: 16-bit and colour masks read as annotation reads them
        lesion = read_lesion_mask(path, (width, height))
    except (DataError, OSError) as error:
        log.warning("mask IoU reward: %s; rewarding 0 for its completions", error)  # the error names the file
        return None
    return MaskTruth.from_array(lesion)


def _pixel_edge(value: float, limit: int) -> int:
    return min(max(math.floor(value + 0.5), 0), limit)


def box_mask_iou(box: Sequence[float] | None, truth: MaskTruth | None) -> float:
    """IoU of a filled box (clipped to the mask; edges rounded to pixels) with the mask."""
    if box is None or truth is None:
        return 0.0
    width, height = truth.size
    x1, y1, x2, y2 = clip_box(box, width, height)
    if not (x2 > x1 and y2 > y1):
        return 0.0
    c1, r1, c2, r2 = (
        _pixel_edge(x1, width),
        _pixel_edge(y1, height),
        _pixel_edge(x2, width),
        _pixel_edge(y2, height),
    )
    if c2 <= c1 or r2 <= r1:
        return 0.0
    table = truth.integral
    inter = int(table[r2, c2] - table[r1, c2] - table[r2, c1] + table[r1, c1])
    union = (c2 - c1) * (r2 - r1) + truth.area - inter
    return inter / union if union > 0 else 0.0


def polygon_mask_iou(polygon: Sequence[Sequence[float]], truth: MaskTruth | None) -> float:
    """IoU of the rasterised polygon (even-odd fill, clipped to the mask's canvas) with the mask."""
    if truth is None or len(polygon) < 3:
        return 0.0
    width, height = truth.size
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(points).all():
        return 0.0
    # Rasterise only the window the polygon covers: far cheaper than a full canvas for small lesions.
    col0 = max(0, math.floor(points[:, 0].min()))
    col1 = min(width - 1, math.ceil(points[:, 0].max()))
    row0 = max(0, math.floor(points[:, 1].min()))
    row1 = min(height - 1, math.ceil(points[:, 1].max()))
    if col0 > col1 or row0 > row1:
        return 0.0  # entirely outside the image: nothing predicted
    canvas = np.zeros((row1 - row0 + 1, col1 - col0 + 1), dtype=np.uint8)
    vertices = (np.rint(points) - (col0, row0)).astype(np.int32)
    cv2.fillPoly(canvas, [vertices], 1)
    predicted = canvas.view(bool)
    predicted_area = int(np.count_nonzero(predicted))
    inter = int(np.count_nonzero(predicted & truth.mask[row0 : row1 + 1, col0 : col1 + 1]))
    union = predicted_area + truth.area - inter
    return inter / union if union > 0 else 0.0


def answer_mask_iou(answer: ParsedAnswer, truth: MaskTruth | None) -> float:
    """Mask IoU of an answer: its polygon if it has >= 3 points, else its box, else 0."""
    if truth is None:
        return 0.0
    if answer.polygon is not None and len(answer.polygon) >= 3:
        return polygon_mask_iou(answer.polygon, truth)
    return box_mask_iou(answer.bbox_2d, truth)


class BoxIoUReward(RewardFunction):
    """IoU of the answer's `bbox_2d` with the column `bbox_2d` (clipped to model_width x model_height)."""

    def __init__(self) -> None:
        self.__name__ = "bbox_iou"

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        answers = parse_completions(completions)
        count = len(answers)
        boxes = ground_truth_column(kwargs, "bbox_2d", count, self.__name__)
        widths = ground_truth_column(kwargs, "model_width", count, self.__name__)
        heights = ground_truth_column(kwargs, "model_height", count, self.__name__)
        return checked_scores(
            box_iou(answer.bbox_2d, truth_box(box), truth_size(width, height))
            for answer, box, width, height in zip(answers, boxes, widths, heights, strict=True)
        )


class MaskIoUReward(RewardFunction):
    """IoU of the answer's polygon (or box) with the mask at `mask_path`, in model space."""

    def __init__(self) -> None:
        self.__name__ = "mask_iou"

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        answers = parse_completions(completions)
        count = len(answers)
        paths = ground_truth_column(kwargs, "mask_path", count, self.__name__)
        widths = ground_truth_column(kwargs, "model_width", count, self.__name__)
        heights = ground_truth_column(kwargs, "model_height", count, self.__name__)
        scores = []
        for answer, path, width, height in zip(answers, paths, widths, heights, strict=True):
            mask_file, size = truth_path(path), truth_size(width, height)
            truth = load_mask(mask_file, *size) if mask_file is not None and size is not None else None
            scores.append(answer_mask_iou(answer, truth))
        return checked_scores(scores)


def get_bbox_iou_reward() -> BoxIoUReward:
    """The box IoU reward; logged as "bbox_iou"."""
    return BoxIoUReward()


def get_mask_iou_reward() -> MaskIoUReward:
    """The mask IoU reward; logged as "mask_iou"."""
    return MaskIoUReward()


bbox_iou_reward = get_bbox_iou_reward()
mask_iou_reward = get_mask_iou_reward()
