"""Does the embedded default learn from the image? Default SFT, then greedy answers on the TEST split.

    python scripts/bench_learnability.py                        # the embedded default (docs/recipes.md)
    python scripts/bench_learnability.py stage.max_steps=300    # any train overrides
    python scripts/bench_learnability.py --checkpoints          # also score each saved checkpoint (a curve)

Prints diagnosis balanced accuracy, accuracy, location accuracy, box IoU and parse rate on every test
image, beside the majority baseline, per-class recall, and the wall time of the SFT run (data generation,
annotation, training and its val check included). Writes metrics_test.json into the run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def compose_config(overrides: list[str], run_dir: Path | None) -> Any:
    """The train config as `python -m skinderm.train` composes it, validated, with a fixed run folder."""
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    import skinderm  # noqa: F401  (registers the config resolvers)
    from skinderm.config import validate_config
    from skinderm.core.runs import claim_new_run_dir

    with initialize_config_module(version_base="1.3", config_module="skinderm.conf"):
        cfg = compose("train", overrides=["logger=none", *overrides])
    # Claimed, not just named: benches started in the same second must not share (and overwrite) a folder.
    runs_root = str(Path(cfg.paths.log_dir) / "bench_learnability")
    folder = run_dir or Path(claim_new_run_dir(runs_root, time.strftime("%Y-%m-%d_%H-%M-%S")))
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)
    validate_config(cfg)
    return cfg


def score(model_dir: Path, cfg: Any, records: list[dict[str, Any]], desc: str) -> dict[str, Any]:
    """Greedy answers of the model in `model_dir` on `records`, scored (full metrics)."""
    from skinderm.core.files import to_plain
    from skinderm.evaluation.answering import evaluate_records
    from skinderm.models.loading import load_model_and_processor
    from skinderm.training.common import example_builder

    model_cfg = {**to_plain(cfg.model), "name_or_path": str(model_dir), "tiny": None}
    model, processor = load_model_and_processor(model_cfg, torch_dtype=cfg.hardware.precision)
    model.eval()
    _, metrics = evaluate_records(
        model,
        processor,
        records,
        example_builder(cfg),
        batch_size=int(cfg.eval.batch_size),
        max_new_tokens=int(cfg.eval.max_new_tokens),
        desc=desc,
    )
    return metrics


def summary_row(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "n": metrics["n"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "accuracy": metrics["accuracy"],
        "location_accuracy": metrics.get("spatial_accuracy"),
        "bbox_mean_iou": (metrics.get("bbox") or {}).get("mean_iou"),
        "parse_rate": metrics["parse_rate"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="train config overrides, e.g. stage.max_steps=300")
    parser.add_argument("--checkpoints", action="store_true", help="also score each saved checkpoint")
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (default: a new one)")
    args = parser.parse_args()

    cfg = compose_config(args.overrides, args.run_dir)
    from omegaconf import open_dict

    if args.checkpoints:  # keep every checkpoint for the curve
        with open_dict(cfg):
            cfg.stage.save_total_limit = None

    from skinderm.core.files import write_json_atomic
    from skinderm.training.common import load_split_records
    from skinderm.training.pipeline import format_summary, run_training

    started = time.perf_counter()
    train_metrics = run_training(cfg)
    sft_wall = time.perf_counter() - started
    print(format_summary(train_metrics))

    run_dir = Path(train_metrics["run_dir"])
    test = load_split_records(cfg)["test"]
    if not test:
        raise SystemExit(
            f"dataset.root={cfg.dataset.root}: the test split is empty; raise dataset.splits.test_fraction"
        )
    per_class_support: dict[str, int] = {}
    for record in test:
        per_class_support[record["dx"]] = per_class_support.get(record["dx"], 0) + 1

    curve = []
    if args.checkpoints:
        folders = sorted(run_dir.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        for folder in folders:
            step = int(folder.name.split("-")[-1])
            row = summary_row(score(folder, cfg, test, f"test@{step}"))
            curve.append({"step": step, **row})
            numbers = ", ".join(
                f"{key} {value:.3f}" for key, value in row.items() if isinstance(value, float)
            )
            print(f"step {step}: {numbers}")

    final = score(run_dir / "model", cfg, test, "test answers")
    result = {
        "sft_wall_time_s": round(sft_wall, 1),
        "global_step": train_metrics.get("global_step"),
        "test_per_class": per_class_support,
        **summary_row(final),
        "majority_baseline": final.get("majority_baseline"),
        "per_class_recall": {code: row["recall"] for code, row in (final.get("per_class") or {}).items()},
        "curve": curve,
    }
    write_json_atomic(run_dir / "metrics_test.json", result)

    print(f"\nTEST split ({final['n']} images; per class {per_class_support})")
    print(f"  SFT wall time:              {sft_wall:.0f} s")
    print(
        f"  diagnosis balanced accuracy {result['balanced_accuracy']:.3f}   (majority baseline "
        f"{(final.get('majority_baseline') or {}).get('balanced_accuracy', float('nan')):.3f})"
    )
    print(f"  diagnosis accuracy          {result['accuracy']:.3f}")
    for key in ("location_accuracy", "bbox_mean_iou", "parse_rate"):
        value = result[key]
        print(f"  {key:<27} {'n/a' if value is None else f'{value:.3f}'}")
    recall = {
        code: round(value, 3) for code, value in result["per_class_recall"].items() if value is not None
    }
    print(f"  recall per class: {json.dumps(recall)}")
    print(f"wrote {run_dir / 'metrics_test.json'}")


if __name__ == "__main__":
    main()
