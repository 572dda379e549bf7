"""From the reward config to TRL's reward_funcs + reward_weights, and the weighted total."""

from __future__ import annotations

import logging
import math
import pickle
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

import skinderm.rewards as rewards
import skinderm.rewards.registry as registry
from skinderm.answers import ANSWER_FIELDS
from skinderm.data.classes import HAM10000_CLASS_COUNTS
from skinderm.rewards import build_reward_functions, weighted_total

DEFAULT = {
    "weights": {"diagnosis": 0.4, "spatial": 0.3, "bbox": 0.15, "outline": 0.15, "format": 0.0},
    "diagnosis": {"class_weighting": "none"},
    "spatial": {"adjacent_credit": 0.5},
    "outline": {"box_fallback": False},
    "format": {"required_fields": ["diagnosis", "location", "bbox_2d"]},
}
ALL_FIELDS = tuple(ANSWER_FIELDS)  # diagnosis, location, bbox_2d, polygon


def config(**changes: object) -> dict:
    cfg = {key: dict(value) if isinstance(value, dict) else value for key, value in DEFAULT.items()}
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            cfg[section][key] = value
        else:
            cfg[section] = value
    return cfg


def test_default_config_gives_the_weighted_components_in_order() -> None:
    funcs, weights = build_reward_functions(DEFAULT, class_counts=None, answer_fields=ALL_FIELDS)
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "bbox_iou", "outline_iou"]  # format 0
    assert weights == [0.4, 0.3, 0.15, 0.15]
    assert funcs[3].box_fallback is False


def test_without_a_polygon_in_the_answer_the_outline_weight_moves_to_the_box(
    caplog: pytest.LogCaptureFixture,
) -> None:
    no_polygon = ("diagnosis", "location", "bbox_2d")
    for fields in (no_polygon, None):  # None: the default answer (skinderm.answers.DEFAULT_FIELDS)
        funcs, weights = build_reward_functions(DEFAULT, class_counts=None, answer_fields=fields)
        assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "bbox_iou"]
        assert weights == pytest.approx([0.4, 0.3, 0.3])
    registry._logged.clear()
    with caplog.at_level(logging.INFO, logger="skinderm.rewards.registry"):
        for _ in range(3):
            build_reward_functions(DEFAULT, class_counts=None, answer_fields=no_polygon)
    moves = [r.getMessage() for r in caplog.records if "moves to" in r.getMessage()]
    assert len(moves) == 1 and "reward.weights.outline" in moves[0] and "reward.weights.bbox" in moves[0]


def test_without_a_box_in_the_answer_the_box_weight_moves_to_the_outline() -> None:
    funcs, weights = build_reward_functions(
        DEFAULT, class_counts=None, answer_fields=("diagnosis", "location", "polygon")
    )
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "outline_iou"]
    assert weights == pytest.approx([0.4, 0.3, 0.3])


def test_the_box_fallback_keeps_the_outline_weight_without_a_polygon() -> None:
    # Asked for by name: the outline term then scores the filled box, so it has a target.
    funcs, weights = build_reward_functions(config(outline__box_fallback=True), class_counts=None)
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "bbox_iou", "outline_iou"]
    assert weights == pytest.approx([0.4, 0.3, 0.15, 0.15]) and funcs[3].box_fallback is True


def test_without_box_or_polygon_the_localisation_weights_stay_and_a_warning_says_they_pay_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry._logged.clear()
    with caplog.at_level(logging.WARNING, logger="skinderm.rewards.registry"):
        funcs, weights = build_reward_functions(
            DEFAULT, class_counts=None, answer_fields=("diagnosis", "location")
        )
    assert weights == pytest.approx([0.4, 0.3, 0.15, 0.15]) and len(funcs) == 4
    assert any("pays nothing" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({**DEFAULT, "iou_kind": "bbox"}, "reward.iou_kind"),
        ({**DEFAULT, "iou_kind": "mask"}, "reward.iou_kind"),
        (config(weights__iou=0.3), "reward.weights.iou"),
        ({"weights": {"diagnosis": 0.4, "iou": 0.6}}, "reward.weights.iou"),
    ],
)
def test_retired_keys_fail_in_one_line_naming_the_new_keys(cfg: dict, key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(key)) as error:
        build_reward_functions(cfg, class_counts=None)
    message = str(error.value)
    assert "\n" not in message and "retired" in message
    for new_key in ("reward.weights.bbox", "reward.weights.outline", "reward.outline.box_fallback"):
        assert new_key in message


def test_retired_keys_left_null_are_ignored() -> None:
    cfg = {**config(weights__iou=None), "iou_kind": None}  # what conf/reward/default.yaml holds
    _, weights = build_reward_functions(cfg, class_counts=None, answer_fields=ALL_FIELDS)
    assert weights == [0.4, 0.3, 0.15, 0.15]


def test_a_positive_format_weight_adds_the_format_reward_with_its_required_fields() -> None:
    cfg = config(weights__format=0.1, format__required_fields=["diagnosis"])
    funcs, weights = build_reward_functions(cfg, class_counts=None)
    assert [f.__name__ for f in funcs][-1] == "format" and weights[-1] == 0.1
    assert funcs[-1]([' {"diagnosis": "df"} ']) == [1.0]


def test_inverse_frequency_uses_the_training_counts() -> None:
    cfg = config(diagnosis__class_weighting="inverse_frequency")
    funcs, _ = build_reward_functions(cfg, class_counts=HAM10000_CLASS_COUNTS)
    assert funcs[0](['{"diagnosis": "nv"}'], dx=["nv"]) == [pytest.approx(10015 / (7 * 6705))]
    with pytest.raises(ValueError, match="class_counts"):
        build_reward_functions(cfg, class_counts=None)


def test_an_omegaconf_config_works_like_a_dict() -> None:
    cfg = OmegaConf.create(config(weights__format=0.5))
    funcs, weights = build_reward_functions(cfg, class_counts=None, answer_fields=ALL_FIELDS)
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "bbox_iou", "outline_iou", "format"]
    assert weights == [0.4, 0.3, 0.15, 0.15, 0.5]


def test_built_functions_are_picklable() -> None:
    cfg = config(weights__format=1.0, outline__box_fallback=True, spatial__adjacent_credit=0.3)
    funcs, _ = build_reward_functions(cfg, class_counts=None, answer_fields=ALL_FIELDS)
    restored = [pickle.loads(pickle.dumps(f)) for f in funcs]
    assert [f.__name__ for f in restored] == [f.__name__ for f in funcs]
    assert restored[1].adjacent_credit == 0.3 and restored[3].box_fallback is True


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (config(weights__bbox=-0.1), r"reward\.weights\.bbox = -0\.1.*>= 0"),
        (config(weights__outline="x"), r"reward\.weights\.outline = 'x' is not a number"),
        (config(weights__spatial=float("nan")), r"reward\.weights\.spatial"),
        (config(weights__diagnosis=math.inf), r"reward\.weights\.diagnosis"),
        (config(weights__diagnosis="high"), r"reward\.weights\.diagnosis = 'high' is not a number"),
        (config(weights__diagnosis=True), r"reward\.weights\.diagnosis"),
        (config(weights={"diagnosis": 0, "spatial": 0.0, "bbox": 0, "outline": 0, "format": 0}), r"all 0"),
        (config(weights__mask=0.2), r"reward\.weights\.mask is not a component"),
        (config(iou_kind="polygon"), r"reward\.iou_kind .*retired"),
        (config(outline__box_fallback="yes"), r"reward\.outline\.box_fallback = 'yes'"),
        (config(outline__fallback=True), r"reward\.outline\.fallback is not a setting"),
        (config(spatial__adjacent=0.5), r"reward\.spatial\.adjacent is not a setting"),
        (config(spatial__adjacent_credit=2), r"reward\.spatial\.adjacent_credit"),
        (config(diagnosis__class_weighting="balanced"), r"reward\.diagnosis\.class_weighting"),
        (config(format__required_fields=["label"]), r"reward\.format\.required_fields"),
        ({**DEFAULT, "weight": {}}, r"reward\.weight is not a reward setting"),
        (config(diagnosis="none"), r"reward\.diagnosis must be a mapping"),
    ],
)
def test_bad_reward_configs_raise_errors_naming_the_key(cfg: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_reward_functions(cfg, class_counts=None)


def test_missing_weights_count_as_zero() -> None:
    funcs, weights = build_reward_functions({"weights": {"spatial": 1}}, class_counts=None)
    assert [f.__name__ for f in funcs] == ["spatial"] and weights == [1.0]


def test_weighted_total_is_the_weighted_sum_of_the_components() -> None:
    components = {"diagnosis": [1.0, 0.0, 1.0], "spatial": [0.5, 1.0, 0.0], "format": [0.0, 0.0, 0.0]}
    total = weighted_total(components, {"diagnosis": 0.6, "spatial": 0.2, "format": 0.0, "outline_iou": 0.0})
    assert total == pytest.approx([0.6 + 0.1, 0.2, 0.6])  # TRL: sum_k w_k r_k, not divided by sum_k w_k


def test_weighted_total_rejects_missing_components_mismatched_lengths_and_bad_weights() -> None:
    with pytest.raises(ValueError, match="outline_iou"):
        weighted_total({"diagnosis": [1.0]}, {"diagnosis": 1.0, "outline_iou": 0.5})
    with pytest.raises(ValueError, match="differ in length"):
        weighted_total({"diagnosis": [1.0], "spatial": [1.0, 0.0]}, {"diagnosis": 1.0, "spatial": 1.0})
    with pytest.raises(ValueError, match=r"weights\.spatial"):
        weighted_total({"spatial": [1.0]}, {"spatial": -1.0})


def test_public_names_are_the_default_reward_instances() -> None:
    expected = {
        "diagnosis_reward": "diagnosis",
        "spatial_reward": "spatial",
        "bbox_iou_reward": "bbox_iou",
        "outline_iou_reward": "outline_iou",
        "mask_iou_reward": "mask_iou",
        "format_reward": "format",
    }
    for attribute, name in expected.items():
        reward = getattr(rewards, attribute)
        assert callable(reward) and reward.__name__ == name
    factories = [
        "get_diagnosis_reward",
        "get_spatial_reward",
        "get_bbox_iou_reward",
        "get_outline_iou_reward",
        "get_mask_iou_reward",
        "get_format_reward",
    ]
    assert [getattr(rewards, factory)().__name__ for factory in factories] == list(expected.values())


def test_built_functions_accept_the_keyword_call_trl_makes(tmp_path: Path) -> None:
    mask = np.zeros((42, 56), np.uint8)
    mask[10:30, 10:40] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    completion = [
        {
            "role": "assistant",
            "content": '{"diagnosis": "nv", "location": "center-center", "bbox_2d": [10, 10, 40, 30]}',
        }
    ]
    columns = {
        "dx": ["nv"],
        "location": ["center-center"],
        "bbox_2d": [[10, 10, 40, 30]],
        "mask_path": [str(tmp_path / "m.png")],
        "model_width": [56],
        "model_height": [42],
        "image_id": ["ISIC_0000000"],
        "trainer_state": None,
        "log_extra": print,
        "log_metric": print,
    }
    polygon = [[10, 10], [39, 10], [39, 29], [10, 29]]  # the mask's boundary pixels
    completion[0]["content"] = completion[0]["content"][:-1] + f', "polygon": {polygon}}}'
    for fallback in (False, True):
        cfg = config(outline__box_fallback=fallback, weights__format=1.0)
        funcs, _ = build_reward_functions(cfg, class_counts=None, answer_fields=ALL_FIELDS)
        assert len(funcs) == 5
        for func in funcs:
            assert func(prompts=[[]], completions=completion, completion_ids=[[1, 2]], **columns) == [1.0]
