"""Class probabilities from a generative model: how likely is each diagnosis as the start of its answer?

A generated answer names one class; ranking metrics (AUROC) and calibration (ECE, reliability) need a
probability per class. For each image we score the seven answer openings the model was taught,
`{"diagnosis": "<code>",` (or `...}` when the diagnosis is the only field), as continuations of the
prompt: the sum of their token log-probabilities under the model. A softmax over the seven sums gives
`class_probs`: the model's own distribution over diagnoses, restricted to well-formed answers.

The opening includes the delimiter after the code, so that codes that prefix each other cannot win by
being shorter, and so that the tokens scored are the ones the model saw in training (a JSON-dumped
answer tokenises `",` together). One forward pass per image scores all seven candidates: the prompt
and image are repeated seven times, candidates right-padded, and only the logits of the candidate
positions are computed (`logits_to_keep`), so the 150k-word vocabulary of a real Qwen2.5-VL costs
7 x (longest candidate) rows, not 7 x (prompt length).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from skinderm.answers import format_answer
from skinderm.data.classes import CLASS_CODES
from skinderm.evaluation.generation import prompt_text


def diagnosis_openings(fields: Sequence[str], labels: Sequence[str] = CLASS_CODES) -> dict[str, str]:
    """{code: the first characters of an answer naming that code}, in the format SFT teaches."""
    if "diagnosis" not in fields:
        raise ValueError(
            f"answer.fields={list(fields)} has no diagnosis: class scoring needs answers that start with one"
        )
    more_fields = len(fields) > 1
    openings = {}
    for code in labels:
        closed = format_answer(diagnosis=code, fields=("diagnosis",))  # {"diagnosis": "mel"}
        openings[code] = closed[:-1] + "," if more_fields else closed
    return openings


def _model_inputs(processor: Any, image: Image.Image, text: str) -> dict[str, torch.Tensor]:
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


@torch.inference_mode()
def candidate_log_likelihoods(
    model: Any, processor: Any, image: Image.Image, prompt: str, candidates: Sequence[str]
) -> torch.Tensor:
    """Sum of token log-probabilities of each candidate continuation of (image, prompt): shape (k,)."""
    if not candidates:
        raise ValueError("no candidate answers to score")
    tokenizer = getattr(processor, "tokenizer", processor)
    inputs = _model_inputs(processor, image, prompt_text(processor, prompt))
    prompt_ids = inputs["input_ids"][0]
    candidate_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in candidates]
    if any(len(ids) == 0 for ids in candidate_ids):
        raise ValueError(f"a candidate answer tokenises to nothing: {list(candidates)}")
    k, prompt_length = len(candidates), len(prompt_ids)
    longest = max(len(ids) for ids in candidate_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    input_ids = torch.full((k, prompt_length + longest), pad, dtype=prompt_ids.dtype)
    attention_mask = torch.zeros_like(input_ids)
    target_mask = torch.zeros((k, longest), dtype=torch.bool)
    input_ids[:, :prompt_length] = prompt_ids
    for row, ids in enumerate(candidate_ids):
        input_ids[row, prompt_length : prompt_length + len(ids)] = torch.tensor(ids, dtype=prompt_ids.dtype)
        attention_mask[row, : prompt_length + len(ids)] = 1
        target_mask[row, : len(ids)] = True

    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key, value in inputs.items():
        if key in ("input_ids", "attention_mask"):
            continue
        if key == "pixel_values":  # (patches of the one image, dim): the same patches for every row
            batch[key] = value.repeat(k, 1)
        elif isinstance(value, torch.Tensor) and value.shape[:1] == (1,):  # per-row tensors
            batch[key] = value.repeat(k, *([1] * (value.dim() - 1)))
        else:
            batch[key] = value
    if "mm_token_type_ids" in batch:  # per token: candidates are text
        types = torch.zeros_like(input_ids)
        types[:, :prompt_length] = inputs["mm_token_type_ids"][0]
        batch["mm_token_type_ids"] = types
    device = model.device
    batch = {
        key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()
    }

    # Logits at positions prompt_length-1 .. end-1 predict the candidate tokens.
    logits = model(**batch, logits_to_keep=longest + 1).logits[:, :-1].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    targets = input_ids[:, prompt_length:].to(device)
    token_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_log_probs * target_mask.to(device)).sum(dim=1).cpu()


def class_probabilities(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    prompt: str,
    *,
    fields: Sequence[str],
    labels: Sequence[str] = CLASS_CODES,
    desc: str = "class scores",
) -> list[dict[str, float]]:
    """{code: probability} per image (softmax over the log-likelihoods of the answer openings)."""
    openings = diagnosis_openings(fields, labels)
    was_training = model.training
    model.eval()
    results: list[dict[str, float]] = []
    try:
        for image in tqdm(images, desc=desc, unit="img", mininterval=2.0):
            scores = candidate_log_likelihoods(model, processor, image, prompt, list(openings.values()))
            probs = torch.softmax(scores.double(), dim=0).tolist()
            results.append(dict(zip(openings, probs, strict=True)))
    finally:
        model.train(was_training)
    return results


def top_class(class_probs: Mapping[str, float]) -> str:
    """The most probable class (first in label order on a tie)."""
    return max(class_probs, key=lambda code: class_probs[code])
