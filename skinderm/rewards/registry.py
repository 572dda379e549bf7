"""From the `reward` config group to TRL's `reward_funcs` + `reward_weights`, and the weighted total.

    weights: {diagnosis: 0.4, spatial: 0.3, bbox: 0.15, outline: 0.15, format: 0.0}
    diagnosis: {class_weighting: none}     # none | inverse_frequency
    spatial: {adjacent_credit: 0.5}        # pay for an edge-adjacent grid cell, in [0, 1]
    outline: {box_fallback: false}         # true: an answer without a polygon is scored by its filled box
    format: {required_fields: [diagnosis, location, bbox_2d]}

The defaults follow the seed: diagnosis 0.4, spatial 0.3, localisation 0.3 split evenly between the
box term (`bbox_iou`: box IoU, what evaluation's box IoU measures) and the outline term
(`outline_iou`: polygon vs mask IoU, what evaluation's outline IoU measures). Each term is maximised
by the true answer, so GRPO is never paid to move away from the truth.

Terms the answer cannot earn. The outline term needs `polygon` in `answer.fields`, the box term
`bbox_2d`. When `answer_fields` lacks one of them, that term would pay 0 to every completion (a
constant: no learning signal, only a smaller share for the others), so its weight MOVES to the
other localisation term (logged once), keeping localisation at its share of the total. Under
`outline.box_fallback: true` the outline term does have a target without a polygon (the filled
box) and keeps its weight. When neither field is taught the localisation weights stay as given and
a warning says they pay nothing.

Only components with weight > 0 (after the move) are returned: a zero-weight reward would change
nothing in the total but would still be computed (and, for the outline, read masks) at every step.
The weights are passed to TRL as given; they need not sum to 1.

Retired keys: `iou_kind` and `weights.iou` (one `iou` weight paying either the box or the filled
box / polygon vs the mask) are refused in one line naming the keys that replaced them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from skinderm.answers import DEFAULT_FIELDS
from skinderm.rewards.diagnosis import CLASS_WEIGHTINGS, get_diagnosis_reward
from skinderm.rewards.format import get_format_reward
from skinderm.rewards.iou import get_bbox_iou_reward, get_outline_iou_reward
from skinderm.rewards.spatial import DEFAULT_ADJACENT_CREDIT, check_adjacent_credit, get_spatial_reward

log = logging.getLogger(__name__)

RewardFn = Callable[..., list[float | None]]
WEIGHT_KEYS: tuple[str, ...] = ("diagnosis", "spatial", "bbox", "outline", "format")
# The answer field each localisation term reads, and where its weight goes when that field is not taught.
LOCALISATION_FIELDS: dict[str, str] = {"bbox": "bbox_2d", "outline": "polygon"}
_PARTNER: dict[str, str] = {"bbox": "outline", "outline": "bbox"}
# The answer field each reward function (by its name, as TRL logs it) judges; format judges the whole
# answer. GRPO's field-level credit pays each field's tokens for its own term (skinderm/training/credit.py).
REWARD_FIELDS: dict[str, str | None] = {
    "diagnosis": "diagnosis",
    "spatial": "location",
    "bbox_iou": "bbox_2d",
    "outline_iou": "polygon",
    "format": None,
}
_REWARD_KEYS = frozenset({"weights", "diagnosis", "spatial", "outline", "format", "iou_kind"})
RETIRED_MESSAGE = (
    "is retired: the box and the outline are separate terms now, "
    "reward.weights.bbox (box IoU) and reward.weights.outline (polygon vs mask IoU); "
    "reward.outline.box_fallback=true scores an answer without a polygon by its filled box"
)
_logged: set[str] = set()


def _log_once(level: int, message: str) -> None:
    """Log `message` once per process: the registry is built for every training run and every val check."""
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


def retired_key_error(reward_cfg: Mapping[str, Any]) -> str | None:
    """The one-line message for a retired key set in `reward_cfg` (not None), else None.

    Shared by the registry and the config check (skinderm.config), so both say the same thing.
    `null` is how conf/reward/default.yaml keeps the retired keys overridable (so that an old command
    line reaches this message instead of Hydra's "not in struct").
    """
    if reward_cfg.get("iou_kind") is not None:
        return f"reward.iou_kind = {reward_cfg['iou_kind']!r} {RETIRED_MESSAGE}"
    weights = reward_cfg.get("weights")
    if isinstance(weights, Mapping) and weights.get("iou") is not None:
        return f"reward.weights.iou = {weights['iou']!r} {RETIRED_MESSAGE}"
    return None


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


def effective_weights(
    weights: Mapping[str, float], answer_fields: Sequence[str], *, box_fallback: bool = False
) -> dict[str, float]:
    """The weights after moving a localisation term's weight to its partner when the answer does not
    carry the term's field (see the module docstring); logged once per distinct move."""
    moved = dict(weights)
    fields = set(answer_fields)
    for term, field_name in LOCALISATION_FIELDS.items():
        if field_name in fields or (term == "outline" and box_fallback and "bbox_2d" in fields):
            continue
        partner = _PARTNER[term]
        if moved[term] <= 0:
            continue
        if LOCALISATION_FIELDS[partner] not in fields:
            _log_once(
                logging.WARNING,
                f"reward.weights.{term} = {moved[term]} pays nothing: answer.fields {list(answer_fields)} "
                f"has neither bbox_2d nor polygon",
            )
            continue
        _log_once(
            logging.INFO,
            f"answer.fields {list(answer_fields)} has no {field_name}: reward.weights.{term} "
            f"({moved[term]}) moves to reward.weights.{partner} ({moved[partner]} -> "
            f"{moved[partner] + moved[term]})",
        )
        moved[partner] += moved[term]
        moved[term] = 0.0
    return moved


def _section(reward_cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = reward_cfg.get(key)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ValueError(f"reward.{key} must be a mapping, got {section!r}")
    return section


def _known_keys(section: Mapping[str, Any], key: str, allowed: Sequence[str]) -> None:
    unknown = sorted(str(name) for name in section if name not in allowed)
    if unknown:
        raise ValueError(f"reward.{key}.{unknown[0]} is not a setting; known: {list(allowed)}")


def build_reward_functions(
    reward_cfg: Mapping[str, Any],
    *,
    class_counts: Mapping[str, int] | None = None,
    answer_fields: Sequence[str] | None = None,
) -> tuple[list[RewardFn], list[float]]:
    """TRL `reward_funcs` and `reward_weights` for the `reward` config (only weights > 0, in the order
    diagnosis, spatial, bbox_iou, outline_iou, format).

    `class_counts` (training split images per class) is needed for
    `diagnosis.class_weighting: inverse_frequency`. `answer_fields` is `answer.fields`, the fields the
    model is taught to answer (default: skinderm.answers.DEFAULT_FIELDS); a localisation term whose
    field is absent hands its weight to the other one. Raises ValueError naming the bad key.
    """
    retired = retired_key_error(reward_cfg)
    if retired is not None:
        raise ValueError(retired)
    unknown = sorted(str(key) for key in reward_cfg if key not in _REWARD_KEYS)
    if unknown:
        known = sorted(_REWARD_KEYS - {"iou_kind"})
        raise ValueError(f"reward.{unknown[0]} is not a reward setting; known keys: {known}")
    raw_weights = {key: value for key, value in _section(reward_cfg, "weights").items() if key != "iou"}
    bad_keys = sorted(str(key) for key in raw_weights if key not in WEIGHT_KEYS)
    if bad_keys:
        raise ValueError(f"reward.weights.{bad_keys[0]} is not a component; choose from {list(WEIGHT_KEYS)}")
    weights = validate_weights({key: raw_weights.get(key, 0.0) for key in WEIGHT_KEYS})

    diagnosis_cfg = _section(reward_cfg, "diagnosis")
    spatial_cfg = _section(reward_cfg, "spatial")
    outline_cfg = _section(reward_cfg, "outline")
    format_cfg = _section(reward_cfg, "format")
    _known_keys(spatial_cfg, "spatial", ["adjacent_credit"])
    _known_keys(outline_cfg, "outline", ["box_fallback"])
    required = format_cfg.get("required_fields", DEFAULT_FIELDS)
    adjacent_credit = check_adjacent_credit(spatial_cfg.get("adjacent_credit", DEFAULT_ADJACENT_CREDIT))
    box_fallback = outline_cfg.get("box_fallback", False)
    if not isinstance(box_fallback, bool):
        raise ValueError(f"reward.outline.box_fallback = {box_fallback!r} must be true or false")

    class_weighting = diagnosis_cfg.get("class_weighting", "none")
    if class_weighting not in CLASS_WEIGHTINGS:
        raise ValueError(
            f"reward.diagnosis.class_weighting = {class_weighting!r}; choose one of {list(CLASS_WEIGHTINGS)}"
        )
    fields = tuple(DEFAULT_FIELDS if answer_fields is None else answer_fields)
    weights = effective_weights(weights, fields, box_fallback=box_fallback)
    # Settings are checked whatever the weights, so a typo fails even where its weight is 0 today.
    format_fn = get_format_reward(required_fields=required)
    builders: dict[str, Callable[[], RewardFn]] = {
        "diagnosis": lambda: get_diagnosis_reward(class_weighting=class_weighting, class_counts=class_counts),
        "spatial": lambda: get_spatial_reward(adjacent_credit=adjacent_credit),
        "bbox": get_bbox_iou_reward,
        "outline": lambda: get_outline_iou_reward(box_fallback=box_fallback),
        "format": lambda: format_fn,
    }
    used = [key for key in WEIGHT_KEYS if weights[key] > 0]
    return [builders[key]() for key in used], [weights[key] for key in used]


def _score(value: Any) -> float | None:
    """A component score as a float, None for "not applicable" (None or NaN, as TRL reads both)."""
    if value is None:
        return None
    score = float(value)
    return None if math.isnan(score) else score


def weighted_total(
    components: Mapping[str, Sequence[float | None]], weights: Mapping[str, float]
) -> list[float | None]:
    """Per-completion GRPO total reward exactly as TRL 1.16's GRPOTrainer computes it.

    TRL (`_calculate_rewards` and `_generate_and_score_completions`) turns a None reward into NaN,
    then takes `(rewards_per_func * reward_weights).nansum(dim=1)`: a term without ground truth is
    simply left out (NOT renormalised over the remaining weights), and a row where EVERY term is
    None is "unscorable": its total is NaN, excluded from the group mean, advantage 0. Here that
    row's total is None. So the total is sum_k w_k r_k over the terms present; with weights summing
    to 1 (every conf/reward option) a full answer lies in [0, 1].

    Keys of `weights` with weight > 0 must be in `components`; all component lists must have the
    same length. A zero-weight term adds nothing (TRL adds 0 * r) but, if given, still makes its row
    scorable, as a zero-weight reward function does in TRL.
    """
    checked = validate_weights(weights, prefix="weights")
    used = {key: weight for key, weight in checked.items() if weight > 0}
    missing = sorted(key for key in used if key not in components)
    if missing:
        raise ValueError(f"weighted_total: no scores for weighted {missing}; got {sorted(components)}")
    scored = [key for key in checked if key in components]  # TRL's reward_funcs: every term it is given
    lengths = {key: len(components[key]) for key in scored}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"weighted_total: component lists differ in length: {lengths}")
    count = next(iter(lengths.values()))
    totals: list[float | None] = []
    for i in range(count):
        row = {key: _score(components[key][i]) for key in scored}
        if all(score is None for score in row.values()):
            totals.append(None)  # unscorable: TRL's NaN
            continue
        totals.append(
            sum(used[key] * score for key, score in row.items() if key in used and score is not None)
        )
    return totals
