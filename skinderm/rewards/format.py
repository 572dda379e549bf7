"""Format reward: 1 when the completion is one answer object with every required field valid.

It exists for runs that start from a model never taught the format; after SFT on `format_answer`
targets it is ~1 from the first step (the SFT and GRPO formats are the same by construction), which
is why its default weight is 0. "Valid" per field, as the other rewards read it:
diagnosis names exactly one class; location is one grid cell; bbox_2d is a valid box (the parser
voids inverted, zero-area and non-finite ones: skinderm.geometry); polygon has at least 3 finite points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from skinderm.answers import ANSWER_FIELDS, DEFAULT_FIELDS, ParsedAnswer
from skinderm.rewards._common import RewardFunction, checked_scores, parse_completions


def field_is_valid(answer: ParsedAnswer, field: str) -> bool:
    """Whether the answer's `field` holds a usable value."""
    if field == "diagnosis":
        return answer.diagnosis is not None
    if field == "location":
        return answer.location is not None
    if field == "bbox_2d":
        return answer.bbox_2d is not None  # the parser keeps only valid boxes
    if field == "polygon":
        return answer.polygon is not None and len(answer.polygon) >= 3
    return False


class FormatReward(RewardFunction):
    """1 when every field of `required_fields` is present and valid, else 0. Needs no dataset column."""

    def __init__(self, required_fields: Sequence[str] = DEFAULT_FIELDS) -> None:
        if isinstance(required_fields, str):
            required_fields = [required_fields]
        try:
            fields = tuple(required_fields)
        except TypeError:
            fields = ()
        unknown = [name for name in fields if name not in ANSWER_FIELDS]
        if unknown or not fields:
            raise ValueError(
                f"reward.format.required_fields = {list(fields)}: choose one or more of {list(ANSWER_FIELDS)}"
            )
        self.__name__ = "format"
        self.required_fields = fields

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return checked_scores(
            float(answer.parse_ok and all(field_is_valid(answer, name) for name in self.required_fields))
            for answer in parse_completions(completions)
        )


def get_format_reward(required_fields: Sequence[str] = DEFAULT_FIELDS) -> FormatReward:
    """The format reward (`reward.format.required_fields`); logged as "format"."""
    return FormatReward(required_fields=required_fields)


format_reward = get_format_reward()
