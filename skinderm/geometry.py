"""Boxes: the one rule for what a box is, and the one box IoU (rewards, evaluation, coordinates).

A box is `[x1, y1, x2, y2]` with exclusive ends (area = (x2 - x1) * (y2 - y1)). It is VALID when its
four coordinates are finite real numbers with x2 > x1 and y2 > y1. An inverted box (x2 < x1 or
y2 < y1), a zero-area box or a non-finite one is INVALID everywhere, never repaired: the answer
parser voids such a `bbox_2d`, the rewards pay 0 for it, evaluation scores it IoU 0, and coordinate
conversions refuse it. One rule, so that training and evaluation measure the same thing (sorting
an inverted box's corners in evaluation while the reward paid 0 for it made them disagree).

Pure Python, imports nothing from the project: every layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

Box = tuple[float, float, float, float]


def _coordinates(box: Any) -> tuple[float, ...] | None:
    """Four floats from a sequence (list, tuple, numpy array) of four real numbers; None otherwise."""
    if isinstance(box, str | bytes) or not hasattr(box, "__len__") or not hasattr(box, "__iter__"):
        return None
    try:
        if len(box) != 4:
            return None
        items = list(box)
    except TypeError:  # e.g. a 0-d numpy array
        return None
    if not all(isinstance(item, Real) and not isinstance(item, bool) for item in items):
        return None
    try:
        return tuple(float(item) for item in items)
    except OverflowError:  # an int too large for a float
        return None


def is_missing_box(box: Any) -> bool:
    """None or a float NaN (what pandas writes for an empty cell): no box at all."""
    return box is None or (isinstance(box, float) and math.isnan(box))


def valid_box(box: Any) -> Box | None:
    """The box as four floats when it is valid (finite, x2 > x1, y2 > y1); None for anything else.

    Never raises: use it on untrusted values (model output, dataset columns).
    """
    numbers = _coordinates(box)
    if numbers is None or not all(math.isfinite(v) for v in numbers):
        return None
    x1, y1, x2, y2 = numbers
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def check_box(box: Any) -> Box:
    """The box as four floats; ValueError (one line) when it is not a valid box.

    For callers that were handed a box by the program itself (ground truth, a parsed answer), where
    an invalid one is a bug to report, not model output to score.
    """
    numbers = _coordinates(box)
    if numbers is None or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"a box must be [x1, y1, x2, y2] with 4 finite numbers, got {box!r}")
    checked = valid_box(numbers)
    if checked is None:
        raise ValueError(
            f"a box needs x2 > x1 and y2 > y1 (inverted and zero-area boxes are invalid), got {box!r}"
        )
    return checked


def clip_box(box: Sequence[float], width: float, height: float) -> Box:
    """The box clipped to [0, width] x [0, height] (a box outside the image comes out zero-area)."""
    x1, y1, x2, y2 = box
    return (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )


def box_iou(predicted: Any, truth: Any, size: tuple[float, float] | None = None) -> float:
    """Intersection over union of two boxes; the prediction is first clipped to `size` = (W, H) if given.

    0 when either box is missing (None, NaN) or invalid (inverted, zero-area, non-finite; after the
    clip for the prediction): what is not a box overlaps nothing. ValueError only for a value that
    is not four real numbers at all (a malformed record, i.e. a bug upstream, not a bad answer).
    Symmetric when `size` is None.
    """
    for box in (predicted, truth):
        if not is_missing_box(box) and _coordinates(box) is None:
            raise ValueError(f"a box must be [x1, y1, x2, y2] (4 numbers) or None, got {box!r}")
    if is_missing_box(predicted) or is_missing_box(truth):
        return 0.0
    a = valid_box(predicted)
    b = valid_box(truth)
    if a is None or b is None:
        return 0.0
    if size is not None:
        a = valid_box(clip_box(a, *size))
        if a is None:
            return 0.0
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    intersection = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    iou = intersection / union if union > 0 else 0.0
    return min(1.0, iou) if math.isfinite(iou) else 0.0  # areas beyond float range overflow to nan
