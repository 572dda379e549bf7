"""Batched greedy generation and the prediction records built from it.

One code path for the post-training check, `skinderm.evaluate` and `skinderm.predict`: answers are parsed by
the same parser the rewards use, and boxes are mapped back from model space to original image pixels. So a
record's `dx_pred` is None exactly where the diagnosis reward pays 0 for lack of one class, and `bbox_pred`
is None where the parser voided an inverted or zero-area box (skinderm.geometry: IoU 0, as in the reward).

Batches are left-padded (the processor is loaded with padding_side="left"), so every row's answer starts
right after its own prompt; in float32, greedy decoding then gives the same answers at any batch size
(tested on CPU; 24/24 on an H200). In bfloat16 the padded batch shapes change rounding, and a near-tie
between two tokens can flip (21/24 identical on the H200 with the random tiny model), so compare
bf16 runs at one batch size.
Images are decoded batch by batch (`LazyImages`), so a 10,000-image split never sits in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, overload

import torch
from PIL import Image
from tqdm.auto import tqdm

from skinderm.answers import ParsedAnswer, answer_to_dict, parse_answer
from skinderm.conversations import ExampleBuilder, prompt_messages
from skinderm.coordinates import box_to_original_space, points_to_original_space
from skinderm.geometry import box_iou


class LazyImages(Sequence[Image.Image]):
    """A sequence of images decoded on access (slices decode only their items)."""

    def __init__(self, items: Sequence[Any], load: Callable[[Any], Image.Image]) -> None:
        self._items = items
        self._load = load

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...
    @overload
    def __getitem__(self, index: slice) -> list[Image.Image]: ...
    def __getitem__(self, index: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(index, slice):
            return [self._load(item) for item in self._items[index]]
        return self._load(self._items[index])

    def __iter__(self) -> Iterator[Image.Image]:
        return (self._load(item) for item in self._items)


def prompt_text(processor: Any, prompt: str) -> str:
    """The chat-formatted prompt (user turn with the image placeholder + assistant header)."""
    return processor.apply_chat_template(prompt_messages(prompt), tokenize=False, add_generation_prompt=True)


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every end-of-answer id: the tokenizer's eos and the model's generation_config eos ids."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if configured is None else ([configured] if isinstance(configured, int) else list(configured))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def prepared_batches(
    processor: Any, images: Sequence[Image.Image], text: str, batch_size: int
) -> Iterator[tuple[int, Any]]:
    """(batch size, processor output) per batch, the next batch prepared in a thread while this one runs.

    Decoding images (a `LazyImages` reads JPEGs) and the processor's patching are CPU work that would
    otherwise stall generation once per batch; one batch of look-ahead hides it. Inputs are identical
    to preparing batches in turn, so results do not change.
    """

    def prepare(start: int) -> tuple[int, Any]:
        batch = list(images[start : start + batch_size])
        inputs = processor(
            text=[text] * len(batch), images=batch, padding=True, padding_side="left", return_tensors="pt"
        )
        return len(batch), inputs

    starts = list(range(0, len(images), batch_size))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-batch") as pool:
        pending = pool.submit(prepare, starts[0]) if starts else None
        for index in range(len(starts)):
            assert pending is not None
            ready = pending.result()
            pending = pool.submit(prepare, starts[index + 1]) if index + 1 < len(starts) else None
            yield ready


@torch.inference_mode()
def generate_answers(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    prompt: str,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    desc: str = "generate",
    progress_bar: bool = True,
) -> list[str]:
    """Greedy answers for each image, generated `batch_size` at a time with left padding.

    Pure greedy (no repetition penalty, whatever the checkpoint's generation_config suggests for chat):
    evaluation measures the model's most likely answer. `min_new_tokens` suppresses end-of-answer until
    that many tokens exist (benchmarks use it to generate a fixed number of tokens).
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size={batch_size}, max_new_tokens={max_new_tokens}: both must be >= 1")
    text = prompt_text(processor, prompt)
    tokenizer = getattr(processor, "tokenizer", processor)
    stop_ids = stop_token_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        with tqdm(
            total=len(images), desc=desc, unit="img", mininterval=2.0, disable=not progress_bar
        ) as progress:
            for count, inputs in prepared_batches(processor, images, text, batch_size):
                inputs = inputs.to(model.device)
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    repetition_penalty=1.0,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stop_ids,
                )
                new_tokens = output[:, inputs["input_ids"].shape[1] :]
                answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
                progress.update(count)
    finally:
        model.train(was_training)
    return answers


def answer_in_original_space(
    parsed: ParsedAnswer, model_size: tuple[int, int], original_size: tuple[int, int]
) -> tuple[list[float] | None, list[list[float]] | None]:
    """(bbox, polygon) of an answer in original pixels (1 decimal); None where the answer has none.

    The parser keeps only valid boxes, so none is repaired here; a box outside the image comes back
    clamped to zero area, which scores IoU 0 as the reward's clipped box does."""
    bbox = (
        [round(float(v), 1) for v in box_to_original_space(list(parsed.bbox_2d), model_size, original_size)]
        if parsed.bbox_2d is not None
        else None
    )
    polygon = (
        [
            [round(float(x), 1), round(float(y), 1)]
            for x, y in points_to_original_space([list(p) for p in parsed.polygon], model_size, original_size)
        ]
        if parsed.polygon is not None and len(parsed.polygon) >= 3
        else None
    )
    return bbox, polygon


def _mask_iou(record: Mapping[str, Any], parsed: ParsedAnswer, model_size: tuple[int, int]) -> float | None:
    """IoU of the answer's polygon (else box) with the true mask, in model space; None without a mask."""
    mask_path = record.get("mask_path_abs")
    if not record.get("mask_available") or not isinstance(mask_path, str) or not mask_path:
        return None
    from skinderm.rewards.iou import answer_mask_iou, load_mask

    # The uncached loader: evaluation reads each mask once, the reward cache would only hold memory.
    truth = load_mask.__wrapped__(mask_path, model_size[0], model_size[1])
    return None if truth is None else float(answer_mask_iou(parsed, truth))


def _outline_iou(
    record: Mapping[str, Any], parsed: ParsedAnswer, model_size: tuple[int, int], builder: ExampleBuilder
) -> float | None:
    """The outline reward's IoU (polygon vs the lesion's outline, 0 without a polygon), so evaluation
    counts what GRPO pays; None without a mask, or when the run was not taught outlines."""
    mask_path = record.get("mask_path_abs")
    if "polygon" not in builder.fields or not record.get("mask_available") or not isinstance(mask_path, str):
        return None
    from skinderm.rewards.iou import load_outline_truth, outline_iou

    truth = load_outline_truth.__wrapped__(mask_path, model_size[0], model_size[1])
    return None if truth is None else float(outline_iou(parsed, truth))


def prediction_record(record: Mapping[str, Any], completion: str, builder: ExampleBuilder) -> dict[str, Any]:
    """One line of predictions.jsonl: truth, parsed answer, boxes in ORIGINAL pixels, box and mask IoU."""
    parsed = parse_answer(completion)
    original_size = (int(record["image_width"]), int(record["image_height"]))
    model_size = builder.model_size(record)
    bbox_pred, polygon_pred = answer_in_original_space(parsed, model_size, original_size)
    bbox = record.get("bbox")
    bbox_true = list(bbox) if isinstance(bbox, Sequence) and not isinstance(bbox, str) else None
    location = record.get("location")
    return {
        "image_id": record["image_id"],
        "lesion_id": record["lesion_id"],
        "dx_true": record["dx"],
        "dx_pred": parsed.diagnosis,
        "location_true": location if isinstance(location, str) else None,
        "location_pred": parsed.location,
        "bbox_true": bbox_true,
        "bbox_pred": bbox_pred,
        "polygon_pred": polygon_pred,
        "iou": box_iou(bbox_true, bbox_pred) if bbox_true is not None else None,
        "mask_iou": _mask_iou(record, parsed, model_size),
        "outline_iou": _outline_iou(record, parsed, model_size, builder),
        "parse_ok": parsed.parse_ok,
        "answer": answer_to_dict(parsed),
        "completion": completion,
        "sex": record.get("sex"),
        "age": record.get("age"),
        "localization": record.get("localization"),
        **({"score_weight": record["score_weight"]} if "score_weight" in record else {}),  # ISIC 2018 test
    }
