"""Whatever the model writes and whatever the dataset holds, every reward returns one value per
completion, a float in [0, 1] or None (no ground truth for that row), and never raises."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skinderm.answers import ANSWER_FIELDS
from skinderm.data.classes import CLASS_CODES, HAM10000_CLASS_COUNTS, LOCATIONS
from skinderm.rewards import (
    bbox_iou_reward,
    diagnosis_reward,
    format_reward,
    get_diagnosis_reward,
    get_format_reward,
    get_outline_iou_reward,
    mask_iou_reward,
    outline_iou_reward,
    spatial_reward,
)

W, H = 56, 42

REWARDS = [
    diagnosis_reward,
    get_diagnosis_reward("inverse_frequency", HAM10000_CLASS_COUNTS),
    spatial_reward,
    bbox_iou_reward,
    outline_iou_reward,
    get_outline_iou_reward(box_fallback=True),
    mask_iou_reward,
    format_reward,
    get_format_reward(list(ANSWER_FIELDS)),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)
coordinate = st.integers(-100, 200) | st.floats(-1e7, 1e7) | st.sampled_from([math.nan, math.inf, -math.inf])
answer_objects = st.fixed_dictionaries(
    {},
    optional={
        "diagnosis": st.sampled_from(CLASS_CODES) | st.text(max_size=30) | json_values,
        "location": st.sampled_from(LOCATIONS) | st.text(max_size=20) | json_values,
        "bbox_2d": st.lists(coordinate, min_size=0, max_size=5) | json_values,
        "polygon": st.lists(st.lists(coordinate, min_size=0, max_size=3), max_size=8) | json_values,
    },
)
answer_texts = st.builds(
    lambda obj, before, after: before + json.dumps(obj) + after,
    answer_objects | json_values,
    st.text(max_size=10),
    st.text(max_size=10),
)
completions = st.one_of(
    st.text(max_size=200),
    answer_texts,
    answer_texts.map(lambda text: [{"role": "assistant", "content": text}]),
    answer_texts.map(lambda text: [{"role": "assistant", "content": [{"type": "text", "text": text}]}]),
    st.none(),
)
truth_values = st.one_of(st.none(), st.floats(), st.integers(), st.text(max_size=10))


@pytest.fixture(scope="module")
def mask_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    pixels = np.zeros((H * 3, W * 3), np.uint8)
    cv2.ellipse(pixels, (W * 3 // 2, H * 3 // 2), (40, 25), 30, 0, 360, 255, -1)
    path = tmp_path_factory.mktemp("masks") / "mask.png"
    cv2.imwrite(str(path), pixels)
    return str(path)


def check_all_rewards(batch: list, columns: dict) -> None:
    for reward in REWARDS:
        scores = reward(batch, **columns)
        assert len(scores) == len(batch), reward.__name__
        assert all(s is None or (isinstance(s, float) and 0.0 <= s <= 1.0) for s in scores), (
            reward.__name__,
            scores,
        )
        if reward.__name__ == "format":  # needs no ground truth: always a score
            assert None not in scores


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(completions, min_size=1, max_size=4), data=st.data())
def test_every_reward_on_arbitrary_completions_stays_in_unit_interval(
    mask_file: str, batch: list, data
) -> None:
    n = len(batch)
    columns = {
        "dx": data.draw(st.lists(st.sampled_from(CLASS_CODES) | truth_values, min_size=n, max_size=n)),
        "location": data.draw(st.lists(st.sampled_from(LOCATIONS) | truth_values, min_size=n, max_size=n)),
        "bbox_2d": data.draw(
            st.lists(st.none() | st.lists(coordinate, min_size=4, max_size=4), min_size=n, max_size=n)
        ),
        "mask_path": data.draw(
            st.lists(st.sampled_from([mask_file, None, "/nonexistent.png"]), min_size=n, max_size=n)
        ),
        "model_width": data.draw(
            st.lists(st.sampled_from([W, None, math.nan, 0, -3]), min_size=n, max_size=n)
        ),
        "model_height": data.draw(st.lists(st.sampled_from([H, None, math.nan]), min_size=n, max_size=n)),
    }
    check_all_rewards(batch, columns)


def test_every_reward_handles_hand_written_edge_cases(mask_file: str) -> None:
    batch = [
        json.dumps(
            {
                "diagnosis": "nv",
                "location": "center-center",
                "bbox_2d": [10, 10, 40, 30],
                "polygon": [[10, 10], [40, 10], [40, 30], [10, 30]],
            }
        ),
        "",
        "{",
        '{"diagnosis": "nv", "bbox_2d": [NaN, -1, 1e999, 3]}',
        '{"polygon": [[0, 0], [56, 42], [56, 0], [0, 42]]}',  # bow-tie
        '{"polygon": [[1, 1], [2, 2]], "bbox_2d": [-10, -10, 100, 100]}',
        "1" * 1_000_000,
        "[" * 1_000_000,
    ]
    n = len(batch)
    columns = {
        "dx": ["nv"] * n,
        "location": ["center-center"] * n,
        "bbox_2d": [[10, 10, 40, 30]] * n,
        "mask_path": [mask_file] * n,
        "model_width": [W] * n,
        "model_height": [H] * n,
    }
    check_all_rewards(batch, columns)
    first = {k: v[:1] for k, v in columns.items()}
    assert mask_iou_reward(batch[:1], **first)[0] > 0.3
    assert outline_iou_reward(batch[:1], **first)[0] > 0.3


def test_bounded_time_on_megabyte_completions(mask_file: str) -> None:
    import time

    batch = ["1" * 1_000_000, "[" * 1_000_000, '{"polygon": [' + "[1, 2], " * 125_000]
    columns = {
        "dx": ["nv"] * 3,
        "location": [None] * 3,
        "bbox_2d": [None] * 3,
        "mask_path": [mask_file] * 3,
        "model_width": [W] * 3,
        "model_height": [H] * 3,
    }
    start = time.perf_counter()
    check_all_rewards(batch, columns)
    assert time.perf_counter() - start < 0.5 * len(REWARDS)


def test_mask_path_columns_may_hold_path_objects(mask_file: str) -> None:
    completion = ['{"bbox_2d": [0, 0, 56, 42]}']
    as_str = mask_iou_reward(completion, mask_path=[mask_file], model_width=[W], model_height=[H])
    as_path = mask_iou_reward(completion, mask_path=[Path(mask_file)], model_width=[W], model_height=[H])
    assert 0.0 < as_str[0] < 1.0 and as_path == as_str
