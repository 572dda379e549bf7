"""Exact resume: a checkpoint's weights go back into the model strictly, under the model's own key names.

Why this exists: transformers 5 saves checkpoints in the hub's original key format (`save_pretrained`
reverts its loading-time renamings, e.g. Qwen2.5-VL's `model.language_model.layers.*` is written as
`model.layers.*` and `model.visual.*` as `visual.*`), but `Trainer._load_from_checkpoint` feeds the file's
state dict to `model.load_state_dict(..., strict=False)` without renaming it back. For a full fine-tune
56 of 57 tensors then "go missing", transformers only warns, and training silently continues from the
weights the run started with. Here the file's keys are renamed with the same conversion mapping that
`from_pretrained` applies, and anything still missing or unexpected is an error, never a warning.

LoRA checkpoints go through PEFT's own `load_adapter`, whose load result is checked the same way.
FSDP and DeepSpeed checkpoints keep their frameworks' own (strict) loaders.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SAFE_WEIGHTS_FILE = "model.safetensors"
SAFE_WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


class ResumeError(ValueError):
    """A checkpoint whose tensors do not fit the model: resuming from it would silently change the run."""


def read_checkpoint_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint's full weights (one safetensors file or an index of shards), on CPU."""
    from safetensors.torch import load_file

    single, index = folder / SAFE_WEIGHTS_FILE, folder / SAFE_WEIGHTS_INDEX_FILE
    if single.is_file():
        return load_file(str(single), device="cpu")
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(folder / shard), device="cpu"))
        return state
    raise ResumeError(f"{folder}: no {SAFE_WEIGHTS_FILE} or {SAFE_WEIGHTS_INDEX_FILE} to resume from")


def to_model_key_names(model: Any, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The saved (hub-format) keys renamed to the model's in-memory names, as `from_pretrained` does."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    in_memory = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new_key, converter = rename_source_key(
            key, renamings, converters, getattr(model, "base_model_prefix", None), in_memory
        )
        if converter is not None:  # a tensor that must be split/merged, not only renamed
            raise ResumeError(
                f"checkpoint tensor {key!r} needs a weight conversion ({converter}) that strict resume does "
                "not implement; resume this model with its framework's checkpointing (FSDP/DeepSpeed)"
            )
        renamed[new_key] = tensor
    return renamed


def tied_parameter_names(model: Any) -> set[str]:
    """Parameters tied to another one (e.g. lm_head to the embeddings): a checkpoint stores them once."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return set(tied)


def load_full_weights_strictly(model: Any, folder: Path) -> int:
    """Load a full-weights checkpoint into `model`; every tensor must land. Returns the tensor count."""
    state = to_model_key_names(model, read_checkpoint_state_dict(folder))
    result = model.load_state_dict(state, strict=False)
    missing = sorted(set(result.missing_keys) - tied_parameter_names(model))
    _raise_on_mismatch(folder, missing, result.unexpected_keys)
    return len(state)


def load_adapter_strictly(model: Any, folder: Path) -> None:
    """Load a LoRA checkpoint into the active adapter of a PEFT model; every adapter tensor must land."""
    adapter = model.active_adapters[0] if hasattr(model, "active_adapters") else "default"
    result = model.load_adapter(str(folder), adapter, is_trainable=True)
    missing = [key for key in getattr(result, "missing_keys", []) if f".{adapter}." in key]
    _raise_on_mismatch(folder, missing, getattr(result, "unexpected_keys", []))


def _raise_on_mismatch(folder: Path, missing: Iterable[str], unexpected: Iterable[str]) -> None:
    missing, unexpected = list(missing), list(unexpected)
    if missing or unexpected:
        sample = ", ".join([*missing[:3], *unexpected[:3]])
        raise ResumeError(
            f"{folder}: the checkpoint does not match the model ({len(missing)} missing, {len(unexpected)} "
            f"unexpected tensors, e.g. {sample}); resume with the model and LoRA settings the run used"
        )


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


class ResumableTrainerMixin:
    """For a transformers Trainer subclass: resume loads weights strictly under the model's key names, and a
    checkpoint save that runs out of disk names the folder it was writing."""

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            raise OSError(
                error.errno, "no space left on device while saving a checkpoint", str(folder)
            ) from error

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:  # their own loaders, strict by themselves
            super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]
            return
        model = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        if is_peft_model(model):
            load_adapter_strictly(model, folder)
            log.info("resume: adapter weights loaded from %s", folder)
        else:
            count = load_full_weights_strictly(model, folder)
            log.info("resume: all %d weight tensors loaded from %s", count, folder)
