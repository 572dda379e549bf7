"""Spatial reward: is the lesion in the 3x3 cell the answer names?

1 for the true cell, 0.5 for a cell sharing an edge with it (not a diagonal neighbour): a near miss
is worth something, which gives GRPO a gradient before the model is exact. 0 otherwise, for an
unparseable location, or when the image has no ground-truth location (no mask).
"""

from __future__ import annotations

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

ADJACENT_CELL_REWARD = 0.5


def location_score(
    predicted: str | None, truth: str | None, adjacent_reward: float = ADJACENT_CELL_REWARD
) -> float:
    """1 same cell, `adjacent_reward` for an edge-adjacent cell, else 0 (None on either side -> 0)."""
    if predicted not in LOCATIONS or truth not in LOCATIONS:
        return 0.0
    if predicted == truth:
        return 1.0
    row_p, col_p = divmod(LOCATIONS.index(predicted), 3)
    row_t, col_t = divmod(LOCATIONS.index(truth), 3)
    return adjacent_reward if abs(row_p - row_t) + abs(col_p - col_t) == 1 else 0.0


class SpatialReward(RewardFunction):
    """Grid-cell reward; reads the dataset column `location` ("{v}-{h}" or None)."""

    def __init__(self, adjacent_reward: float = ADJACENT_CELL_REWARD) -> None:
        if not 0.0 <= adjacent_reward <= 1.0:
            raise ValueError(f"spatial adjacent_reward = {adjacent_reward} must lie in [0, 1]")
        self.__name__ = "spatial"
        self.adjacent_reward = adjacent_reward

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        answers = parse_completions(completions)
        truths = ground_truth_column(kwargs, "location", len(answers), self.__name__)
        return checked_scores(
            location_score(answer.location, truth_location(truth), self.adjacent_reward)
            for answer, truth in zip(answers, truths, strict=True)
        )


def get_spatial_reward(adjacent_reward: float = ADJACENT_CELL_REWARD) -> SpatialReward:
    """The spatial reward; logged as "spatial"."""
    return SpatialReward(adjacent_reward=adjacent_reward)


spatial_reward = get_spatial_reward()
