"""The run folder: what every stage writes, and where, on every rank; which folder a run gets.

One folder per run (Hydra's output dir, pinned before launch for multi-process runs), shared by all
ranks; only the main process writes files into it. The file names are spelled here only. A new run
claims a fresh folder; `resume` continues an unfinished one and never reopens a finished run.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from skinderm.core.files import atomic_write_text, write_json_atomic

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
RESOLVED_CONFIG_FILE = "config_resolved.yaml"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
FINISHED_MARKER = "FINISHED"
ERROR_FILE = "error.txt"
PREDICTIONS_FILE = "predictions.jsonl"  # evaluate's
PREDICTIONS_VAL_FILE = "predictions_val.jsonl"
METRICS_VAL_FILE = "metrics_val.json"
_NO_RESUME = (None, "", "null", "None")


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


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
            atomic_write_text(self.path / RESOLVED_CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if is_main_process():
            write_json_atomic(self.metrics_path, metrics)
            log.info("metrics written to %s", self.metrics_path)

    def mark_finished(self) -> None:
        """Written last: `stage.init_from=latest` only picks runs that got this far."""
        if is_main_process():
            atomic_write_text(self.path / FINISHED_MARKER, "ok\n")


def is_finished(run_dir: str | Path) -> bool:
    """A run that wrote its FINISHED marker (after model/ and metrics.json) is closed for resume."""
    return (Path(run_dir) / FINISHED_MARKER).is_file()


def find_latest_run(log_dir: str | Path, stages: str | Sequence[str]) -> Path | None:
    """The most recently finished run (with a model/) of `stages` under `log_dir`, single runs and sweep
    jobs alike: what `stage.init_from=latest`, `run=latest` (evaluate, predict, export) mean."""
    candidates: list[Path] = []
    for stage in [stages] if isinstance(stages, str) else stages:
        root = Path(log_dir) / stage
        if root.is_dir():
            candidates.extend(marker.parent for marker in root.glob("**/" + FINISHED_MARKER))
    candidates = [run for run in candidates if (run / MODEL_DIR).is_dir()]
    return max(candidates, key=lambda run: (run / FINISHED_MARKER).stat().st_mtime, default=None)


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run was trained with."""
    path = Path(run_dir) / RESOLVED_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a skinderm training run folder")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    return cfg


def latest_unfinished_run(runs_root: Path) -> Path | None:
    """The newest run under `runs_root` with checkpoints that never finished: what `resume=latest` means."""
    root = Path(runs_root)
    runs = (
        [p for p in root.iterdir() if (p / CHECKPOINTS_DIR).is_dir() and not is_finished(p)]
        if root.is_dir()
        else []
    )
    return max(runs, key=lambda p: (p / CHECKPOINTS_DIR).stat().st_mtime, default=None)


def resume_target(resume: str | None, runs_root: str) -> tuple[Path | None, str | None]:
    """(run folder to continue, None) or (None, why it cannot be resumed) for the `resume` setting."""
    if resume in _NO_RESUME:
        return None, None
    if resume == "latest":
        found = latest_unfinished_run(Path(runs_root))
        if found is None:
            return None, (
                f"resume=latest: no unfinished run with checkpoints under {runs_root} (finished runs are "
                "closed); start a new run without resume"
            )
        return found, None
    path = Path(str(resume)).expanduser().resolve()
    if not path.is_dir():
        return None, f"resume={resume}: no such run folder; pass a folder under {runs_root} or resume=latest"
    if is_finished(path):
        return None, (
            f"resume={resume}: that run finished (it has {FINISHED_MARKER}) and is closed; start a new "
            "run, or use stage=grpo stage.init_from=<it> to train on from its model"
        )
    return path, None


def resolve_run_dir(resume: str | None, runs_root: str, stamp: str) -> str:
    """Hydra's run folder: a new `<runs_root>/<stamp>`, or the unfinished run being resumed.

    Registered as the `${run_dir:...}` resolver used by conf/hydra/default.yaml, so a resumed run writes into
    its own folder again (same checkpoints, same W&B directory, appended train.log). It never raises (Hydra
    would print a traceback) and never hands out a finished run's folder (Hydra would rewrite its .hydra/
    files): when nothing can be resumed it returns a new folder, and the training code then stops with the
    one-line reason from `resume_target` (`skinderm.training.pipeline.resume_checkpoint`).
    """
    target, _ = resume_target(resume, runs_root)
    return str(target) if target is not None else claim_new_run_dir(runs_root, stamp)


_CLAIMED_RUN_DIRS: dict[tuple[str, str], str] = {}


def claim_new_run_dir(runs_root: str, stamp: str) -> str:
    """`<runs_root>/<stamp>`, created now, or `<stamp>_2`, `_3`, ... when another run already has it.

    Runs started in the same second (`for s in 1 2 3; do python -m skinderm.train seed=$s & done`) would
    otherwise share one folder and overwrite each other's model and metrics. The folder is claimed with an
    exclusive mkdir, so two processes never get the same one; within a process the answer is remembered
    (Hydra may resolve the run folder more than once). Ranks of one multi-process run do not call this:
    they share the folder pinned by SKINDERM_RUN_DIR (scripts/launch.sh).
    """
    key = (str(runs_root), str(stamp))
    if key not in _CLAIMED_RUN_DIRS:
        root = Path(runs_root)
        root.mkdir(parents=True, exist_ok=True)
        for attempt in itertools.count(1):
            candidate = root / (stamp if attempt == 1 else f"{stamp}_{attempt}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            _CLAIMED_RUN_DIRS[key] = str(candidate)
            break
    return _CLAIMED_RUN_DIRS[key]
