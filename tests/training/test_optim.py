"""Per-module learning rates: which parameters land in which AdamW group, at which learning rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skinderm.training.optim import build_optimizer, module_family, parameter_groups


class _Visual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(4, 4, bias=False)
        self.merger = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4))


class _LanguageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 4)
        self.layers = nn.ModuleList([nn.Linear(4, 4)])


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = _Visual()
        self.language_model = _LanguageModel()


class _QwenLike(nn.Module):
    """The parameter naming of Qwen2_5_VLForConditionalGeneration, at toy size."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _Inner()
        self.lm_head = nn.Linear(4, 10, bias=False)


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("model.visual.merger.mlp.0.weight", "merger"),
        ("model.visual.blocks.0.attn.qkv.weight", "vision"),
        ("model.visual.patch_embed.proj.weight", "vision"),
        ("model.language_model.embed_tokens.weight", "embed_tokens"),
        ("model.language_model.layers.1.mlp.up_proj.weight", "language_model"),
        ("lm_head.weight", "lm_head"),
        ("base_model.model.model.visual.merger.ln_q.weight", "merger"),
        ("something_else.weight", "other"),
    ],
)
def test_module_family_names_qwen2_5_vl_parameters(name: str, family: str) -> None:
    assert module_family(name) == family


def test_parameter_groups_scale_each_family_learning_rate() -> None:
    model = _QwenLike()
    groups = parameter_groups(
        model, learning_rate=1e-3, weight_decay=0.1, lr_multipliers={"merger": 4.0, "vision": 2.0}
    )
    lr_by_family = {group["family"]: group["lr"] for group in groups}
    assert lr_by_family == pytest.approx(
        {"merger": 4e-3, "vision": 2e-3, "embed_tokens": 1e-3, "language_model": 1e-3, "lm_head": 1e-3}
    )
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_parameter_groups_do_not_decay_biases_and_norms() -> None:
    groups = parameter_groups(_QwenLike(), learning_rate=1e-3, weight_decay=0.1, lr_multipliers=None)
    for group in groups:
        if group["weight_decay"]:
            assert all(p.ndim >= 2 for p in group["params"])
        else:
            assert all(p.ndim < 2 for p in group["params"])


def test_frozen_parameters_are_left_out() -> None:
    model = _QwenLike()
    for parameter in model.model.visual.parameters():
        parameter.requires_grad_(False)
    groups = parameter_groups(model, learning_rate=1e-3, weight_decay=0.0, lr_multipliers={"vision": 3})
    assert {group["family"] for group in groups} == {"embed_tokens", "language_model", "lm_head"}


def test_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"stage\.lr_multipliers.*'visoin'"):
        parameter_groups(_QwenLike(), learning_rate=1e-3, weight_decay=0.0, lr_multipliers={"visoin": 2})


def test_build_optimizer_steps_with_group_learning_rates() -> None:
    model = _QwenLike()
    optimizer = build_optimizer(model, learning_rate=1e-2, weight_decay=0.0, lr_multipliers={"lm_head": 0.0})
    head_before = model.lm_head.weight.detach().clone()
    merger_before = model.model.visual.merger[1].weight.detach().clone()
    features = model.model.visual.merger(model.model.visual.patch_embed(torch.randn(3, 4)))
    loss = model.lm_head(model.model.language_model.layers[0](features)).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert torch.equal(model.lm_head.weight, head_before)  # multiplier 0: frozen in effect
    assert not torch.equal(model.model.visual.merger[1].weight, merger_before)


def _training_arguments(tmp_path, **kwargs):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], **kwargs)


def test_build_optimizer_honours_the_trainers_optim(tmp_path) -> None:
    """Per-module learning rates keep the optimizer `optim` names (e.g. a QLoRA run's paged/8-bit one)."""
    model = _QwenLike()
    args = _training_arguments(tmp_path, optim="sgd", learning_rate=0.1)
    optimizer = build_optimizer(
        model, learning_rate=0.1, weight_decay=0.0, lr_multipliers={"vision": 3.0}, training_args=args
    )
    assert type(optimizer) is torch.optim.SGD
    lr_by_family = {group["family"]: group["lr"] for group in optimizer.param_groups}
    assert lr_by_family["vision"] == pytest.approx(0.3) and lr_by_family["lm_head"] == pytest.approx(0.1)


def test_build_optimizer_takes_the_trainers_adam_settings(tmp_path) -> None:
    args = _training_arguments(tmp_path, optim="adamw_torch", adam_beta2=0.95, adam_epsilon=1e-6)
    optimizer = build_optimizer(
        _QwenLike(), learning_rate=1e-3, weight_decay=0.0, lr_multipliers={"merger": 2.0}, training_args=args
    )
    assert type(optimizer) is torch.optim.AdamW
    assert all(group["betas"] == (0.9, 0.95) and group["eps"] == 1e-6 for group in optimizer.param_groups)


def test_optimizer_that_builds_its_own_groups_is_refused(tmp_path, monkeypatch) -> None:
    from transformers import Trainer

    args = _training_arguments(tmp_path)
    monkeypatch.setattr(
        Trainer,
        "get_optimizer_cls_and_kwargs",
        staticmethod(lambda a, m: (torch.optim.SGD, {"params": [], "lr": 1})),
    )
    with pytest.raises(ValueError, match=r"stage\.lr_multipliers.*builds its own"):
        build_optimizer(
            _QwenLike(),
            learning_rate=1e-3,
            weight_decay=0.0,
            lr_multipliers={"vision": 2},
            training_args=args,
        )
