"""Spatial reward: is the lesion in the 3x3 cell the answer names?

1 for the true cell, `adjacent_credit` (`reward.spatial.adjacent_credit`, default 0.5) for a cell
sharing an edge with it (not a diagonal neighbour): a near miss is worth something, which gives
GRPO a gradient before the model is exact. The credit lies in [0, 1] so that no other cell ever
pays more than the true one. 0 otherwise and for an unparseable location; None when the image has
no ground-truth location (no mask): TRL then leaves the term out of that completion's total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from skinderm.data.classes import LOCATIONS
from skinderm.rewards._common import (
    RewardFunction,
    checked_scores,
    ground_truth_column,
    parse_completions,
    truth_location,
)

DEFAULT_ADJACENT_CREDIT = 0.5


def check_adjacent_credit(value: Any) -> float:
    """The credit as a float in [0, 1]; ValueError naming `reward.spatial.adjacent_credit` otherwise
    (above 1 a neighbour would out-pay the true cell)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"reward.spatial.adjacent_credit = {value!r} must be a number in [0, 1]")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"reward.spatial.adjacent_credit = {value!r} must lie in [0, 1] (1 = the true cell's pay)"
        )
    return float(value)


def location_score(
    predicted: str | None, truth: str | None, adjacent_credit: float = DEFAULT_ADJACENT_CREDIT
) -> float:
    """1 same cell, `adjacent_credit` for an edge-adjacent cell, else 0 (None on either side -> 0)."""
    if predicted not in LOCATIONS or truth not in LOCATIONS:
        return 0.0
    if predicted == truth:
        return 1.0
    row_p, col_p = divmod(LOCATIONS.index(predicted), 3)
    row_t, col_t = divmod(LOCATIONS.index(truth), 3)
    return adjacent_credit if abs(row_p - row_t) + abs(col_p - col_t) == 1 else 0.0


class SpatialReward(RewardFunction):
    """Grid-cell reward; reads the dataset column `location` ("{v}-{h}", or None: no ground truth)."""

    def __init__(self, adjacent_credit: float = DEFAULT_ADJACENT_CREDIT) -> None:
        self.__name__ = "spatial"
        self.adjacent_credit = check_adjacent_credit(adjacent_credit)

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        answers = parse_completions(completions)
        truths = ground_truth_column(kwargs, "location", len(answers), self.__name__)
        scores: list[float | None] = []
        for answer, value in zip(answers, truths, strict=True):
            truth = truth_location(value)
            scores.append(
                None if truth is None else location_score(answer.location, truth, self.adjacent_credit)
            )
        return checked_scores(scores)


def get_spatial_reward(adjacent_credit: float = DEFAULT_ADJACENT_CREDIT) -> SpatialReward:
    """The spatial reward (`reward.spatial.adjacent_credit`); logged as "spatial"."""
    return SpatialReward(adjacent_credit=adjacent_credit)


spatial_reward = get_spatial_reward()
