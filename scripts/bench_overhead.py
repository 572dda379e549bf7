"""What skinderm's trainer layer costs per step: `python -m skinderm.train` vs a bare TRL SFT script.

    python scripts/bench_overhead.py                       # 10 and 60 steps, 2 repeats, tiny model, CPU
    python scripts/bench_overhead.py --steps 10 100 --repeats 3 --json /tmp/overhead.json

Both sides train the same tiny Qwen2.5-VL folder on the same SFT examples with the same SFTConfig values
(read back from the skinderm run's own `training_args.bin`), each in a fresh process with the same
threads. The bare side is a minimal script written by this bench: from_pretrained, SFTTrainer, train.

Per-step time is (train_runtime(N2) - train_runtime(N1)) / (N2 - N1), with train_runtime the Trainer's
own measure of train(): the difference cancels what train() spends once (dataloader set-up, first-step
warm-up, the final save). One-time cost is the process's wall time minus train_runtime (imports, data,
model loading, example building, trainer set-up, saving, evaluation after training). Medians over repeats;
runs alternate between the two sides so that load on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

# The skinderm run: tiny model, synthetic data, plain (not class-balanced) sampling like the bare script,
# no W&B, no evaluation during the measured steps, no checkpoints before the end.
SKINDERM_OVERRIDES = (
    "logger=none",
    "model=tiny",
    "dataset=synthetic",
    "dataset.synthetic.num_images=120",
    "stage=sft",
    "stage.class_balance=none",
    "stage.eval_steps=1000000",
    "stage.save_steps=1000000",
    "stage.eval_max_samples=8",
    "eval.num_samples=0",
)

BARE_SCRIPT = textwrap.dedent(
    '''
    """Bare TRL SFT: the same model folder, examples and SFTConfig values, nothing else."""
    import json, sys, time
    started = time.perf_counter()
    from datasets import load_from_disk
    from transformers import Qwen2_5_VLForConditionalGeneration
    from trl import SFTConfig, SFTTrainer
    from skinderm.models.processor import load_processor  # the processor only: torchvision is missing here

    spec = json.load(open(sys.argv[1]))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(spec["model_dir"], dtype="float32")
    processor = load_processor(
        spec["model_dir"], min_pixels=spec["min_pixels"], max_pixels=spec["max_pixels"]
    )
    dataset = load_from_disk(spec["dataset_dir"])
    trainer = SFTTrainer(model=model, args=SFTConfig(**spec["sft_config"]), train_dataset=dataset,
                         processing_class=processor)
    output = trainer.train()
    print("BARE_RESULT " + json.dumps({"train_runtime": output.metrics["train_runtime"],
                                        "global_step": trainer.state.global_step}))
    '''
)


def _environment(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def _cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one child process."""
    started, cpu_before = time.perf_counter(), _cpu_seconds_of_children()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - started, _cpu_seconds_of_children() - cpu_before
    if result.returncode:
        raise SystemExit(
            f"error: {' '.join(command[:4])} ... failed:\n{(result.stdout + result.stderr)[-4000:]}"
        )
    return wall, cpu, result.stdout


def run_skinderm(root: Path, run_dir: Path, steps: int, env: dict[str, str]) -> dict[str, float]:
    command = [
        sys.executable, "-m", "skinderm.train", *SKINDERM_OVERRIDES,
        f"stage.max_steps={steps}", f"paths.root_dir={root}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    wall, cpu, _ = _run(command, env, root)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics["global_step"] != steps:
        raise SystemExit(f"error: skinderm ran {metrics['global_step']} steps, expected {steps}")
    return {"wall_s": wall, "cpu_s": cpu, "train_runtime_s": float(metrics["train_runtime_s"])}


def run_bare(root: Path, spec: dict[str, Any], steps: int, tag: str, env: dict[str, str]) -> dict[str, float]:
    spec = {**spec, "sft_config": {**spec["sft_config"], "max_steps": steps, "output_dir": str(root / tag)}}
    spec_path = root / f"{tag}.json"
    spec_path.write_text(json.dumps(spec))
    wall, cpu, stdout = _run([sys.executable, str(root / "bare_sft.py"), str(spec_path)], env, root)
    line = next(line for line in stdout.splitlines() if line.startswith("BARE_RESULT "))
    result = json.loads(line.removeprefix("BARE_RESULT "))
    if result["global_step"] != steps:
        raise SystemExit(f"error: the bare script ran {result['global_step']} steps, expected {steps}")
    return {"wall_s": wall, "cpu_s": cpu, "train_runtime_s": float(result["train_runtime"])}


def bare_spec(root: Path, first_run: Path) -> dict[str, Any]:
    """Model folder, examples (saved to disk) and SFTConfig values of a finished skinderm run."""
    from datasets import Dataset
    from omegaconf import OmegaConf
    from trl import SFTConfig

    from skinderm.core.runs import RunFolder
    from skinderm.training.common import (
        build_examples,
        example_builder,
        load_split_records,
        trainer_arguments,
    )

    cfg = OmegaConf.load(first_run / "config_resolved.yaml")
    examples = build_examples(load_split_records(cfg)["train"], example_builder(cfg).sft_example, "examples")
    dataset_dir = root / "bare_dataset"
    Dataset.from_list(examples).save_to_disk(str(dataset_dir))

    # The SFTConfig skinderm built, rebuilt from the run's resolved config the way skinderm/training/sft.py
    # does (no unpickling of training_args.bin: torch.load stays weights_only everywhere).
    used = SFTConfig(
        **trainer_arguments(cfg, RunFolder(first_run)),
        max_length=cfg.stage.max_length,
        completion_only_loss=True,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
    )
    accepted = {name for name, field in SFTConfig.__dataclass_fields__.items() if field.init}
    values = {key: value for key, value in used.to_dict().items() if key in accepted}
    for key, value in values.items():  # to_dict masks tokens as "<HUB_TOKEN>", "<EOS_TOKEN>", ...
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            values[key] = getattr(used, key)
    for alias in ("gradient_checkpointing", "gradient_checkpointing_kwargs"):  # deprecated aliases
        values.pop(alias, None)
    # No eval dataset here (skinderm's evaluates only after train(), outside train_runtime).
    values.update(eval_strategy="no", report_to=[], push_to_hub=False, hub_token=None)
    return {
        "model_dir": str(cfg.model.name_or_path),
        "min_pixels": int(cfg.model.min_pixels),
        "max_pixels": int(cfg.model.max_pixels),
        "dataset_dir": str(dataset_dir),
        "sft_config": values,
    }


def per_step(runs: dict[int, list[dict[str, float]]], low: int, high: int, key: str) -> float:
    """Seconds per step of `key` (train_runtime_s or cpu_s), medians at N2 minus N1, over N2 - N1."""
    median = {steps: statistics.median(run[key] for run in runs[steps]) for steps in (low, high)}
    return (median[high] - median[low]) / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs=2, default=(10, 60), metavar=("N1", "N2"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    options = parser.parse_args()
    low, high = sorted(options.steps)
    if low < 1 or high <= low or options.repeats < 1:
        raise SystemExit("error: --steps N1 N2 needs 1 <= N1 < N2, and --repeats >= 1")

    root = options.root or Path(tempfile.mkdtemp(prefix="skinderm_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    env = _environment(options.threads)
    os.environ.update(
        {key: env[key] for key in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    )

    print(
        f"work folder {root}; {options.threads} thread(s); steps {low} and {high}; {options.repeats} repeats"
    )
    print(
        "warm-up: skinderm run that builds the synthetic data and the tiny model (not measured)", flush=True
    )
    warm_up = root / "outputs" / "warm_up"
    run_skinderm(root, warm_up, 1, env)
    spec = bare_spec(root, warm_up)
    (root / "bare_sft.py").write_text(BARE_SCRIPT)

    runs: dict[str, dict[int, list[dict[str, float]]]] = {
        "skinderm": {low: [], high: []},
        "bare": {low: [], high: []},
    }
    for repeat in range(options.repeats):
        for steps in (low, high):
            order = ("skinderm", "bare") if (repeat + steps) % 2 == 0 else ("bare", "skinderm")
            for side in order:
                tag = f"{side}_{steps}_{repeat}"
                if side == "skinderm":
                    result = run_skinderm(root, root / "outputs" / tag, steps, env)
                else:
                    result = run_bare(root, spec, steps, tag, env)
                runs[side][steps].append(result)
                print(
                    f"  {side:8s} {steps:4d} steps: train_runtime {result['train_runtime_s']:7.2f} s, "
                    f"wall {result['wall_s']:6.2f} s",
                    flush=True,
                )

    step_time = {side: per_step(runs[side], low, high, "train_runtime_s") for side in runs}
    step_cpu = {side: per_step(runs[side], low, high, "cpu_s") for side in runs}
    startup = {
        side: statistics.median(
            run["wall_s"] - run["train_runtime_s"] for steps in runs[side].values() for run in steps
        )
        for side in runs
    }
    ratio, cpu_ratio = (step_time["skinderm"] / step_time["bare"], step_cpu["skinderm"] / step_cpu["bare"])
    window = f"(N={high} minus N={low}) / {high - low}"
    print(f"\nper step, {window}, medians of {options.repeats} repeats:")
    rows = [
        ("skinderm (python -m skinderm.train)", step_time["skinderm"], step_cpu["skinderm"]),
        ("bare TRL SFTTrainer script", step_time["bare"], step_cpu["bare"]),
    ]
    print(f"  {'':37s} {'wall (train_runtime)':>22s} {'CPU time of process':>22s}")
    for name, wall, cpu in rows:
        print(f"  {name + ':':37s} {wall:20.4f} s {cpu:20.4f} s")
    print(f"  {'ratio skinderm / bare:':37s} {ratio:22.3f} {cpu_ratio:22.3f}   (goal <= 1.05)")
    print("one-time cost per process (wall - train_runtime; imports, data, model, set-up, save, evaluation):")
    print(f"  skinderm: {startup['skinderm']:.1f} s   bare: {startup['bare']:.1f} s")
    if options.json:
        payload = {"step_wall_s": step_time, "step_cpu_s": step_cpu, "ratio_wall": ratio,
                   "ratio_cpu": cpu_ratio, "one_time_s": startup, "runs": runs, "steps": [low, high],
                   "threads": options.threads}  # fmt: skip
        options.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
