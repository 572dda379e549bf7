"""The class-balanced sampler: draws depend on (seed, epoch) only, so a resumed run sees the same batches."""

from __future__ import annotations

from collections import Counter

from skinderm.training.sampling import EpochSeededWeightedSampler, class_balanced_weights

LABELS = ["nv"] * 60 + ["mel"] * 30 + ["df"] * 10


def test_each_class_is_drawn_about_equally_often() -> None:
    sampler = EpochSeededWeightedSampler(class_balanced_weights(LABELS), seed=0)
    counts: Counter[str] = Counter()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        counts.update(LABELS[index] for index in sampler)
    total = sum(counts.values())
    assert all(abs(count / total - 1 / 3) < 0.03 for count in counts.values()), counts


def test_the_order_is_a_function_of_seed_and_epoch_alone() -> None:
    weights = class_balanced_weights(LABELS)
    first, again = EpochSeededWeightedSampler(weights, seed=3), EpochSeededWeightedSampler(weights, seed=3)
    orders = []
    for epoch in range(3):
        first.set_epoch(epoch)
        orders.append(list(first))
    again.set_epoch(2)  # a run resumed in epoch 2 never iterated epochs 0 and 1
    assert list(again) == orders[2]
    assert orders[0] != orders[1] != orders[2], "each epoch draws anew"
    assert list(EpochSeededWeightedSampler(weights, seed=4)) != orders[0]
