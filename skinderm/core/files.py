"""Files written so that a crash, a kill or a full disk never leaves half of one, and plain containers.

`atomic_write_bytes` writes through a temporary file and a rename; any OSError names the target path
(a failed write() reports no file name, so a full disk would otherwise print no path). Temporary files
left by a killed writer are removed later by `remove_stale_temp_files`. `exclusive_lock` serialises the
ranks of a multi-GPU launch that prepare the same folder. `to_plain` is THE conversion of config nodes
to built-in containers at the boundary to TRL, PEFT, W&B, pandas and JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

try:  # POSIX only; elsewhere the lock is a no-op (single-process use).
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def to_plain(value: Any) -> Any:
    """A resolved plain-Python copy of a config node (DictConfig/ListConfig, also nested inside dicts and
    lists), for TRL, PEFT, W&B, pandas and JSON: no ListConfig leaks past the boundary. Plain values need
    no omegaconf import (annotation workers stay light)."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    return value


def json_safe(value: Any) -> Any:
    """JSON has no NaN: write null instead so every reader can load the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """JSON (NaN as null, numpy/torch scalars as numbers) written atomically."""
    text = json.dumps(json_safe(payload), indent=2, default=_json_default) + "\n"
    atomic_write_text(path, text)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """`atomic_write_text` for bytes. Any OSError (a full disk: ENOSPC, EDQUOT) names `path`.

    Why: a failed write() reports no file name (and a failed open the temporary one), so the one-line
    message would not say which file could not be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_INFIX}{os.getpid()}")
    try:
        _write_new_file(tmp, data)
        os.replace(tmp, path)
    except OSError as error:
        raise _naming(error, path) from error
    finally:
        tmp.unlink(missing_ok=True)


def _write_new_file(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)


def _naming(error: OSError, path: Path) -> OSError:
    """The same kind of OSError (errno and text kept), with `filename` = `path`."""
    try:
        return type(error)(error.errno, error.strerror or str(error), str(path))
    except TypeError:  # pragma: no cover - an OSError subclass with another signature
        return OSError(error.errno, error.strerror or str(error), str(path))


# Temporary files of `atomic_write_bytes` are `.<name>.tmp-<pid>`; one older than this was left by a
# killed writer (a write takes well under a second) and is removed by `remove_stale_temp_files`.
TEMP_INFIX = ".tmp-"
_TEMP_PATTERN = re.compile(r"\..+\.tmp-\d+")
STALE_TEMP_SECONDS = 600.0


def is_temp_file_name(name: str) -> bool:
    """Whether `name` is one of `atomic_write_bytes`'s temporary files."""
    return _TEMP_PATTERN.fullmatch(name) is not None


def remove_stale_temp_files(folder: str | Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete our own temporary files in `folder` older than `older_than` seconds; warn, return them.

    Why: a writer killed between writing and renaming leaves `.<name>.tmp-<pid>` behind forever. Only
    that name pattern is touched (nothing of the user's), and only old files, so a writer that is
    running right now (another rank) keeps its file.
    """
    folder = Path(folder)
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in sorted(entries, key=lambda e: e.name):
        if not is_temp_file_name(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not entry.is_file(follow_symlinks=False) or now - info.st_mtime < older_than:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:  # removed meanwhile by another process
            continue
        removed.append(Path(entry.path))
    if removed:
        log.warning(
            "Removed %d temporary files left in %s by interrupted writes (first: %s)",
            len(removed), folder, removed[0].name,
        )  # fmt: skip
    return removed


@contextlib.contextmanager
def exclusive_lock(lock_path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (created if needed).

    Every rank of a multi-GPU launch prepares the same dataset folder; the lock makes one of them
    generate or annotate while the others wait and then reuse the result.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
