"""Experiment tracking (W&B): one run per Hydra job, resolved config logged, always finished.

W&B is imported only when `logger=wandb`. It runs offline unless the user asks otherwise, keeps every
file inside the run folder or the project cache (not ~/.cache), and `finish()` always runs, so the jobs of
a multirun sweep never merge into one W&B run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from skinderm.core.errors import ConfigError
from skinderm.core.files import to_plain
from skinderm.core.runs import is_main_process

log = logging.getLogger(__name__)


def report_to(cfg: DictConfig) -> list[str]:
    """The `report_to` list handed to TRL: W&B on the main process only."""
    return ["wandb"] if cfg.logger.name == "wandb" and is_main_process() else []


def _configure_wandb_environment(cfg: DictConfig, run_dir: Path) -> None:
    cache = Path(cfg.paths.cache_dir) / "wandb"
    os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
    os.environ.setdefault("WANDB_DIR", str(run_dir))
    for variable, sub in (
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_DATA_DIR", "data"),
    ):
        os.environ.setdefault(variable, str(cache / sub))
        Path(os.environ[variable]).mkdir(parents=True, exist_ok=True)
    # TRL/transformers' WandbCallback reads these; the run we start below is the one it logs into.
    os.environ.setdefault("WANDB_PROJECT", cfg.logger.project)
    if os.environ["WANDB_MODE"] == "online" and not os.environ.get("WANDB_API_KEY"):
        netrc = Path.home() / ".netrc"
        if not (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")):
            raise ConfigError(
                "logger.mode=online but no W&B credentials: run `wandb login` or set WANDB_API_KEY, "
                "or use logger.mode=offline (sync later with `wandb sync`)"
            )


def default_group(cfg: DictConfig) -> str:
    """The W&B group: one per multirun sweep (`<task>-<sweep time>`), else the task name."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return f"{cfg.task_name}-{Path(hydra_cfg.sweep.dir).name}"
    except (ImportError, ValueError):  # not under Hydra (a test, a library call)
        pass
    return str(cfg.task_name)


@contextlib.contextmanager
def tracking_run(cfg: DictConfig, run_dir: Path, *, job_type: str) -> Iterator[Any]:
    """Start the W&B run for this job (or nothing) and always finish it."""
    if cfg.logger.name != "wandb" or not is_main_process():
        yield None
        return
    _configure_wandb_environment(cfg, run_dir)
    import wandb

    run = wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group or default_group(cfg),
        job_type=job_type,
        name=f"{job_type}-{run_dir.name}",
        tags=list(cfg.logger.tags),
        dir=str(run_dir),
        config=to_plain(cfg),
        reinit="finish_previous",
    )
    log.info("W&B run %s (%s) in %s", run.id, os.environ["WANDB_MODE"], run_dir / "wandb")
    try:
        yield run
    finally:
        wandb.finish()
