"""Batched greedy generation and the prediction records built from it.

One code path for the post-training check, `skinderm.evaluate` and `skinderm.predict`: answers are parsed by
the same parser the rewards use, and boxes are mapped back from model space to original image pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from skinderm.answers import answer_to_dict, parse_answer
from skinderm.data.conversations import ExampleBuilder, prompt_messages
from skinderm.evaluation.metrics import box_iou
from skinderm.models.coordinates import box_to_original_space


@torch.inference_mode()
def generate_answers(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    prompt: str,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    desc: str = "generate",
) -> list[str]:
    """Greedy answers for each image, generated `batch_size` at a time with left padding."""
    text = processor.apply_chat_template(prompt_messages(prompt), tokenize=False, add_generation_prompt=True)
    tokenizer = getattr(processor, "tokenizer", processor)
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", mininterval=2.0):
            batch = list(images[start : start + batch_size])
            inputs = processor(
                text=[text] * len(batch), images=batch, padding=True, padding_side="left", return_tensors="pt"
            ).to(model.device)
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return answers


def prediction_record(record: Mapping[str, Any], completion: str, builder: ExampleBuilder) -> dict[str, Any]:
    """One line of predictions.jsonl: truth, parsed answer, boxes in ORIGINAL pixels, IoU."""
    parsed = parse_answer(completion)
    original_size = (int(record["image_width"]), int(record["image_height"]))
    model_size = builder.model_size(record)
    bbox_pred = (
        [
            round(float(value), 1)
            for value in box_to_original_space(list(parsed.bbox_2d), model_size, original_size)
        ]
        if parsed.bbox_2d is not None
        else None
    )
    bbox_true = list(record["bbox"]) if record.get("bbox") is not None else None
    return {
        "image_id": record["image_id"],
        "lesion_id": record["lesion_id"],
        "dx_true": record["dx"],
        "dx_pred": parsed.diagnosis,
        "location_true": record.get("location"),
        "location_pred": parsed.location,
        "bbox_true": bbox_true,
        "bbox_pred": bbox_pred,
        "iou": box_iou(bbox_true, bbox_pred) if bbox_true is not None else None,
        "parse_ok": parsed.parse_ok,
        "answer": answer_to_dict(parsed),
        "completion": completion,
        "sex": record.get("sex"),
        "age": record.get("age"),
        "localization": record.get("localization"),
    }
