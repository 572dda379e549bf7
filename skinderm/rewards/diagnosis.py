"""Diagnosis reward: 1 for naming exactly the true class, optionally paid less for common classes.

Matching is strict on purpose: substring rewards let an empty answer or "A or B or C" score 1.0
(Visual-RFT #176, #79). The reward reads `ParsedAnswer.diagnosis`, i.e.
`skinderm.answers.parse_diagnosis`, the same reading evaluation counts: 1 only when the value names
exactly one class (code, full name or synonym, any case, NFKC-normalised) and nothing else. No class,
several classes ("mel or nv"), a negation ("not mel", "non-melanoma"), an unknown or misspelt word
("mel or nevvus"), a non-ASCII look-alike letter ("mеl" with a Cyrillic е) or an answer object with
a duplicate key all earn 0, as does the wrong class.

Class weighting (`class_weighting="inverse_frequency"`): with N training images, K classes present
and count_c images of class c, the weight is

    w_c = N / (K * count_c)      so that   sum_c count_c * w_c / N = 1,

i.e. the weights average 1 over the TRAINING SET's images, and a correct answer earns
**min(1, w_c)**. Rewards stay in [0, 1]: rare classes (w_c > 1) are CLIPPED to 1, so the weighting
only LOWERS the pay for classes more common than average. With HAM10000 proportions that is nv
alone (w_nv = 10015 / (7 * 6705) = 0.21); "always nv" then earns a mean of 0.14 instead of 0.67,
while every correct answer for a rare class still earns 1. A class absent from the counts (count 0)
earns 1 when answered correctly.

GRPO note: advantages compare completions of the SAME image. With `scale_rewards: group` (each
group divided by its own std) a per-class factor on a diagnosis-only reward cancels out; the
weighting acts through its share of the weighted total (other components keep full weight on nv
images) and, with `scale_rewards: batch` or `none`, through how much nv images move the policy.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

from skinderm.data.classes import CLASS_CODES
from skinderm.rewards._common import (
    RewardFunction,
    checked_scores,
    ground_truth_column,
    parse_completions,
    truth_class,
)

CLASS_WEIGHTINGS: tuple[str, ...] = ("none", "inverse_frequency")


def inverse_frequency_weights(class_counts: Mapping[str, int]) -> dict[str, float]:
    """w_c = N / (K * count_c) (mean 1 over the images counted); classes with count 0 get inf."""
    unknown = sorted(set(class_counts) - set(CLASS_CODES))
    if unknown:
        raise ValueError(f"class_counts has unknown classes {unknown}; expected codes from {CLASS_CODES}")
    counts: dict[str, int] = {}
    for code in CLASS_CODES:
        given = class_counts.get(code, 0)
        try:
            count = operator.index(given)  # ints, numpy ints; not floats or strings
        except TypeError:
            count = -1
        if isinstance(given, bool) or count < 0:
            raise ValueError(f"class_counts['{code}'] = {given!r} must be a whole number of images >= 0")
        counts[code] = count
    total = sum(counts.values())
    present = sum(1 for count in counts.values() if count > 0)
    if total == 0:
        raise ValueError("class_counts holds no images; pass the training split's images per class")
    return {code: total / (present * count) if count else float("inf") for code, count in counts.items()}


class DiagnosisReward(RewardFunction):
    """1 (or min(1, w_true) under inverse_frequency) when exactly the true class is named, else 0.

    Reads the dataset column `dx` (class code); None for a row whose `dx` is not a class code (no
    ground truth). See the module docstring for the weighting.
    """

    def __init__(self, class_weighting: str = "none", class_counts: Mapping[str, int] | None = None) -> None:
        if class_weighting not in CLASS_WEIGHTINGS:
            raise ValueError(
                f"reward.diagnosis.class_weighting = {class_weighting!r}; "
                f"choose one of {list(CLASS_WEIGHTINGS)}"
            )
        self.__name__ = "diagnosis"
        self.class_weighting = class_weighting
        if class_weighting == "inverse_frequency":
            if class_counts is None:
                raise ValueError(
                    "reward.diagnosis.class_weighting = inverse_frequency needs class_counts (the training "
                    "split's images per class); pass them to build_reward_functions(..., class_counts=...)"
                )
            weights = inverse_frequency_weights(class_counts)
        else:
            weights = dict.fromkeys(CLASS_CODES, 1.0)
        self.class_weights: dict[str, float] = weights
        # What a correct answer earns: the weight clipped to 1 so that rewards stay in [0, 1].
        self.correct_reward: dict[str, float] = {code: min(1.0, weight) for code, weight in weights.items()}

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        answers = parse_completions(completions)
        truths = ground_truth_column(kwargs, "dx", len(answers), self.__name__)
        scores: list[float | None] = []
        for answer, truth in zip(answers, truths, strict=True):
            code = truth_class(truth)
            if code is None:  # no (known) true class: nothing to pay against
                scores.append(None)
            else:
                scores.append(self.correct_reward[code] if answer.diagnosis == code else 0.0)
        return checked_scores(scores)


def get_diagnosis_reward(
    class_weighting: str = "none", class_counts: Mapping[str, int] | None = None
) -> DiagnosisReward:
    """The diagnosis reward, configured (`reward.diagnosis.class_weighting`); logged as "diagnosis"."""
    return DiagnosisReward(class_weighting=class_weighting, class_counts=class_counts)


diagnosis_reward = get_diagnosis_reward()
