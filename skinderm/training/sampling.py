"""Which training examples a step draws: one class-balance policy for SFT examples and GRPO prompts alike.

`stage.class_balance`:
- `none`: the data's own mix, each image once per epoch (a plain shuffle);
- `balanced`: every class drawn equally often (rare classes repeat, common ones are subsampled);
- `sqrt`: class frequency proportional to the square root of its count, the usual compromise on long-tailed
  data (HAM10000: nv 67% -> ~34%, df 1.1% -> ~4.4%).

An epoch draws as many examples as there are images, in per-class counts that follow the policy (largest
remainder rounding). Within a class, images are drawn WITHOUT replacement until each has been drawn once, then
the class is reshuffled: a rare class repeats each image evenly instead of drawing some of them many times.
The order is a function of (seed, epoch) alone, so a resumed run and every rank of a multi-GPU run see exactly
the batches of one uninterrupted run; the Trainer calls `set_epoch` before each epoch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch

ClassBalance = Literal["none", "balanced", "sqrt"]
CLASS_BALANCE_POLICIES: tuple[str, ...] = ("none", "balanced", "sqrt")


def class_shares(labels: Sequence[str], policy: ClassBalance) -> dict[str, float]:
    """The share of draws each class gets under `policy` (sums to 1), classes in sorted order."""
    if policy not in CLASS_BALANCE_POLICIES:
        raise ValueError(f"stage.class_balance={policy!r}: use one of {list(CLASS_BALANCE_POLICIES)}")
    counts = Counter(labels)
    raw = {
        label: 1.0 if policy == "balanced" else math.sqrt(count) if policy == "sqrt" else float(count)
        for label, count in sorted(counts.items())
    }
    total = sum(raw.values())
    return {label: value / total for label, value in raw.items()}


def draws_per_class(labels: Sequence[str], policy: ClassBalance) -> dict[str, int]:
    """How many of an epoch's len(labels) draws go to each class (largest remainder rounding)."""
    shares = class_shares(labels, policy)
    total = len(labels)
    exact = {label: share * total for label, share in shares.items()}
    counts = {label: math.floor(value) for label, value in exact.items()}
    by_remainder = sorted(exact, key=lambda label: (-(exact[label] - counts[label]), label))
    for label in by_remainder[: total - sum(counts.values())]:
        counts[label] += 1
    return counts


def epoch_order(labels: Sequence[str], policy: ClassBalance, *, seed: int, epoch: int) -> list[int]:
    """The indices of one epoch's draws under `policy`, shuffled; depends on (seed, epoch) only."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    by_class: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    order: list[int] = []
    for label, wanted in draws_per_class(labels, policy).items():
        members = by_class[label]
        drawn: list[int] = []
        while len(drawn) < wanted:  # without replacement until the class is used up, then again
            drawn.extend(members[i] for i in rng.permutation(len(members)))
        order.extend(drawn[:wanted])
    return [order[i] for i in rng.permutation(len(order))]


def draws_report(labels: Sequence[str], policy: ClassBalance, total_draws: int) -> dict[str, object]:
    """For metrics.json: the policy, each class's share of the draws, how many draws it got over the run
    (`total_draws` = steps x examples per step) and how often each of its images was seen on average."""
    counts = Counter(labels)
    shares = class_shares(labels, policy)
    draws = {label: round(share * total_draws, 1) for label, share in shares.items()}
    return {
        "policy": policy,
        "total_draws": int(total_draws),
        "share": {label: round(share, 4) for label, share in shares.items()},
        "draws": draws,
        "draws_per_image": {label: round(draws[label] / counts[label], 2) for label in shares},
    }


class ClassBalanceSampler(torch.utils.data.Sampler[int]):
    """SFT's sampler: one epoch = `epoch_order` of the training labels."""

    def __init__(self, labels: Sequence[str], policy: ClassBalance, *, seed: int) -> None:
        self.labels, self.policy, self.seed, self.epoch = list(labels), policy, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.labels, self.policy, seed=self.seed, epoch=self.epoch))


class PromptGroupSampler(ClassBalanceSampler):
    """GRPO's sampler: TRL's RepeatSampler layout (each prompt `mini_repeat_count` times in a row for its
    group of completions, chunks of `batch_size` prompts repeated `repeat_count` times for generation reuse),
    with the prompts in `epoch_order` instead of a plain shuffle, and seeded by (seed, epoch)."""

    def __init__(
        self,
        labels: Sequence[str],
        policy: ClassBalance,
        *,
        seed: int,
        mini_repeat_count: int,
        batch_size: int,
        repeat_count: int,
    ) -> None:
        super().__init__(labels, policy, seed=seed)
        self.mini_repeat_count = mini_repeat_count
        self.batch_size, self.repeat_count = batch_size, repeat_count

    def __len__(self) -> int:
        whole = (len(self.labels) // self.batch_size) * self.batch_size
        return whole * self.mini_repeat_count * self.repeat_count

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.labels, self.policy, seed=self.seed, epoch=self.epoch)
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            chunk = order[start : start + self.batch_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index
