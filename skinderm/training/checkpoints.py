"""Resume: find the run to continue and its newest checkpoint that is intact.

Transformers writes a checkpoint's files one after another (weights, optimizer, scheduler, RNG state) and
`trainer_state.json` last. A run killed in the middle of a save leaves a folder without a valid
`trainer_state.json`; a disk error or a copy cut short can leave truncated weights or optimizer state.
Every candidate is verified (`checkpoint_problem`), so resume falls back to the newest intact checkpoint
and names what was wrong with the newer ones. Which run is resumed (never a finished one) is decided by
`skinderm.core.runs.resume_target`.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")
_STATE_FILES = ("optimizer.pt", "scheduler.pt")
# torch.save archives besides the optimizer/scheduler: RNG state (one file, or one per rank).
_OPTIONAL_ARCHIVES = ("rng_state.pth", "rng_state_*.pth", "scaler.pt")


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is damaged (truncated, bad header), or None when its size adds up.

    The format is an 8-byte little-endian header length, a JSON header with each tensor's byte range,
    then the data: a cut-off file is shorter than the last range's end.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > size - 8:
                return f"{path.name} is truncated (header runs past the end)"
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError, struct.error) as error:
        return f"{path.name} is unreadable ({type(error).__name__})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        return f"{path.name} is truncated ({size} of {expected} bytes)"
    return None


def torch_archive_problem(path: Path) -> str | None:
    """Why a torch.save file (a zip archive) is damaged, or None. A cut-off zip has no central directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        return f"{path.name} is truncated or not a torch archive ({type(error).__name__})"
    return None


def _weights_problem(folder: Path) -> str | None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError):
            return f"{index.name} is truncated or malformed"
        files = [folder / shard for shard in shards]
    else:
        files = [folder / name for name in _WEIGHT_FILES[:2] if (folder / name).is_file()]
    if not files:
        return "no model or adapter weights"
    for path in files:
        if not path.is_file():
            return f"{path.name} (listed in the weight index) is missing"
        problem = safetensors_problem(path)
        if problem:
            return problem
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when every file in it is intact.

    Checked: trainer_state.json parses and names this step; each weight file's safetensors header and size;
    the optimizer, scheduler and RNG archives open as zip files (torch.save's format).
    """
    match = _CHECKPOINT.match(folder.name)
    if not match or not folder.is_dir():
        return "not a checkpoint-<step> folder"
    state_file = folder / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return "trainer_state.json missing or truncated (the save was interrupted)"
    if not isinstance(state, dict) or int(state.get("global_step", -1)) != int(match.group(1)):
        return f"trainer_state.json says step {state.get('global_step') if isinstance(state, dict) else '?'}"
    weights = _weights_problem(folder)
    if weights:
        return weights
    missing = [name for name in _STATE_FILES if not (folder / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    archives = [folder / name for name in _STATE_FILES]
    archives += [path for pattern in _OPTIONAL_ARCHIVES for path in sorted(folder.glob(pattern))]
    for path in archives:
        problem = torch_archive_problem(path)
        if problem:
            return problem
    return None


def checkpoint_folders(checkpoints_dir: Path) -> list[Path]:
    """`checkpoint-<step>` folders, newest (highest step) first."""
    if not checkpoints_dir.is_dir():
        return []
    return sorted(
        (p for p in checkpoints_dir.iterdir() if _CHECKPOINT.match(p.name)),
        key=lambda p: int(_CHECKPOINT.match(p.name).group(1)),
        reverse=True,
    )


def last_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The highest-step intact checkpoint in `checkpoints_dir`; damaged newer ones are named in a warning."""
    skipped: list[str] = []
    chosen = None
    for folder in checkpoint_folders(checkpoints_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            chosen = folder
            break
        skipped.append(f"{folder.name}: {problem}")
    if skipped and chosen is not None:
        log.warning(
            "resume: using %s; skipped damaged newer checkpoints (%s)", chosen.name, "; ".join(skipped)
        )
    elif skipped:
        log.warning("resume: no intact checkpoint in %s (%s)", checkpoints_dir, "; ".join(skipped))
    return chosen


def checkpoint_problems(checkpoints_dir: Path) -> list[str]:
    """`checkpoint-<step>: <problem>` for every damaged checkpoint, for error messages."""
    return [
        f"{folder.name}: {problem}"
        for folder in checkpoint_folders(checkpoints_dir)
        if (problem := checkpoint_problem(folder)) is not None
    ]
