"""The shared trainer layer: every stage runs through here (seed, run folder, tracking, metrics)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from skinderm.core.runs import RESOLVED_CONFIG_FILE, RunFolder

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

    from skinderm.core.hardware import configure_torch
    from skinderm.core.tracking import tracking_run

    run = RunFolder(Path(cfg.paths.output_dir))
    checkpoint = resume_checkpoint(cfg, run)
    if checkpoint is None:  # a resumed run keeps its record: its config was checked to be the same
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
    """The checkpoint to continue from when `resume` is set (the run folder is already the resumed one).

    Everything is checked before anything is written, so a refused or failed resume leaves the run folder
    as it was: the run must be unfinished, hold an intact checkpoint, and be resumed with the config it was
    started with.
    """
    if cfg.get("resume") in (None, "", "null", "None"):
        return None
    from skinderm.core.runs import resume_target
    from skinderm.training.checkpoints import checkpoint_problems, last_complete_checkpoint

    target, reason = resume_target(cfg.resume, str(Path(cfg.paths.log_dir) / cfg.task_name / "runs"))
    if reason:
        raise ValueError(reason)
    if target.resolve() != run.path.resolve():
        raise ValueError(
            f"resume={cfg.resume}: this process writes into {run.path}, not the run to resume {target}; "
            f"with scripts/launch.sh set SKINDERM_RUN_DIR={target}"
        )
    checkpoint = last_complete_checkpoint(run.checkpoints_dir)
    if checkpoint is None:
        damaged = "; ".join(checkpoint_problems(run.checkpoints_dir)) or "none written yet"
        raise FileNotFoundError(
            f"resume={cfg.resume}: no intact checkpoint in {run.checkpoints_dir} ({damaged}); "
            "start without resume (checkpoints are written every stage.save_steps)"
        )
    changed = config_changes(run.path / RESOLVED_CONFIG_FILE, cfg)
    if changed:
        raise ValueError(
            f"resume={cfg.resume}: the config differs from the run's own ({'; '.join(changed[:4])}); "
            "resume with the overrides the run was started with (its .hydra/overrides.yaml)"
        )
    log.info("resuming %s from %s", run.path, checkpoint)
    return checkpoint


# Keys that may differ between a run and its resume: the switch itself and where files live.
_RESUME_FREE_KEYS = ("resume", "paths")


def config_changes(saved_path: Path, cfg: DictConfig) -> list[str]:
    """`key: was X, now Y` for every setting the resumed config changes against the run's saved one.

    Paths are taken from the saved config before comparing, so values derived from them (the synthetic
    data folder, the tiny model's cache) compare equal when a run folder was moved.
    """
    from omegaconf import OmegaConf

    try:
        saved = OmegaConf.load(saved_path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"resume: {saved_path} is missing or unreadable ({type(error).__name__}); this run cannot be "
            "resumed safely, start a new one"
        ) from None
    candidate = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for key in _RESUME_FREE_KEYS:
        if key in saved:
            candidate[key] = saved[key]
    ours = _flatten(OmegaConf.to_container(candidate, resolve=True))
    theirs = _flatten(OmegaConf.to_container(saved, resolve=True))
    return [
        f"{key}: was {theirs.get(key, '<absent>')}, now {ours.get(key, '<absent>')}"
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key)
    ]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): node}


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
