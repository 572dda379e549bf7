"""Batched evaluation vs one image at a time: same tiny model, same images, same token count, one run.

    python scripts/bench_eval.py                       # 64 images, batch 16, 32 new tokens, 1 thread
    python scripts/bench_eval.py --batch-size 32 --images 128 --threads 2

Both paths call `skinderm.evaluation.generation.generate_answers` (greedy, left padding); the only
difference is the batch size. End-of-answer is suppressed (`min_new_tokens = max_new_tokens`) so every
image gets exactly the same number of new tokens either way: a random-weight model would otherwise stop
at different points and the comparison would measure luck. Prints images/s for each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would interleave with the report


def _images(count: int, width: int, height: int, seed: int) -> list:
    """Synthetic dermoscopy-like images at the model's input size (what ExampleBuilder.image returns)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        canvas = np.full((height, width, 3), rng.integers(150, 230, size=3), dtype=np.uint8)
        cy, cx, r = (
            rng.integers(height // 4, 3 * height // 4),
            rng.integers(width // 4, 3 * width // 4),
            height // 5,
        )
        yy, xx = np.ogrid[:height, :width]
        canvas[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(40, 120, size=3)
        images.append(Image.fromarray(canvas))
    return images


def _best_of(repeats: int, runs: dict) -> dict[str, tuple[float, list[str]]]:
    """Each run `repeats` times, interleaved (a busy shared machine slows both alike); the fastest time."""
    best: dict[str, tuple[float, list[str]]] = {}
    for _ in range(repeats):
        for label, run in runs.items():
            started = time.perf_counter()
            answers = run()
            elapsed = time.perf_counter() - started
            if label not in best or elapsed < best[label][0]:
                best[label] = (elapsed, answers)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (best is reported)")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="tiny model folder (default: a temp dir)"
    )
    args = parser.parse_args()

    import torch

    from skinderm.coordinates import model_input_size
    from skinderm.evaluation.generation import generate_answers
    from skinderm.models.loading import load_model_and_processor
    from skinderm.models.tiny import TINY_MAX_PIXELS, ensure_tiny_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        folder = ensure_tiny_model(args.model_dir or Path(scratch) / "tiny", seed=0)
        model_cfg = {
            "name": "tiny",
            "name_or_path": str(folder),
            "min_pixels": 3136,
            "max_pixels": TINY_MAX_PIXELS,
        }
        model, processor = load_model_and_processor(model_cfg)
        size = model_input_size(600, 450, min_pixels=3136, max_pixels=TINY_MAX_PIXELS)
        images = _images(args.images, *size, seed=0)
        prompt = "Look at this dermoscopy image. Answer in JSON."
        tokens = {"max_new_tokens": args.max_new_tokens, "min_new_tokens": args.max_new_tokens}

        def batched() -> list[str]:
            return generate_answers(model, processor, images, prompt, batch_size=args.batch_size, **tokens)

        def one_at_a_time() -> list[str]:
            return generate_answers(model, processor, images, prompt, batch_size=1, **tokens)

        generate_answers(model, processor, images[:2], prompt, batch_size=2, **tokens)  # warm-up
        print(
            f"bench_eval: {args.images} images at {size[0]}x{size[1]}, "
            f"{args.max_new_tokens} new tokens each, torch threads {torch.get_num_threads()}, "
            "tiny Qwen2.5-VL (random weights)"
        )
        best = _best_of(args.repeats, {"batched": batched, "single": one_at_a_time})

    (batched_s, batched_answers), (single_s, single_answers) = best["batched"], best["single"]
    same = sum(a == b for a, b in zip(batched_answers, single_answers, strict=True))
    print(f"  best of {args.repeats} interleaved runs each")
    batched_label = f"batched (batch {args.batch_size}):"
    print(f"  {batched_label:<21} {batched_s:6.2f} s  {args.images / batched_s:7.1f} images/s")
    print(f"  one image at a time:  {single_s:6.2f} s  {args.images / single_s:7.1f} images/s")
    print(f"  speed-up:             {single_s / batched_s:6.1f}x")
    print(f"  identical greedy answers: {same}/{args.images}")


if __name__ == "__main__":
    main()
