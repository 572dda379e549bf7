"""Every reward term is maximised by the truth: no perturbation of the true answer scores higher.

GRPO raises whatever it is paid for, so a term that pays a perturbed answer more than the true one
teaches the model to move away from the truth (issue 15: the filled-box-vs-mask stand-in paid a box
shrunk ~4/3 px a side more than the exact box). For each term, hypothesis draws random truths
(boxes, lesion masks rasterised from random outlines, classes, cells) and random perturbations
(shift, shrink, grow, per-edge and per-vertex moves) and checks the truth's score is the maximum;
then the same for the weighted total TRL trains on. Also: missing ground truth gives None, and the
weighted total follows TRL 1.16's rule for None (read from its source, mirrored in torch here).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from skinderm.answers import ANSWER_FIELDS, DEFAULT_FIELDS
from skinderm.conversations import mask_polygon
from skinderm.data.annotation import largest_component
from skinderm.data.classes import CLASS_CODES, HAM10000_CLASS_COUNTS, LOCATIONS
from skinderm.rewards import (
    bbox_iou_reward,
    build_reward_functions,
    format_reward,
    get_diagnosis_reward,
    get_format_reward,
    get_outline_iou_reward,
    get_spatial_reward,
    outline_iou_reward,
    weighted_total,
)

W, H = 96, 72  # model-space size of the image
DEFAULT_CFG: dict[str, Any] = {
    "weights": {"diagnosis": 0.4, "spatial": 0.3, "bbox": 0.15, "outline": 0.15, "format": 0.0},
    "diagnosis": {"class_weighting": "none"},
    "spatial": {"adjacent_credit": 0.5},
    "outline": {"box_fallback": False},
    "format": {"required_fields": ["diagnosis", "location", "bbox_2d"]},
}
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def completion(**fields: Any) -> str:
    return json.dumps(fields)


# --- strategies ------------------------------------------------------------------------------------

true_boxes = st.tuples(
    st.integers(0, W - 8), st.integers(0, H - 8), st.integers(4, W), st.integers(4, H)
).map(lambda t: [t[0], t[1], min(W, t[0] + t[2]), min(H, t[1] + t[3])])
offsets = st.floats(-30, 30, allow_nan=False) | st.integers(-30, 30)
scales = st.floats(0.3, 2.5, allow_nan=False)


@st.composite
def perturbed_boxes(draw: st.DrawFn, box: Sequence[float]) -> list[float]:
    """The true box shifted, shrunk or grown about its centre, or with each edge moved on its own."""
    x1, y1, x2, y2 = box
    kind = draw(st.sampled_from(["shift", "scale", "edges", "scale_xy"]))
    if kind == "shift":
        dx, dy = draw(offsets), draw(offsets)
        return [x1 + dx, y1 + dy, x2 + dx, y2 + dy]
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    if kind in ("scale", "scale_xy"):
        sx = draw(scales)
        sy = sx if kind == "scale" else draw(scales)
        return [cx - sx * w / 2, cy - sy * h / 2, cx + sx * w / 2, cy + sy * h / 2]
    moves = [draw(offsets) for _ in range(4)]
    return [x1 + moves[0], y1 + moves[1], x2 + moves[2], y2 + moves[3]]


@st.composite
def lesion_outlines(draw: st.DrawFn) -> np.ndarray:
    """A random star-shaped outline (radii at sorted angles): convex, concave, elongated lesions."""
    n = draw(st.integers(3, 14))
    cx, cy = draw(st.floats(20, W - 20)), draw(st.floats(18, H - 18))
    base = draw(st.floats(5, 24))
    angles = np.sort(np.array(draw(st.lists(st.floats(0, 2 * math.pi), min_size=n, max_size=n, unique=True))))
    radii = np.array(draw(st.lists(st.floats(0.4, 1.0), min_size=n, max_size=n))) * base
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.rint(points).astype(np.int32)


def rasterise(outline: np.ndarray) -> np.ndarray:
    """The lesion mask of an outline; hypothesis discards lesions too thin for a 3-point outline
    (a line of pixels: its contour has 2 points, which no polygon answer holds)."""
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [outline.reshape(-1, 1, 2)], 255)
    assume(largest_component(mask) is not None and len(true_outline(mask)) >= 3)
    return mask


def true_outline(mask: np.ndarray) -> list[list[int]]:
    """The largest component's full outline: what the outline term's target is the raster of."""
    component = largest_component(mask)
    assert component is not None
    contours, _ = cv2.findContours(component.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return max(contours, key=len).reshape(-1, 2).tolist()


@st.composite
def perturbed_polygons(draw: st.DrawFn, polygon: Sequence[Sequence[float]]) -> list[list[float]]:
    """The true outline shifted, shrunk/grown about its centroid, with vertices moved, or thinned."""
    points = np.asarray(polygon, dtype=np.float64)
    kind = draw(st.sampled_from(["shift", "scale", "vertices", "thin"]))
    if kind == "shift":
        points = points + np.array([draw(offsets), draw(offsets)], dtype=np.float64)
    elif kind == "scale":
        centre = points.mean(axis=0)
        points = centre + (points - centre) * (draw(scales), draw(scales))
    elif kind == "vertices":
        moved = draw(st.lists(st.integers(0, len(points) - 1), min_size=1, max_size=6))
        for index in moved:
            points[index] += (draw(st.integers(-6, 6)), draw(st.integers(-6, 6)))
    else:
        step = draw(st.integers(2, 8))
        points = points[::step]
    return points.tolist()


@pytest.fixture
def mask_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lesions")


_counter = itertools.count()


def write_mask(folder: Path, mask: np.ndarray) -> str:
    path = folder / f"mask_{next(_counter)}.png"  # a fresh path per mask: load_mask caches by path
    cv2.imwrite(str(path), mask)
    return str(path)


def outline_scores(completions: list[str], path: str, reward: Any = outline_iou_reward) -> list[float | None]:
    n = len(completions)
    return reward(completions, mask_path=[path] * n, model_width=[W] * n, model_height=[H] * n)


# --- each term -------------------------------------------------------------------------------------


@SETTINGS
@given(box=true_boxes, data=st.data())
def test_box_term_no_perturbation_of_the_true_box_scores_higher(box: list[int], data: st.DataObject) -> None:
    perturbed = [data.draw(perturbed_boxes(box)) for _ in range(8)]
    answers = [completion(bbox_2d=box)] + [completion(bbox_2d=p) for p in perturbed]
    n = len(answers)
    scores = bbox_iou_reward(answers, bbox_2d=[box] * n, model_width=[W] * n, model_height=[H] * n)
    assert scores[0] == 1.0
    assert all(score is not None and score <= scores[0] for score in scores[1:]), (box, perturbed, scores)


@SETTINGS
@given(outline=lesion_outlines(), data=st.data())
def test_outline_term_no_perturbation_of_the_true_outline_scores_higher(
    mask_dir: Path, outline: np.ndarray, data: st.DataObject
) -> None:
    mask = rasterise(outline)
    path = write_mask(mask_dir, mask)
    truth = true_outline(mask)
    perturbed = [data.draw(perturbed_polygons(truth)) for _ in range(6)]
    simplified = mask_polygon(mask, 16)  # what SFT teaches: never better than the full outline
    candidates = [truth, outline.tolist(), *perturbed, *([simplified] if simplified else [])]
    scores = outline_scores([completion(polygon=p) for p in candidates], path)
    assert scores[0] == 1.0  # the rasterised true outline IS the target
    assert all(score is not None and score <= scores[0] for score in scores[1:]), scores


@SETTINGS
@given(outline=lesion_outlines(), second=lesion_outlines())
def test_outline_target_is_the_largest_component_that_the_taught_polygon_outlines(
    mask_dir: Path, outline: np.ndarray, second: np.ndarray
) -> None:
    # A second blob does not make the true (largest-component) outline lose to one covering both.
    mask = np.maximum(rasterise(outline), rasterise(second))
    path = write_mask(mask_dir, mask)
    truth = true_outline(mask)
    hull = cv2.convexHull(np.argwhere(mask > 0)[:, ::-1].astype(np.int32)).reshape(-1, 2).tolist()
    scores = outline_scores([completion(polygon=truth), completion(polygon=hull)], path)
    assert scores[0] == 1.0 and scores[1] <= 1.0


def ellipse_mask(width: int, height: int, axes: tuple[int, int], angle: float = 0.0) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 2, height // 2), axes, angle, 0, 360, 255, -1)
    return mask


def mask_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("fields", [DEFAULT_FIELDS, ANSWER_FIELDS], ids=["no polygon", "with polygon"])
@pytest.mark.parametrize("axes", [(60, 30), (40, 40), (25, 12)])
def test_the_filled_box_shrink_exploit_no_longer_pays(
    tmp_path: Path, fields: tuple[str, ...], axes: tuple[int, int]
) -> None:
    """Issue 15: on an elliptical lesion the filled box paid a box shrunk ~4/3 px a side more than the
    exact box. Under the default weights the exact box now earns more, with or without a polygon."""
    width, height = 200, 100
    mask = ellipse_mask(width, height, axes)
    path = write_mask(tmp_path, mask)
    exact = mask_box(mask)
    shrink = 4 / 3
    shrunk = [exact[0] + shrink, exact[1] + shrink, exact[2] - shrink, exact[3] - shrink]
    answers = [
        completion(diagnosis="nv", location="center-center", bbox_2d=box, polygon=true_outline(mask))
        if "polygon" in fields
        else completion(diagnosis="nv", location="center-center", bbox_2d=box)
        for box in (exact, shrunk)
    ]
    columns = {
        "dx": ["nv"] * 2,
        "location": ["center-center"] * 2,
        "bbox_2d": [exact] * 2,
        "mask_path": [path] * 2,
        "model_width": [width] * 2,
        "model_height": [height] * 2,
    }
    funcs, weights = build_reward_functions(DEFAULT_CFG, class_counts=None, answer_fields=fields)
    components = {func.__name__: func(answers, **columns) for func in funcs}
    total = weighted_total(components, dict(zip(components, weights, strict=True)))
    assert total[0] is not None and total[1] is not None and total[0] > total[1], (components, total)
    # The stand-in, asked for by name, is the exploit: shown here so that it stays opt-in.
    box_only = [completion(bbox_2d=exact), completion(bbox_2d=shrunk)]
    mask_columns = {key: columns[key] for key in ("mask_path", "model_width", "model_height")}
    exact_score, shrunk_score = get_outline_iou_reward(box_fallback=True)(box_only, **mask_columns)
    assert exact_score is not None and shrunk_score is not None and shrunk_score > exact_score
    assert outline_iou_reward(box_only, **mask_columns) == [0.0, 0.0]


@settings(max_examples=40, deadline=None)
@given(truth=st.sampled_from(LOCATIONS), credit=st.floats(0, 1))
def test_spatial_term_no_other_cell_scores_higher(truth: str, credit: float) -> None:
    reward = get_spatial_reward(adjacent_credit=credit)
    scores = reward([completion(location=cell) for cell in LOCATIONS], location=[truth] * len(LOCATIONS))
    assert max(scores) == scores[LOCATIONS.index(truth)] == 1.0  # type: ignore[type-var]


DIAGNOSIS_PERTURBATIONS = [
    "{other}",
    "{truth} or {other}",
    "not {truth}",
    "{truth}?",
    "",
    "maybe {truth}, maybe {other}",
]


@pytest.mark.parametrize("weighting", ["none", "inverse_frequency"])
@pytest.mark.parametrize("truth", CLASS_CODES)
def test_diagnosis_term_no_other_answer_scores_higher(truth: str, weighting: str) -> None:
    reward = get_diagnosis_reward(weighting, HAM10000_CLASS_COUNTS)
    answers = [completion(diagnosis=truth)] + [
        completion(diagnosis=template.format(truth=truth, other=other))
        for other in CLASS_CODES
        if other != truth
        for template in DIAGNOSIS_PERTURBATIONS
    ]
    scores = reward(answers, dx=[truth] * len(answers))
    assert scores[0] is not None and scores[0] > 0
    assert all(score is not None and score <= scores[0] for score in scores[1:])


@settings(max_examples=40, deadline=None)
@given(box=true_boxes, data=st.data())
def test_format_term_the_true_answer_scores_the_maximum(box: list[int], data: st.DataObject) -> None:
    truth = {"diagnosis": "mel", "location": "top-left", "bbox_2d": box, "polygon": [[1, 1], [9, 1], [5, 8]]}
    dropped = data.draw(st.sampled_from(list(truth)))
    perturbed = {key: value for key, value in truth.items() if key != dropped}
    reward = get_format_reward(list(ANSWER_FIELDS))
    scores = reward(
        [json.dumps(truth), json.dumps(perturbed), completion(bbox_2d=data.draw(perturbed_boxes(box)))]
    )
    assert scores[0] == 1.0 and max(scores) == 1.0  # type: ignore[type-var]
    assert format_reward([json.dumps(truth)]) == [1.0]


# --- the weighted total ----------------------------------------------------------------------------


@SETTINGS
@given(outline=lesion_outlines(), data=st.data())
def test_total_no_perturbation_of_the_true_answer_scores_higher(
    mask_dir: Path, outline: np.ndarray, data: st.DataObject
) -> None:
    mask = rasterise(outline)
    path = write_mask(mask_dir, mask)
    polygon, box = true_outline(mask), mask_box(mask)
    dx, location = data.draw(st.sampled_from(CLASS_CODES)), data.draw(st.sampled_from(LOCATIONS))
    truth = {"diagnosis": dx, "location": location, "bbox_2d": box, "polygon": polygon}
    answers = [truth]
    for _ in range(6):
        perturbed = dict(truth)
        field = data.draw(st.sampled_from(["bbox_2d", "polygon", "location", "diagnosis", "all"]))
        if field in ("bbox_2d", "all"):
            perturbed["bbox_2d"] = data.draw(perturbed_boxes(box))
        if field in ("polygon", "all"):
            perturbed["polygon"] = data.draw(perturbed_polygons(polygon))
        if field in ("location", "all"):
            perturbed["location"] = data.draw(st.sampled_from(LOCATIONS))
        if field in ("diagnosis", "all"):
            perturbed["diagnosis"] = data.draw(st.sampled_from(CLASS_CODES))
        answers.append(perturbed)
    n = len(answers)
    columns = {
        "dx": [dx] * n,
        "location": [location] * n,
        "bbox_2d": [box] * n,
        "mask_path": [path] * n,
        "model_width": [W] * n,
        "model_height": [H] * n,
    }
    texts = [json.dumps(answer) for answer in answers]
    for fields in (ANSWER_FIELDS, DEFAULT_FIELDS):
        funcs, weights = build_reward_functions(DEFAULT_CFG, class_counts=None, answer_fields=fields)
        components = {func.__name__: func(texts, **columns) for func in funcs}
        total = weighted_total(components, dict(zip(components, weights, strict=True)))
        assert total[0] == pytest.approx(sum(weights))  # every term paid in full
        assert all(value is not None and value <= total[0] + 1e-12 for value in total[1:]), total


# --- missing ground truth and TRL's rule for None --------------------------------------------------


def test_missing_ground_truth_gives_none_for_that_term_only(tmp_path: Path) -> None:
    mask = ellipse_mask(W, H, (20, 12))
    path = write_mask(tmp_path, mask)
    answer = completion(
        diagnosis="nv", location="center-center", bbox_2d=mask_box(mask), polygon=true_outline(mask)
    )
    columns = {  # row 0 complete; row 1 no mask (so no box, no location); row 2 no class either
        "dx": ["nv", "nv", None],
        "location": ["center-center", None, None],
        "bbox_2d": [mask_box(mask), None, None],
        "mask_path": [path, None, None],
        "model_width": [W] * 3,
        "model_height": [H] * 3,
    }
    funcs, weights = build_reward_functions(DEFAULT_CFG, class_counts=None, answer_fields=ANSWER_FIELDS)
    components = {func.__name__: func([answer] * 3, **columns) for func in funcs}
    assert components == {
        "diagnosis": [1.0, 1.0, None],
        "spatial": [1.0, None, None],
        "bbox_iou": [1.0, None, None],
        "outline_iou": [1.0, None, None],
    }
    total = weighted_total(components, dict(zip(components, weights, strict=True)))
    assert total == [pytest.approx(1.0), pytest.approx(0.4), None]  # 0.4: left out, not renormalised
    assert total == trl_total(components, weights)


def trl_source() -> str:
    spec = importlib.util.find_spec("trl")
    assert spec is not None and spec.submodule_search_locations
    return (Path(next(iter(spec.submodule_search_locations))) / "trainer" / "grpo_trainer.py").read_text()


def test_trl_still_combines_rewards_by_nansum_with_unscorable_rows_nan() -> None:
    """The rule `weighted_total` mirrors, as TRL 1.16's GRPOTrainer writes it: None -> NaN per
    reward function, `(rewards_per_func * reward_weights).nansum(dim=1)`, all-NaN rows set NaN."""
    source = trl_source()
    assert "reward if reward is not None else torch.nan for reward in output_reward_func" in source
    assert "unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)" in source
    assert "(rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)" in source
    assert "rewards[unscorable_mask] = torch.nan" in source


def trl_total(components: dict[str, list[float | None]], weights: Sequence[float]) -> list[float | None]:
    """TRL 1.16's lines, in torch (float32, as TRL): None -> NaN, weighted nansum, unscorable -> NaN."""
    import torch

    names = list(components)
    count = len(components[names[0]])
    rewards_per_func = torch.zeros(count, len(names), dtype=torch.float32)
    for i, name in enumerate(names):
        values = [value if value is not None else torch.nan for value in components[name]]
        rewards_per_func[:, i] = torch.tensor(values, dtype=torch.float32)
    reward_weights = torch.tensor(list(weights), dtype=torch.float32)
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    return [None if math.isnan(value) else pytest.approx(value, abs=1e-6) for value in rewards.tolist()]


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.none() | st.floats(0, 1) | st.just(math.nan), min_size=4, max_size=4),
        min_size=1,
        max_size=8,
    ),
    weights=st.lists(st.floats(0, 2), min_size=4, max_size=4).filter(lambda w: any(x > 0 for x in w)),
)
def test_weighted_total_matches_trls_rule_for_none_and_nan(
    rows: list[list[float | None]], weights: list[float]
) -> None:
    names = ["diagnosis", "spatial", "bbox_iou", "outline_iou"]
    components = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    total = weighted_total(components, dict(zip(names, weights, strict=True)))
    assert total == trl_total(components, weights)
