"""The tiny Qwen2.5-VL: built deterministically, loaded like a hub model, and able to train and generate."""

from __future__ import annotations

import hashlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
from PIL import Image

from skinderm.data.classes import CLASS_CODES, CLASS_NAMES
from skinderm.models.loading import (
    count_parameters,
    freeze_vision_tower,
    load_model_and_processor,
    resolve_model_source,
)
from skinderm.models.tiny import (
    IMAGE_PAD,
    PARAMS_FILE,
    SPECIAL_TOKENS,
    build_tiny_qwen2_5_vl,
    ensure_tiny_model,
    full_attention_blocks,
    mrope_section,
)

TINY_PARAMS = {
    "seed": 0,
    "text_hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "vision_hidden_size": 64,
    "vision_depth": 2,
    "vision_num_heads": 2,
    "vision_intermediate_size": 128,
    "vocab_size": 1024,
}
PROMPT = "Look at this dermoscopy image. Answer in JSON."


def tiny_model_cfg(folder: Path, **overrides) -> dict:
    """The `model` config group as conf/model/tiny.yaml composes it."""
    return {
        "name": "tiny",
        "name_or_path": str(folder),
        "revision": None,
        "trust_remote_code": False,
        "attn_implementation": "sdpa",
        "min_pixels": 3136,
        "max_pixels": 40_000,
        "freeze_vision_tower": False,
        "tiny": dict(TINY_PARAMS),
        **overrides,
    }


def lesion_image(width: int = 600, height: int = 450, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def user_turn(text: str = PROMPT) -> dict:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models") / "tiny_qwen2_5_vl_seed0"


@pytest.fixture(scope="module")
def loaded(tiny_dir: Path):
    """Built on demand and loaded through the same path a hub model takes."""
    return load_model_and_processor(tiny_model_cfg(tiny_dir))


def test_same_seed_gives_the_same_weights_and_tokenizer(tmp_path: Path):
    first = build_tiny_qwen2_5_vl(tmp_path / "a", seed=0)
    second = build_tiny_qwen2_5_vl(tmp_path / "b", seed=0)
    other = build_tiny_qwen2_5_vl(tmp_path / "c", seed=1)
    assert file_sha256(first / "model.safetensors") == file_sha256(second / "model.safetensors")
    assert file_sha256(first / "tokenizer.json") == file_sha256(second / "tokenizer.json")
    assert file_sha256(first / "model.safetensors") != file_sha256(other / "model.safetensors")


def test_building_leaves_the_callers_torch_rng_alone(tmp_path: Path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_qwen2_5_vl(tmp_path / "tiny", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_folder_has_hub_layout_with_safetensors_and_no_pickles(loaded, tiny_dir: Path):
    names = {path.name for path in tiny_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert {"tokenizer_config.json", "chat_template.jinja", "processor_config.json", PARAMS_FILE} <= names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)
    processor_config = json.loads((tiny_dir / "processor_config.json").read_text())
    # Loadable by AutoProcessor where torchvision exists: the standard class and a video processor entry.
    assert processor_config["processor_class"] == "Qwen2_5_VLProcessor"
    assert processor_config["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert processor_config["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessor"
    tokenizer_config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["processor_class"] == "Qwen2_5_VLProcessor"


def test_config_token_ids_are_the_tokenizers_ids(loaded):
    model, processor = loaded
    tokenizer = processor.tokenizer
    config = model.config
    assert (
        config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") == processor.image_token_id
    )
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert config.get_text_config().eos_token_id == tokenizer.eos_token_id
    assert config.get_text_config().pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.eos_token_id in model.generation_config.eos_token_id
    assert all(
        tokenizer.convert_tokens_to_ids(token) < config.get_text_config().vocab_size
        for token in SPECIAL_TOKENS
    )


def test_architecture_follows_qwen2_5_vl_rules(loaded):
    model, _ = loaded
    text, vision = model.config.get_text_config(), model.config.vision_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert vision.out_hidden_size == text.hidden_size
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    assert mrope_section(128) == [16, 24, 24]  # the released models' split
    assert full_attention_blocks(32) == [7, 15, 23, 31] and full_attention_blocks(2) == [1]
    assert 300_000 < count_parameters(model)["total"] < 2_000_000


def test_tokenizer_round_trips_any_text_and_knows_the_answer_words(loaded):
    _, processor = loaded
    tokenizer = processor.tokenizer
    text = 'Ünïcode ✓ 😀 {"diagnosis": "mel", "bbox_2d": [12, 345, 600, 450]}\n\ttabs'
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    for code in CLASS_CODES:
        assert len(tokenizer(code)["input_ids"]) <= 2
        assert len(tokenizer(" " + CLASS_NAMES[code])["input_ids"]) <= 6


def test_processor_gives_48_image_tokens_for_a_224x168_image(loaded):
    _, processor = loaded
    image = lesion_image(224, 168)
    text = processor.apply_chat_template([user_turn()], tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 48
    assert batch["image_grid_thw"].tolist() == [[1, 12, 16]]
    assert tuple(batch["pixel_values"].shape) == (12 * 16, 3 * 2 * 14 * 14)
    # The expansion is exactly the reference one: each placeholder becomes grid_h*grid_w/4 pad tokens.
    expanded = text.replace(IMAGE_PAD, IMAGE_PAD * 48)
    assert batch["input_ids"][0].tolist() == processor.tokenizer(expanded)["input_ids"]
    direct = processor.image_processor(images=[image], return_tensors="pt")
    assert torch.equal(batch["pixel_values"], direct["pixel_values"])
    assert batch["mm_token_type_ids"][0].tolist() == [
        int(token == processor.image_token_id) for token in batch["input_ids"][0].tolist()
    ]


def test_processor_resizes_a_600x450_image_to_224x168(loaded):
    _, processor = loaded
    text = processor.apply_chat_template([user_turn()], tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[lesion_image(600, 450)], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 12, 16]]


def test_chat_template_renders_image_turn_and_answer_ending_with_im_end(loaded):
    _, processor = loaded
    answer = '{"diagnosis": "mel", "location": "center-center"}'
    messages = [user_turn(), {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    rendered = processor.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{PROMPT}<|im_end|>\n"
        f"<|im_start|>assistant\n{answer}<|im_end|>\n"
    )
    with_pixels = [
        {
            "role": "user",
            "content": [{"type": "image", "image": lesion_image(224, 168)}, messages[0]["content"][1]],
        },
        messages[1],
    ]
    tokenized = processor.apply_chat_template(
        [with_pixels], tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert int((tokenized["input_ids"] == processor.image_token_id).sum()) == 48


def test_forward_with_labels_gives_a_finite_loss_and_gradients(loaded):
    model, processor = loaded
    messages = [
        user_turn(),
        {"role": "assistant", "content": [{"type": "text", "text": '{"diagnosis": "nv"}'}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = processor(text=[text], images=[lesion_image(224, 168)], return_tensors="pt")
    model.train()
    output = model(**batch, labels=batch["input_ids"].clone())
    assert torch.isfinite(output.loss)
    output.loss.backward()
    vision_grad = next(p.grad for n, p in model.named_parameters() if "visual" in n and p.grad is not None)
    assert vision_grad is not None and torch.isfinite(vision_grad).all()
    model.zero_grad(set_to_none=True)
    model.eval()


def test_batched_left_padded_generation_matches_one_by_one(loaded):
    model, processor = loaded
    assert processor.tokenizer.padding_side == "left"
    prompts = [
        processor.apply_chat_template([user_turn(text)], tokenize=False, add_generation_prompt=True)
        for text in (PROMPT, "Which of the seven classes is this lesion? Answer in JSON with the diagnosis.")
    ]
    images = [lesion_image(224, 168, seed=1), lesion_image(300, 200, seed=2)]
    batch = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # left padding
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
        prompt_length = batch["input_ids"].shape[1]
        assert generated.shape[0] == 2 and prompt_length < generated.shape[1] <= prompt_length + 4
        for row, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
            alone = processor(text=[prompt], images=[image], return_tensors="pt")
            alone_new = model.generate(**alone, max_new_tokens=4, do_sample=False)[
                0, alone["input_ids"].shape[1] :
            ]
            # A row that stops early is filled with pad tokens while the other finishes.
            assert generated[row, prompt_length:].tolist()[: len(alone_new)] == alone_new.tolist()
    assert all(isinstance(text, str) for text in processor.batch_decode(generated[:, prompt_length:]))


def test_freeze_vision_tower_freezes_exactly_the_vision_parameters(tiny_dir: Path, loaded):
    model, _ = load_model_and_processor(tiny_model_cfg(tiny_dir))
    vision_values = sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.visual."))
    before = count_parameters(model)
    assert before["trainable"] == before["total"]
    assert freeze_vision_tower(model) == vision_values
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (not name.startswith("model.visual.")), name
    assert any(name.startswith("model.visual.merger.") for name, _ in model.named_parameters())
    assert count_parameters(model) == {"total": before["total"], "trainable": before["total"] - vision_values}
    assert freeze_vision_tower(model) == 0  # idempotent


def test_ensure_tiny_model_reuses_a_matching_folder_and_rebuilds_on_new_params(tmp_path: Path):
    folder = tmp_path / "tiny"
    ensure_tiny_model(folder, seed=0)
    weights = folder / "model.safetensors"
    first_hash, first_mtime = file_sha256(weights), weights.stat().st_mtime_ns
    ensure_tiny_model(folder, seed=0)
    assert weights.stat().st_mtime_ns == first_mtime
    ensure_tiny_model(folder, seed=1)
    assert file_sha256(weights) != first_hash
    assert json.loads((folder / PARAMS_FILE).read_text())["seed"] == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny"]  # no staging leftovers


def test_ensure_tiny_model_rejects_unknown_parameters(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown parameter"):
        ensure_tiny_model(tmp_path / "tiny", hidden_size=64)


def test_a_half_built_folder_without_params_file_is_rebuilt(tmp_path: Path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    ensure_tiny_model(folder, seed=0)
    assert (folder / "model.safetensors").is_file() and (folder / PARAMS_FILE).is_file()


def test_missing_local_model_folder_gives_one_clear_error(tmp_path: Path):
    cfg = tiny_model_cfg(tmp_path / "nowhere" / "model", tiny=None)
    with pytest.raises(FileNotFoundError, match="no model folder there"):
        load_model_and_processor(cfg)


def test_offline_hub_id_that_is_not_cached_gives_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_model_cfg(Path("x"), name_or_path="skinderm-tests/no-such-model", tiny=None)
    assert resolve_model_source(cfg) == ("skinderm-tests/no-such-model", True)
    with pytest.raises(FileNotFoundError, match=r"skinderm-tests/no-such-model.*hf download") as error:
        load_model_and_processor(cfg)
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_model_type_other_than_qwen2_5_vl_is_refused(tmp_path: Path):
    folder = tmp_path / "gpt2ish"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="'gpt2' model"):
        load_model_and_processor(tiny_model_cfg(folder, tiny=None))


def test_unknown_dtype_is_refused(tiny_dir: Path):
    with pytest.raises(ValueError, match="torch_dtype"):
        load_model_and_processor(tiny_model_cfg(tiny_dir), torch_dtype="fp8")


def test_four_bit_loading_quantises_the_language_model_and_keeps_the_vision_tower(tiny_dir: Path):
    """hardware.load_in_4bit: NF4 linear layers in the language model; the ViT and lm_head unquantised."""
    pytest.importorskip("bitsandbytes", reason="pip install -e '.[qlora]'")
    from bitsandbytes.nn import Linear4bit

    from skinderm.models.loading import four_bit_arguments

    model, _ = load_model_and_processor(
        tiny_model_cfg(tiny_dir), quantization=four_bit_arguments("float32", use_cpu=True)
    )
    four_bit = [name for name, module in model.named_modules() if isinstance(module, Linear4bit)]
    assert any(".language_model.layers." in name for name in four_bit)
    assert not [name for name in four_bit if ".visual." in name or name.endswith("lm_head")]
    assert model.is_loaded_in_4bit


def test_auto_attention_is_sdpa_without_flash_attn_or_a_gpu():
    import importlib.util

    import torch

    from skinderm.models.loading import resolve_attention

    assert resolve_attention("eager") == "eager" and resolve_attention(None) is None
    flash_ready = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    assert resolve_attention("auto") == ("flash_attention_2" if flash_ready else "sdpa")
