"""A run killed mid-training resumes from its newest complete checkpoint and ends at the configured step."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skinderm.training.checkpoints import checkpoint_problem, last_complete_checkpoint, resolve_run_dir
from tests.conftest import SMALL_DATASET

pytestmark = pytest.mark.slow

MAX_STEPS = 16


def _train_command(root: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "skinderm.train", f"paths.root_dir={root}", f"paths.cache_dir={cache}",
        f"paths.data_dir={cache}/data", *SMALL_DATASET, "logger=none", "eval.num_samples=0",
        f"stage.max_steps={MAX_STEPS}", "stage.save_steps=2", "stage.save_total_limit=3",
        "stage.logging_steps=1", *extra,
    ]  # fmt: skip


def _sft_command(root: Path, cache: Path, *extra: str) -> list[str]:
    return _train_command(root, cache, "stage.eval_steps=1000", *extra)


def _kill_after_first_checkpoint(command: list[str], runs_root: Path, timeout: float = 240.0) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            states = list(runs_root.glob("*/checkpoints/checkpoint-*/trainer_state.json"))
            if states:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return states[0].parents[2]
            if process.poll() is not None:
                pytest.fail(f"training exited (rc={process.returncode}) before its first checkpoint")
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
    pytest.fail("no checkpoint appeared in time")


def test_sigkilled_sft_run_resumes_to_the_configured_step(tmp_path: Path, shared_cache: Path) -> None:
    runs_root = tmp_path / "outputs" / "sft" / "runs"
    run_dir = _kill_after_first_checkpoint(_sft_command(tmp_path, shared_cache), runs_root)
    assert not (run_dir / "FINISHED").exists()
    killed_at = last_complete_checkpoint(run_dir / "checkpoints")
    assert killed_at is not None and int(killed_at.name.split("-")[1]) < MAX_STEPS

    result = subprocess.run(
        _sft_command(tmp_path, shared_cache, "resume=latest"), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == MAX_STEPS
    assert metrics["resumed_from"] == str(killed_at)
    logged_steps = [step for step, _ in metrics["train_loss_curve"]]
    assert logged_steps == list(range(1, MAX_STEPS + 1)), "the loss curve continues from before the kill"
    assert (run_dir / "FINISHED").exists()


def test_sigkilled_grpo_run_resumes_to_the_configured_step(tmp_path: Path, shared_cache: Path) -> None:
    sft = subprocess.run(
        _sft_command(tmp_path, shared_cache, "stage.max_steps=2"), capture_output=True, text=True, timeout=300
    )
    assert sft.returncode == 0, sft.stderr[-2000:]
    grpo = (*_train_command(tmp_path, shared_cache, "stage=grpo"), "stage.init_from=latest")
    run_dir = _kill_after_first_checkpoint(list(grpo), tmp_path / "outputs" / "grpo" / "runs")
    killed_at = last_complete_checkpoint(run_dir / "checkpoints")
    result = subprocess.run([*grpo, "resume=latest"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == MAX_STEPS and metrics["resumed_from"] == str(killed_at)
    assert [step for step, _ in metrics["train_loss_curve"]] == list(range(1, MAX_STEPS + 1))


def test_interrupted_save_is_never_picked(tmp_path: Path) -> None:
    good, partial = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    for folder, step in ((good, 2), (partial, 4)):
        folder.mkdir()
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
            (folder / name).write_bytes(b"x")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    # A kill during the save of step 4: trainer_state.json (written last) is cut short.
    (partial / "trainer_state.json").write_text('{"global_step": 4, "log_hist')
    assert "truncated" in checkpoint_problem(partial)
    assert last_complete_checkpoint(tmp_path) == good
    # A kill even earlier: no optimizer state yet.
    shutil.rmtree(partial)
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"x")
    assert last_complete_checkpoint(tmp_path) == good


def test_run_dir_is_new_unless_a_run_with_checkpoints_is_resumed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert resolve_run_dir(None, str(runs), "2026") == f"{runs}/2026"
    assert resolve_run_dir("latest", str(runs), "2026") == f"{runs}/2026"  # nothing: the run says so
    (runs / "a" / "checkpoints").mkdir(parents=True)
    assert resolve_run_dir("latest", str(runs), "2026") == str(runs / "a")
    assert resolve_run_dir(str(runs / "a"), str(runs), "2026") == str(runs / "a")


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path: Path) -> None:
    """Three processes claim one time stamp at once: three folders. One process asking again: the same."""
    import subprocess
    import sys

    claim = (
        "import sys; from skinderm.training.checkpoints import claim_new_run_dir as c; "
        "first = c(sys.argv[1], '2026-11-28_01-02-03'); "
        "assert c(sys.argv[1], '2026-11-28_01-02-03') == first; print(first)"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", claim, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    folders = sorted(process.communicate(timeout=120)[0].strip() for process in processes)
    assert folders == [str(tmp_path / name) for name in ("2026-11-28_01-02-03", "2026-11-28_01-02-03_2",
                                                         "2026-11-28_01-02-03_3")]  # fmt: skip
