"""skinderm.training.flops: the FLOP formula against a hand computation, and the callback in a real run."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from skinderm.training.flops import (
    StepRecord,
    ThroughputCallback,
    forward_tokens,
    model_counts,
    pass_flops,
    peak_tflops,
    throughput_metrics,
)
from tests.conftest import SMALL_DATASET, compose_config

# conf/model/tiny.yaml's shape
D, LAYERS, HEADS, KV_HEADS, FF, VOCAB = 128, 2, 4, 2, 256, 1024
VD, VFF = 64, 128  # vision hidden, intermediate; depth 2: block 1 full attention, block 0 windowed
HEAD_DIM = D // HEADS
LORA_R = 16


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from skinderm.models.tiny import tiny_config, train_tiny_tokenizer

    config = tiny_config(
        train_tiny_tokenizer(VOCAB), text_hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, intermediate_size=FF, vision_hidden_size=VD, vision_depth=2,
        vision_num_heads=2, vision_intermediate_size=VFF, vocab_size=VOCAB,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration._from_config(config)


def known_batch() -> dict[str, Any]:
    """Two sequences of 20 and 11 tokens (padded to 20) and two images of 8x12 and 6x6 patches."""
    import torch

    mask = torch.zeros(2, 20, dtype=torch.long)
    mask[0, :] = 1
    mask[1, 9:] = 1  # left padding
    return {
        "input_ids": torch.zeros(2, 20, dtype=torch.long),
        "attention_mask": mask,
        "pixel_values": torch.zeros(8 * 12 + 6 * 6, 3 * 2 * 14 * 14),
        "image_grid_thw": torch.tensor([[1, 8, 12], [1, 6, 6]]),
    }


# The hand computation: parameters from the shapes, tokens from the batch.
KV = KV_HEADS * HEAD_DIM
TEXT_LAYER = (D * D + D) + 2 * (D * KV + KV) + D * D + 3 * D * FF + 2 * D  # q, k, v (biases), o, MLP, norms
LANGUAGE_MODEL = LAYERS * TEXT_LAYER + D  # + final norm
LM_HEAD = VOCAB * D
PATCH_EMBED = VD * 3 * 2 * 14 * 14  # Conv3d, no bias
VISION_BLOCKS = 2 * (2 * VD + (VD * 3 * VD + 3 * VD) + (VD * VD + VD) + 2 * (VD * VFF + VFF) + VFF * VD + VD)
MERGER = VD + (4 * VD * 4 * VD + 4 * VD) + (4 * VD * D + D)
LORA = LAYERS * LORA_R * ((D + D) + 2 * (D + KV) + (D + D) + 2 * (D + FF) + (FF + D))
PATCHES, MERGED, TEXT_TOKENS = 96 + 36, (96 + 36) // 4, 20 + 11
# Vision attention: full (block 1) over each image; windows of 4x4 merged tokens (block 0): the 8x12
# image's 4x6 merged grid -> windows 4x4 and 4x2, the 6x6 image's 3x3 grid -> one 3x3 window.
VISION_ATTENTION = 4 * VD * ((96**2 + 36**2) + ((16 * 4) ** 2 + (8 * 4) ** 2 + (9 * 4) ** 2))
TEXT_ATTENTION = 4 * LAYERS * D * (20**2 + 11**2)


def test_parameter_counts_are_the_shapes(tiny_model: Any) -> None:
    counts = model_counts(tiny_model)
    assert counts.language_model.parameters == LANGUAGE_MODEL
    assert counts.lm_head.parameters == LM_HEAD
    assert counts.patch_embed.parameters == PATCH_EMBED
    assert counts.vision_blocks.parameters == VISION_BLOCKS
    assert counts.merger.parameters == MERGER
    assert (counts.vision_full_attention_layers, counts.vision_window_layers) == (1, 1)
    total = sum(p.numel() for p in tiny_model.parameters())
    assert total == LANGUAGE_MODEL + LM_HEAD + PATCH_EMBED + VISION_BLOCKS + MERGER + VOCAB * D  # + embedding


def test_tokens_are_read_from_the_batch() -> None:
    tokens = forward_tokens(known_batch())
    assert tokens.sequences == ((20, 20), (11, 11))
    assert (tokens.text_tokens, tokens.lm_head_tokens, tokens.patches) == (TEXT_TOKENS, TEXT_TOKENS, PATCHES)


def test_cached_decoding_counts_new_tokens_attending_to_the_context() -> None:
    import torch

    mask = torch.ones(2, 15, dtype=torch.long)
    mask[1, :6] = 0
    tokens = forward_tokens(
        {"input_ids": torch.zeros(2, 1, dtype=torch.long), "attention_mask": mask, "logits_to_keep": 1,
         "image_grid_thw": torch.tensor([[1, 8, 8]])}  # no pixel_values after the prefill: no vision
    )  # fmt: skip
    assert tokens.sequences == ((1, 15), (1, 9))
    assert (tokens.lm_head_tokens, tokens.patches) == (2, 0)


def test_full_fine_tuning_is_six_n_t_plus_three_attention(tiny_model: Any) -> None:
    flops = pass_flops(model_counts(tiny_model), forward_tokens(known_batch()), training=True)
    by_hand = (
        6 * (PATCH_EMBED + VISION_BLOCKS) * PATCHES
        + 6 * MERGER * MERGED
        + 6 * (LANGUAGE_MODEL + LM_HEAD) * TEXT_TOKENS
        + 3 * (VISION_ATTENTION + TEXT_ATTENTION)
    )
    assert flops.model == flops.hardware == by_hand
    forward = pass_flops(model_counts(tiny_model), forward_tokens(known_batch()), training=False)
    assert forward.model == forward.hardware == by_hand // 3  # a forward is a third of it


def test_lora_and_gradient_checkpointing_by_hand(tiny_model: Any) -> None:
    import copy

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        copy.deepcopy(tiny_model),
        LoraConfig(
            r=LORA_R,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            exclude_modules=r".*visual.*",
        ),
    )
    counts = model_counts(lora)
    assert (counts.language_model.parameters, counts.language_model.trainable) == (
        LANGUAGE_MODEL + LORA,
        LORA,
    )
    tokens = forward_tokens(known_batch())
    vision_forward = 2 * (PATCH_EMBED + VISION_BLOCKS) * PATCHES + VISION_ATTENTION + 2 * MERGER * MERGED
    text = 4 * LANGUAGE_MODEL * TEXT_TOKENS + 6 * LORA * TEXT_TOKENS + 3 * TEXT_ATTENTION
    head = 4 * LM_HEAD * TEXT_TOKENS  # frozen, but the gradient passes through it to the adapters
    plain = pass_flops(counts, tokens, training=True)
    assert plain.model == plain.hardware == vision_forward + text + head
    # Checkpointing + PEFT's input-require-grads: the frozen tower passes input gradients back
    # (blocks and merger), and checkpointed blocks and layers run their forward once more.
    checkpointed = pass_flops(
        counts, tokens, training=True, vision_backward=True, recompute_vision=True, recompute_text=True
    )
    assert checkpointed.model == plain.model
    vision_blocks_forward = 2 * VISION_BLOCKS * PATCHES + VISION_ATTENTION
    wasted = (
        (2 * VISION_BLOCKS * PATCHES + 2 * VISION_ATTENTION)
        + 2 * MERGER * MERGED
        + vision_blocks_forward
        + (2 * (LANGUAGE_MODEL + LORA) * TEXT_TOKENS + TEXT_ATTENTION)
    )
    assert checkpointed.hardware == plain.model + wasted


def test_peaks_by_device_name() -> None:
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L40S") == 362.0 and peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("NVIDIA A10G") is None  # not in the table: TFLOP/s only
    assert peak_tflops(None) is None


def test_mfu_only_with_a_known_peak() -> None:
    records = [StepRecord(2.0, 4 * 10**12, 6 * 10**12, 1000), StepRecord(2.0, 4 * 10**12, 6 * 10**12, 1000)]
    known = throughput_metrics(records, 100.0)
    assert known["perf/tflops"] == pytest.approx(2.0) and known["perf/mfu"] == pytest.approx(0.02)
    assert known["perf/hfu"] == pytest.approx(0.03) and known["perf/tokens_per_s"] == pytest.approx(500.0)
    unknown = throughput_metrics(records, None)
    assert (
        "perf/mfu" not in unknown
        and "perf/hfu" not in unknown
        and unknown["perf/tflops"] == known["perf/tflops"]
    )


def test_values_reach_wandb_on_the_row_the_trainer_logs_next(monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[tuple[dict, bool]] = []
    stub = types.SimpleNamespace(
        run=object(), log=lambda values, commit=True: logged.append((values, commit))
    )
    monkeypatch.setitem(sys.modules, "wandb", stub)
    callback = ThroughputCallback(peak=100.0)
    args = types.SimpleNamespace(report_to=["wandb"])
    state = types.SimpleNamespace(log_history=[], global_step=1)
    control = types.SimpleNamespace(should_log=True)
    callback.on_step_begin(args, state, control)
    callback.on_step_end(args, state, control)
    assert len(logged) == 1 and logged[0][1] is False and "perf/step_s" in logged[0][0]
    logs = {"loss": 1.0}
    state.log_history.append({**logs, "step": 1})
    callback.on_log(args, state, control, logs=logs)
    assert "perf/tflops" in logs and "perf/tflops" in state.log_history[-1]


@pytest.mark.slow
def test_callback_logs_perf_in_a_real_sft_run(tmp_path: Path, shared_cache: Path) -> None:
    from skinderm.training.pipeline import run_training

    run_dir = tmp_path / "outputs" / "sft" / "runs" / "flops"
    cfg = compose_config(
        tmp_path,
        shared_cache,
        [*SMALL_DATASET, "logger=none", "stage.max_steps=2", "stage.logging_steps=1", "eval.num_samples=0",
         "stage.eval_steps=1000", "stage.save_steps=1000", "stage.eval_max_samples=4"],
        output_dir=run_dir,
    )  # fmt: skip
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):  # after the throughput callback: sees the logs as the console does
        def __init__(self) -> None:
            self.logs: list[dict[str, Any]] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            self.logs.append(dict(logs or {}))

    callback, recorder = ThroughputCallback(), Recorder()
    run_training(cfg, callbacks=[callback, recorder])
    assert len(callback.records) == 2
    for record in callback.records:
        assert record.tokens > 0 and record.seconds > 0
        assert (
            record.model_flops == record.hardware_flops > 6 * 10**5 * record.tokens
        )  # full FT, no checkpointing
    assert callback.peak is None and callback.device_name is None  # CPU: no peak, no MFU
    trainer_logs = [entry for entry in recorder.logs if "loss" in entry]
    assert len(trainer_logs) == 2
    for entry in trainer_logs:
        assert (
            entry["perf/tflops"] > 0 and entry["perf/tokens_per_s"] > 0 and entry["perf/flops_per_step"] > 0
        )
        assert "perf/mfu" not in entry and "perf/hfu" not in entry
