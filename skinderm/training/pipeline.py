"""The shared trainer layer: every stage runs through here (seed, run folder, tracking, metrics)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from skinderm.training.run import RunFolder

log = logging.getLogger(__name__)


def _recipe(stage_name: str) -> Callable[..., dict[str, Any]]:
    """Import only the recipe that runs (TRL's trainers are slow to import)."""
    if stage_name == "sft":
        from skinderm.training.sft import run_sft

        return run_sft
    if stage_name == "grpo":
        from skinderm.training.grpo import run_grpo

        return run_grpo
    raise ValueError(f"stage.name={stage_name!r}: unknown stage; use stage=sft or stage=grpo")


def run_training(cfg: DictConfig, *, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run the configured stage end to end and return its metrics (also in <run>/metrics.json).

    `callbacks`: extra transformers TrainerCallbacks for the stage's trainer (scripts/gpu_check.py times
    steps with one).
    """
    from transformers import set_seed

    from skinderm.training.common import configure_torch
    from skinderm.training.tracking import tracking_run

    run = RunFolder(Path(cfg.paths.output_dir))
    checkpoint = resume_checkpoint(cfg, run)
    run.save_resolved_config(cfg)
    set_seed(int(cfg.seed))
    configure_torch(cfg)
    recipe = _recipe(cfg.stage.name)
    started = time.perf_counter()
    with tracking_run(cfg, run.path, job_type=cfg.stage.name) as tracker:
        metrics = recipe(
            cfg, run, resume_from_checkpoint=str(checkpoint) if checkpoint else None, callbacks=callbacks
        )
        if checkpoint is not None:
            metrics["resumed_from"] = str(checkpoint)
        metrics["data"] = data_summary(cfg)
        metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
        metrics["run_dir"] = str(run.path)
        if tracker is not None:
            tracker.summary.update(
                {f"final/{key}": value for key, value in metrics.items() if _is_scalar(value)}
            )
    run.write_metrics(metrics)
    run.mark_finished()
    return metrics


def data_summary(cfg: DictConfig) -> dict[str, Any] | None:
    """What the data preparation used and skipped (counts per reason), as written beside the annotations."""
    from skinderm.data.annotation import read_annotation_summary

    folder = cfg.dataset.get("annotations_dir") or cfg.dataset.root
    return read_annotation_summary(folder)


def resume_checkpoint(cfg: DictConfig, run: RunFolder) -> Path | None:
    """The checkpoint to continue from when `resume` is set (the run folder is already the resumed one)."""
    if not cfg.get("resume"):
        return None
    from skinderm.training.checkpoints import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(run.checkpoints_dir)
    if checkpoint is None:
        raise FileNotFoundError(
            f"resume={cfg.resume}: no complete checkpoint in {run.checkpoints_dir}; "
            "start without resume (checkpoints are written every stage.save_steps)"
        )
    if (run.path / "FINISHED").exists():
        (run.path / "FINISHED").unlink()  # it is running again; `latest` must not pick it until it ends
    log.info("resuming %s from %s", run.path, checkpoint)
    return checkpoint


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool)


def format_summary(metrics: dict[str, Any]) -> str:
    """A short human summary for the end of a run (GRPO: held-out numbers before and after training)."""
    lines = [f"run folder: {metrics.get('run_dir')}"]
    for key in ("global_step", "train_loss_first", "train_loss_last", "eval_loss_first", "eval_loss_last"):
        if key in metrics:
            lines.append(f"  {key}: {_fmt(metrics[key])}")
    before, after = metrics.get("val_before"), metrics.get("val_after")
    if before and after:
        lines.append(f"  {'val (greedy)':<28} {'before':>8} {'after':>8}")
        for key in after:
            lines.append(f"  {key:<28} {_fmt(before.get(key)):>8} {_fmt(after.get(key)):>8}")
    else:
        for key, value in (metrics.get("val_generation") or {}).items():
            lines.append(f"  val {key}: {_fmt(value)}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
