"""Box and outline IoU rewards, in the pixel space of the image the model saw.

Continuous IoU, not "any four numbers" (the seed's TRL script paid 0.08 for any box): a box earns
what it overlaps. All coordinates (answers and the `bbox_2d` column) are model-space pixels, the
space of Qwen2.5-VL grounding after smart_resize; boxes are [x1, y1, x2, y2] with x2, y2 exclusive.
Box IoU and the rule for bad boxes are skinderm.geometry's, the same evaluation scores with: an
inverted, zero-area or non-finite box is void (the parser drops it) and earns 0.

Each term pays what its metric measures, so that the TRUE answer scores the maximum (1):

- `bbox_iou` pays the box IoU of the answer's `bbox_2d` with the true box.
- `outline_iou` pays the IoU of the answer's `polygon` (rasterised) with the lesion: the mask's
  largest component inside its outer outline (`outline_target`), the region the taught polygon
  outlines. An answer without a polygon of >= 3 valid points earns 0. The filled box is NOT a
  stand-in by default: against a round lesion a box smaller than the true box overlaps the mask
  better than the true box does (an ellipse fills pi/4 of its box), so paying "filled box vs mask"
  pays GRPO to shrink boxes away from what box IoU measures (issue 15: exact box 0.786, shrunk
  ~4/3 px a side 0.837). The old behaviour stays available by name: `box_fallback=True`
  (`reward.outline.box_fallback: true`).

Rasterisation uses OpenCV's `fillPoly`, which fills self-intersecting polygons by the EVEN-ODD rule
(the inner pentagon of a pentagram stays empty; a bow-tie fills its two triangles) and clips the
polygon to the canvas exactly. Vertices are rounded to the nearest pixel and boundary pixels count
as inside, so a polygon tracing the mask's boundary pixels (its findContours outline) reproduces the
mask and earns exactly 1.

Missing ground truth gives None, not 0 (TRL leaves None out of the weighted sum; a 0 would pay
every completion of the image the same and dilute the group's mean): no valid true box for
`bbox_iou`; no mask path, an unreadable or empty mask, or no model size for `outline_iou`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from skinderm.answers import ParsedAnswer
from skinderm.data.annotation import largest_component
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

    None (with one warning per path and size) when the file is missing or unreadable: the image then
    has no ground truth for the outline term (None) rather than a crash in the middle of training.
    """
    try:  # the data layer's one mask decoder: 16-bit and colour masks read as annotation reads them
        lesion = read_lesion_mask(path, (width, height))
    except (DataError, OSError) as error:  # the error names the file
        log.warning("outline IoU reward: %s; no ground truth (None) for its completions", error)
        return None
    return MaskTruth.from_array(lesion)


def outline_target(mask: np.ndarray) -> np.ndarray | None:
    """What the outline term compares with: the largest component's outer outline, rasterised.

    The taught `polygon` is that outline (`largest_component`, the lesion annotation boxes; see
    skinderm.conversations.mask_polygon), so the target is the same region: other blobs of the mask
    and holes inside the lesion are not part of it. Otherwise the true outline would not score the
    maximum (a polygon reaching for a second blob, or slitting around a hole, could beat it).
    Rasterised by the same `fillPoly` as answers, so the full outline scores exactly 1.
    None for an empty mask.
    """
    component = largest_component(mask)
    if component is None:
        return None
    contours, _ = cv2.findContours(component.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    target = np.zeros(component.shape, dtype=np.uint8)
    cv2.fillPoly(target, [max(contours, key=len)], 1)
    return target.view(bool)


@lru_cache(maxsize=MASK_CACHE_SIZE)
def load_outline_truth(path: str, width: int, height: int) -> MaskTruth | None:
    """The outline term's target (`outline_target`) of the mask at `path`, at width x height; None
    when the file is unreadable (one warning, from `load_mask`) or the mask is empty."""
    raw = load_mask(path, width, height)
    target = None if raw is None else outline_target(raw.mask)
    return None if target is None else MaskTruth.from_array(target)


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


def outline_iou(answer: ParsedAnswer, truth: MaskTruth, *, box_fallback: bool = False) -> float:
    """The outline term's IoU for one answer: its polygon (>= 3 points) vs the mask, else 0.

    With `box_fallback` an answer without a usable polygon is scored by its filled box instead (the
    stand-in that pays shrunk boxes on round lesions; see the module docstring).
    """
    if answer.polygon is not None and len(answer.polygon) >= 3:
        return polygon_mask_iou(answer.polygon, truth)
    return box_mask_iou(answer.bbox_2d, truth) if box_fallback else 0.0


def answer_mask_iou(answer: ParsedAnswer, truth: MaskTruth | None) -> float:
    """Polygon, else filled box, vs the mask; 0 without a mask: the metric evaluation's `mask_iou`
    reports today. Kept for evaluation; the reward's outline term is `outline_iou`, which pays the
    filled box only when asked (`box_fallback`)."""
    return 0.0 if truth is None else outline_iou(answer, truth, box_fallback=True)


def mask_truth(
    path: Any,
    width: Any,
    height: Any,
    loader: Callable[[str, int, int], MaskTruth | None] = load_outline_truth,
) -> MaskTruth | None:
    """One row's target at model size (by `loader`), or None when the row has none to compare with
    (no path, no model size, an unreadable file, or an empty mask: no lesion to outline)."""
    mask_file, size = truth_path(path), truth_size(width, height)
    if mask_file is None or size is None:
        return None
    truth = loader(mask_file, *size)
    return truth if truth is not None and truth.area > 0 else None


class BoxIoUReward(RewardFunction):
    """IoU of the answer's `bbox_2d` with the column `bbox_2d` (clipped to model_width x model_height);
    None where the row has no valid true box."""

    def __init__(self) -> None:
        self.__name__ = "bbox_iou"

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        answers = parse_completions(completions)
        count = len(answers)
        boxes = ground_truth_column(kwargs, "bbox_2d", count, self.__name__)
        widths = ground_truth_column(kwargs, "model_width", count, self.__name__)
        heights = ground_truth_column(kwargs, "model_height", count, self.__name__)
        scores: list[float | None] = []
        for answer, box, width, height in zip(answers, boxes, widths, heights, strict=True):
            truth = truth_box(box)
            scores.append(
                None if truth is None else box_iou(answer.bbox_2d, truth, truth_size(width, height))
            )
        return checked_scores(scores)


class OutlineIoUReward(RewardFunction):
    """IoU of the answer's polygon with the mask at `mask_path`, in model space; 0 without a polygon
    (unless `box_fallback`), None where the row has no mask."""

    def __init__(self, box_fallback: bool = False, name: str = "outline_iou") -> None:
        if not isinstance(box_fallback, bool):
            raise ValueError(f"reward.outline.box_fallback = {box_fallback!r} must be true or false")
        self.__name__ = name
        self.box_fallback = box_fallback

    def load_truth(self, path: str, width: int, height: int) -> MaskTruth | None:
        """The target of one mask: the largest component's filled outline (`outline_target`)."""
        return load_outline_truth(path, width, height)

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        answers = parse_completions(completions)
        count = len(answers)
        paths = ground_truth_column(kwargs, "mask_path", count, self.__name__)
        widths = ground_truth_column(kwargs, "model_width", count, self.__name__)
        heights = ground_truth_column(kwargs, "model_height", count, self.__name__)
        scores: list[float | None] = []
        for answer, path, width, height in zip(answers, paths, widths, heights, strict=True):
            truth = mask_truth(path, width, height, self.load_truth)
            scores.append(
                None if truth is None else outline_iou(answer, truth, box_fallback=self.box_fallback)
            )
        return checked_scores(scores)


class MaskIoUReward(OutlineIoUReward):
    """The legacy "mask IoU" (polygon, else the filled box; logged as "mask_iou"), the metric
    evaluation's `mask_iou` reports. Never built by the registry: the outline term is
    `OutlineIoUReward`, which takes the box stand-in only under `reward.outline.box_fallback: true`."""

    def __init__(self) -> None:
        super().__init__(box_fallback=True, name="mask_iou")

    def load_truth(self, path: str, width: int, height: int) -> MaskTruth | None:
        """Every lesion pixel of the mask, as evaluation's `mask_iou` reads it (`load_mask`)."""
        return load_mask(path, width, height)


def get_bbox_iou_reward() -> BoxIoUReward:
    """The box IoU reward; logged as "bbox_iou"."""
    return BoxIoUReward()


def get_outline_iou_reward(box_fallback: bool = False) -> OutlineIoUReward:
    """The outline IoU reward (`reward.outline.box_fallback`); logged as "outline_iou"."""
    return OutlineIoUReward(box_fallback=box_fallback)


def get_mask_iou_reward() -> MaskIoUReward:
    """The legacy polygon-else-box mask IoU; logged as "mask_iou"."""
    return MaskIoUReward()


bbox_iou_reward = get_bbox_iou_reward()
outline_iou_reward = get_outline_iou_reward()
mask_iou_reward = get_mask_iou_reward()
