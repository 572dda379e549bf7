"""From the `reward` config group to TRL's `reward_funcs` + `reward_weights`, and the weighted total.

    weights: {diagnosis: 0.4, spatial: 0.3, iou: 0.3, format: 0.0}
    iou_kind: mask                         # what the `iou` weight pays for: mask | bbox
    diagnosis: {class_weighting: none}     # none | inverse_frequency
    format: {required_fields: [diagnosis, location, bbox_2d]}

Only components with weight > 0 are returned: a zero-weight reward would change nothing in the
total but would still be computed (and, for mask IoU, read masks) at every step. To watch a
component without training on it, compute it at evaluation time instead (skinderm.evaluation).
The weights are passed to TRL as given (GRPO's total is sum_k w_k r_k); they need not sum to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from skinderm.answers import DEFAULT_FIELDS
from skinderm.rewards.diagnosis import CLASS_WEIGHTINGS, get_diagnosis_reward
from skinderm.rewards.format import get_format_reward
from skinderm.rewards.iou import IOU_KINDS, get_bbox_iou_reward, get_mask_iou_reward
from skinderm.rewards.spatial import get_spatial_reward

RewardFn = Callable[..., list[float]]
WEIGHT_KEYS: tuple[str, ...] = ("diagnosis", "spatial", "iou", "format")
_REWARD_KEYS = frozenset({"weights", "iou_kind", "diagnosis", "format"})


def validate_weights(weights: Mapping[str, Any], prefix: str = "reward.weights") -> dict[str, float]:
    """Weights as floats; ValueError naming `<prefix>.<key>` for a non-number, negative or non-finite
    weight, and for all weights being 0."""
    checked: dict[str, float] = {}
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{prefix}.{key} = {value!r} is not a number; give a weight >= 0 (0 = off)")
        weight = float(value)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"{prefix}.{key} = {value!r}: weights must be finite and >= 0; use 0 to switch it off"
            )
        checked[str(key)] = weight
    if not any(weight > 0 for weight in checked.values()):
        raise ValueError(f"{prefix} are all 0 ({checked}); set at least one of {prefix}.<name> > 0")
    return checked


def _section(reward_cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = reward_cfg.get(key)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ValueError(f"reward.{key} must be a mapping, got {section!r}")
    return section


def build_reward_functions(
    reward_cfg: Mapping[str, Any], *, class_counts: Mapping[str, int] | None = None
) -> tuple[list[RewardFn], list[float]]:
    """TRL `reward_funcs` and `reward_weights` for the `reward` config (only weights > 0, in the order
    diagnosis, spatial, iou, format). `class_counts` (training split images per class) is needed
    for `diagnosis.class_weighting: inverse_frequency`. Raises ValueError naming the bad key."""
    unknown = sorted(str(key) for key in reward_cfg if key not in _REWARD_KEYS)
    if unknown:
        raise ValueError(f"reward.{unknown[0]} is not a reward setting; known keys: {sorted(_REWARD_KEYS)}")
    raw_weights = _section(reward_cfg, "weights")
    bad_keys = sorted(str(key) for key in raw_weights if key not in WEIGHT_KEYS)
    if bad_keys:
        raise ValueError(f"reward.weights.{bad_keys[0]} is not a component; choose from {list(WEIGHT_KEYS)}")
    weights = validate_weights({key: raw_weights.get(key, 0.0) for key in WEIGHT_KEYS})

    iou_kind = reward_cfg.get("iou_kind", "mask")
    if iou_kind not in IOU_KINDS:
        raise ValueError(f"reward.iou_kind = {iou_kind!r}; choose one of {list(IOU_KINDS)}")
    diagnosis_cfg = _section(reward_cfg, "diagnosis")
    format_cfg = _section(reward_cfg, "format")
    required = format_cfg.get("required_fields", DEFAULT_FIELDS)

    class_weighting = diagnosis_cfg.get("class_weighting", "none")
    if class_weighting not in CLASS_WEIGHTINGS:
        raise ValueError(
            f"reward.diagnosis.class_weighting = {class_weighting!r}; choose one of {list(CLASS_WEIGHTINGS)}"
        )
    # Settings are checked whatever the weights, so a typo fails even where its weight is 0 today.
    format_fn = get_format_reward(required_fields=required)
    builders: dict[str, Callable[[], RewardFn]] = {
        "diagnosis": lambda: get_diagnosis_reward(class_weighting=class_weighting, class_counts=class_counts),
        "spatial": get_spatial_reward,
        "iou": get_mask_iou_reward if iou_kind == "mask" else get_bbox_iou_reward,
        "format": lambda: format_fn,
    }
    used = [key for key in WEIGHT_KEYS if weights[key] > 0]
    return [builders[key]() for key in used], [weights[key] for key in used]


def weighted_total(components: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> list[float]:
    """Per-completion sum_k w_k * r_k / sum_k w_k: the GRPO total reward divided by the weight sum,
    so it lies in [0, 1] and compares across weightings. Keys of `weights` with weight > 0 must be
    in `components`; all component lists must have the same length."""
    checked = validate_weights(weights, prefix="weights")
    used = {key: weight for key, weight in checked.items() if weight > 0}
    missing = sorted(key for key in used if key not in components)
    if missing:
        raise ValueError(f"weighted_total: no scores for weighted {missing}; got {sorted(components)}")
    lengths = {key: len(components[key]) for key in used}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"weighted_total: component lists differ in length: {lengths}")
    count = next(iter(lengths.values()))
    weight_sum = sum(used.values())
    return [
        sum(weight * float(components[key][i]) for key, weight in used.items()) / weight_sum
        for i in range(count)
    ]
