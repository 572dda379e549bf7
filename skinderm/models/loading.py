"""Load the model and processor named by the `model` config group: the tiny built model or a Qwen2.5-VL.

One path for both: the tiny model is built into a folder first (`model.tiny` set), then every model,
tiny, a local folder or a hub id, goes through the same `from_pretrained` calls. Never remote code
unless `model.trust_remote_code` says so; weights from safetensors only. With HF_HUB_OFFLINE set a
hub id is read from the local cache only, and a missing model is one clear error, not a traceback.

The processor pads on the left (batched generation needs it); TRL's SFT collator and GRPO pass their
own padding side per call, so training is unaffected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skinderm.core.files import to_plain

_DTYPES = ("float32", "bfloat16", "float16", "auto")
_TRUE_STRINGS = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for cache-only loading (read now, not at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_STRINGS


def looks_like_local_path(name_or_path: str) -> bool:
    """A path rather than a hub id ("org/name"): starts with / . or ~, is deeper than org/name, or exists."""
    return (
        name_or_path.startswith(("/", ".", "~"))
        or os.sep in name_or_path.replace("/", "", 1)
        or Path(name_or_path).exists()
    )


def resolve_model_source(model_cfg: Mapping[str, Any]) -> tuple[str, bool]:
    """(folder or hub id, local_files_only) for `model_cfg`, building the tiny model first if configured."""
    name_or_path = model_cfg.get("name_or_path")
    if not name_or_path:
        raise ValueError(
            "model.name_or_path is empty: set a hub id (Qwen/Qwen2.5-VL-3B-Instruct) or a local folder"
        )
    name_or_path = str(name_or_path)
    tiny_params = model_cfg.get("tiny")
    if tiny_params:
        from skinderm.models.tiny import ensure_tiny_model

        # The pixel budget is not a build parameter: load_processor applies model.min/max_pixels.
        params = {key: to_plain(value) for key, value in dict(tiny_params).items()}
        return str(ensure_tiny_model(name_or_path, **params)), True
    if looks_like_local_path(name_or_path):
        folder = Path(name_or_path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"model.name_or_path={name_or_path}: no model folder there (config.json missing); "
                "point it at a saved model folder or a hub id such as Qwen/Qwen2.5-VL-3B-Instruct"
            )
        return str(folder), True
    return name_or_path, hub_offline()


def load_model_and_processor(
    model_cfg: Mapping[str, Any],
    *,
    torch_dtype: str = "float32",
    attn_implementation: str | None = None,
    quantization: Mapping[str, Any] | None = None,
) -> tuple[Any, Any]:
    """(Qwen2_5_VLForConditionalGeneration, processor) for the `model` config group.

    `attn_implementation` overrides `model.attn_implementation` (None keeps the config's).
    `quantization`: extra `from_pretrained` arguments for quantised weights (`four_bit_arguments`).
    """
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from skinderm.models.processor import load_processor

    if torch_dtype not in _DTYPES:
        raise ValueError(f"torch_dtype={torch_dtype!r}: use one of {', '.join(_DTYPES)}")
    source, local_files_only = resolve_model_source(model_cfg)
    revision = model_cfg.get("revision") or None
    trust_remote_code = bool(model_cfg.get("trust_remote_code", False))
    hub_kwargs: dict[str, Any] = {
        "local_files_only": local_files_only,
        "trust_remote_code": trust_remote_code,
    }
    if revision is not None:
        hub_kwargs["revision"] = str(revision)

    try:
        config = AutoConfig.from_pretrained(source, **hub_kwargs)
    except OSError as error:
        raise FileNotFoundError(_missing_model_message(source, local_files_only, error)) from None
    if config.model_type != "qwen2_5_vl":
        raise ValueError(
            f"model.name_or_path={source} is a {config.model_type!r} model; this project trains Qwen2.5-VL "
            "(model_type 'qwen2_5_vl')"
        )
    attention = resolve_attention(attn_implementation or model_cfg.get("attn_implementation") or None)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        source,
        config=config,
        dtype="auto" if torch_dtype == "auto" else getattr(torch, torch_dtype),
        attn_implementation=attention,
        use_safetensors=True,
        **hub_kwargs,
        **(quantization or {}),
    )
    if quantization and quantization.get("device_map") == {"": "cpu"}:
        _keep_cpu_four_bit_weights_trainable(model)
    try:
        processor = load_processor(
            source,
            min_pixels=int(model_cfg["min_pixels"]),
            max_pixels=int(model_cfg["max_pixels"]),
            local_files_only=local_files_only,
            revision=hub_kwargs.get("revision"),
            trust_remote_code=trust_remote_code,
            padding_side="left",
        )
    except OSError as error:
        raise FileNotFoundError(
            f"model.name_or_path={source}: the weights loaded but the processor did not ({error}); the "
            "folder needs tokenizer files, chat_template.jinja and processor_config.json (save_pretrained)"
        ) from error
    return model, processor


def resolve_attention(attn_implementation: str | None) -> str | None:
    """`auto` (hardware=gpu's default): FlashAttention-2 where the flash-attn package is installed and a
    GPU is present, otherwise PyTorch's sdpa; any other value is passed on to transformers as it is."""
    if attn_implementation != "auto":
        return attn_implementation
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def four_bit_arguments(torch_dtype: str, *, use_cpu: bool) -> dict[str, Any]:
    """`from_pretrained` arguments for QLoRA (`hardware.load_in_4bit`), as TRL's scripts build them.

    NF4 weights with nested quantisation, computing in the training dtype; the vision tower and lm_head
    stay unquantised (the usual VLM QLoRA recipe: the ViT is small and sensitive). bitsandbytes places
    quantised weights at load time, so each process puts them on its own GPU (or the CPU).
    """
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "hardware.load_in_4bit=true needs bitsandbytes, which is not installed: "
            "pip install -e '.[qlora]' (or drop hardware.load_in_4bit)"
        )
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, torch_dtype if torch_dtype != "auto" else "bfloat16"),
        # Matched from the start of module names (transformers 5): the ViT + merger, and the output head.
        llm_int8_skip_modules=["model.visual", "lm_head"],
    )
    device = (
        "cpu" if use_cpu or not torch.cuda.is_available() else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    )
    return {"quantization_config": config, "device_map": {"": device}}


def _keep_cpu_four_bit_weights_trainable(model: Any) -> None:
    """Stop bitsandbytes (0.50) repacking 4-bit weights for AVX512-BF16 inference on CPU.

    It repacks them the first time a layer runs in eval mode and never packs them back, after which a
    training step fails inside `matmul_4bit` ("a view of a leaf Variable ... in-place"): GRPO evaluates
    and samples before it trains. CPU 4-bit runs are for tests; GPUs never take that path.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def vision_tower(model: Any) -> Any:
    """The vision encoder (patch embedding, blocks and the merger) of a Qwen2.5-VL, PEFT-wrapped or not."""
    for name, module in model.named_modules():
        if name == "visual" or name.endswith(".visual"):
            return module
    raise ValueError(f"{type(model).__name__} has no `visual` module: not a Qwen2.5-VL model")


def freeze_vision_tower(model: Any) -> int:
    """Stop training the vision encoder and its merger; returns how many parameter values were frozen."""
    frozen = 0
    for parameter in vision_tower(model).parameters():
        if parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def count_parameters(model: Any) -> dict[str, int]:
    """Total and trainable parameter values (shared tensors counted once)."""
    seen: set[int] = set()
    total = trainable = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return {"total": total, "trainable": trainable}


def _missing_model_message(source: str, local_files_only: bool, error: OSError) -> str:
    where = (
        "the local Hugging Face cache (HF_HUB_OFFLINE is set)" if local_files_only else "the Hugging Face hub"
    )
    return (
        f"model.name_or_path={source}: could not load it from {where} ({type(error).__name__}). "
        f"Download it first (`hf download {source}`) or point model.name_or_path at a local model folder."
    )
