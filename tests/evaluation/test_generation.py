"""Batched greedy answers do not depend on left padding; prediction records are in original pixels."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from skinderm.answers import parse_answer
from skinderm.conversations import ExampleBuilder
from skinderm.coordinates import box_to_model_space, model_input_size
from skinderm.evaluation.generation import (
    LazyImages,
    answer_in_original_space,
    generate_answers,
    prediction_record,
    prompt_text,
)
from skinderm.evaluation.metrics import compute_metrics
from skinderm.rewards import bbox_iou_reward, diagnosis_reward
from tests.answer_holes import HOLE_COMPLETION_EXAMPLES, HOLE_COMPLETIONS, true_answers

PROMPT = "Look at this dermoscopy image. Answer in JSON."
BUILDER = ExampleBuilder(fields=("diagnosis", "location", "bbox_2d"), min_pixels=3136, max_pixels=40_000)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """(model, processor) of the tiny random Qwen2.5-VL, built once for this module."""
    import torch

    from skinderm.models.loading import load_model_and_processor
    from skinderm.models.tiny import ensure_tiny_model

    torch.set_num_threads(1)
    folder = ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    return load_model_and_processor(
        {"name": "tiny", "name_or_path": str(folder), "min_pixels": 3136, "max_pixels": 40_000}
    )


def _noise_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_batched_greedy_answers_equal_one_image_at_a_time_under_left_padding(tiny) -> None:
    model, processor = tiny
    # Different sizes -> different numbers of image tokens -> rows of a batch are left-padded.
    images = _noise_images([(224, 168), (112, 84), (168, 224), (56, 56), (224, 168), (140, 112)])
    lengths = {
        processor(text=[prompt_text(processor, PROMPT)], images=[image], return_tensors="pt")[
            "input_ids"
        ].shape[1]
        for image in images
    }
    assert len(lengths) >= 4, "the images must give prompts of different lengths"

    batched = generate_answers(
        model, processor, images, PROMPT, batch_size=6, max_new_tokens=12, min_new_tokens=12
    )
    in_pairs = generate_answers(
        model, processor, images, PROMPT, batch_size=4, max_new_tokens=12, min_new_tokens=12
    )
    single = generate_answers(
        model, processor, images, PROMPT, batch_size=1, max_new_tokens=12, min_new_tokens=12
    )

    assert batched == single == in_pairs
    assert all(answer for answer in single), "min_new_tokens forces a non-empty answer"


def test_generation_rejects_an_empty_batch_size(tiny) -> None:
    model, processor = tiny
    with pytest.raises(ValueError, match="batch_size=0"):
        generate_answers(model, processor, _noise_images([(56, 56)]), PROMPT, batch_size=0)


def test_lazy_images_decode_only_what_is_asked() -> None:
    loaded: list[int] = []

    def load(item: int) -> Image.Image:
        loaded.append(item)
        return Image.new("RGB", (4, 4))

    images = LazyImages(list(range(10)), load)
    assert len(images) == 10 and loaded == []
    assert len(images[3:6]) == 3 and loaded == [3, 4, 5]
    images[9]
    assert loaded == [3, 4, 5, 9]


def _record(tmp_path: Path, *, with_mask: bool) -> dict:
    """A 600x450 record whose lesion is the rectangle x 100..299, y 50..199 (exclusive ends 300, 200)."""
    mask = np.zeros((450, 600), dtype=np.uint8)
    mask[50:200, 100:300] = 255
    mask_path = tmp_path / "ISIC_0000001_segmentation.png"
    cv2.imwrite(str(mask_path), mask)
    return {
        "image_id": "ISIC_0000001",
        "lesion_id": "HAM_0000001",
        "dx": "mel",
        "image_width": 600,
        "image_height": 450,
        "bbox": [100, 50, 300, 200],
        "location": "top-left",
        "mask_available": with_mask,
        "mask_path_abs": str(mask_path) if with_mask else None,
        "sex": "female",
        "age": 55.0,
        "localization": "back",
    }


def test_prediction_record_maps_the_box_to_original_pixels_and_scores_the_mask(tmp_path: Path) -> None:
    record = _record(tmp_path, with_mask=True)
    model_size = BUILDER.model_size(record)
    assert model_size == (224, 168)
    box = box_to_model_space([100, 50, 300, 200], (600, 450), model_size)
    completion = json.dumps({"diagnosis": "mel", "location": "top-left", "bbox_2d": box})

    prediction = prediction_record(record, completion, BUILDER)

    assert prediction["dx_pred"] == "mel" and prediction["parse_ok"] is True
    assert prediction["location_pred"] == prediction["location_true"] == "top-left"
    # Model-space rounding moves each edge by at most half a model pixel (600/224 = 2.7 original px).
    assert np.allclose(prediction["bbox_pred"], [100, 50, 300, 200], atol=600 / 224)
    assert prediction["iou"] > 0.95
    assert prediction["mask_iou"] > 0.95  # the box is the whole (rectangular) mask, in model space
    assert prediction["bbox_true"] == [100, 50, 300, 200]
    assert prediction["polygon_pred"] is None


def test_prediction_record_of_a_wrong_box_has_low_mask_iou_and_none_without_a_mask(tmp_path: Path) -> None:
    completion = json.dumps({"diagnosis": "nv", "bbox_2d": [150, 120, 220, 165]})
    with_mask = prediction_record(_record(tmp_path, with_mask=True), completion, BUILDER)
    without_mask = prediction_record(_record(tmp_path, with_mask=False), completion, BUILDER)
    assert with_mask["mask_iou"] == 0.0 and with_mask["iou"] == 0.0
    assert without_mask["mask_iou"] is None
    assert without_mask["dx_pred"] == "nv" and without_mask["dx_true"] == "mel"


def test_unparsable_output_is_a_record_with_nothing_predicted(tmp_path: Path) -> None:
    prediction = prediction_record(_record(tmp_path, with_mask=True), "I am not sure.", BUILDER)
    assert prediction["parse_ok"] is False
    assert prediction["dx_pred"] is None and prediction["bbox_pred"] is None
    assert prediction["iou"] == 0.0 and prediction["mask_iou"] == 0.0


def test_answer_polygon_is_mapped_back_to_original_pixels() -> None:
    model_size = model_input_size(600, 450, min_pixels=3136, max_pixels=40_000)
    parsed = parse_answer(json.dumps({"diagnosis": "bcc", "polygon": [[0, 0], [224, 0], [112, 168]]}))
    bbox, polygon = answer_in_original_space(parsed, model_size, (600, 450))
    assert bbox is None
    assert polygon == [[0.0, 0.0], [600.0, 0.0], [300.0, 450.0]]


# --- evaluation counts what the reward counts (hole classes: tests/answer_holes.py) ---------------

# 448x336 shrinks to exactly half (224x168) under the tiny model's budget, so model-space answers map
# back to original pixels without rounding and box IoU can be compared with the reward's exactly.
MODEL_TRUTH = [40, 20, 120, 80]


def _exact_record(dx: str) -> dict:
    return {
        "image_id": "ISIC_0000002",
        "lesion_id": "HAM_0000002",
        "dx": dx,
        "image_width": 448,
        "image_height": 336,
        "bbox": [2 * v for v in MODEL_TRUTH],
        "location": "top-left",
        "mask_available": False,
        "mask_path_abs": None,
        "sex": "male",
        "age": 40.0,
        "localization": "back",
    }


def _scored(completion: str, dx: str) -> tuple[float, dict, dict]:
    """(diagnosis reward, prediction record, metrics of that one record) for one completion."""
    prediction = prediction_record(_exact_record(dx), completion, BUILDER)
    return diagnosis_reward([completion], dx=[dx])[0], prediction, compute_metrics([prediction])


def test_the_exact_record_is_half_size_in_model_space() -> None:
    assert BUILDER.model_size(_exact_record("mel")) == (224, 168)


@pytest.mark.parametrize("hole", sorted(HOLE_COMPLETION_EXAMPLES))
def test_written_out_hole_examples_count_as_wrong_in_evaluation(hole: str) -> None:
    completions = HOLE_COMPLETION_EXAMPLES[hole]
    predictions = [prediction_record(_exact_record("mel"), text, BUILDER) for text in completions]
    metrics = compute_metrics(predictions)
    assert [p["dx_pred"] for p in predictions] == [None] * len(completions)
    assert metrics["accuracy"] == 0.0 and metrics["n_unparsed"] == len(completions)
    assert diagnosis_reward(list(completions), dx=["mel"] * len(completions)) == [0.0] * len(completions)


@pytest.mark.parametrize("hole", sorted(HOLE_COMPLETIONS))
def test_every_hole_class_scores_zero_in_the_reward_and_counts_wrong_in_evaluation(hole: str) -> None:
    @settings(max_examples=60, deadline=None)
    @given(HOLE_COMPLETIONS[hole])
    def check(pair: tuple[str, str]) -> None:
        completion, dx = pair
        reward, prediction, metrics = _scored(completion, dx)
        assert reward == 0.0
        assert prediction["dx_pred"] is None
        assert metrics["accuracy"] == 0.0 and metrics["balanced_accuracy"] == 0.0
        assert metrics["confusion_matrix"][metrics["confusion_labels"].index(dx)][-1] == 1  # "unparsed"

    check()


@settings(max_examples=100, deadline=None)
@given(true_answers)
def test_a_true_single_class_answer_earns_the_reward_and_counts_right(pair: tuple[str, str]) -> None:
    completion, dx = pair
    reward, prediction, metrics = _scored(completion, dx)
    assert reward == 1.0 and prediction["dx_pred"] == dx and metrics["accuracy"] == 1.0


model_coordinate = st.integers(-40, 260)


@settings(max_examples=200, deadline=None)
@given(box=st.tuples(model_coordinate, model_coordinate, model_coordinate, model_coordinate))
def test_box_iou_in_evaluation_equals_the_box_reward_inverted_and_degenerate_boxes_included(
    box: tuple[int, int, int, int],
) -> None:
    completion = json.dumps({"diagnosis": "mel", "bbox_2d": list(box)})
    reward = bbox_iou_reward([completion], bbox_2d=[MODEL_TRUTH], model_width=[224], model_height=[168])[0]
    prediction = prediction_record(_exact_record("mel"), completion, BUILDER)
    assert prediction["iou"] == pytest.approx(reward, abs=1e-12)
    metrics = compute_metrics([prediction])["bbox"]
    assert metrics["mean_iou"] == pytest.approx(reward, abs=1e-12)
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:  # invalid: no box in the record, IoU 0, as the reward pays 0
        assert reward == 0.0 and prediction["bbox_pred"] is None and metrics["n_missing_pred"] == 1
