"""One box rule and one box IoU: invalid boxes (inverted, zero-area, non-finite) overlap nothing,
for the rewards, evaluation and coordinate conversions alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skinderm.geometry import box_iou, check_box, clip_box, valid_box

coordinate = st.integers(-50, 250) | st.floats(-50, 250, allow_nan=False)
boxes = st.tuples(coordinate, coordinate, coordinate, coordinate)
INVALID = [
    [60, 60, 20, 20],  # inverted
    [60, 20, 20, 60],  # inverted in x
    [20, 60, 60, 20],  # inverted in y
    [20, 20, 20, 60],  # zero width
    [20, 20, 60, 20],  # zero height
    [20, 20, math.nan, 60],
    [20, 20, math.inf, 60],
    [-math.inf, 20, 60, 60],
]
MALFORMED = [
    [1, 2, 3],
    [1, 2, 3, 4, 5],
    "1,2,3,4",
    [True, 0, 1, 1],
    ["0", "0", "1", "1"],
    [[0, 0], [1, 1]],
    5,
]


@pytest.mark.parametrize("box", INVALID + MALFORMED)
def test_invalid_and_malformed_boxes_are_not_boxes(box: object) -> None:
    assert valid_box(box) is None


@pytest.mark.parametrize("box", INVALID)
def test_invalid_boxes_overlap_nothing_not_even_themselves(box: list[float]) -> None:
    assert box_iou(box, [20, 20, 60, 60]) == 0.0
    assert box_iou([20, 20, 60, 60], box) == 0.0
    assert box_iou(box, box) == 0.0
    assert box_iou(box, [0, 0, 200, 100], (200, 100)) == 0.0


def test_an_inverted_box_is_not_repaired_by_sorting_its_corners() -> None:
    truth = [20, 20, 60, 60]
    assert box_iou(truth, truth) == 1.0
    assert box_iou([60, 60, 20, 20], truth) == 0.0


@pytest.mark.parametrize("box", MALFORMED)
def test_a_malformed_box_is_a_bug_upstream_and_raises(box: object) -> None:
    with pytest.raises(ValueError, match="4 numbers"):
        box_iou(box, [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"\[x1, y1, x2, y2\]"):
        check_box(box)


@pytest.mark.parametrize("box", INVALID[:5])
def test_check_box_refuses_inverted_and_zero_area_boxes(box: list[float]) -> None:
    with pytest.raises(ValueError, match="inverted and zero-area boxes are invalid"):
        check_box(box)


def test_missing_boxes_score_zero() -> None:
    assert (
        box_iou(None, [0, 0, 1, 1]) == box_iou([0, 0, 1, 1], None) == box_iou(math.nan, [0, 0, 1, 1]) == 0.0
    )


def test_numpy_boxes_are_boxes() -> None:
    assert valid_box(np.array([1, 2, 3, 4])) == (1.0, 2.0, 3.0, 4.0)
    assert box_iou(np.array([0.0, 0.0, 2.0, 2.0]), [np.int64(0), 0, 1, 1]) == pytest.approx(0.25)


def test_clipping_an_outside_box_leaves_zero_area_and_zero_iou() -> None:
    assert valid_box(clip_box([-30, -30, -10, -10], 200, 100)) is None
    assert box_iou([-30, -30, -10, -10], [0, 0, 10, 10], (200, 100)) == 0.0
    assert box_iou([-30, -30, 10, 10], [0, 0, 10, 10], (200, 100)) == 1.0


@settings(max_examples=300, deadline=None)
@given(a=boxes, b=boxes)
def test_iou_is_symmetric_in_the_unit_interval_and_zero_exactly_for_invalid_boxes(a: tuple, b: tuple) -> None:
    iou = box_iou(a, b)
    assert 0.0 <= iou <= 1.0
    assert iou == pytest.approx(box_iou(b, a))
    if valid_box(a) is None or valid_box(b) is None:
        assert iou == 0.0
    else:
        assert box_iou(a, a) == 1.0
