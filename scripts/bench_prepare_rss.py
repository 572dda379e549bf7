"""Peak memory of preparing the SFT training dataset: images decoded up front (before) vs per batch (after).

    python scripts/bench_prepare_rss.py                         # 10,015 synthetic images, model input 504x364
    python scripts/bench_prepare_rss.py --num-images 500        # a quick look
    python scripts/bench_prepare_rss.py --modes lazy            # one side only

Why: issue 12 asks for the peak RSS of dataset preparation for HAM10000's 10,015 images at 504x364
before and after lazy images (acceptance: after <= 1 GB). Each mode runs in its own child process, so
one mode's memory cannot hide in the other's; the child reports its own `ru_maxrss` (the kernel's peak
resident set, which no sampling can miss) once after loading the records and once after building the
dataset, plus the time to build it and to read examples back as a DataLoader would.

  eager  the construction sft.py used before: `Dataset.from_list(build_examples(records,
         builder.sft_example, ...))` plus the image_id column: every image decoded (PIL) and then stored
         in the Arrow table (datasets encodes PIL images as PNG)
  lazy   what sft.py builds now: `image_dataset(records, builder.sft_columns, ..., with_image_id=True)`:
         image paths and sizes, decoded per batch (skinderm.training.common.DecodeImages)

The dataset is built over ALL records (train + val + test = --num-images), i.e. a run whose training
split held every image. The synthetic set is HAM10000-like (600x450 JPEGs, HAM10000's class mix) and
model.max_pixels=200000 makes smart_resize give 504x364 (checked before measuring). Data and annotations
are generated once and cached under --root (default /tmp/skinderm_rss_bench); generating 10,015 images
takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODES = ("eager", "lazy")
MODEL_INPUT = (504, 364)
# smart_resize(450, 600) under this budget is 364x504 (scale 1.16 -> 13 x 18 patches of 28 px).
MAX_PIXELS = 200_000


def compose(root: Path, num_images: int, extra: list[str]) -> Any:
    """The training config over the cached synthetic set (HAM10000's class mix, 600x450)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    overrides = [
        f"paths.root_dir={root}",
        f"dataset.root={root}/data/n{num_images}",
        f"dataset.synthetic.num_images={num_images}",
        "dataset.synthetic.class_counts=null",
        f"model.max_pixels={MAX_PIXELS}",
        "logger=none",
        *extra,
    ]
    with initialize_config_module("skinderm.conf", version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def peak_rss_mib() -> float:
    """This process's peak resident set so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, root: Path, num_images: int, extra: list[str], reads: int) -> dict[str, Any]:
    """Child process: load the records, build the dataset `mode`'s way, report peaks and timings."""
    from datasets import Dataset

    from skinderm.training.common import build_examples, example_builder, image_dataset, load_split_records

    cfg = compose(root, num_images, extra)
    splits = load_split_records(cfg)
    records = [record for name in ("train", "val", "test") for record in splits[name]]
    builder = example_builder(cfg)
    sizes = {builder.model_size(record) for record in records}
    if sizes != {MODEL_INPUT}:
        raise SystemExit(f"model input sizes {sorted(sizes)}, expected only {MODEL_INPUT}")
    baseline = peak_rss_mib()
    started = time.perf_counter()
    if mode == "eager":
        examples = build_examples(records, builder.sft_example, "eager")
        dataset = Dataset.from_list(
            [
                {**example, "image_id": record["image_id"]}
                for example, record in zip(examples, records, strict=True)
            ]
        )
        del examples
    else:
        dataset = image_dataset(records, builder.sft_columns, "lazy", with_image_id=True)
    build_s = time.perf_counter() - started
    built = peak_rss_mib()
    started = time.perf_counter()
    for start in range(0, reads, 8):  # batches of 8, as the DataLoader fetches them
        batch = dataset.__getitems__(list(range(start, min(start + 8, reads, len(dataset)))))
        for example in batch:
            example["images"][0].load()
    read_ms = 1000 * (time.perf_counter() - started) / max(1, min(reads, len(dataset)))
    return {
        "mode": mode,
        "examples": len(dataset),
        "model_input": list(MODEL_INPUT),
        "peak_rss_after_records_mib": round(baseline, 1),
        "peak_rss_after_dataset_mib": round(built, 1),
        "build_s": round(build_s, 1),
        "arrow_table_mib": round(dataset.data.nbytes / 2**20, 1),
        "read_ms_per_example": round(read_ms, 2),
    }


def machine() -> dict[str, Any]:
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, default=Path("/tmp/skinderm_rss_bench"), help="data cache folder"
    )
    parser.add_argument("--num-images", type=int, default=10_015)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--reads", type=int, default=256, help="examples read back after building (timed)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    options = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if options.child:
        result = measure(options.child, options.root, options.num_images, options.overrides, options.reads)
        print("RESULT " + json.dumps(result))
        return

    from skinderm.training.common import load_split_records

    started = time.perf_counter()
    splits = load_split_records(compose(options.root, options.num_images, options.overrides))  # cache data
    print(f"data ready in {time.perf_counter() - started:.0f} s: {sum(map(len, splits.values()))} records")
    results = []
    for mode in options.modes:
        command = [sys.executable, __file__, "--child", mode, "--root", str(options.root)]
        command += [
            "--num-images",
            str(options.num_images),
            "--reads",
            str(options.reads),
            *options.overrides,
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.split("RESULT ", 1)[1]))
    keys = [key for key in results[0] if key != "mode"]
    print(json.dumps(machine()))
    print(f"{'':30}" + "".join(f"{result['mode']:>14}" for result in results))
    for key in keys:
        print(f"{key:30}" + "".join(f"{json.dumps(result[key]):>14}" for result in results))


if __name__ == "__main__":
    main()
