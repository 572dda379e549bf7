"""GRPO reward functions, TRL style: `fn(completions, **columns) -> list[float]`, each value in [0, 1].

Every function parses completions with `skinderm.answers.parse_answer` (the format SFT teaches) and
reads its ground truth from dataset columns that TRL passes as keyword arguments, aligned with the
completions. Coordinates are pixels of the image the model saw (after smart_resize).

| name (logged as rewards/<name>/mean) | columns | pays |
|---|---|---|
| diagnosis | dx | 1 for exactly the true class and nothing else (parse_diagnosis); inverse-frequency option |
| spatial | location | 1 true grid cell, 0.5 edge-adjacent cell |
| bbox_iou | bbox_2d, model_width, model_height | IoU of the answer box (clipped) with the true box |
| mask_iou | mask_path, model_width, model_height | IoU of the answer polygon (else box) with the mask |
| format | - | 1 when every required field is present and valid |

Box IoU and the bad-box rule are skinderm.geometry's, the ones evaluation uses: an inverted,
zero-area or non-finite box earns 0. Rewards never raise on a completion, whatever the model wrote;
a missing ground truth (None) gives 0. They raise ValueError only for a set-up error: a dataset
column the reward needs is absent or misaligned. `build_reward_functions` maps the `reward` config
group to funcs + weights.
"""

from __future__ import annotations

from skinderm.rewards.diagnosis import DiagnosisReward, diagnosis_reward, get_diagnosis_reward
from skinderm.rewards.format import FormatReward, format_reward, get_format_reward
from skinderm.rewards.iou import (
    BoxIoUReward,
    MaskIoUReward,
    bbox_iou_reward,
    get_bbox_iou_reward,
    get_mask_iou_reward,
    mask_iou_reward,
)
from skinderm.rewards.registry import WEIGHT_KEYS, build_reward_functions, weighted_total
from skinderm.rewards.spatial import SpatialReward, get_spatial_reward, spatial_reward

__all__ = [
    "WEIGHT_KEYS",
    "BoxIoUReward",
    "DiagnosisReward",
    "FormatReward",
    "MaskIoUReward",
    "SpatialReward",
    "bbox_iou_reward",
    "build_reward_functions",
    "diagnosis_reward",
    "format_reward",
    "get_bbox_iou_reward",
    "get_diagnosis_reward",
    "get_format_reward",
    "get_mask_iou_reward",
    "get_spatial_reward",
    "mask_iou_reward",
    "spatial_reward",
    "weighted_total",
]
