"""The run folder: what every stage writes, and where, on every rank.

One folder per run (Hydra's output dir, pinned before launch for multi-process runs), shared by all
ranks; only the main process writes files into it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
RESOLVED_CONFIG_FILE = "config_resolved.yaml"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
FINISHED_MARKER = "FINISHED"


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def to_plain(cfg: DictConfig | Any) -> Any:
    """A resolved plain-Python copy of a config node, for TRL, PEFT, W&B and JSON (no ListConfig leaks)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_list(cfg):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return cfg


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_safe(value: Any) -> Any:
    """JSON has no NaN: write null instead so every reader can load metrics.json."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temp file + rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(json_safe(payload), handle, indent=2, default=_json_default)
        handle.write("\n")
    os.replace(handle.name, path)


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder."""

    path: Path

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def save_resolved_config(self, cfg: DictConfig) -> None:
        """Hydra saves the unresolved config in .hydra/; reviewers want the values actually used."""
        if is_main_process():
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / RESOLVED_CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if is_main_process():
            write_json_atomic(self.metrics_path, metrics)
            log.info("metrics written to %s", self.metrics_path)

    def mark_finished(self) -> None:
        """Written last: `stage.init_from=latest` only picks runs that got this far."""
        if is_main_process():
            (self.path / FINISHED_MARKER).write_text("ok\n")


def find_latest_run(log_dir: Path, stage_name: str) -> Path | None:
    """The newest finished run of a stage under outputs/ (single runs and multirun jobs)."""
    root = Path(log_dir) / stage_name
    candidates = [marker.parent for marker in root.glob("**/" + FINISHED_MARKER)] if root.is_dir() else []
    return max(candidates, key=lambda run: (run / FINISHED_MARKER).stat().st_mtime, default=None)
