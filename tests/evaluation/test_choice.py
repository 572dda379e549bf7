"""Which model answers, with which generation budget: a run's own recipe decides unless told otherwise."""

from __future__ import annotations

from omegaconf import OmegaConf

from skinderm.evaluation.choice import ZERO_SHOT_MAX_NEW_TOKENS, ModelChoice, generation_budget


def test_a_run_generates_with_the_budget_its_recipe_chose_for_its_answer() -> None:
    run_cfg = OmegaConf.create({"eval": {"max_new_tokens": 160}})
    assert generation_budget(run_cfg, None) == 160
    assert generation_budget(run_cfg, 40) == 40  # the command line wins


def test_zero_shot_and_old_runs_without_a_budget_get_room_for_a_polygon_answer() -> None:
    assert generation_budget(None, None) == ZERO_SHOT_MAX_NEW_TOKENS
    assert generation_budget(OmegaConf.create({"eval": {}}), None) == ZERO_SHOT_MAX_NEW_TOKENS
    assert ZERO_SHOT_MAX_NEW_TOKENS >= 242  # Qwen2's longest answer with a 16-point polygon


def test_a_model_choice_reads_its_run_budget() -> None:
    run_cfg = OmegaConf.create({"eval": {"max_new_tokens": 96}})
    choice = ModelChoice(None, {}, {"fields": ["diagnosis"]}, {}, run_cfg)
    assert choice.max_new_tokens(None) == 96
