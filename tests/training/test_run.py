"""Run-folder helpers: atomic JSON, resolved configs, latest-run discovery."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from skinderm.core.files import to_plain, write_json_atomic
from skinderm.core.runs import RunFolder, find_latest_run


def test_metrics_json_writes_nan_as_null(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "m.json", {"a": math.nan, "b": [1.0, math.inf], "c": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.0, None], "c": 2}
    assert not list(tmp_path.glob("*.tmp"))


def test_latest_run_is_the_newest_finished_one(tmp_path: Path) -> None:
    older, newer, unfinished = (tmp_path / "sft" / "runs" / name for name in ("a", "b", "c"))
    for folder in (older, newer):
        RunFolder(folder).model_dir.mkdir(parents=True)
        RunFolder(folder).mark_finished()
    modelless = tmp_path / "sft" / "runs" / "d"  # finished, but its model is gone: nothing to start from
    modelless.mkdir(parents=True)
    RunFolder(modelless).mark_finished()
    unfinished.mkdir(parents=True)
    os.utime(older / "FINISHED", (time.time() - 100, time.time() - 100))
    assert find_latest_run(tmp_path, "sft") == newer
    assert find_latest_run(tmp_path, "grpo") is None


def test_to_plain_returns_builtin_containers() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": [1, 2], "b": {"c": "${a}"}})
    plain = to_plain(cfg)
    assert plain == {"a": [1, 2], "b": {"c": [1, 2]}}
    assert type(plain["a"]) is list
