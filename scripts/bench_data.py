"""Is the data path ever the bottleneck? Samples/s of the data path alone vs the training step, one run.

    python scripts/bench_data.py                      # the embedded default (tiny model, synthetic data)
    python scripts/bench_data.py --steps 60 --n 400

Measures, on the same machine and in the same process:
  decode   images decoded straight to the model input size (JPEG draft + resize), images/s
  collate  TRL's vision-language collator (tokenise + image processing) on batches, samples/s
  train    SFT steps through skinderm's trainer layer (data loading included), samples/s
The data path (decode and collate both run for every batch: training datasets decode their images per read,
skinderm.training.common.image_dataset) must be well above the training rate, or a GPU would wait for it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def compose(root: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_module("skinderm.conf", version_base="1.3"):
        cfg = hydra_compose(
            "train", overrides=[f"paths.root_dir={root}", *overrides], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        del cfg["hydra"]
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="images decoded and collated")
    parser.add_argument("--steps", type=int, default=60, help="training steps timed")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.max_pixels=80000")
    options = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = options.root or Path(tempfile.mkdtemp(prefix="bench_data_"))
    cfg = compose(root, ["logger=none", "eval.num_samples=0", *options.overrides])

    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from skinderm.core.files import to_plain
    from skinderm.models.loading import load_model_and_processor
    from skinderm.training.common import example_builder, load_split_records
    from skinderm.training.pipeline import run_training

    records = load_split_records(cfg)["train"][: options.n]
    builder = example_builder(cfg)
    started = time.perf_counter()
    examples = [builder.sft_example(record) for record in records]
    decode_s = time.perf_counter() - started

    _, processor = load_model_and_processor(to_plain(cfg.model))
    collator = DataCollatorForVisionLanguageModeling(processor=processor, completion_only_loss=True)
    batch = int(cfg.stage.per_device_train_batch_size)
    started = time.perf_counter()
    for start in range(0, len(examples) - batch + 1, batch):
        collator([dict(example) for example in examples[start : start + batch]])
    collated = (len(examples) // batch) * batch
    collate_s = time.perf_counter() - started

    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.stage.max_steps = int(options.steps)
        cfg.stage.eval_steps = 10**6
        cfg.stage.save_steps = 10**6
    metrics = run_training(cfg)
    train_rate = float(metrics["train_steps_per_s"]) * batch

    decode_rate, collate_rate = len(examples) / decode_s, collated / collate_s
    print(f"machine: {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'stage':<10} {'samples/s':>10}   what")
    print(f"{'decode':<10} {decode_rate:>10.1f}   {len(examples)} images to {builder.model_size(records[0])}")
    print(f"{'collate':<10} {collate_rate:>10.1f}   TRL VLM collator, batches of {batch}, every step")
    print(f"{'train':<10} {train_rate:>10.1f}   {options.steps} steps x batch {batch}, loading included")
    print(f"collate / train: {collate_rate / train_rate:.1f}x   (data path share of a step: "
          f"{100 * train_rate / collate_rate:.0f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
