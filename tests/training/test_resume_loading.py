"""Strict checkpoint loading: hub-format keys land on the model's own names; anything else is an error."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from skinderm.training.resume import ResumableTrainerMixin, ResumeError, load_full_weights_strictly


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from skinderm.models.tiny import ensure_tiny_model

    folder = ensure_tiny_model(tmp_path_factory.mktemp("tiny"))
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(folder)


def test_a_saved_full_checkpoint_loads_back_into_every_tensor(tiny_model: Any, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    in_memory = tiny_model.state_dict()
    assert set(saved) != set(in_memory), "transformers 5 writes hub-format names (the cause of the bug)"
    with torch.no_grad():
        for parameter in tiny_model.parameters():
            parameter.add_(1.0)  # the model drifts away from the checkpoint
    assert load_full_weights_strictly(tiny_model, tmp_path) == len(saved)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(tensor, in_memory[name]), name


def test_a_checkpoint_missing_or_adding_tensors_is_refused(tiny_model: Any, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    dropped = dict(list(saved.items())[1:])
    save_file(dropped, str(tmp_path / "model.safetensors"))
    with pytest.raises(ResumeError, match="1 missing, 0 unexpected"):
        load_full_weights_strictly(tiny_model, tmp_path)
    save_file({**saved, "extra.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ResumeError, match="0 missing, 1 unexpected"):
        load_full_weights_strictly(tiny_model, tmp_path)


class _FullDiskTrainer:
    """Stands in for transformers.Trainer: its checkpoint save runs out of disk."""

    class args:
        output_dir = "/runs/x/checkpoints"

    class state:
        global_step = 250

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


class _Trainer(ResumableTrainerMixin, _FullDiskTrainer):
    pass


def test_a_full_disk_during_a_checkpoint_save_names_the_checkpoint_folder() -> None:
    with pytest.raises(OSError) as raised:
        _Trainer()._save_checkpoint(None, None)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == "/runs/x/checkpoints/checkpoint-250"
