"""Spatial reward: 1 for the true cell, 0.5 for an edge-adjacent cell, 0 otherwise."""

from __future__ import annotations

import json
import pickle

import pytest

from skinderm.data.classes import LOCATIONS
from skinderm.rewards import get_spatial_reward, spatial_reward


def answer(location: object) -> str:
    return json.dumps({"diagnosis": "nv", "location": location})


@pytest.mark.parametrize(
    ("predicted", "truth", "expected"),
    [
        ("center-center", "center-center", 1.0),
        ("Center Center", "center-center", 1.0),
        ("middle", "center-center", 1.0),
        ("top-center", "center-center", 0.5),
        ("bottom-center", "center-center", 0.5),
        ("center-left", "center-center", 0.5),
        ("center-right", "center-center", 0.5),
        ("top-left", "center-center", 0.0),  # diagonal
        ("bottom-right", "center-center", 0.0),
        ("top-right", "top-left", 0.0),  # two cells away
        ("top-left", "bottom-left", 0.0),
        ("top-center", "top-left", 0.5),
        ("top-left or center-center", "center-center", 0.0),
        ("", "center-center", 0.0),
        (None, "center-center", 0.0),
        ("center-center", None, 0.0),  # no ground truth (no mask)
        ("center-center", "middle", 0.0),  # ground truth must be canonical
    ],
)
def test_cell_distance_sets_the_reward(predicted: object, truth: object, expected: float) -> None:
    assert spatial_reward([answer(predicted)], location=[truth]) == [expected]


def test_every_pair_of_cells_scores_by_manhattan_distance() -> None:
    for i, predicted in enumerate(LOCATIONS):
        for j, truth in enumerate(LOCATIONS):
            distance = abs(i // 3 - j // 3) + abs(i % 3 - j % 3)
            expected = {0: 1.0, 1: 0.5}.get(distance, 0.0)
            assert spatial_reward([answer(predicted)], location=[truth]) == [expected]


def test_unparseable_completions_earn_zero() -> None:
    completions = [
        "",
        "center-center",
        '{"location": "center-center"',
        [{"role": "assistant", "content": None}],
    ]
    assert spatial_reward(completions, location=["center-center"] * 4) == [0.0] * 4


def test_adjacent_reward_is_configurable_and_checked() -> None:
    reward = get_spatial_reward(adjacent_reward=0.25)
    assert reward([answer("top-center")], location=["center-center"]) == [0.25]
    with pytest.raises(ValueError, match="adjacent_reward"):
        get_spatial_reward(adjacent_reward=1.5)


def test_spatial_reward_is_named_and_picklable() -> None:
    restored = pickle.loads(pickle.dumps(spatial_reward))
    assert restored.__name__ == spatial_reward.__name__ == "spatial"
    with pytest.raises(ValueError, match="'location'"):
        spatial_reward([answer("top-left")], dx=["mel"])
