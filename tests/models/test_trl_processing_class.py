"""TRL's trainers accept the loaded processor as `processing_class` (image-only or full) and take a step."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from pathlib import Path

import pytest
import torch
from PIL import Image

from skinderm.models.loading import load_model_and_processor

PROMPT = "Look at this dermoscopy image. Answer in JSON."
ANSWER = '{"diagnosis": "mel", "location": "center-center"}'


def tiny_cfg(folder: Path) -> dict:
    return {
        "name_or_path": str(folder),
        "tiny": {"seed": 0},
        "min_pixels": 3136,
        "max_pixels": 40_000,
        "attn_implementation": "sdpa",
        "trust_remote_code": False,
    }


def image(seed: int) -> Image.Image:
    pixels = torch.randint(0, 256, (168, 224, 3), generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def user_turn() -> dict:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models") / "tiny"


def test_sft_trainer_masks_to_the_answer_and_takes_a_step(tiny_dir: Path, tmp_path: Path):
    import datasets
    from trl import SFTConfig, SFTTrainer

    model, processor = load_model_and_processor(tiny_cfg(tiny_dir))
    messages = [user_turn(), {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]
    dataset = datasets.Dataset.from_dict(
        {"messages": [messages] * 4, "images": [[image(i)] for i in range(4)]}
    )
    args = SFTConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=None,
        max_steps=1,
        per_device_train_batch_size=2,
        assistant_only_loss=True,
        save_strategy="no",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)

    batch = trainer.data_collator([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2 * 192, 1176)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 2 * 48
    # TRL recognised the official template and swapped in its assistant-mask version.
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled) == f"{ANSWER}<|im_end|>\n"

    before = model.lm_head.weight.detach().clone()
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.lm_head.weight.detach())


def test_grpo_trainer_generates_and_scores_with_the_processor(tiny_dir: Path, tmp_path: Path):
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    model, processor = load_model_and_processor(tiny_cfg(tiny_dir))
    dataset = datasets.Dataset.from_dict(
        {"prompt": [[user_turn()]] * 4, "image": [image(i) for i in range(4)]}
    )
    seen: list[int] = []

    def completion_length_reward(completions, **kwargs):
        seen.append(len(completions))
        return [float(len(str(completion))) for completion in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        gradient_checkpointing=False,
        save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=completion_length_reward,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
    )
    trainer.train()
    assert seen and all(count == 2 for count in seen)
    assert any(key.startswith("rewards/completion_length_reward") for key in trainer.state.log_history[0])
