"""GRPO reward functions, TRL style: `fn(completions, **columns) -> list[float | None]`, values in [0, 1].

Every function parses completions with `skinderm.answers.parse_answer` (the format SFT teaches) and
reads its ground truth from dataset columns that TRL passes as keyword arguments, aligned with the
completions. Coordinates are pixels of the image the model saw (after smart_resize). Each term pays
what its evaluation metric measures, so the true answer earns every term's maximum.

| name (logged as rewards/<name>/mean) | weight key (default) | columns | pays |
|---|---|---|---|
| diagnosis | diagnosis (0.4) | dx | 1 for exactly the true class and nothing else |
| spatial | spatial (0.3) | location | 1 true 3x3 cell, `spatial.adjacent_credit` (0.5) adjacent |
| bbox_iou | bbox (0.15) | bbox_2d, model_width, model_height | box IoU with the true box |
| outline_iou | outline (0.15) | mask_path, model_width, model_height | polygon vs mask IoU |
| format | format (0) | - | 1 when every required field is present and valid |

diagnosis reads parse_diagnosis and has an inverse-frequency option. outline_iou pays 0 for an
answer without a polygon; `outline.box_fallback: true` scores the filled box instead (off by
default: on round lesions it pays shrunk boxes, see skinderm/rewards/iou.py).

Box IoU and the bad-box rule are skinderm.geometry's, the ones evaluation uses: an inverted,
zero-area or non-finite box earns 0. Rewards never raise on a completion, whatever the model wrote.
A row without ground truth for a term (no class, no location, no box, no mask) gets None from that
term: TRL leaves it out of that completion's weighted sum (`weighted_total` mirrors TRL's rule).
They raise ValueError only for a set-up error: a dataset column the reward needs is absent or
misaligned. `build_reward_functions` maps the `reward` config group to funcs + weights.
`mask_iou_reward` (polygon, else filled box; logged "mask_iou") is the legacy metric evaluation's
`mask_iou` reports; the registry never builds it.
"""

from __future__ import annotations

from skinderm.rewards.diagnosis import DiagnosisReward, diagnosis_reward, get_diagnosis_reward
from skinderm.rewards.format import FormatReward, format_reward, get_format_reward
from skinderm.rewards.iou import (
    BoxIoUReward,
    MaskIoUReward,
    OutlineIoUReward,
    bbox_iou_reward,
    get_bbox_iou_reward,
    get_mask_iou_reward,
    get_outline_iou_reward,
    mask_iou_reward,
    outline_iou_reward,
)
from skinderm.rewards.registry import WEIGHT_KEYS, build_reward_functions, retired_key_error, weighted_total
from skinderm.rewards.spatial import SpatialReward, get_spatial_reward, spatial_reward

__all__ = [
    "WEIGHT_KEYS",
    "BoxIoUReward",
    "DiagnosisReward",
    "FormatReward",
    "MaskIoUReward",
    "OutlineIoUReward",
    "SpatialReward",
    "bbox_iou_reward",
    "build_reward_functions",
    "diagnosis_reward",
    "format_reward",
    "get_bbox_iou_reward",
    "get_diagnosis_reward",
    "get_format_reward",
    "get_mask_iou_reward",
    "get_outline_iou_reward",
    "get_spatial_reward",
    "mask_iou_reward",
    "outline_iou_reward",
    "retired_key_error",
    "spatial_reward",
    "weighted_total",
]
