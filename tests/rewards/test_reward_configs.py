"""The `reward` config group and the reward-weight sweep compose with Hydra and build rewards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from skinderm.rewards import build_reward_functions

CONF = Path(__file__).resolve().parents[2] / "conf"
REWARD_OPTIONS = sorted(path.stem for path in (CONF / "reward").glob("*.yaml"))


@pytest.fixture
def compose_conf() -> Iterator:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda overrides, **kw: compose(config_name=None, overrides=overrides, **kw)
    GlobalHydra.instance().clear()


def test_the_group_has_the_documented_options() -> None:
    assert REWARD_OPTIONS == ["default", "diagnosis_heavy", "equal", "iou_heavy"]


@pytest.mark.parametrize(
    ("option", "weights"),
    [
        ("default", (0.4, 0.3, 0.3)),
        ("iou_heavy", (0.2, 0.2, 0.6)),
        ("diagnosis_heavy", (0.6, 0.2, 0.2)),
        ("equal", (1 / 3, 1 / 3, 1 / 3)),
    ],
)
def test_each_option_changes_only_the_weights_of_default(compose_conf, option: str, weights: tuple) -> None:
    reward = compose_conf([f"+reward={option}"]).reward
    assert (reward.weights.diagnosis, reward.weights.spatial, reward.weights.iou) == pytest.approx(weights)
    assert reward.weights.format == 0.0
    assert reward.iou_kind == "mask"
    assert reward.diagnosis.class_weighting == "none"
    assert list(reward.format.required_fields) == ["diagnosis", "location", "bbox_2d"]
    funcs, built = build_reward_functions(OmegaConf.to_container(reward), class_counts=None)
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "mask_iou"]
    assert built == pytest.approx(list(weights))


def test_command_line_overrides_reach_the_built_rewards(compose_conf) -> None:
    reward = compose_conf(["+reward=iou_heavy", "reward.iou_kind=bbox", "reward.weights.format=0.1"]).reward
    funcs, weights = build_reward_functions(reward, class_counts=None)
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "bbox_iou", "format"]
    assert weights == pytest.approx([0.2, 0.2, 0.6, 0.1])


def test_the_reward_grid_sweeps_existing_weight_keys_in_multirun_mode(compose_conf) -> None:
    cfg = compose_conf(["+reward=default", "+sweep=reward_grid"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = dict(cfg.hydra.sweeper.params)
    assert params == {"reward.weights.iou": "0.2,0.4,0.6", "reward.weights.diagnosis": "0.3,0.6"}
    for key, values in params.items():
        assert OmegaConf.select(cfg, key) is not None, key
        for value in values.split(","):
            job = OmegaConf.merge(
                cfg.reward, OmegaConf.from_dotlist([f"{key.removeprefix('reward.')}={value}"])
            )
            funcs, weights = build_reward_functions(job, class_counts=None)
            assert float(value) in weights and len(funcs) == 3


@pytest.mark.parametrize(
    "path",
    [*sorted((CONF / "reward").glob("*.yaml")), CONF / "sweep" / "reward_grid.yaml"],
    ids=lambda p: p.stem,
)
def test_every_config_file_shows_the_command_that_uses_it(path: Path) -> None:
    lines = path.read_text().splitlines()
    if lines[0] == "# @package _global_":  # Hydra reads this header only from the first lines
        lines = lines[1:]
    assert lines[0].startswith("# python -m skinderm.train ") and "stage=grpo" in lines[0]
