"""The post-training generation check shares images out over ranks so that all ranks stay in lock-step."""

from __future__ import annotations

import pytest

from skinderm.training.val_check import rank_share


@pytest.mark.parametrize("n_records", [0, 1, 2, 5, 7, 8, 64, 65])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shares_cover_every_record_once_and_every_rank_makes_the_same_number_of_calls(
    n_records: int, world_size: int
) -> None:
    shares = [rank_share(n_records, world_size, rank) for rank in range(world_size)]
    answered = [index for indices, _ in shares for index in indices]
    assert answered == list(range(n_records)), "each record answered exactly once, in order"
    padded_lengths = {len(indices) + padding for indices, padding in shares}
    assert len(padded_lengths) == 1, "equal shares: the same number of generate calls on every rank"


def test_a_rank_without_records_still_answers_a_padded_share() -> None:
    indices, padding = rank_share(3, 4, 3)  # 4 ranks, 3 images: the last rank has none of its own
    assert indices == [] and padding == 1
