"""The image-only processor: like Qwen2_5_VLProcessor for images; saves and loads without torchvision."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

from skinderm.coordinates import model_input_size
from skinderm.models.processor import (
    ImageOnlyQwen2_5_VLProcessor,
    load_processor,
    set_pixel_limits,
    torchvision_available,
)
from skinderm.models.tiny import ensure_tiny_model

PROMPT = "Look at this dermoscopy image."

# processor_config.json as the full Qwen2_5_VLProcessor (transformers 5.24, torchvision 0.26, on a GPU
# machine) saved the tiny model's processor after loading it with AutoProcessor.
REAL_PROCESSOR_CONFIG = {
    "image_processor": {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "merge_size": 2,
        "patch_size": 14,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 40000, "shortest_edge": 3136},
        "temporal_patch_size": 2,
    },
    "processor_class": "Qwen2_5_VLProcessor",
    "video_processor": {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "do_sample_frames": False,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "max_frames": 768,
        "max_video_tokens": 128000,
        "merge_size": 2,
        "min_frames": 4,
        "patch_size": 14,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "return_metadata": False,
        "size": {"longest_edge": 602112, "shortest_edge": 100352},
        "temporal_patch_size": 2,
        "video_processor_type": "Qwen2VLVideoProcessor",
    },
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="module")
def processor(tiny_dir: Path) -> ImageOnlyQwen2_5_VLProcessor:
    return load_processor(tiny_dir, min_pixels=3136, max_pixels=40_000, local_files_only=True)


def image(width: int, height: int) -> Image.Image:
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(width))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def prompt_text(processor) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.skipif(
    torchvision_available(), reason="AutoProcessor builds the full processor with torchvision"
)
def test_without_torchvision_the_image_only_class_is_used(processor):
    assert type(processor) is ImageOnlyQwen2_5_VLProcessor
    assert isinstance(processor, Qwen2_5_VLProcessor) and isinstance(processor, ProcessorMixin)
    assert ImageOnlyQwen2_5_VLProcessor.get_attributes() == ["image_processor", "tokenizer"]
    assert not hasattr(processor, "video_processor")
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"


def test_processor_carries_what_trl_reads(processor):
    # SFTTrainer/GRPOTrainer read .tokenizer, .image_processor(.merge_size), image_token(_id),
    # apply_chat_template, batch_decode and the pad/eos tokens.
    assert processor.tokenizer.pad_token == "<|endoftext|>"
    assert processor.image_token == "<|image_pad|>"
    assert processor.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert processor.image_processor.merge_size == 2
    assert processor.tokenizer.padding_side == "left"
    assert processor.chat_template == processor.tokenizer.chat_template
    assert {"input_ids", "pixel_values", "image_grid_thw"} <= set(processor.model_input_names)


def test_pixel_limits_decide_the_grid_like_model_input_size(processor):
    picture = image(600, 450)
    for max_pixels in (40_000, 224 * 168, 200_704):
        set_pixel_limits(processor, min_pixels=3136, max_pixels=max_pixels)
        grid = processor(text=[prompt_text(processor)], images=[picture])["image_grid_thw"][0]
        width, height = model_input_size(600, 450, min_pixels=3136, max_pixels=max_pixels)
        assert [int(v) for v in grid] == [1, height // 14, width // 14]
    set_pixel_limits(processor, min_pixels=3136, max_pixels=40_000)
    with pytest.raises(ValueError, match="min_pixels"):
        set_pixel_limits(processor, min_pixels=0, max_pixels=40_000)


@pytest.mark.parametrize(
    ("original", "max_pixels"),
    [((2650, 50), 40_000), ((50, 9000), 40_000), ((9000, 50), 200_704), ((600, 450), 40_000)],
)
def test_the_processor_keeps_a_pre_resized_image_as_it_is(processor, original, max_pixels):
    """Extreme aspect ratios included: the grid is the model_input_size the boxes were scaled into."""
    set_pixel_limits(processor, min_pixels=3136, max_pixels=max_pixels)
    try:
        width, height = model_input_size(*original, min_pixels=3136, max_pixels=max_pixels)
        grid = processor(text=[prompt_text(processor)], images=[image(width, height)])["image_grid_thw"][0]
    finally:
        set_pixel_limits(processor, min_pixels=3136, max_pixels=40_000)
    assert [int(v) for v in grid] == [1, height // 14, width // 14]


def test_a_budget_that_cannot_be_honoured_is_refused(processor):
    for low, high in ((40_000, 40_000), (39_300, 39_500), (50_000, 40_000)):
        with pytest.raises(ValueError, match=r"model\.min_pixels"):
            set_pixel_limits(processor, min_pixels=low, max_pixels=high)
    assert processor.image_processor.size.longest_edge == 40_000


def test_batch_of_two_images_expands_each_placeholder_by_its_own_grid(processor):
    texts = [prompt_text(processor)] * 2
    batch = processor(
        text=texts, images=[image(224, 168), image(112, 112)], padding=True, return_tensors="pt"
    )
    counts = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert counts == [48, 16]
    assert batch["pixel_values"].shape[0] == 4 * (48 + 16)
    assert batch["attention_mask"][1, 0] == 0  # left padding by default


def test_a_mismatched_image_count_is_refused(processor):
    with pytest.raises(ValueError, match="image"):
        processor(text=[prompt_text(processor)], images=[image(224, 168), image(224, 168)])


def test_videos_are_refused_with_a_clear_error(processor):
    if torchvision_available():
        pytest.skip("the full processor handles videos")
    with pytest.raises(ValueError, match="torchvision"):
        processor(text=["<|vision_start|><|video_pad|><|vision_end|>"], videos=[[image(56, 56)] * 2])


def test_saved_processor_loads_back_with_identical_outputs(processor, tmp_path: Path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"
    assert "video_processor" in saved
    reloaded = load_processor(tmp_path, min_pixels=3136, max_pixels=40_000, local_files_only=True)
    text, picture = [prompt_text(processor)], [image(600, 450)]
    original, again = processor(text=text, images=picture), reloaded(text=text, images=picture)
    assert original["input_ids"] == again["input_ids"]
    assert (original["pixel_values"] == again["pixel_values"]).all()
    assert reloaded.chat_template == processor.chat_template


def test_saved_config_is_what_the_full_processor_saves(tiny_dir: Path):
    assert json.loads((tiny_dir / "processor_config.json").read_text()) == REAL_PROCESSOR_CONFIG


def test_push_to_hub_is_refused(processor, tmp_path: Path):
    with pytest.raises(ValueError, match="locally"):
        processor.save_pretrained(tmp_path, push_to_hub=True)


def test_hub_style_folder_with_legacy_preprocessor_config_loads(processor, tmp_path: Path):
    """Released Qwen2.5-VL repos: preprocessor_config.json and chat_template.json, no processor_config."""
    processor.tokenizer.save_pretrained(tmp_path)
    image_config = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "rescale_factor": 0.00392156862745098,
        "resample": 3,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(image_config))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": processor.chat_template}))
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    loaded = load_processor(tmp_path, min_pixels=3136, max_pixels=40_000, local_files_only=True)
    assert loaded.chat_template == processor.chat_template
    grid = loaded(text=[prompt_text(loaded)], images=[image(600, 450)])["image_grid_thw"][0]
    assert [int(v) for v in grid] == [1, 12, 16]  # the configured budget wins over the folder's
