"""Per-module learning rates for Qwen2.5-VL: AdamW parameter groups by module family.

Why: a randomly initialised tiny model learns the answer format within a few dozen steps, but reading
the image tokens is the slow part; raising the learning rate of the vision tower and its merger (the
path from pixels to the language model) relative to the language model shortens that phase. With every
multiplier at 1 the optimizer equals the trainer's default AdamW.

Given the trainer's `TrainingArguments`, the optimizer is the one they name (`optim`: adamw_torch,
adamw_torch_fused, paged_adamw_8bit, adamw_bnb_8bit, sgd, ...; with their betas, eps and `optim_args`),
built by transformers' own `Trainer.get_optimizer_cls_and_kwargs`, so per-module learning rates do not
silently swap a QLoRA run's paged or 8-bit optimizer for a plain AdamW. Without them: plain AdamW.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# Module families, matched on parameter names in order (first match wins). Names follow
# Qwen2_5_VLForConditionalGeneration, with or without a PEFT wrapper's prefix.
MODULE_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("merger", (".visual.merger.",)),
    ("vision", (".visual.",)),
    ("embed_tokens", (".embed_tokens.",)),
    ("lm_head", ("lm_head.",)),
    ("language_model", (".language_model.",)),
)
# Everything not matched above (nothing in Qwen2.5-VL today) trains at the base learning rate.
OTHER_FAMILY = "other"
FAMILY_NAMES: tuple[str, ...] = (*(name for name, _ in MODULE_FAMILIES), OTHER_FAMILY)


def module_family(parameter_name: str) -> str:
    """The family a parameter belongs to, e.g. `model.visual.merger.mlp.0.weight` -> `merger`."""
    name = f".{parameter_name}"
    for family, needles in MODULE_FAMILIES:
        if any(needle in name for needle in needles):
            return family
    return OTHER_FAMILY


def _no_decay(parameter_name: str, parameter: torch.nn.Parameter) -> bool:
    """Biases and norm weights (1-D) are not decayed, as in the transformers Trainer."""
    return parameter.ndim < 2 or parameter_name.endswith(".bias")


def parameter_groups(
    model: torch.nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    lr_multipliers: Mapping[str, float] | None,
) -> list[dict[str, Any]]:
    """AdamW groups: one per (family, decay) with lr = learning_rate * multiplier (default 1)."""
    multipliers = {str(key): float(value) for key, value in dict(lr_multipliers or {}).items()}
    unknown = sorted(set(multipliers) - set(FAMILY_NAMES))
    if unknown:
        raise ValueError(
            f"stage.lr_multipliers has unknown module families {unknown}; use {list(FAMILY_NAMES)}"
        )
    negative = {key: value for key, value in multipliers.items() if value < 0}
    if negative:
        raise ValueError(f"stage.lr_multipliers {negative}: multipliers must be >= 0")
    grouped: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            grouped.setdefault((module_family(name), _no_decay(name, parameter)), []).append(parameter)
    return [
        {
            "params": params,
            "lr": learning_rate * multipliers.get(family, 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
            "family": family,
        }
        for (family, no_decay), params in sorted(grouped.items())
    ]


def build_optimizer(
    model: torch.nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    lr_multipliers: Mapping[str, float] | None,
    training_args: Any = None,
) -> torch.optim.Optimizer:
    """The optimizer over `parameter_groups`: the one `training_args.optim` names, else plain AdamW.

    Plain AdamW (no `training_args`) uses the Trainer's default betas and eps. Optimizers that build their
    own parameter groups from the model (GaLore, LOMO, layer-wise, Muon-style factories) cannot take
    per-module groups: ValueError naming the combination.
    """
    groups = parameter_groups(
        model, learning_rate=learning_rate, weight_decay=weight_decay, lr_multipliers=lr_multipliers
    )
    if training_args is None:
        return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8)
    from transformers import Trainer
    from transformers.trainer_optimizer import is_optimizer_factory

    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    owns_groups = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
    if is_optimizer_factory(optimizer_cls) or owns_groups:
        raise ValueError(
            f"stage.lr_multipliers needs an optimizer that takes parameter groups; optim="
            f"{training_args.optim} builds its own: drop stage.lr_multipliers or choose another optim"
        )
    optimizer = optimizer_cls(groups, **{**optimizer_kwargs, "lr": learning_rate})
    if "bitsandbytes" in str(optimizer_cls) and optimizer_kwargs.get("optim_bits") == 8:
        _embeddings_in_32_bit(model)
    return optimizer


def _embeddings_in_32_bit(model: torch.nn.Module) -> None:
    """As the Trainer does for 8-bit bitsandbytes optimizers: embedding tables keep 32-bit optimizer state."""
    import bitsandbytes

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})
