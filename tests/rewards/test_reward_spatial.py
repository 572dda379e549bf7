"""Spatial reward: 1 for the true cell, reward.spatial.adjacent_credit (0.5) for an edge-adjacent cell,
0 otherwise, None without a ground-truth location."""

from __future__ import annotations

import json
import pickle

import pytest

from skinderm.data.classes import LOCATIONS
from skinderm.rewards import build_reward_functions, get_spatial_reward, spatial_reward


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
        ("center-center", None, None),  # no ground truth (no mask): left out of the total
        ("center-center", "middle", None),  # ground truth must be canonical
    ],
)
def test_cell_distance_sets_the_reward(predicted: object, truth: object, expected: float | None) -> None:
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


@pytest.mark.parametrize("credit", [0.0, 0.25, 0.5, 1.0])
def test_adjacent_credit_is_configurable(credit: float) -> None:
    reward = get_spatial_reward(adjacent_credit=credit)
    assert reward([answer("top-center")], location=["center-center"]) == [credit]
    assert reward([answer("top-left")], location=["center-center"]) == [0.0]  # diagonal: never credited
    assert reward([answer("center-center")], location=["center-center"]) == [1.0]


def test_the_config_key_reaches_the_built_spatial_reward() -> None:
    cfg = {"weights": {"spatial": 1.0}, "spatial": {"adjacent_credit": 0.2}}
    (reward,), _ = build_reward_functions(cfg, class_counts=None)
    assert reward.__name__ == "spatial"
    assert reward([answer("center-left")], location=["center-center"]) == [pytest.approx(0.2)]
    default, _ = build_reward_functions({"weights": {"spatial": 1.0}}, class_counts=None)
    assert default[0]([answer("center-left")], location=["center-center"]) == [0.5]


@pytest.mark.parametrize("credit", [-0.1, 1.5, float("nan"), "half", True])
def test_adjacent_credit_outside_zero_to_one_fails_naming_the_key(credit: object) -> None:
    # Above 1 a neighbour would out-pay the true cell: the truth must stay the maximum.
    with pytest.raises(ValueError, match=r"reward\.spatial\.adjacent_credit"):
        get_spatial_reward(adjacent_credit=credit)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"reward\.spatial\.adjacent_credit"):
        build_reward_functions({"weights": {"spatial": 1.0}, "spatial": {"adjacent_credit": credit}})


def test_spatial_reward_is_named_and_picklable() -> None:
    restored = pickle.loads(pickle.dumps(spatial_reward))
    assert restored.__name__ == spatial_reward.__name__ == "spatial"
    with pytest.raises(ValueError, match="'location'"):
        spatial_reward([answer("top-left")], dx=["mel"])
