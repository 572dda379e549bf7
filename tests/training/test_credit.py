"""Field-level credit: each answer field's tokens carry that field's share of TRL's advantage."""

from __future__ import annotations

import pytest
import torch

from skinderm.answers import ANSWER_FIELDS, format_answer
from skinderm.rewards.registry import REWARD_FIELDS
from skinderm.training.credit import (
    field_credit_advantages,
    field_loss_weights,
    term_advantages,
    token_advantages,
    token_char_ends,
)

NAMES = ["diagnosis", "spatial", "bbox_iou", "outline_iou"]
WEIGHTS = torch.tensor([0.4, 0.3, 0.15, 0.15])


def trl_advantages(rewards: torch.Tensor, weights: torch.Tensor, n: int, scale: str) -> torch.Tensor:
    """TRL 1.16's sum_then_normalize advantage, written out for full reward rows."""
    total = (rewards * weights).sum(dim=1)
    grouped = total.view(-1, n)
    advantages = total - grouped.mean(dim=1).repeat_interleave(n)
    if scale == "group":
        advantages = advantages / (grouped.std(dim=1).repeat_interleave(n) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (total.std() + 1e-4)
    return advantages


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_term_advantages_add_up_to_trls_sequence_advantage(scale: str) -> None:
    rewards = torch.rand(12, 4, generator=torch.Generator().manual_seed(0))
    per_term = term_advantages(rewards, WEIGHTS, 4, scale)
    assert per_term.shape == (12, 4)
    torch.testing.assert_close(per_term.sum(dim=1), trl_advantages(rewards, WEIGHTS, 4, scale))


def test_normalize_then_sum_terms_add_up_to_trls_advantage_and_keep_each_term_at_unit_scale() -> None:
    rewards = torch.rand(8, 4, generator=torch.Generator().manual_seed(2))
    rewards[:, 2] = rewards[:, 2] * 0.01  # a term with a hundredth of the others' spread
    per_term = term_advantages(rewards, WEIGHTS, 4, "group", "normalize_then_sum")
    grouped = rewards.view(2, 4, 4)
    z = ((grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + 1e-4)).view(8, 4)
    total = (z * WEIGHTS).sum(dim=1)
    torch.testing.assert_close(per_term.sum(dim=1), (total - total.mean()) / (total.std() + 1e-4))
    scale = per_term.abs().mean(dim=0) / WEIGHTS
    assert scale.min() > 0.3 * scale.max()  # the small-spread term is not drowned out
    with pytest.raises(ValueError, match="aggregation"):
        term_advantages(rewards, WEIGHTS, 4, "group", "max")


def test_a_term_without_ground_truth_pays_nothing_for_that_row() -> None:
    rewards = torch.tensor([[1.0, 0.2], [0.0, float("nan")], [1.0, 0.6], [0.0, 0.4]])
    per_term = term_advantages(rewards, torch.tensor([1.0, 1.0]), 4, "none")
    assert per_term[1, 1] == 0
    # The term's group mean is over the rows that have it: (0.2 + 0.6 + 0.4) / 3.
    torch.testing.assert_close(per_term[[0, 2, 3], 1], torch.tensor([-0.2, 0.2, 0.0]))
    torch.testing.assert_close(per_term[:, 0], torch.tensor([0.5, -0.5, 0.5, -0.5]))


def test_against_the_greedy_baseline_a_sample_is_paid_for_beating_the_greedy_answer() -> None:
    rewards = torch.tensor([[0.9], [0.5], [0.7], [0.3]])  # one term, one group of 4
    greedy = torch.tensor([[0.7]])
    for aggregation in ("sum_then_normalize", "normalize_then_sum"):
        per_term = term_advantages(rewards, torch.ones(1), 4, "group", aggregation, greedy)
        signs = torch.sign(per_term[:, 0]).tolist()
        assert signs == [1.0, -1.0, 0.0, -1.0], aggregation  # better, worse, equal, worse than greedy
    # Scaled by the group's spread as GRPO scales: (r - greedy) / std.
    torch.testing.assert_close(
        term_advantages(rewards, torch.ones(1), 4, "group", baseline=greedy)[:, 0],
        (rewards[:, 0] - 0.7) / (rewards[:, 0].std() + 1e-4),
    )


def test_a_missing_baseline_entry_falls_back_to_the_group_mean() -> None:
    rewards = torch.tensor([[1.0, 0.2], [0.0, 0.6]])
    greedy = torch.tensor([[float("nan"), 0.6]])
    per_term = term_advantages(rewards, torch.ones(2), 2, "none", baseline=greedy)
    torch.testing.assert_close(per_term, torch.tensor([[0.5, -0.4], [-0.5, 0.0]]))
    with pytest.raises(ValueError, match="one row per group"):
        term_advantages(rewards, torch.ones(2), 2, "none", baseline=torch.zeros(2, 2))


def test_groups_must_be_whole() -> None:
    with pytest.raises(ValueError, match="groups of 4"):
        term_advantages(torch.zeros(6, 2), torch.ones(2), 4, "group")


@pytest.fixture(scope="module")
def tokenizer():
    from skinderm.models.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer(1024)


ANSWER = format_answer(
    diagnosis="mel",
    location="center-center",
    bbox_2d=[61, 40, 170, 130],
    polygon=[[61, 80], [100, 40], [170, 85], [110, 130]],
    fields=ANSWER_FIELDS,
)


def prefix_ends(tokenizer, ids: list[int]) -> list[int]:
    return [len(tokenizer.decode(ids[: j + 1], skip_special_tokens=True)) for j in range(len(ids))]


@pytest.mark.parametrize(
    "text", [ANSWER, '{"diagnosis": "mélanome ünd näevus", "location": "\u4e2d\u592e"}', "  spaced  out  "]
)
def test_token_char_ends_are_those_of_the_decoded_prefixes(tokenizer, text: str) -> None:
    """Also where a non-ASCII character spans several byte-level tokens (the prefix fallback)."""
    ids = tokenizer(text)["input_ids"]
    ends = token_char_ends(tokenizer, ids)
    assert ends == prefix_ends(tokenizer, ids)
    assert ends[-1] == len(tokenizer.decode(ids, skip_special_tokens=True))
    assert token_char_ends(tokenizer, []) == []


def test_each_field_value_carries_its_terms_advantage_and_the_rest_the_total(tokenizer) -> None:
    from skinderm.answers import answer_field_spans

    ids = tokenizer(ANSWER)["input_ids"]
    per_term = torch.tensor([1.0, 2.0, 3.0, 4.0])
    fields = [REWARD_FIELDS[name] for name in NAMES]
    spans = answer_field_spans(ANSWER)
    out = token_advantages(per_term, fields, spans, token_char_ends(tokenizer, ids), len(ids) + 5)
    ends = token_char_ends(tokenizer, ids)
    text_of = {value: "" for value in (1.0, 2.0, 3.0, 4.0, 10.0)}
    begin = 0
    for j, stop in enumerate(ends):
        text_of[float(out[j])] += ANSWER[begin:stop]
        begin = stop
    # The digits of each value reach only its own term; keys and braces get the whole sum (10).
    assert "mel" in text_of[1.0] and "center" in text_of[2.0]
    assert "61, 40, 170, 130" in text_of[3.0] and "[100, 40], [170, 85]" in text_of[4.0]
    assert "diagnosis" in text_of[10.0] and "bbox" in text_of[10.0] and "polygon" in text_of[10.0]
    assert not any(ch.isdigit() for ch in text_of[10.0].replace("bbox_2d", ""))
    assert (out[len(ids) :] == 10.0).all()  # padding (masked out by TRL's loss anyway)


@pytest.mark.parametrize(
    "text",
    ["not json at all", '{"diagnosis": "mel", "diagnosis": "nv"}', '{"other": 1}', ""],
)
def test_an_answer_that_does_not_parse_gets_the_sequence_advantage_everywhere(tokenizer, text: str) -> None:
    ids = tokenizer(text)["input_ids"] or [0]
    completion = torch.tensor([ids])
    rewards = torch.tensor([[1.0, 1.0, 0.5, 0.2], [0.0, 0.5, 0.1, 0.1]])
    per_term = term_advantages(rewards, WEIGHTS, 2, "group")[:1]
    out = field_credit_advantages(per_term, NAMES, completion, torch.ones_like(completion), tokenizer)
    expected = trl_advantages(rewards, WEIGHTS, 2, "group")[0]
    torch.testing.assert_close(out, torch.full_like(out, float(expected)))


def test_field_credit_gives_each_completion_its_own_rows_terms_and_ignores_padding(tokenizer) -> None:
    ids = tokenizer(ANSWER)["input_ids"]
    short = tokenizer('{"diagnosis": "nv"}')["input_ids"]
    width = len(ids)
    completion = torch.zeros((2, width), dtype=torch.long)
    mask = torch.zeros((2, width), dtype=torch.long)
    completion[0], mask[0] = torch.tensor(ids), 1
    completion[1, : len(short)], mask[1, : len(short)] = torch.tensor(short), 1
    rewards = torch.rand(4, 4, generator=torch.Generator().manual_seed(1))
    per_term = term_advantages(rewards, WEIGHTS, 4, "group")[2:4]
    out = field_credit_advantages(per_term, NAMES, completion, mask, tokenizer)
    assert out.shape == (2, width)
    assert set(out[0].tolist()) == set(per_term[0].tolist()) | {float(per_term[0].sum())}
    padding = out[1, len(short) :]
    torch.testing.assert_close(padding, torch.full_like(padding, float(per_term[1].sum())))


def _labels(tokenizer, prompt: str, answers: list[str]) -> tuple[torch.Tensor, list[list[int]]]:
    """SFT-style labels: prompt and padding -100, each answer's ids after the prompt."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = [tokenizer(answer)["input_ids"] for answer in answers]
    width = len(prompt_ids) + max(len(ids) for ids in answer_ids) + 3
    labels = torch.full((len(answers), width), -100, dtype=torch.long)
    for i, ids in enumerate(answer_ids):
        labels[i, len(prompt_ids) : len(prompt_ids) + len(ids)] = torch.tensor(ids)
    return labels, answer_ids


def test_sft_loss_weights_fall_on_the_weighted_fields_value_tokens_only(tokenizer) -> None:
    labels, (ids,) = _labels(tokenizer, "Describe the lesion.", [ANSWER])
    weights = field_loss_weights(labels, {"diagnosis": 10.0, "bbox_2d": 2.0}, tokenizer)
    assert weights.shape == labels.shape
    answer = labels[0] != -100
    assert torch.all(weights[0, ~answer] == 1.0)  # prompt and padding untouched
    ends = token_char_ends(tokenizer, ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    starts = [0, *ends[:-1]]
    pieces = {10.0: "", 2.0: "", 1.0: ""}
    for weight, start, end in zip(weights[0, answer].tolist(), starts, ends, strict=True):
        pieces[weight] += text[start:end]
    assert "mel" in pieces[10.0] and "mel" not in pieces[1.0] + pieces[2.0]
    assert "61, 40, 170, 130" in pieces[2.0].replace("[", "").replace("]", "")
    # Keys, the location and the polygon keep weight 1.
    assert '"diagnosis"' in pieces[1.0] and "center-center" in pieces[1.0] and "100, 40" in pieces[1.0]


def test_sft_loss_weights_leave_rows_without_the_field_or_an_answer_at_one(tokenizer) -> None:
    answers = ['{"location": "center-center"}', "no json here", '{"diagnosis": "nv"}']
    labels, _ = _labels(tokenizer, "Q", answers)
    weights = field_loss_weights(labels, {"diagnosis": 5.0}, tokenizer)
    assert torch.all(weights[:2] == 1.0)
    assert weights[2].max() == 5.0
    assert torch.all(field_loss_weights(labels, {}, tokenizer) == 1.0)
