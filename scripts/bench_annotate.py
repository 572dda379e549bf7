"""Benchmark mask annotation (issue 4): the seed's method vs ours vs decode-only, on one set of masks.

    python scripts/bench_annotate.py                 # 10,015 masks of 600x450, workers = cores
    python scripts/bench_annotate.py --n 2000 --workers 2 --keep /tmp/bench_masks
    python scripts/bench_annotate.py --multi-fraction 0.3 --hole-fraction 0.1   # a harsher mask mix

(a) seed: colour cv2.imread + grey + threshold + findContours + largest-contour boundingRect, 1 process;
(b) ours: skinderm.data.annotation.annotate_mask_file (grey imread; row sums find the lesion's rows,
    then threshold + contours + pixel sums there only; labels when several components) over the
    library's own process pool;
(c) decode only (grey cv2.imread) over the same pool.
Times are whole passes including the pool start. Also counts masks where our box (largest
8-connected component by pixels) differs from the seed's (largest external contour by polygon
area): expected only for masks with holes or components of near-equal size.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from skinderm.data.annotation import annotate_mask_file, default_workers, parallel_map

Box = tuple[int, int, int, int] | None


def make_mask(task: tuple[int, int, int, float, float, str]) -> None:
    """One random lesion mask: a lobed shape, sometimes a satellite, a hole, or cut by the border."""
    seed, width, height, multi_fraction, hole_fraction, path = task
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=np.uint8)
    theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    radius = np.ones_like(theta)
    for k in range(2, 5):
        radius += rng.uniform(0, 0.2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    scale = math.sqrt(rng.uniform(0.05, 0.3) * width * height / np.pi)
    aspect = rng.uniform(0.6, 1.0)
    border = rng.random() < 0.15
    cx = rng.uniform(0, width) if border else rng.uniform(0.3, 0.7) * width
    cy = rng.uniform(0, height) if border else rng.uniform(0.3, 0.7) * height
    points = np.stack([cx + scale * radius * np.cos(theta), cy + aspect * scale * radius * np.sin(theta)], 1)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 255)
    if rng.random() < hole_fraction:  # a hole (ring-like lesion), sometimes opening onto the border
        cv2.circle(mask, (round(cx), round(cy)), round(scale * rng.uniform(0.3, 0.6)), 0, -1)
    if rng.random() < multi_fraction:  # a satellite blob, sometimes as large as the main lesion
        r = round(scale * rng.uniform(0.2, 1.0))
        cv2.circle(mask, (int(rng.integers(0, width)), int(rng.integers(0, height))), r, 255, -1)
    cv2.imwrite(path, mask)


def seed_box(path: str) -> Box:
    """The seed's method, as it was: colour decode, grey, threshold, largest external contour."""
    image = cv2.imread(path)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    _, binary = cv2.threshold(grey, 127, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    return (x, y, x + w, y + h)


def our_box(path: str) -> tuple[Box, int]:
    geometry = annotate_mask_file(path)
    box = None if geometry.bbox is None else tuple(geometry.bbox)
    return box, geometry.n_components  # type: ignore[return-value]


def decode_only(path: str) -> tuple[int, int]:
    return cv2.imread(path, cv2.IMREAD_GRAYSCALE).shape  # type: ignore[union-attr,return-value]


def timed_interleaved(runs: dict[str, Callable[[], list]], repeats: int) -> dict[str, tuple[float, list]]:
    """Median seconds and last result of each run, passes interleaved (A B, B A, A B, ...).

    On a shared machine the load drifts over minutes; timing each method in its own block would
    charge that drift to whichever ran during the busy stretch. Alternating the order spreads it.
    """
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, list] = {}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            start = time.perf_counter()
            results[name] = runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10015, help="number of masks (HAM10000 has 10,015)")
    parser.add_argument("--width", type=int, default=600)
    parser.add_argument("--height", type=int, default=450)
    parser.add_argument("--workers", type=int, default=default_workers(), help="processes for (b) and (c)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="passes per method, interleaved; the median is shown"
    )
    parser.add_argument("--multi-fraction", type=float, default=0.1, help="masks with a second blob")
    parser.add_argument("--hole-fraction", type=float, default=0.05, help="masks with a hole")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write the masks here and keep them")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_annotate_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        paths = [str(folder / f"ISIC_{i:07d}_segmentation.png") for i in range(args.n)]
        tasks = [
            (args.seed * 1_000_003 + i, args.width, args.height, args.multi_fraction, args.hole_fraction, p)
            for i, p in enumerate(paths)
        ]
        start = time.perf_counter()
        parallel_map(make_mask, tasks, workers=args.workers, desc="write masks")
        written_s = time.perf_counter() - start
        print(f"{args.n} masks {args.width}x{args.height} PNG written in {written_s:.1f} s to {folder}")

        timings = timed_interleaved(
            {
                "seed": lambda: [seed_box(p) for p in paths],
                "ours": lambda: parallel_map(our_box, paths, workers=args.workers),
                "decode": lambda: parallel_map(decode_only, paths, workers=args.workers),
            },
            args.repeats,
        )
        (seed_s, seed_boxes), (ours_s, ours), (decode_s, _) = (
            timings["seed"],
            timings["ours"],
            timings["decode"],
        )

        rows = [
            ("(a) seed: colour imread + findContours + largest boundingRect", 1, seed_s),
            ("(b) ours: grey imread + annotate_mask (lesion rows only)", args.workers, ours_s),
            ("(c) decode only: grey cv2.imread", args.workers, decode_s),
        ]
        print("\n| method | processes | seconds | masks/s |\n|---|---|---|---|")
        for name, processes, seconds in rows:
            print(f"| {name} | {processes} | {seconds:.2f} | {args.n / seconds:.0f} |")
        print(
            f"\ntime ours / decode-only: {ours_s / decode_s:.3f} (goal <= 1.1)   "
            f"time ours / seed's method: {ours_s / seed_s:.3f} ({seed_s / ours_s:.1f}x faster)"
        )
        print(f"masks with several components: {sum(1 for _, n in ours if n > 1)} of {args.n}")
        differ = sum(1 for a, (b, _) in zip(seed_boxes, ours, strict=True) if a != b)
        print(f"boxes that differ from the seed's largest-contour box: {differ} of {args.n}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
