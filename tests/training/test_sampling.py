"""One class-balance policy for SFT examples and GRPO prompts: the draws follow the policy, repeat rare images
evenly (without replacement within a class), and depend on (seed, epoch) only, so a resumed run sees the same
batches."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from skinderm.training.sampling import (
    ClassBalanceSampler,
    PromptGroupSampler,
    class_shares,
    draws_per_class,
    draws_report,
    epoch_order,
)

# HAM10000-like long tail.
LABELS = ["nv"] * 67 + ["mel"] * 11 + ["bkl"] * 11 + ["bcc"] * 5 + ["akiec"] * 3 + ["vasc"] * 2 + ["df"] * 1


@pytest.mark.parametrize("policy", ["none", "balanced", "sqrt"])
def test_one_epoch_draws_each_class_its_share(policy: str) -> None:
    counts = Counter(LABELS)
    expected = {
        "none": {label: count / len(LABELS) for label, count in counts.items()},
        "balanced": {label: 1 / len(counts) for label in counts},
        "sqrt": {
            label: math.sqrt(n) / sum(math.sqrt(m) for m in counts.values()) for label, n in counts.items()
        },
    }[policy]
    assert class_shares(LABELS, policy) == pytest.approx(expected)
    drawn = Counter(LABELS[i] for i in epoch_order(LABELS, policy, seed=0, epoch=0))
    assert sum(drawn.values()) == len(LABELS)
    for label, share in expected.items():
        assert abs(drawn[label] - share * len(LABELS)) < 1, (label, drawn[label], share * len(LABELS))
    assert drawn == Counter(draws_per_class(LABELS, policy))


def test_none_draws_every_image_exactly_once() -> None:
    assert sorted(epoch_order(LABELS, "none", seed=3, epoch=1)) == list(range(len(LABELS)))


def test_a_rare_class_repeats_its_images_evenly() -> None:
    """balanced: the 3 akiec images share ~14 draws: each 4 or 5 times, none drawn 14 times."""
    order = epoch_order(LABELS, "balanced", seed=1, epoch=0)
    akiec = Counter(i for i in order if LABELS[i] == "akiec")
    assert set(akiec) == {i for i, label in enumerate(LABELS) if label == "akiec"}
    assert max(akiec.values()) - min(akiec.values()) <= 1


def test_sft_draws_and_grpo_prompts_have_the_same_class_frequencies() -> None:
    sft = ClassBalanceSampler(LABELS, "sqrt", seed=5)
    grpo = PromptGroupSampler(LABELS, "sqrt", seed=5, mini_repeat_count=4, batch_size=2, repeat_count=1)
    sft_counts, grpo_counts = Counter(), Counter()
    for epoch in range(3):
        sft.set_epoch(epoch)
        grpo.set_epoch(epoch)
        sft_counts.update(LABELS[i] for i in sft)
        prompts = list(grpo)[::4]  # each prompt appears 4 times in a row (its group of completions)
        grpo_counts.update(LABELS[i] for i in prompts)
    assert sft_counts == grpo_counts
    assert grpo_counts["df"] == 3 * draws_per_class(LABELS, "sqrt")["df"]


def test_the_grpo_sampler_keeps_trls_group_layout() -> None:
    sampler = PromptGroupSampler(
        LABELS[:10], "none", seed=0, mini_repeat_count=3, batch_size=2, repeat_count=2
    )
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 10 // 2 * 2 * 3 * 2
    first_chunk = drawn[: 2 * 3 * 2]
    a, b = first_chunk[0], first_chunk[3]
    assert first_chunk == [a, a, a, b, b, b] * 2  # a chunk of 2 prompts x 3 completions, reused twice


def test_the_order_is_a_function_of_seed_and_epoch_alone() -> None:
    first, again = (
        ClassBalanceSampler(LABELS, "balanced", seed=3),
        ClassBalanceSampler(LABELS, "balanced", seed=3),
    )
    orders = []
    for epoch in range(3):
        first.set_epoch(epoch)
        orders.append(list(first))
    again.set_epoch(2)  # a run resumed in epoch 2 never iterated epochs 0 and 1
    assert list(again) == orders[2]
    assert orders[0] != orders[1] != orders[2], "each epoch draws anew"
    assert list(ClassBalanceSampler(LABELS, "balanced", seed=4)) != orders[0]


def test_the_report_says_how_often_each_image_was_seen() -> None:
    report = draws_report(LABELS, "balanced", total_draws=700)
    assert report["policy"] == "balanced" and report["total_draws"] == 700
    assert report["draws"]["df"] == pytest.approx(100) and report["draws_per_image"]["df"] == pytest.approx(
        100
    )
    assert report["draws_per_image"]["nv"] == pytest.approx(100 / 67, abs=0.01)


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match=r"stage\.class_balance='weighted'"):
        class_shares(LABELS, "weighted")  # type: ignore[arg-type]
