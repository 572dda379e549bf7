"""Two processes under `accelerate launch` (CPU, gloo) share one run folder, one W&B run and split the data.

The launch uses the shipped conf/accelerate/multi_gpu.yaml: on a machine without GPUs accelerate starts
the two processes through torchrun all the same, and hardware=cpu (TrainingArguments.use_cpu) makes them a
gloo process group, the code path of a DDP GPU run. (`accelerate launch --cpu --num_processes 2` would
start ONE process: --cpu selects accelerate's single-process launcher; its MULTI_CPU mode needs mpirun.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import SMALL_DATASET

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
SFT_STEPS, SFT_BATCH = 3, 4
GRPO_STEPS, GRPO_BATCH, GRPO_GENERATIONS = 2, 4, 2
EVAL_SAMPLES = 5  # odd: rank 1 answers a padded share (2 images + 1 repeat), see val_check.rank_share
COMMON = (
    *SMALL_DATASET,
    "hardware=cpu",
    "hardware.record_shards=true",
    "logger=wandb",
    "logger.log_completions=0",
    f"eval.num_samples={EVAL_SAMPLES}",
    "eval.batch_size=2",
)


def _accelerate_launch(root: Path, cache: Path, run_dir: Path, overrides: list[str]) -> str:
    """Run skinderm.train on two CPU processes with the run folder pinned; return the combined output."""
    env = {
        **os.environ,
        "SKINDERM_RUN_DIR": str(run_dir),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "conf" / "accelerate" / "multi_gpu.yaml"),
        "--num_processes", str(WORLD_SIZE), "--mixed_precision", "no", "--main_process_port", "0",
        "-m", "skinderm.train",
        f"paths.root_dir={root}", f"paths.cache_dir={cache}", f"paths.data_dir={cache}/data",
        *COMMON, *overrides,
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"accelerate launch failed ({result.returncode}):\n{output[-6000:]}"
    return output


def _read_shards(run_dir: Path) -> dict[int, list[str]]:
    files = sorted((run_dir / "data_shards").glob("rank*.txt"))
    return {int(path.stem.removeprefix("rank")): path.read_text().split() for path in files}


def _class_balanced_order(run_dir: Path, seed: int) -> list[str]:
    """The image_ids the class-balanced sampler draws for the whole job (what the ranks split)."""
    from skinderm.data.prepare import prepare_dataset
    from skinderm.training.sampling import epoch_order

    resolved = OmegaConf.load(run_dir / "config_resolved.yaml")
    frame = prepare_dataset(OmegaConf.to_container(resolved.dataset, resolve=True))
    train = frame[frame["split"] == "train"]
    draws = epoch_order(list(train["dx"]), str(resolved.stage.class_balance), seed=seed, epoch=0)
    image_ids = list(train["image_id"])
    return [image_ids[index] for index in draws]  # epoch 0: the jobs are shorter than one epoch


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A 2-process SFT run, then a 2-process GRPO run from it, in a fresh project root."""
    root = tmp_path_factory.mktemp("distributed")
    cache = root / ".cache"
    sft_dir = root / "outputs" / "sft" / "runs" / "pinned"
    sft_output = _accelerate_launch(
        root,
        cache,
        sft_dir,
        [
            f"stage.max_steps={SFT_STEPS}",
            f"stage.per_device_train_batch_size={SFT_BATCH}",
            "stage.logging_steps=1",
            "stage.eval_steps=100",
            "stage.eval_max_samples=4",
        ],
    )
    grpo_dir = root / "outputs" / "grpo" / "runs" / "pinned"
    grpo_output = _accelerate_launch(
        root,
        cache,
        grpo_dir,
        [
            "stage=grpo",
            f"stage.max_steps={GRPO_STEPS}",
            f"stage.per_device_train_batch_size={GRPO_BATCH}",
            f"stage.num_generations={GRPO_GENERATIONS}",
            "stage.max_completion_length=12",
            "stage.init_from=latest",
        ],
    )
    return {"root": root, "sft": (sft_dir, sft_output), "grpo": (grpo_dir, grpo_output)}


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_both_ranks_write_into_one_run_folder_with_one_wandb_run(launched, stage: str) -> None:
    root: Path = launched["root"]
    run_dir, output = launched[stage]
    resolved_configs = sorted((root / "outputs" / stage).rglob("config_resolved.yaml"))
    assert resolved_configs == [run_dir / "config_resolved.yaml"], "each rank must not make its own folder"
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1, "only rank 0 may start a W&B run"
    assert output.count("metrics written to") == 1, "only rank 0 may write metrics.json"
    assert (run_dir / "metrics.json").is_file() and (run_dir / "FINISHED").is_file()
    assert (run_dir / "model" / "model.safetensors").is_file()
    log_lines = (run_dir / "train.log").read_text()
    assert "][rank 0][" in log_lines and "][rank 1][" in log_lines, "train.log lines must name their rank"


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_both_ranks_answer_the_generation_check_and_rank_0_writes_every_answer_once(
    launched, stage: str
) -> None:
    """With sharded weights (FSDP, ZeRO-3) a rank-0-only generation would hang: every rank answers a share."""
    run_dir, output = launched[stage]
    for rank in range(WORLD_SIZE):
        assert f"(rank {rank})" in output, f"rank {rank} did not take part in the generation check"
    lines = (run_dir / "predictions_val.jsonl").read_text().splitlines()
    image_ids = [json.loads(line)["image_id"] for line in lines]
    assert len(image_ids) == EVAL_SAMPLES and len(set(image_ids)) == EVAL_SAMPLES, "padding must be dropped"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_generation"]["n"] == EVAL_SAMPLES
    if stage == "grpo":
        assert metrics["val_before"]["n"] == EVAL_SAMPLES


def test_sft_ranks_take_turns_through_one_class_balanced_sample(launched) -> None:
    run_dir, _ = launched["sft"]
    shards = _read_shards(run_dir)
    assert sorted(shards) == [0, 1], "two ranks should each record what they trained on"
    order = _class_balanced_order(run_dir, seed=int(OmegaConf.load(run_dir / "config_resolved.yaml").seed))
    batches = [order[start : start + SFT_BATCH] for start in range(0, len(order), SFT_BATCH)]
    for rank, consumed in shards.items():
        expected = [image_id for batch in batches[rank::WORLD_SIZE] for image_id in batch]
        # The dataloader may collate one batch beyond the last step; never fewer than the steps need.
        assert len(consumed) >= SFT_STEPS * SFT_BATCH
        assert consumed == expected[: len(consumed)], f"rank {rank} did not get its share of the sample"
    assert shards[0][: SFT_STEPS * SFT_BATCH] != shards[1][: SFT_STEPS * SFT_BATCH]


def test_grpo_ranks_sample_disjoint_prompt_groups(launched) -> None:
    run_dir, _ = launched["grpo"]
    shards = _read_shards(run_dir)
    assert sorted(shards) == [0, 1]
    for consumed in shards.values():
        assert len(consumed) >= GRPO_STEPS * GRPO_BATCH
        groups = [
            consumed[start : start + GRPO_GENERATIONS] for start in range(0, len(consumed), GRPO_GENERATIONS)
        ]
        assert all(len(set(group)) == 1 for group in groups), "each prompt's generations stay on one rank"
    assert not set(shards[0]) & set(shards[1]), "the two ranks must train on different prompts"


def test_sweep_runs_through_the_submitit_launcher(tmp_path: Path) -> None:
    """What `hydra/launcher=slurm` does on a cluster, with submitit's local executor: each job in a
    subprocess of its own, its run folder under the sweep folder, submitit's logs in .submitit/."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='pip install -e ".[slurm]"')
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "skinderm.train", "--multirun", "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5", f"paths.root_dir={tmp_path}", *SMALL_DATASET, "logger=none",
        "stage.max_steps=1", "stage.eval_max_samples=2", "eval.num_samples=0", "seed=3",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    (sweep,) = (tmp_path / "outputs" / "sft" / "multiruns").iterdir()
    job = sweep / "0"
    assert (job / "FINISHED").is_file() and (job / "metrics.json").is_file()
    assert OmegaConf.load(job / "config_resolved.yaml").seed == 3
    job_ids = [folder.name for folder in (sweep / ".submitit").iterdir() if folder.name.isdigit()]
    assert len(job_ids) == 1, "one submitit job for one sweep job"
    assert OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.job.id == job_ids[0]
