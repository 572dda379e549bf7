"""From the reward config to TRL's reward_funcs + reward_weights, and the weighted total."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

import skinderm.rewards as rewards
from skinderm.data.classes import HAM10000_CLASS_COUNTS
from skinderm.rewards import build_reward_functions, weighted_total

DEFAULT = {
    "weights": {"diagnosis": 0.4, "spatial": 0.3, "iou": 0.3, "format": 0.0},
    "iou_kind": "mask",
    "diagnosis": {"class_weighting": "none"},
    "format": {"required_fields": ["diagnosis", "location", "bbox_2d"]},
}


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
    funcs, weights = build_reward_functions(DEFAULT, class_counts=None)
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "mask_iou"]  # format (0) left out
    assert weights == [0.4, 0.3, 0.3]


def test_iou_kind_picks_the_box_or_the_mask_reward() -> None:
    funcs, _ = build_reward_functions(config(iou_kind="bbox"), class_counts=None)
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "bbox_iou"]


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
    funcs, weights = build_reward_functions(OmegaConf.create(config(weights__format=0.5)), class_counts=None)
    assert [f.__name__ for f in funcs] == ["diagnosis", "spatial", "mask_iou", "format"]
    assert weights == [0.4, 0.3, 0.3, 0.5]


def test_built_functions_are_picklable() -> None:
    funcs, _ = build_reward_functions(config(weights__format=1.0), class_counts=None)
    assert [pickle.loads(pickle.dumps(f)).__name__ for f in funcs] == [f.__name__ for f in funcs]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (config(weights__iou=-0.1), r"reward\.weights\.iou = -0\.1.*>= 0"),
        (config(weights__spatial=float("nan")), r"reward\.weights\.spatial"),
        (config(weights__diagnosis=math.inf), r"reward\.weights\.diagnosis"),
        (config(weights__diagnosis="high"), r"reward\.weights\.diagnosis = 'high' is not a number"),
        (config(weights__diagnosis=True), r"reward\.weights\.diagnosis"),
        (config(weights={"diagnosis": 0, "spatial": 0.0, "iou": 0, "format": 0}), r"all 0"),
        (config(weights__mask=0.2), r"reward\.weights\.mask is not a component"),
        (config(iou_kind="polygon"), r"reward\.iou_kind"),
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


def test_weighted_total_is_the_weighted_mean_of_the_components() -> None:
    components = {"diagnosis": [1.0, 0.0, 1.0], "spatial": [0.5, 1.0, 0.0], "format": [0.0, 0.0, 0.0]}
    total = weighted_total(components, {"diagnosis": 0.6, "spatial": 0.2, "format": 0.0, "mask_iou": 0.0})
    assert total == pytest.approx([(0.6 + 0.1) / 0.8, 0.2 / 0.8, 0.6 / 0.8])


def test_weighted_total_rejects_missing_components_mismatched_lengths_and_bad_weights() -> None:
    with pytest.raises(ValueError, match="mask_iou"):
        weighted_total({"diagnosis": [1.0]}, {"diagnosis": 1.0, "mask_iou": 0.5})
    with pytest.raises(ValueError, match="differ in length"):
        weighted_total({"diagnosis": [1.0], "spatial": [1.0, 0.0]}, {"diagnosis": 1.0, "spatial": 1.0})
    with pytest.raises(ValueError, match=r"weights\.spatial"):
        weighted_total({"spatial": [1.0]}, {"spatial": -1.0})


def test_public_names_are_the_default_reward_instances() -> None:
    expected = {
        "diagnosis_reward": "diagnosis",
        "spatial_reward": "spatial",
        "bbox_iou_reward": "bbox_iou",
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
    for kind in ("mask", "bbox"):
        funcs, _ = build_reward_functions(config(iou_kind=kind, weights__format=1.0), class_counts=None)
        for func in funcs:
            assert func(prompts=[[]], completions=completion, completion_ids=[[1, 2]], **columns) == [1.0]
