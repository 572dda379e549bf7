"""Which training examples a step draws: class-balanced weights and a sampler whose order is a function of
(seed, epoch) alone, so a resumed run and a multi-rank run see exactly the batches a single uninterrupted
run sees."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import torch


def class_balanced_weights(labels: Sequence[str]) -> torch.Tensor:
    """Per-example sampling weights that make every class equally likely to be drawn."""
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.double)


class EpochSeededWeightedSampler(torch.utils.data.Sampler[int]):
    """Weighted draws (with replacement) whose order depends only on (seed, epoch).

    The Trainer calls `set_epoch` before each epoch, also after a resume, so a run resumed in epoch 3 sees
    exactly the batches an uninterrupted run sees there (a sampler with one long-lived generator would
    replay epoch 1's order instead).
    """

    def __init__(self, weights: torch.Tensor, *, seed: int) -> None:
        self.weights, self.seed, self.epoch = weights, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator)
        return iter(draws.tolist())
