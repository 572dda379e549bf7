"""Shared plumbing of the reward functions: ground-truth columns and their validation.

TRL calls `reward(completions, **columns)` where every dataset column arrives as a list aligned with
`completions`. Ground-truth values are checked here, so that a None, a pandas NaN or a numpy number
in a column is read as "no ground truth" or a number instead of raising mid-training. A row without
ground truth for a term gets None from that term (TRL's "not applicable": left out of the weighted
sum), never 0, which would pay every completion of that image alike and skew the logged means.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from skinderm.answers import ParsedAnswer, completion_text, parse_answer
from skinderm.data.classes import CLASS_CODES, LOCATIONS
from skinderm.geometry import Box, valid_box


def parse_completions(completions: Sequence[Any]) -> list[ParsedAnswer]:
    """Parse every TRL completion (plain string or conversational)."""
    return [parse_answer(completion_text(completion)) for completion in completions]


def ground_truth_column(kwargs: Mapping[str, Any], column: str, count: int, reward_name: str) -> list[Any]:
    """The dataset column `column`, aligned with the completions.

    A missing column or one of the wrong length is a set-up error (the dataset lacks the ground
    truth) that would otherwise train on all-zero rewards without a word, so it raises ValueError.
    """
    values = kwargs.get(column)
    if values is None:
        raise ValueError(
            f"reward '{reward_name}' needs the dataset column '{column}', which the trainer did not pass; "
            f"keep '{column}' in the GRPO dataset (see skinderm/rewards/__init__.py)"
        )
    values = list(values)
    if len(values) != count:
        raise ValueError(
            f"reward '{reward_name}': column '{column}' has {len(values)} values for {count} completions"
        )
    return values


def truth_class(value: Any) -> str | None:
    return value if isinstance(value, str) and value in CLASS_CODES else None


def truth_location(value: Any) -> str | None:
    return value if isinstance(value, str) and value in LOCATIONS else None


def finite_float(value: Any) -> float | None:
    """A finite float from any real number type (numpy included); None for anything else."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def truth_size(width: Any, height: Any) -> tuple[int, int] | None:
    """(width, height) of the model input when both are positive finite numbers."""
    w, h = finite_float(width), finite_float(height)
    if w is None or h is None or w < 1 or h < 1:
        return None
    return round(w), round(h)


def truth_box(value: Any) -> Box | None:
    """A valid ground-truth box (skinderm.geometry's rule: finite, x2 > x1, y2 > y1), else None."""
    return valid_box(value)


def truth_path(value: Any) -> str | None:
    """A non-empty path (str or os.PathLike) as str; None otherwise."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return value if isinstance(value, str) and value else None


class RewardFunction:
    """Base of every reward: a picklable callable with `__name__` (TRL logs rewards/<name>/mean)."""

    __name__: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"


def checked_scores(scores: Iterable[float | None]) -> list[float | None]:
    """Scores as plain floats in [0, 1], None kept (a guard, not a fix: rewards compute values in range).

    None means "no ground truth for this term on this row": TRL turns it into NaN and leaves the
    term out of that completion's weighted sum (nansum), see `registry.weighted_total`.
    """
    return [None if score is None else min(1.0, max(0.0, float(score))) for score in scores]
