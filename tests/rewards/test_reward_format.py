"""Format reward: 1 only for one answer object whose required fields are all present and valid."""

from __future__ import annotations

import json
import pickle

import pytest

from skinderm.answers import format_answer
from skinderm.rewards import format_reward, get_format_reward

PERFECT = format_answer(diagnosis="mel", location="center-center", bbox_2d=[10, 20, 110, 90])


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (PERFECT, 1.0),
        (f"Sure.\n```json\n{PERFECT}\n```", 1.0),
        ([{"role": "assistant", "content": PERFECT}], 1.0),
        ('{"diagnosis": "mel", "location": "center-center"}', 0.0),  # no box
        ('{"diagnosis": "mel or nv", "location": "center-center", "bbox_2d": [10, 20, 110, 90]}', 0.0),
        ('{"diagnosis": "mel", "location": "somewhere", "bbox_2d": [10, 20, 110, 90]}', 0.0),
        ('{"diagnosis": "mel", "location": "center-center", "bbox_2d": [110, 20, 10, 90]}', 0.0),  # inverted
        ('{"diagnosis": "mel", "location": "center-center", "bbox_2d": [10, 20, 10, 90]}', 0.0),  # zero width
        ('{"diagnosis": "mel", "location": "center-center", "bbox_2d": [NaN, 20, 110, 90]}', 0.0),
        (PERFECT[:-1], 0.0),  # malformed
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_format_reward_requires_every_field_valid(completion: object, expected: float) -> None:
    assert format_reward([completion]) == [expected]


def test_what_format_answer_writes_always_earns_the_format_reward() -> None:
    polygon_reward = get_format_reward(["diagnosis", "polygon"])
    text = format_answer(diagnosis="nv", polygon=[[1, 1], [9, 1], [5, 8]], fields=["diagnosis", "polygon"])
    assert polygon_reward([text]) == [1.0]
    assert polygon_reward(
        [format_answer(diagnosis="nv", polygon=[[1, 1], [9, 1]], fields=["diagnosis", "polygon"])]
    ) == [0.0]


def test_required_fields_are_configurable() -> None:
    diagnosis_only = get_format_reward(required_fields="diagnosis")
    assert diagnosis_only([json.dumps({"diagnosis": "bcc"})]) == [1.0]
    assert format_reward([json.dumps({"diagnosis": "bcc"})]) == [0.0]


@pytest.mark.parametrize("fields", [[], ["diagnosis", "label"], 5])
def test_unknown_or_empty_required_fields_raise(fields: object) -> None:
    with pytest.raises(ValueError, match=r"reward\.format\.required_fields"):
        get_format_reward(fields)  # type: ignore[arg-type]


def test_format_reward_is_named_and_picklable() -> None:
    reward = get_format_reward(["diagnosis"])
    assert pickle.loads(pickle.dumps(reward)).__name__ == format_reward.__name__ == "format"
