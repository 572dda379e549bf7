"""Resume is exact: a run killed after a checkpoint and resumed ends with the loss curve and the weights of an
uninterrupted run of the same seed (SFT full fine-tune, SFT LoRA, GRPO), finished runs are never reopened,
and a damaged newest checkpoint is skipped for the newest intact one.

Tolerance: 1e-6 on every logged loss and every weight (on CPU, with one thread, the runs agree bitwise).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from skinderm.core.runs import resolve_run_dir, resume_target
from skinderm.training.checkpoints import checkpoint_problem, last_complete_checkpoint
from tests.conftest import SMALL_DATASET

pytestmark = pytest.mark.slow

MAX_STEPS = 16
TOLERANCE = 1e-6
# GRPO only learns (non-zero advantages) from a policy that already answers in JSON sometimes.
GRPO_INIT_SFT_STEPS = 150


def _train_command(root: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "skinderm.train", f"paths.root_dir={root}", f"paths.cache_dir={cache}",
        f"paths.data_dir={cache}/data", *SMALL_DATASET, "logger=none", "eval.num_samples=0",
        f"stage.max_steps={MAX_STEPS}", "stage.save_steps=2", "stage.save_total_limit=null",
        "stage.logging_steps=1", *(() if "stage=grpo" in extra else ("stage.eval_steps=8",)), *extra,
    ]  # fmt: skip


def _run(command: Sequence[str], timeout: float = 400.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _only_run(runs_root: Path) -> Path:
    (run,) = [p for p in runs_root.iterdir() if p.is_dir()]
    return run


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


def _as_if_killed_after(finished_run: Path, step: int, new_runs_root: Path) -> Path:
    """A copy of a finished run as a kill right after checkpoint-<step> leaves it on disk."""
    copy = new_runs_root / finished_run.name
    shutil.copytree(finished_run, copy)
    for folder in (copy / "checkpoints").glob("checkpoint-*"):
        if int(folder.name.split("-")[1]) > step:
            shutil.rmtree(folder)
    for name in ("FINISHED", "metrics.json", "model", "predictions_val.jsonl", "metrics_val.json"):
        target = copy / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return copy


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((run_dir / "model").glob("*.safetensors"))
    assert files, f"no weights in {run_dir / 'model'}"
    return {key: value for path in files for key, value in load_file(str(path)).items()}


def assert_same_training(resumed: Path, uninterrupted: Path) -> None:
    """Loss curve step for step and final weights equal within TOLERANCE."""
    ours = json.loads((resumed / "metrics.json").read_text())
    theirs = json.loads((uninterrupted / "metrics.json").read_text())
    assert ours["global_step"] == theirs["global_step"] == MAX_STEPS
    assert [s for s, _ in ours["train_loss_curve"]] == list(range(1, MAX_STEPS + 1))
    for (step, loss), (_, expected) in zip(ours["train_loss_curve"], theirs["train_loss_curve"], strict=True):
        assert abs(loss - expected) <= TOLERANCE, (
            f"step {step}: loss {loss} resumed, {expected} uninterrupted"
        )
    eval_steps = [step for step, _ in ours.get("eval_loss_curve", [])]
    assert eval_steps == sorted(set(eval_steps)), f"eval loss logged twice for a step: {eval_steps}"
    for (step, loss), (_, expected) in zip(ours["eval_loss_curve"], theirs["eval_loss_curve"], strict=True):
        assert abs(loss - expected) <= TOLERANCE, (
            f"eval at step {step}: {loss} resumed, {expected} uninterrupted"
        )
    weights, expected_weights = _weights(resumed), _weights(uninterrupted)
    assert weights.keys() == expected_weights.keys()
    worst = max((weights[k] - expected_weights[k]).abs().max().item() for k in weights)
    assert worst <= TOLERANCE, f"final weights differ by up to {worst}"


@pytest.fixture(scope="module")
def sft_full(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """An uninterrupted full fine-tune (checkpoints every 2 steps, all kept)."""
    root = tmp_path_factory.mktemp("sft_full")
    _run(_train_command(root, shared_cache))
    return _only_run(root / "outputs" / "sft" / "runs")


@pytest.fixture(scope="module")
def grpo_setup(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> tuple[Path, Path]:
    """(root holding a finished SFT run, uninterrupted GRPO run from it)."""
    root = tmp_path_factory.mktemp("grpo")
    _run(
        _train_command(root, shared_cache, f"stage.max_steps={GRPO_INIT_SFT_STEPS}", "stage.save_steps=1000")
    )
    _run(_train_command(root, shared_cache, "stage=grpo"))
    return root, _only_run(root / "outputs" / "grpo" / "runs")


def test_sigkilled_full_fine_tune_resumes_to_the_uninterrupted_loss_and_weights(
    tmp_path: Path, shared_cache: Path, sft_full: Path
) -> None:
    runs_root = tmp_path / "outputs" / "sft" / "runs"
    run_dir = _kill_after_first_checkpoint(_train_command(tmp_path, shared_cache), runs_root)
    assert not (run_dir / "FINISHED").exists()
    killed_at = last_complete_checkpoint(run_dir / "checkpoints")
    assert killed_at is not None and int(killed_at.name.split("-")[1]) < MAX_STEPS

    _run(_train_command(tmp_path, shared_cache, "resume=latest"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"] == str(killed_at)
    assert (run_dir / "FINISHED").exists()
    assert_same_training(run_dir, sft_full)


def test_full_fine_tune_resumed_in_a_later_epoch_sees_the_same_batches(
    tmp_path: Path, shared_cache: Path, sft_full: Path
) -> None:
    """checkpoint-8 lies in the second pass over the ~50 training images (batch 8): data order by epoch."""
    run_dir = _as_if_killed_after(sft_full, 8, tmp_path / "outputs" / "sft" / "runs")
    _run(_train_command(tmp_path, shared_cache, "resume=latest"))
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from"].endswith("checkpoint-8")
    assert_same_training(run_dir, sft_full)


def test_lora_fine_tune_resumes_to_the_uninterrupted_loss_and_adapter(
    tmp_path: Path, shared_cache: Path
) -> None:
    lora = ("model.lora.enabled=true", "stage.learning_rate=5e-3")
    _run(_train_command(tmp_path / "a", shared_cache, *lora))
    uninterrupted = _only_run(tmp_path / "a" / "outputs" / "sft" / "runs")
    assert (uninterrupted / "model" / "adapter_model.safetensors").is_file()
    command = _train_command(tmp_path / "b", shared_cache, *lora)
    run_dir = _kill_after_first_checkpoint(command, tmp_path / "b" / "outputs" / "sft" / "runs")
    assert not (run_dir / "FINISHED").exists()
    _run([*command, "resume=latest"])
    assert_same_training(run_dir, uninterrupted)


def test_sigkilled_grpo_run_resumes_to_the_uninterrupted_loss_and_weights(
    tmp_path: Path, shared_cache: Path, grpo_setup: tuple[Path, Path]
) -> None:
    sft_root, uninterrupted = grpo_setup
    shutil.copytree(sft_root / "outputs" / "sft", tmp_path / "outputs" / "sft")
    grpo = _train_command(tmp_path, shared_cache, "stage=grpo")
    run_dir = _kill_after_first_checkpoint(grpo, tmp_path / "outputs" / "grpo" / "runs")
    killed_at = last_complete_checkpoint(run_dir / "checkpoints")
    _run([*grpo, "resume=latest"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"] == str(killed_at)
    losses = [
        loss for _, loss in json.loads((uninterrupted / "metrics.json").read_text())["train_loss_curve"]
    ]
    assert any(abs(loss) > 1e-4 for loss in losses), "the GRPO run must learn for the comparison to mean much"
    assert_same_training(run_dir, uninterrupted)


def test_resume_latest_with_only_finished_runs_refuses_and_touches_nothing(
    tmp_path: Path, shared_cache: Path, sft_full: Path
) -> None:
    runs_root = tmp_path / "outputs" / "sft" / "runs"
    finished = runs_root / sft_full.name
    shutil.copytree(sft_full, finished)
    before = _snapshot(finished)
    for resume in ("latest", str(finished)):
        result = subprocess.run(
            _train_command(tmp_path, shared_cache, f"resume={resume}"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert ("no unfinished run" if resume == "latest" else "finished") in errors[0]
    assert _snapshot(finished) == before, "the finished run's files must stay byte-identical"


def test_truncated_newest_checkpoint_resumes_from_the_previous_one_with_a_warning(
    tmp_path: Path, shared_cache: Path, sft_full: Path
) -> None:
    run_dir = _as_if_killed_after(sft_full, 8, tmp_path / "outputs" / "sft" / "runs")
    weights = run_dir / "checkpoints" / "checkpoint-8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = _run(_train_command(tmp_path, shared_cache, "resume=latest"))
    warning = "skipped damaged newer checkpoints (checkpoint-8: model.safetensors is truncated"
    assert warning in result.stdout + result.stderr
    assert warning in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from"].endswith("checkpoint-6")
    assert_same_training(run_dir, sft_full)


def test_resume_with_changed_settings_refuses_and_leaves_the_run_as_it_was(
    tmp_path: Path, shared_cache: Path, sft_full: Path
) -> None:
    run_dir = _as_if_killed_after(sft_full, 6, tmp_path / "outputs" / "sft" / "runs")
    before = _snapshot(run_dir)
    result = subprocess.run(
        _train_command(tmp_path, shared_cache, "resume=latest", "stage.learning_rate=0.5"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "stage.learning_rate: was 0.001, now 0.5" in error
    after = _snapshot(run_dir)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    # Hydra appends to train.log and records each resume attempt in .hydra/resume_<time>/; the run's own
    # .hydra/overrides.yaml (what the message tells the user to repeat) stays as it was.
    unexpected = {name for name in changed if not name.startswith(".hydra/resume_")} - {
        "train.log",
        "error.txt",
    }
    assert not unexpected, unexpected


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_checkpoint(folder: Path, step: int) -> None:
    """A checkpoint whose files are well-formed (tiny tensors), as transformers would write them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.ones(4)}, str(folder / "model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": torch.zeros(2)}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_interrupted_or_damaged_saves_are_never_picked(tmp_path: Path) -> None:
    good, partial = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    _write_checkpoint(good, 2)
    _write_checkpoint(partial, 4)
    assert last_complete_checkpoint(tmp_path) == partial
    # A kill during the save of step 4: trainer_state.json (written last) is cut short.
    (partial / "trainer_state.json").write_text('{"global_step": 4, "log_hist')
    assert "truncated" in checkpoint_problem(partial)
    assert last_complete_checkpoint(tmp_path) == good
    damages = {
        "model.safetensors": lambda data: data[:-3],
        "optimizer.pt": lambda data: data[: len(data) // 2],
        "scheduler.pt": lambda data: b"",
        "rng_state.pth": lambda data: data[:-30],
    }
    for name, damage in damages.items():
        shutil.rmtree(partial)
        _write_checkpoint(partial, 4)
        (partial / name).write_bytes(damage((partial / name).read_bytes()))
        problem = checkpoint_problem(partial)
        assert problem is not None and name in problem, (name, problem)
        assert last_complete_checkpoint(tmp_path) == good
    shutil.rmtree(partial)
    _write_checkpoint(partial, 4)
    (partial / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    assert "says step 3" in checkpoint_problem(partial)


def test_resume_targets_only_unfinished_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert resolve_run_dir(None, str(runs), "2026") == f"{runs}/2026"
    assert resolve_run_dir("latest", str(runs), "2027") == f"{runs}/2027"  # nothing: the run says so
    (runs / "a" / "checkpoints").mkdir(parents=True)
    assert resolve_run_dir("latest", str(runs), "2028") == str(runs / "a")
    assert resolve_run_dir(str(runs / "a"), str(runs), "2028") == str(runs / "a")
    (runs / "a" / "FINISHED").write_text("ok\n")
    assert resume_target("latest", str(runs))[0] is None
    assert "closed" in resume_target(str(runs / "a"), str(runs))[1]
    assert resolve_run_dir(str(runs / "a"), str(runs), "2029") == f"{runs}/2029"  # never the finished one


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path: Path) -> None:
    """Three processes claim one time stamp at once: three folders. One process asking again: the same."""
    claim = (
        "import sys; from skinderm.core.runs import claim_new_run_dir as c; "
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
