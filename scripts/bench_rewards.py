"""Throughput of the GRPO reward functions on one CPU core.

    python scripts/bench_rewards.py                      # 20,000 completions, 588x448 model input
    python scripts/bench_rewards.py --completions 2000 --repeats 1
    python scripts/bench_rewards.py --strict             # exit 1 if a reward is below the goal (CI)

Builds realistic completions (perfect, wrong, hedging, prose, fenced, malformed, empty, with and
without polygons; half conversational) for synthetic lesion masks written to a temporary folder,
then times each reward and the full default reward (its components + `weighted_total`). Rewards run
on every completion of every GRPO step, so the goal is >= 10,000 completions/s for every reward but
mask IoU (which rasterises polygons and reads masks; its cold-cache figure includes reading them).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np

from skinderm.answers import ANSWER_FIELDS, format_answer
from skinderm.data.classes import CLASS_CODES, LOCATIONS, location_from_point
from skinderm.rewards import (
    bbox_iou_reward,
    build_reward_functions,
    diagnosis_reward,
    format_reward,
    outline_iou_reward,
    spatial_reward,
    weighted_total,
)
from skinderm.rewards.iou import load_mask, load_outline_truth

GOAL_PER_SECOND = 10_000
DEFAULT_REWARD_CFG = {
    "weights": {"diagnosis": 0.4, "spatial": 0.3, "bbox": 0.15, "outline": 0.15, "format": 0.0},
    "spatial": {"adjacent_credit": 0.5},
    "outline": {"box_fallback": False},
    "diagnosis": {"class_weighting": "none"},
    "format": {"required_fields": ["diagnosis", "location", "bbox_2d"]},
}


def pin_to_one_core() -> str:
    """Run on one CPU so the figures are per core (Linux); say which."""
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"core {core}"
    return "all cores (sched_setaffinity unavailable)"


def make_lesions(
    folder: Path, count: int, width: int, height: int, rng: random.Random
) -> list[dict[str, Any]]:
    """Ellipse masks at HAM10000's 600x450 plus their model-space ground truth."""
    lesions = []
    for index in range(count):
        pixels = np.zeros((450, 600), np.uint8)
        centre = (rng.randint(100, 500), rng.randint(80, 370))
        axes = (rng.randint(30, 120), rng.randint(25, 90))
        cv2.ellipse(pixels, centre, axes, rng.uniform(0, 180), 0, 360, 255, -1)
        path = folder / f"ISIC_{index:07d}_segmentation.png"
        cv2.imwrite(str(path), pixels)
        model_mask = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_NEAREST) > 127
        ys, xs = np.nonzero(model_mask)
        contours, _ = cv2.findContours(
            model_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        contour = max(contours, key=cv2.contourArea)
        polygon = cv2.approxPolyDP(contour, 2.0, True).reshape(-1, 2)[:16].tolist()
        lesions.append(
            {
                "dx": rng.choice(CLASS_CODES),
                "mask_path": str(path),
                "bbox_2d": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                "location": location_from_point(float(xs.mean()), float(ys.mean()), width, height),
                "polygon": polygon,
            }
        )
    return lesions


def make_completion(lesion: dict[str, Any], rng: random.Random) -> str:
    """One completion of a kind drawn in fixed proportions."""
    x1, y1, x2, y2 = lesion["bbox_2d"]
    jitter = [v + rng.randint(-8, 8) for v in (x1, y1, x2, y2)]
    wrong_dx = rng.choice([c for c in CLASS_CODES if c != lesion["dx"]])
    kind = rng.random()
    if kind < 0.30:
        return format_answer(diagnosis=lesion["dx"], location=lesion["location"], bbox_2d=jitter)
    if kind < 0.50:
        return format_answer(
            diagnosis=lesion["dx"],
            location=lesion["location"],
            bbox_2d=jitter,
            polygon=lesion["polygon"],
            fields=("diagnosis", "location", "bbox_2d", "polygon"),
        )
    if kind < 0.65:
        return format_answer(
            diagnosis=wrong_dx, location=rng.choice(LOCATIONS), bbox_2d=[x1 + 40, y1, x2 + 40, y2]
        )
    if kind < 0.70:
        return json.dumps({"diagnosis": f"{lesion['dx']} or {wrong_dx}", "location": lesion["location"]})
    if kind < 0.80:
        answer = format_answer(diagnosis=lesion["dx"], location=lesion["location"], bbox_2d=jitter)
        return f"The lesion looks benign-ish.\n```json\n{answer}\n```\nLet me know if you need more."
    if kind < 0.90:
        return '{"diagnosis": "' + lesion["dx"] + '", "location": "top-left", "bbox_2d": [1, 2, 3'
    if kind < 0.95:
        return '{"diagnosis": "mel", "bbox_2d": [NaN, 5, 1e9, -3], "polygon": [[1, 2], [3, 4]]}'
    return ""


def best_time(function: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--completions", type=int, default=20_000)
    parser.add_argument("--masks", type=int, default=64, help="distinct lesions (images)")
    parser.add_argument("--width", type=int, default=588, help="model-space width (smart_resize of 600)")
    parser.add_argument("--height", type=int, default=448, help="model-space height (smart_resize of 450)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per reward; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a reward is below the goal")
    args = parser.parse_args()

    where = pin_to_one_core()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_rewards_") as folder:
        lesions = make_lesions(Path(folder), args.masks, args.width, args.height, rng)
        rows = [rng.choice(lesions) for _ in range(args.completions)]
        completions: list[Any] = [make_completion(row, rng) for row in rows]
        for i in range(0, len(completions), 2):  # half conversational, as TRL passes chat completions
            completions[i] = [{"role": "assistant", "content": completions[i]}]
        columns = {
            "dx": [row["dx"] for row in rows],
            "location": [row["location"] for row in rows],
            "bbox_2d": [row["bbox_2d"] for row in rows],
            "mask_path": [row["mask_path"] for row in rows],
            "model_width": [args.width] * len(rows),
            "model_height": [args.height] * len(rows),
        }
        n = len(completions)
        print(f"{n} completions, {args.masks} masks, model input {args.width}x{args.height}, {where}")

        load_mask.cache_clear()
        load_outline_truth.cache_clear()
        start = time.perf_counter()
        mask_scores = outline_iou_reward(completions, **columns)
        cold = time.perf_counter() - start

        results: list[tuple[str, float, float, bool]] = []
        for reward in (diagnosis_reward, spatial_reward, bbox_iou_reward, format_reward, outline_iou_reward):
            seconds = best_time(lambda reward=reward: reward(completions, **columns), args.repeats)
            mean = sum(reward(completions, **columns)) / n
            results.append((reward.__name__, n / seconds, mean, reward is not outline_iou_reward))

        funcs, weights = build_reward_functions(
            DEFAULT_REWARD_CFG, class_counts=None, answer_fields=ANSWER_FIELDS
        )
        names = [func.__name__ for func in funcs]

        def default_total() -> list[float]:
            components = {func.__name__: func(completions, **columns) for func in funcs}
            return weighted_total(components, dict(zip(names, weights, strict=True)))

        seconds = best_time(default_total, args.repeats)
        results.append((f"total({'+'.join(names)})", n / seconds, sum(default_total()) / n, False))

    print(f"{'reward':<38} {'completions/s':>14} {'mean':>7}  goal >= {GOAL_PER_SECOND:,}/s")
    failed = []
    for name, rate, mean, has_goal in results:
        verdict = ("ok" if rate >= GOAL_PER_SECOND else "BELOW GOAL") if has_goal else "(own figure)"
        if has_goal and rate < GOAL_PER_SECOND:
            failed.append(name)
        print(f"{name:<38} {rate:>14,.0f} {mean:>7.3f}  {verdict}")
    cold_label = "outline_iou, cold mask cache"
    print(f"{cold_label:<38} {n / cold:>14,.0f} {sum(mask_scores) / n:>7.3f}  (includes reading masks)")
    if failed and args.strict:
        raise SystemExit(f"below {GOAL_PER_SECOND:,} completions/s: {', '.join(failed)}")


if __name__ == "__main__":
    main()
