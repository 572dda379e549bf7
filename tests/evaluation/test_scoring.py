"""Class scoring: one probability per diagnosis from the model's likelihood of each answer opening."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from skinderm.data.classes import CLASS_CODES
from skinderm.evaluation.calibration import compute_calibration
from skinderm.evaluation.generation import prompt_text
from skinderm.evaluation.report import build_metrics
from skinderm.evaluation.scoring import (
    candidate_log_likelihoods,
    class_probabilities,
    diagnosis_openings,
    top_class,
)

PROMPT = "Look at this dermoscopy image. Answer in JSON."
FIELDS = ("diagnosis", "location", "bbox_2d")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from skinderm.models.loading import load_model_and_processor
    from skinderm.models.tiny import ensure_tiny_model

    torch.set_num_threads(1)
    folder = ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    return load_model_and_processor(
        {"name": "tiny", "name_or_path": str(folder), "min_pixels": 3136, "max_pixels": 40_000}
    )


def _images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (168, 224, 3), dtype=np.uint8)) for _ in range(count)]


def test_openings_are_the_start_of_the_taught_answer() -> None:
    openings = diagnosis_openings(FIELDS)
    assert list(openings) == list(CLASS_CODES)
    assert openings["mel"] == '{"diagnosis": "mel",'
    assert diagnosis_openings(("diagnosis",))["nv"] == '{"diagnosis": "nv"}'
    full = json.dumps({"diagnosis": "bcc", "location": "top-left"})
    assert full.startswith(openings["bcc"])


def test_scoring_needs_a_diagnosis_field() -> None:
    with pytest.raises(ValueError, match="no diagnosis"):
        diagnosis_openings(("location", "bbox_2d"))


def test_batched_candidate_scores_equal_scoring_each_candidate_alone(tiny) -> None:
    model, processor = tiny
    image = _images(1)[0]
    candidates = list(diagnosis_openings(FIELDS).values())
    batched = candidate_log_likelihoods(model, processor, image, PROMPT, candidates)

    tokenizer = processor.tokenizer
    inputs = processor(text=[prompt_text(processor, PROMPT)], images=[image], return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]
    for index, candidate in enumerate(candidates):
        ids = torch.tensor(tokenizer(candidate, add_special_tokens=False)["input_ids"])
        full = dict(inputs)
        full["input_ids"] = torch.cat([inputs["input_ids"][0], ids])[None]
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"][0], torch.zeros_like(ids)])[None]
        with torch.no_grad():
            log_probs = model(**full).logits[0].float().log_softmax(-1)
        alone = sum(float(log_probs[prompt_length - 1 + j, token]) for j, token in enumerate(ids))
        assert batched[index].item() == pytest.approx(alone, abs=1e-3)


def test_class_probabilities_are_a_distribution_over_the_seven_classes(tiny) -> None:
    model, processor = tiny
    probabilities = class_probabilities(model, processor, _images(3), PROMPT, fields=FIELDS)
    assert len(probabilities) == 3
    for probs in probabilities:
        assert list(probs) == list(CLASS_CODES)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9)
        assert all(0.0 < p < 1.0 for p in probs.values())
        assert top_class(probs) == max(probs, key=probs.get)


def test_scored_records_give_auroc_ece_and_a_calibration_block(tiny) -> None:
    model, processor = tiny
    images = _images(7)
    probabilities = class_probabilities(model, processor, images, PROMPT, fields=FIELDS)
    records = [
        {
            "image_id": f"ISIC_{i:07d}",
            "lesion_id": f"HAM_{i:07d}",
            "dx_true": CLASS_CODES[i],
            "dx_pred": top_class(probs),
            "parse_ok": True,
            "class_probs": probs,
        }
        for i, probs in enumerate(probabilities)
    ]
    calibration = compute_calibration(records)
    assert 0.0 <= calibration["macro_auroc_ovr"] <= 1.0
    assert 0.0 <= calibration["ece"] <= 1.0
    assert set(calibration["auroc_ovr"]) == set(CLASS_CODES)
    metrics = build_metrics(records, n_resamples=20, seed=0)
    assert metrics["calibration"]["macro_auroc_ovr"] == calibration["macro_auroc_ovr"]
    assert metrics["calibration"]["ece"] == calibration["ece"]
