"""scripts/gpu_check.py: the real Qwen2.5-VL shapes, and its whole path at tiny shapes on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("size", "published"), [("3b", 3_754_622_976), ("7b", 8_292_166_656)])
def test_shapes_have_the_published_parameter_counts(size: str, published: int) -> None:
    """Built on the meta device: no memory, same config path the GPU run uses (and the time estimates'
    parameter ratio)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from skinderm.models.tiny import tiny_config, train_tiny_tokenizer

    module = _gpu_check_module()
    shape = module.SHAPES[size]
    assert module.PARAMETERS[size] == published
    config = tiny_config(
        train_tiny_tokenizer(1024),
        **{key: value for key, value in shape.items() if key != "tie_word_embeddings"},
    )
    config.tie_word_embeddings = shape["tie_word_embeddings"]
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    assert sum(parameter.numel() for parameter in model.parameters()) == published
    assert config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert config.vision_config.fullatt_block_indexes == [7, 15, 23, 31]


@pytest.mark.slow
@pytest.mark.parametrize("qlora", [False, True], ids=["bf16-or-fp32", "qlora"])
def test_tiny_mode_runs_sft_and_grpo_and_writes_a_summary(tmp_path: Path, qlora: bool) -> None:
    if qlora and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("pip install -e '.[qlora]'")
    summary_path = tmp_path / "out" / "gpu_check.json"
    result = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "gpu_check.sh"),
            "--tiny",
            "--device",
            "cpu",
            "--work",
            str(tmp_path),
            *(["--qlora"] if qlora else []),
        ],
        cwd=tmp_path,
        env={**os.environ, "OUT": str(summary_path.parent), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    summary = json.loads(summary_path.read_text())
    tiny = summary["results"]["tiny"]
    assert tiny["parameters"] > 0 and summary["environment"]["cuda"] is False
    assert tiny["weights"] == ("4-bit NF4 (QLoRA)" if qlora else "float32")
    assert tiny["sft"]["steps"] == tiny["sft"]["global_step"] == 3
    assert tiny["grpo"]["steps"] == tiny["grpo"]["global_step"] == 2
    assert tiny["sft"]["median_step_s"] > 0 and tiny["grpo"]["median_step_s"] > 0
    # One generate call per GRPO step, 8 completions of at most 16 new tokens each.
    assert tiny["grpo"]["generate_calls"] == 2
    assert 0 < tiny["grpo"]["generated_tokens"] <= 2 * 8 * 16
    assert tiny["grpo"]["generated_tokens_per_s"] > 0
    assert tiny["sft"]["peak_gpu_memory_gib"] is None  # CPU
    # FLOPs, TFLOP/s (skinderm.training.flops), no MFU on CPU (no peak)
    for stage in ("sft", "grpo"):
        row = tiny[stage]
        assert row["model_flops_per_step"] > 0 and row["tflops"] > 0 and row["tokens_per_s"] > 0
        assert row["mfu"] is None and row["hfu"] is None and row["peak_tflops"] is None
    assert "tiny  grpo" in result.stdout, "the human-readable table is printed"
    assert "MFU" in result.stdout
