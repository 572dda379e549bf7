"""Field-level credit: in GRPO each answer field's tokens are paid for that field's reward; in SFT each
field's tokens can carry a loss weight of their own (`field_loss_weights`, `stage.field_loss_weights`).

GRPO gives every token of a completion one advantage, the group-normalised weighted total of all reward
terms. In a JSON answer the terms read disjoint fields: the diagnosis term reads the `diagnosis` value, the
box term the `bbox_2d` value, the outline term the `polygon` value. With one shared advantage the box tokens
are also paid for the outline's IoU, which the box conditions (the polygon comes after it). On the
embedded default (docs/recipes.md) it did not raise box IoU at the recipe's learning rate, but at 3x that rate
it halved the damage GRPO does to the box (-0.023 against -0.044) and kept the outline gain (+0.053 against
-0.007). Fine-grained RLHF (Wu et al., 2023, arXiv:2306.01693) assigns each reward to the
span of text it judges; this is that for a structured answer.

`stage.credit: field` splits TRL's advantage term by term. With r_k the term-k rewards of a group, w_k
their weights and s the group's std of the weighted total (TRL's `scale_rewards`),
    a_k = w_k (r_k - mean_group r_k) / s,        sum_k a_k = TRL's sequence advantage,
so the scale of the update is GRPO's. A token inside the value of field f (skinderm.answers'
`answer_field_spans`) gets the sum of a_k over the terms that read f; every other token (braces, keys,
a field whose term is absent or a completion that does not parse) gets the whole sum. A term without
ground truth for a row (None, NaN in TRL) contributes 0 there, as TRL leaves it out of the total.
`stage.credit: sequence` is TRL's own rule, unchanged.

`stage.baseline: greedy` replaces the group mean each term is measured from by the term's reward for the
prompt's greedy answer (`term_advantages(baseline=...)`); it composes with either credit. Neither option
raised box IoU on the embedded default (docs/recipes.md): both are there to be measured, not defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from skinderm.answers import answer_field_spans
from skinderm.rewards.registry import REWARD_FIELDS

CREDITS: tuple[str, ...] = ("sequence", "field")
# What a completion's reward is measured from: TRL's group mean, or its prompt's greedy answer (ReMax,
# Li et al. 2023, arXiv:2310.10505): a sample better than what evaluation would see is pushed up, a worse
# one down, so the update moves the greedy answer rather than only sharpening around it.
BASELINES: tuple[str, ...] = ("group", "greedy")


def term_advantages(
    rewards: torch.Tensor,
    weights: torch.Tensor,
    num_generations: int,
    scale_rewards: str,
    aggregation: str = "sum_then_normalize",
    baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, K) per-term advantages a_k whose row sums are TRL 1.16's advantages.

    `rewards` is TRL's rewards_per_func (N completions x K terms, NaN = no ground truth), grouped by
    consecutive runs of `num_generations`; `scale_rewards` is group | batch | none and `aggregation`
    sum_then_normalize | normalize_then_sum, as in GRPOConfig (`multi_objective_aggregation`).
    `baseline` ((N / num_generations, K), e.g. each group's greedy answer's rewards) replaces the group
    mean each term is measured from (a NaN entry falls back to the mean); the scales stay the group's.
    """
    if rewards.dim() != 2 or rewards.shape[0] % num_generations:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not form groups of {num_generations}")
    if baseline is not None and baseline.shape != (rewards.shape[0] // num_generations, rewards.shape[1]):
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not give one row per group")
    if aggregation == "normalize_then_sum":
        return _normalized_term_advantages(rewards, weights, num_generations, baseline)
    if aggregation != "sum_then_normalize":
        raise ValueError(f"aggregation={aggregation!r}: expected sum_then_normalize or normalize_then_sum")
    present = ~torch.isnan(rewards)
    weighted = torch.where(present, rewards, torch.zeros_like(rewards)) * weights.to(rewards).unsqueeze(0)
    total = weighted.sum(dim=1)
    unscorable = ~present.any(dim=1)
    total = torch.where(unscorable, torch.full_like(total, float("nan")), total)
    groups = rewards.shape[0] // num_generations
    # Each term's deviation from its group mean over the rows that have it (TRL's nanmean of the total
    # equals the sum of these means when every row has the same terms).
    grouped = rewards.view(groups, num_generations, -1)
    term_mean = _reference(grouped, baseline).expand_as(grouped).reshape_as(rewards)
    deviation = torch.where(present, rewards - term_mean, torch.zeros_like(rewards))
    advantages = deviation * weights.to(rewards).unsqueeze(0)
    if scale_rewards == "none":
        return advantages
    if scale_rewards == "group":
        std = _nanstd(total.view(groups, num_generations), dim=1).repeat_interleave(num_generations)
    elif scale_rewards == "batch":
        std = _nanstd(total, dim=0).expand_as(total)
    else:
        raise ValueError(f"scale_rewards={scale_rewards!r}: expected group, batch or none")
    return advantages / (torch.nan_to_num(std, nan=0.0) + 1e-4).unsqueeze(1)


def _reference(grouped: torch.Tensor, baseline: torch.Tensor | None) -> torch.Tensor:
    """(groups, 1, K): what each term is measured from, the baseline where given, else the group mean."""
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    if baseline is None:
        return mean
    given = baseline.to(grouped).unsqueeze(1)
    return torch.where(torch.isnan(given), mean, given)


def _normalized_term_advantages(
    rewards: torch.Tensor, weights: torch.Tensor, num_generations: int, baseline: torch.Tensor | None = None
) -> torch.Tensor:
    """normalize_then_sum (GDPO-style decoupled normalisation): each term is standardised within its
    group first, z_k = (r_k - mean_k) / std_k, so a small-variance term (box IoU beside a noisy outline)
    keeps a unit-scale signal; TRL then standardises the weighted sum over the batch."""
    groups = rewards.shape[0] // num_generations
    grouped = rewards.view(groups, num_generations, -1)
    mean = _reference(grouped, baseline)
    std = _nanstd(grouped, dim=1).unsqueeze(1) if num_generations > 1 else torch.zeros_like(mean)
    z = torch.nan_to_num((grouped - mean) / (torch.nan_to_num(std, nan=0.0) + 1e-4), nan=0.0)
    weighted = z.reshape_as(rewards) * weights.to(rewards).unsqueeze(0)
    total = weighted.sum(dim=1)
    unscorable = torch.isnan(rewards).all(dim=1)
    scorable = total[~unscorable]
    if scorable.numel() == 0:
        return torch.zeros_like(weighted)
    # Centred on the batch mean as TRL does, except against a baseline: there the sign says better or
    # worse than the baseline answer, and re-centring would undo it.
    centre = scorable.mean() if baseline is None else torch.zeros_like(scorable.mean())
    spread = scorable.std() if scorable.numel() > 1 else torch.zeros_like(centre)
    # Split the batch centring evenly over the terms present, so the row sums are TRL's advantages.
    present = (~torch.isnan(rewards)).to(weighted)
    share = present / present.sum(dim=1, keepdim=True).clamp(min=1)
    advantages = (weighted - centre * share) / (spread + 1e-4)
    return torch.where(unscorable.unsqueeze(1), torch.zeros_like(advantages), advantages)


def _nanstd(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Sample std ignoring NaN (TRL's nanstd: Bessel-corrected)."""
    count = (~torch.isnan(values)).sum(dim=dim)
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    squared = torch.nansum((values - mean) ** 2, dim=dim)
    return torch.sqrt(squared / (count - 1).clamp(min=1))


def token_char_ends(tokenizer: Any, token_ids: Sequence[int]) -> list[int]:
    """For each token, the length of the text decoded from the tokens up to and including it (the text
    TRL hands the rewards: special tokens skipped), so token j covers characters [ends[j-1], ends[j]).

    Token by token where the pieces add up to the whole text (one batched decode, linear in the length);
    otherwise (a character split across byte-level tokens, cleanup of spaces) prefix by prefix, exact but
    quadratic."""
    if not token_ids:
        return []
    ids = list(token_ids)
    pieces = tokenizer.batch_decode([[token] for token in ids], skip_special_tokens=True)
    if "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True):
        ends, total = [], 0
        for piece in pieces:
            total += len(piece)
            ends.append(total)
        return ends
    prefixes = [ids[: j + 1] for j in range(len(ids))]
    return [len(text) for text in tokenizer.batch_decode(prefixes, skip_special_tokens=True)]


def token_advantages(
    advantages: torch.Tensor,
    term_fields: Sequence[str | None],
    spans: Mapping[str, tuple[int, int]],
    char_ends: Sequence[int],
    length: int,
) -> torch.Tensor:
    """(length,) advantages of one completion's tokens from its (K,) per-term `advantages`.

    A token whose characters overlap the value span of field f gets the sum of the terms reading f;
    every other token (and every token past `char_ends`, i.e. padding) the sum of all terms.
    """
    total = advantages.sum()
    out = total.expand(length).clone()
    for field, (start, end) in spans.items():
        terms = [k for k, name in enumerate(term_fields) if name == field]
        if terms:
            out[overlapping_tokens(char_ends[:length], start, end)] = advantages[terms].sum()
    return out


def overlapping_tokens(char_ends: Sequence[int], start: int, end: int) -> list[int]:
    """Indices of the tokens whose characters overlap [start, end); token j covers [ends[j-1], ends[j])
    (`token_char_ends`), so a token that decodes to nothing overlaps nothing."""
    indices, begin = [], 0
    for j, stop in enumerate(char_ends):
        if begin < end and stop > start and stop > begin:
            indices.append(j)
        begin = stop
    return indices


def field_loss_weights(
    labels: torch.Tensor, weights: Mapping[str, float], tokenizer: Any, ignore_index: int = -100
) -> torch.Tensor:
    """(B, T) float weights for SFT's per-token loss: `weights[f]` on the label tokens inside the value of
    answer field f (`answer_field_spans` of the answer the row's labels spell), 1 everywhere else.

    With the outline taught, the diagnosis is 1-2 of ~120 answer tokens and the geometry tokens, whose loss
    stays high, take nearly all of the gradient (docs/data.md); `stage.field_loss_weights` gives a field
    back its share. Positions equal to `ignore_index` (prompt, padding) keep 1: their loss is 0 anyway.
    """
    out = torch.ones(labels.shape, dtype=torch.float32)
    for i in range(labels.shape[0]):
        positions = (labels[i] != ignore_index).nonzero().flatten().cpu()
        ids = labels[i, positions].tolist()
        spans = answer_field_spans(tokenizer.decode(ids, skip_special_tokens=True))
        if not any(field in spans for field in weights):
            continue
        ends = token_char_ends(tokenizer, ids)
        for field, weight in weights.items():
            if field in spans:
                out[i, positions[overlapping_tokens(ends, *spans[field])]] = float(weight)
    return out.to(labels.device)


def field_credit_advantages(
    per_term: torch.Tensor,
    reward_names: Sequence[str],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    tokenizer: Any,
) -> torch.Tensor:
    """(B, T) token advantages of this process's completions from their (B, K) `term_advantages` rows;
    `completion_ids` / `completion_mask` are TRL's (B, T) tensors of the same completions."""
    per_term = torch.nan_to_num(per_term, nan=0.0).to(torch.float32).cpu()
    term_fields = [REWARD_FIELDS.get(name) for name in reward_names]
    length = completion_ids.shape[1]
    out = torch.empty((completion_ids.shape[0], length), dtype=torch.float32)
    for i in range(completion_ids.shape[0]):
        ids = completion_ids[i][completion_mask[i].bool()].tolist()
        ends = token_char_ends(tokenizer, ids)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        out[i] = token_advantages(per_term[i], term_fields, answer_field_spans(text), ends, length)
    return out.to(completion_ids.device)
