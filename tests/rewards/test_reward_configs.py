"""The `reward` config group and the reward-weight sweep compose with Hydra and build rewards."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from skinderm.answers import ANSWER_FIELDS
from skinderm.rewards import build_reward_functions

CONF = Path(__file__).resolve().parents[2] / "conf"
ALL_FIELDS = list(ANSWER_FIELDS)  # an answer that carries the polygon
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
        ("default", (0.4, 0.3, 0.15, 0.15)),
        ("iou_heavy", (0.2, 0.2, 0.3, 0.3)),
        ("diagnosis_heavy", (0.6, 0.2, 0.1, 0.1)),
        ("equal", (1 / 3, 1 / 3, 1 / 6, 1 / 6)),
    ],
)
def test_each_option_changes_only_the_weights_of_default(compose_conf, option: str, weights: tuple) -> None:
    reward = compose_conf([f"+reward={option}"]).reward
    given = (reward.weights.diagnosis, reward.weights.spatial, reward.weights.bbox, reward.weights.outline)
    assert given == pytest.approx(weights)
    assert sum(given) == pytest.approx(1.0)  # every option: diagnosis + spatial + localisation = 1
    assert reward.weights.format == 0.0
    assert reward.weights.iou is None and reward.iou_kind is None  # retired placeholders
    assert reward.diagnosis.class_weighting == "none"
    assert reward.spatial.adjacent_credit == 0.5
    assert reward.outline.box_fallback is False
    assert list(reward.format.required_fields) == ["diagnosis", "location", "bbox_2d"]
    funcs, built = build_reward_functions(
        OmegaConf.to_container(reward), class_counts=None, answer_fields=ALL_FIELDS
    )
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "bbox_iou", "outline_iou"]
    assert built == pytest.approx(list(weights))
    # Without a polygon in the answer the outline's share goes to the box: localisation keeps its share.
    funcs, built = build_reward_functions(OmegaConf.to_container(reward), class_counts=None)
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "bbox_iou"]
    assert built == pytest.approx([weights[0], weights[1], weights[2] + weights[3]])


def test_command_line_overrides_reach_the_built_rewards(compose_conf) -> None:
    overrides = [
        "+reward=iou_heavy",
        "reward.weights.bbox=0.5",
        "reward.weights.format=0.1",
        "reward.spatial.adjacent_credit=0.25",
        "reward.outline.box_fallback=true",
    ]
    reward = compose_conf(overrides).reward
    funcs, weights = build_reward_functions(reward, class_counts=None, answer_fields=ALL_FIELDS)
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "bbox_iou", "outline_iou", "format"]
    assert weights == pytest.approx([0.2, 0.2, 0.5, 0.3, 0.1])
    assert funcs[1].adjacent_credit == 0.25 and funcs[3].box_fallback is True


@pytest.mark.parametrize(
    ("override", "key"),
    [("reward.iou_kind=bbox", "reward.iou_kind"), ("reward.weights.iou=0.3", "reward.weights.iou")],
)
def test_retired_keys_still_compose_and_then_fail_in_one_line_naming_the_new_keys(
    compose_conf, override: str, key: str
) -> None:
    reward = compose_conf(["+reward=default", override]).reward  # not Hydra's "not in struct"
    with pytest.raises(ValueError, match=re.escape(key)) as error:
        build_reward_functions(reward, class_counts=None)
    message = str(error.value)
    assert "\n" not in message
    assert "reward.weights.bbox" in message and "reward.weights.outline" in message


def test_the_reward_grid_sweeps_existing_weight_keys_in_multirun_mode(compose_conf) -> None:
    cfg = compose_conf(["+reward=default", "+sweep=reward_grid"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = dict(cfg.hydra.sweeper.params)
    assert params == {
        "reward.weights.bbox": "0.1,0.3",
        "reward.weights.outline": "0.1,0.3",
        "reward.weights.diagnosis": "0.3,0.6",
    }
    for key, values in params.items():
        assert OmegaConf.select(cfg, key) is not None, key
        for value in values.split(","):
            job = OmegaConf.merge(
                cfg.reward, OmegaConf.from_dotlist([f"{key.removeprefix('reward.')}={value}"])
            )
            funcs, weights = build_reward_functions(job, class_counts=None, answer_fields=ALL_FIELDS)
            assert float(value) in weights and len(funcs) == 4


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
