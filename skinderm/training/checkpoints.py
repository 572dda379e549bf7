"""Resume: find the run to continue and its newest checkpoint that is complete.

Transformers writes a checkpoint's files one after another (weights, optimizer, scheduler, RNG state) and
`trainer_state.json` last. A run killed in the middle of a save leaves a folder without a valid
`trainer_state.json`; such a folder is never picked, so resume falls back to the previous good checkpoint.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")
_STATE_FILES = ("optimizer.pt", "scheduler.pt")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete."""
    match = _CHECKPOINT.match(folder.name)
    if not match or not folder.is_dir():
        return "not a checkpoint-<step> folder"
    state_file = folder / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return "trainer_state.json missing or truncated (the save was interrupted)"
    if int(state.get("global_step", -1)) != int(match.group(1)):
        return f"trainer_state.json says step {state.get('global_step')}"
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        return "no model or adapter weights"
    missing = [name for name in _STATE_FILES if not (folder / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    return None


def last_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The highest-step complete checkpoint in `checkpoints_dir`; incomplete ones are logged and skipped."""
    if not checkpoints_dir.is_dir():
        return None
    folders = sorted(
        (p for p in checkpoints_dir.iterdir() if _CHECKPOINT.match(p.name)),
        key=lambda p: int(_CHECKPOINT.match(p.name).group(1)),
        reverse=True,
    )
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        log.warning("skipping %s for resume: %s", folder, problem)
    return None


def resolve_run_dir(resume: str | None, runs_root: str, stamp: str) -> str:
    """Hydra's run folder: a new `<runs_root>/<stamp>`, or the run being resumed (`latest` or a path).

    Registered as the `${run_dir:...}` resolver used by conf/hydra/default.yaml, so a resumed run writes into
    its own folder again (same checkpoints, same W&B directory, appended train.log). It never raises (Hydra
    would print a traceback): when nothing can be resumed it returns a new folder, and the training code then
    stops with a one-line message (`skinderm.training.pipeline.resume_checkpoint`).
    """
    if resume in (None, "", "null", "None"):
        return claim_new_run_dir(runs_root, stamp)
    if resume == "latest":
        root = Path(runs_root)
        runs = [p for p in root.iterdir() if (p / "checkpoints").is_dir()] if root.is_dir() else []
        if not runs:
            return claim_new_run_dir(runs_root, stamp)
        return str(max(runs, key=lambda p: (p / "checkpoints").stat().st_mtime))
    return str(Path(resume).expanduser().resolve())


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
