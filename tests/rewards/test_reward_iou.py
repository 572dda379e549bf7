"""Box and outline IoU rewards: continuous overlap in model space, 0 for anything unusable, None for
no ground truth. The outline term pays the polygon only; the filled box only under box_fallback."""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from skinderm.rewards import (
    bbox_iou_reward,
    get_outline_iou_reward,
    mask_iou_reward,
    outline_iou_reward,
)
from skinderm.rewards.iou import (
    MaskTruth,
    answer_mask_iou,
    box_iou,
    box_mask_iou,
    load_mask,
    outline_iou,
    polygon_mask_iou,
)

BOX_FALLBACK = get_outline_iou_reward(box_fallback=True)

W, H = 200, 100  # model-space size of the image the model saw


def answer(**fields: object) -> str:
    return json.dumps({"diagnosis": "nv", **fields})


def box_reward(completions: list, truth: object, width: object = W, height: object = H) -> list[float]:
    n = len(completions)
    return bbox_iou_reward(
        completions, bbox_2d=[truth] * n, model_width=[width] * n, model_height=[height] * n
    )


# --- box IoU ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ([20, 20, 60, 60], 1.0),
        ([20.0, 20.0, 60.0, 60.0], 1.0),
        ([40, 20, 80, 60], 800 / 2400),  # half overlapping: 800 / (1600 + 1600 - 800)
        ([20, 20, 40, 60], 0.5),  # inside, half the area
        ([100, 20, 140, 60], 0.0),  # disjoint
        ([60, 20, 100, 60], 0.0),  # touching edges
        ([60, 60, 20, 20], 0.0),  # inverted
        ([20, 20, 20, 60], 0.0),  # zero width
        ([20, 20, 60, 20], 0.0),  # zero height
        ([-1000, -1000, -10, -10], 0.0),  # outside the image: empty after clipping
        ([300, 20, 400, 60], 0.0),
    ],
)
def test_box_reward_is_the_iou_with_the_true_box(box: list, expected: float) -> None:
    assert box_reward([answer(bbox_2d=box)], [20, 20, 60, 60]) == [pytest.approx(expected)]


def test_predicted_box_is_clipped_to_the_image_before_iou() -> None:
    assert box_reward([answer(bbox_2d=[-50, -50, 60, 60])], [0, 0, 60, 60]) == [1.0]
    everything = answer(bbox_2d=[-1_000_000, -1_000_000, 1_000_000, 1_000_000])
    assert box_reward([everything], [0, 0, 50, 50]) == [pytest.approx(2500 / (W * H))]


@pytest.mark.parametrize(
    "completion",
    [
        answer(),  # no box
        answer(bbox_2d=None),
        answer(bbox_2d=[20, 20, 60]),
        '{"diagnosis": "nv", "bbox_2d": [NaN, 20, 60, 60]}',
        '{"diagnosis": "nv", "bbox_2d": [20, 20, Infinity, 60]}',
        answer(bbox_2d=[20, 20, 60, 1e9]),
        answer(bbox_2d=["20", "20", "60", "60"]),
        "",
        "the lesion is at [20, 20, 60, 60]",
    ],
)
def test_missing_or_invalid_boxes_earn_zero(completion: str) -> None:
    assert box_reward([completion], [20, 20, 60, 60]) == [0.0]


@pytest.mark.parametrize(
    "truth", [None, float("nan"), [20, 20, 60], [60, 60, 20, 20], [20, 20, float("nan"), 60]]
)
def test_missing_or_invalid_ground_truth_gives_none(truth: object) -> None:
    assert box_reward([answer(bbox_2d=[20, 20, 60, 60]), answer()], truth) == [None, None]


def test_without_a_model_size_the_box_is_compared_unclipped() -> None:
    assert box_reward([answer(bbox_2d=[20, 20, 60, 60])], [20, 20, 60, 60], None, float("nan")) == [1.0]
    assert box_reward([answer(bbox_2d=[-20, 20, 60, 60])], [0, 20, 60, 60], None, None) == [0.75]


def test_rewards_and_evaluation_share_one_box_iou() -> None:
    from skinderm import geometry
    from skinderm.evaluation import metrics
    from skinderm.rewards import iou

    assert iou.box_iou is metrics.box_iou is geometry.box_iou


@pytest.mark.parametrize("box", [[60, 60, 20, 20], [60, 20, 20, 60], [20, 60, 60, 20], [20, 20, 20, 60]])
def test_inverted_or_zero_area_boxes_earn_zero_even_where_sorted_corners_would_overlap(box: list) -> None:
    assert box_reward([answer(bbox_2d=box)], [20, 20, 60, 60]) == [0.0]
    assert box_reward([answer(bbox_2d=box)], [0, 0, W, H]) == [0.0]


def test_box_iou_helper_is_symmetric_for_boxes_inside_the_image() -> None:
    a, b = (10, 10, 50, 40), (30, 20, 70, 90)
    assert box_iou(a, b, (W, H)) == pytest.approx(box_iou(b, a, (W, H)))


def test_box_reward_reads_numpy_ground_truth_and_conversational_completions() -> None:
    completion = [
        {"role": "assistant", "content": [{"type": "text", "text": answer(bbox_2d=[20, 20, 60, 60])}]}
    ]
    scores = bbox_iou_reward(
        [completion],
        bbox_2d=[np.array([20, 20, 60, 60])],
        model_width=[np.int64(W)],
        model_height=[np.int64(H)],
    )
    assert scores == [1.0]


def test_box_reward_needs_its_columns() -> None:
    with pytest.raises(ValueError, match="'model_width'"):
        bbox_iou_reward([answer()], bbox_2d=[[1, 2, 3, 4]], model_height=[H])


# --- mask IoU --------------------------------------------------------------------------------------


def write_mask(path: Path, width: int, height: int, box: tuple[int, int, int, int]) -> str:
    """A mask PNG with the pixels [x1, x2) x [y1, y2) set to 255."""
    pixels = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = 255
    cv2.imwrite(str(path), pixels)
    return str(path)


@pytest.fixture
def rect_mask(tmp_path: Path) -> str:
    """Lesion = [40, 20) - [120, 80) in a 200 x 100 image (model size)."""
    return write_mask(tmp_path / "rect.png", W, H, (40, 20, 120, 80))


def mask_reward(
    completions: list,
    mask_path: object,
    width: object = W,
    height: object = H,
    reward: object = outline_iou_reward,
) -> list[float | None]:
    n = len(completions)
    return reward(  # type: ignore[operator]
        completions, mask_path=[mask_path] * n, model_width=[width] * n, model_height=[height] * n
    )


def test_a_box_alone_earns_zero_on_the_outline_term_unless_the_fallback_is_asked_for(rect_mask: str) -> None:
    exact_box = answer(bbox_2d=[40, 20, 120, 80])
    assert mask_reward([exact_box], rect_mask) == [0.0]
    assert mask_reward([exact_box], rect_mask, reward=BOX_FALLBACK) == [1.0]
    assert mask_reward([exact_box], rect_mask, reward=mask_iou_reward) == [1.0]  # the legacy metric


def test_with_the_fallback_a_box_on_the_mask_earns_its_pixel_iou(rect_mask: str) -> None:
    # [80, 20, 160, 80]: 40 x 60 overlap; union 2 * 80 * 60 - 2400
    box = answer(bbox_2d=[80, 20, 160, 80])
    assert mask_reward([box], rect_mask, reward=BOX_FALLBACK) == [pytest.approx(2400 / 7200)]
    assert mask_reward([box], rect_mask) == [0.0]


def test_a_polygon_tracing_the_mask_earns_about_one(rect_mask: str) -> None:
    polygon = [[40, 20], [119, 20], [119, 79], [40, 79]]  # boundary pixels are inside
    assert mask_reward([answer(polygon=polygon)], rect_mask) == [1.0]
    triangle = [[40, 20], [119, 20], [40, 79]]
    (score,) = mask_reward([answer(polygon=triangle)], rect_mask)
    assert 0.45 < score < 0.56


@pytest.mark.parametrize("reward", [outline_iou_reward, BOX_FALLBACK], ids=["default", "box_fallback"])
def test_the_polygon_is_used_before_the_box(rect_mask: str, reward: object) -> None:
    polygon = [[0, 0], [10, 0], [10, 10]]  # far from the lesion
    completion = answer(polygon=polygon, bbox_2d=[40, 20, 120, 80])
    assert mask_reward([completion], rect_mask, reward=reward) == [0.0]


@pytest.mark.parametrize("polygon", [[], [[40, 20]], [[40, 20], [119, 79]]])
def test_a_polygon_of_fewer_than_three_points_earns_zero_or_with_the_fallback_the_box(
    rect_mask: str, polygon: list
) -> None:
    with_box = answer(polygon=polygon, bbox_2d=[40, 20, 120, 80])
    assert mask_reward([with_box], rect_mask) == [0.0]
    assert mask_reward([with_box], rect_mask, reward=BOX_FALLBACK) == [1.0]
    assert mask_reward([answer(polygon=polygon)], rect_mask, reward=BOX_FALLBACK) == [0.0]


def test_an_invalid_polygon_earns_zero_or_with_the_fallback_the_box(rect_mask: str) -> None:
    completion = '{"polygon": [[40, 20], [NaN, 20], [119, 79]], "bbox_2d": [40, 20, 120, 80]}'
    assert mask_reward([completion], rect_mask) == [0.0]
    assert mask_reward([completion], rect_mask, reward=BOX_FALLBACK) == [1.0]


def test_evaluation_keeps_the_legacy_polygon_else_box_metric() -> None:
    mask = np.zeros((H, W), bool)
    mask[20:80, 40:120] = True
    truth = MaskTruth.from_array(mask)
    from skinderm.answers import parse_answer

    box_only = parse_answer(answer(bbox_2d=[40, 20, 120, 80]))
    assert answer_mask_iou(box_only, truth) == 1.0 == outline_iou(box_only, truth, box_fallback=True)
    assert outline_iou(box_only, truth) == 0.0
    assert answer_mask_iou(box_only, None) == 0.0


def test_a_polygon_beyond_the_image_is_clipped_exactly(rect_mask: str) -> None:
    # covers x >= 40, y >= 20 and far beyond: on the canvas that is [40, 200) x [20, 100)
    polygon = [[40, 20], [1_000_000, 20], [1_000_000, 1_000_000], [40, 1_000_000]]
    expected = (80 * 60) / (160 * 80)
    start = time.perf_counter()
    assert mask_reward([answer(polygon=polygon)], rect_mask) == [pytest.approx(expected)]
    assert time.perf_counter() - start < 0.5
    assert mask_reward([answer(polygon=[[-50, -50], [-10, -50], [-10, -10]])], rect_mask) == [0.0]


def pentagram(cx: float, cy: float, radius: float) -> list[list[float]]:
    points = []
    for k in range(5):
        angle = math.pi / 2 + k * 4 * math.pi / 5
        points.append([cx + radius * math.cos(angle), cy - radius * math.sin(angle)])
    return points


def test_self_intersecting_polygons_fill_by_the_even_odd_rule(tmp_path: Path) -> None:
    size = 200
    star = pentagram(100, 100, 90)
    centre = write_mask(tmp_path / "centre.png", size, size, (95, 95, 105, 105))  # inside the inner pentagon
    tip = write_mask(tmp_path / "tip.png", size, size, (97, 20, 103, 30))  # inside the top point
    assert mask_reward([answer(polygon=star)], centre, size, size) == [0.0]  # nonzero would fill it
    assert mask_reward([answer(polygon=star)], tip, size, size)[0] > 0.0
    bow_tie = [[0, 0], [199, 199], [199, 0], [0, 199]]  # two triangles meeting at the centre
    left = write_mask(tmp_path / "left.png", size, size, (0, 90, 20, 110))
    top = write_mask(tmp_path / "top.png", size, size, (90, 0, 110, 20))
    assert mask_reward([answer(polygon=bow_tie)], left, size, size)[0] > 0.0
    assert mask_reward([answer(polygon=bow_tie)], top, size, size) == [0.0]


def test_the_mask_is_resized_nearest_neighbour_to_model_size(tmp_path: Path) -> None:
    original = write_mask(tmp_path / "big.png", 600, 300, (120, 60, 360, 240))  # 3x the model size
    truth = load_mask(original, W, H)
    assert truth is not None and truth.size == (W, H)
    assert truth.area == 80 * 60
    assert mask_reward([answer(polygon=[[40, 20], [119, 20], [119, 79], [40, 79]])], original) == [1.0]


def test_masks_are_cached_by_path_and_size(rect_mask: str) -> None:
    first = load_mask(rect_mask, W, H)
    assert load_mask(rect_mask, W, H) is first
    assert load_mask(rect_mask, W // 2, H // 2) is not first
    with pytest.raises(ValueError):
        first.mask[0, 0] = True  # shared between calls: read-only


def test_unreadable_mask_gives_none_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = str(tmp_path / "missing.png")
    with caplog.at_level(logging.WARNING, logger="skinderm.rewards.iou"):
        assert mask_reward([answer(bbox_2d=[40, 20, 120, 80])] * 2, missing) == [None, None]
    assert [record.getMessage().count("missing.png") for record in caplog.records] == [1]


@pytest.mark.parametrize(
    ("mask_path", "width", "height"), [(None, W, H), ("", W, H), ("ok", None, H), ("ok", W, 0)]
)
def test_missing_ground_truth_gives_none(
    rect_mask: str, mask_path: object, width: object, height: object
) -> None:
    path = rect_mask if mask_path == "ok" else mask_path
    polygon = [[40, 20], [119, 20], [119, 79], [40, 79]]
    for reward in (outline_iou_reward, BOX_FALLBACK, mask_iou_reward):
        assert mask_reward([answer(polygon=polygon)], path, width, height, reward=reward) == [None]


def test_an_empty_mask_gives_none(tmp_path: Path) -> None:
    # No lesion to outline: no answer could score, so the term is left out rather than paying 0.
    empty = write_mask(tmp_path / "empty.png", W, H, (0, 0, 0, 0))
    assert mask_reward([answer(bbox_2d=[40, 20, 120, 80]), answer()], empty) == [None, None]


def test_box_and_polygon_helpers_agree_on_a_rectangle() -> None:
    mask = np.zeros((H, W), bool)
    mask[30:70, 50:150] = True
    truth = MaskTruth.from_array(mask)
    assert box_mask_iou((50, 30, 150, 70), truth) == 1.0
    assert polygon_mask_iou([(50, 30), (149, 30), (149, 69), (50, 69)], truth) == 1.0
    assert box_mask_iou((50, 30, 100, 70), truth) == pytest.approx(0.5)
    assert box_mask_iou((150, 30, 50, 70), truth) == 0.0


def test_iou_rewards_are_named_and_picklable() -> None:
    named = [
        (bbox_iou_reward, "bbox_iou"),
        (outline_iou_reward, "outline_iou"),
        (mask_iou_reward, "mask_iou"),
    ]
    for reward, name in named:
        assert reward.__name__ == name
        assert pickle.loads(pickle.dumps(reward)).__name__ == name
