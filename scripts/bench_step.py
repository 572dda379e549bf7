"""One SFT step of skinderm's trainer against the bare-model floor at several CPU thread settings, one run.

    python scripts/bench_step.py                          # embedded default; 1 and 2 threads, 2 x 1 processes
    python scripts/bench_step.py --repeats 5 --json /tmp/step.json
    python scripts/bench_step.py --steps 4 --repeats 1 --threads 1 --no-processes   # a smoke test

Project side: `run_training` on the embedded default (tiny Qwen2.5-VL, synthetic data, batch 8, the tiny
SFT recipe, logger=none, no evaluation or checkpoints during the steps) in a fresh process per thread
setting. Per optimizer step, medians after two warm-up steps, of
  - step: on_step_begin -> on_step_end (forward, backward, clipping, AdamW, scheduler, callbacks);
  - cycle: on_step_end -> the next on_step_end (the step plus collating the next batch and logging).
Floor, in the same process, after the project's run: the same model folder loaded afresh, forward +
backward + torch AdamW (lr 1e-3, the trainer's betas and eps) on the first batch the trainer collated
(captured at its forward), nothing else. Ratios: step / floor and cycle / floor.

Processes x threads: two floor-only processes at 1 thread each, concurrently, on the same batch: their
summed samples/s is what 2-process data parallelism on 2 cores could reach at most (no all-reduce),
beside one process at 1 and at 2 threads.

Thread settings and processes alternate within each repeat so that load on a shared machine hits all of
them alike; every figure is a median over repeats. The machine's load average is printed at the start and
at the end: the figures are only as quiet as the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
WARM_UP_STEPS = 2

OVERRIDES = (
    "logger=none",
    "eval.num_samples=0",
    "stage.eval_steps=1000000",
    "stage.save_steps=1000000",
    "stage.eval_max_samples=8",
)


def compose(root: Path, steps: int, threads: int) -> Any:
    """The config `python -m skinderm.train` composes for the embedded default, outputs under `root`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_module("skinderm.conf", version_base="1.3"):
        cfg = hydra_compose(
            "train",
            overrides=[
                *OVERRIDES,
                f"stage.max_steps={steps}",
                f"hardware.torch_threads={threads}",
                f"paths.root_dir={root}",
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "outputs" / f"sft_{threads}t_{time.time_ns()}")
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    return cfg


def step_clock() -> Any:
    """A TrainerCallback: step and cycle times, and the first training batch (forward kwargs, cloned)."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self.cycles: list[float] = []
            self.batch: dict[str, Any] | None = None
            self._begin = self._last_end = 0.0
            self._hook: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any):
            self._hook = model.register_forward_pre_hook(self._capture, with_kwargs=True)

        def _capture(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            if self.batch is None and torch.is_grad_enabled() and module.training:
                self.batch = {
                    key: value.detach().clone()
                    for key, value in kwargs.items()
                    if isinstance(value, torch.Tensor)
                }

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any):
            self._begin = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
            now = time.perf_counter()
            self.steps.append(now - self._begin)
            if self._last_end:
                self.cycles.append(now - self._last_end)
            self._last_end = now

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
            if self._hook is not None:
                self._hook.remove()

    return StepClock()


def floor_seconds(model_dir: str, batch: dict[str, Any], steps: int) -> list[float]:
    """Per-step seconds of forward + backward + AdamW on `batch`, the model loaded afresh from model_dir."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def worker(options: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a BENCH_RESULT JSON line."""
    import torch

    threads = options.threads[0]
    torch.set_num_threads(threads)
    root = options.root
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "mode": options.mode}
    if options.mode == "floor":
        spec = torch.load(root / "batch.pt", weights_only=True)
        result["floor_s"] = floor_seconds(spec["model_dir"], spec["batch"], options.steps + WARM_UP_STEPS)
    else:
        from skinderm.training.pipeline import run_training

        steps = options.steps + WARM_UP_STEPS
        cfg = compose(root, steps, threads)
        clock = step_clock()
        metrics = run_training(cfg, callbacks=[clock])
        assert clock.batch is not None and metrics["global_step"] == steps
        result.update(
            step_s=clock.steps, cycle_s=clock.cycles, batch_size=int(clock.batch["input_ids"].shape[0])
        )
        result["tokens"] = int(clock.batch["attention_mask"].sum())
        if options.mode == "prepare":
            torch.save({"model_dir": str(cfg.model.name_or_path), "batch": clock.batch}, root / "batch.pt")
        else:
            result["floor_s"] = floor_seconds(str(cfg.model.name_or_path), clock.batch, steps)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def launch(root: Path, mode: str, threads: int, steps: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, __file__, "--worker", mode, "--threads", str(threads), "--steps", str(steps),
               "--root", str(root)]  # fmt: skip
    return subprocess.Popen(
        command, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def collect(process: subprocess.Popen[str]) -> dict[str, Any]:
    output, _ = process.communicate()
    line = next((line for line in output.splitlines() if line.startswith("BENCH_RESULT ")), None)
    if process.returncode or line is None:
        raise SystemExit(f"error: a bench worker failed:\n{output[-4000:]}")
    return json.loads(line.removeprefix("BENCH_RESULT "))


def later_median(values: list[float]) -> float:
    return statistics.median(values[WARM_UP_STEPS:] or values)


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12, help="measured steps per run (after 2 warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-processes", action="store_true", help="skip the 2 processes x 1 thread row")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--worker", choices=("prepare", "both", "floor"), default=None, help=argparse.SUPPRESS
    )
    options = parser.parse_args()
    if options.worker:
        options.mode = options.worker
        worker(options)
        return
    if options.steps < 1 or options.repeats < 1:
        raise SystemExit("error: --steps and --repeats must be >= 1")

    root = options.root or Path(tempfile.mkdtemp(prefix="skinderm_bench_step_"))
    root.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"work folder {root}; {cores} cores; load average {load_average()} (1, 5, 15 min)", flush=True)
    print("preparing: synthetic data, tiny model, one collated batch (not measured)", flush=True)
    prepared = collect(launch(root, "prepare", 1, 1))
    print(f"batch: {prepared['batch_size']} examples, {prepared['tokens']} tokens", flush=True)

    runs: dict[str, list[dict[str, Any]]] = {f"{t} thread(s)": [] for t in options.threads}
    processes_key = "2 processes x 1 thread"
    if not options.no_processes:
        runs[processes_key] = []
    for repeat in range(options.repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for key in order:
            if key == processes_key:
                pair = [launch(root, "floor", 1, options.steps) for _ in range(2)]
                results = [collect(process) for process in pair]
                runs[key].append({"floor_s": [later_median(r["floor_s"]) for r in results]})
                print(f"  repeat {repeat + 1}: {key}: floor {runs[key][-1]['floor_s']} s", flush=True)
                continue
            threads = int(key.split()[0])
            result = collect(launch(root, "both", threads, options.steps))
            row = {name: later_median(result[name]) for name in ("step_s", "cycle_s", "floor_s")}
            runs[key].append(row)
            print(
                f"  repeat {repeat + 1}: {key}: step {row['step_s']:.4f} s, cycle {row['cycle_s']:.4f} s, "
                f"floor {row['floor_s']:.4f} s",
                flush=True,
            )

    batch = prepared["batch_size"]
    print(
        f"\nmedians of {options.repeats} repeats ({options.steps} steps each after {WARM_UP_STEPS} warm-up):"
    )
    print(f"  {'setting':24s} {'project step':>13s} {'project cycle':>14s} {'floor':>9s} "
          f"{'step/floor':>11s} {'cycle/floor':>12s} {'samples/s (cycle)':>18s}")  # fmt: skip
    summary: dict[str, Any] = {}
    for key, rows in runs.items():
        if key == processes_key:
            floor = statistics.median(statistics.median(row["floor_s"]) for row in rows)
            summary[key] = {"floor_s": floor, "floor_samples_per_s": 2 * batch / floor}
            print(f"  {key:24s} {'-':>13s} {'-':>14s} {floor:8.4f}s {'-':>11s} {'-':>12s} "
                  f"{2 * batch / floor:12.1f} (floor, 2 x {batch})")  # fmt: skip
            continue
        step, cycle, floor = (
            statistics.median(row[name] for row in rows) for name in ("step_s", "cycle_s", "floor_s")
        )
        summary[key] = {
            "step_s": step, "cycle_s": cycle, "floor_s": floor, "step_over_floor": step / floor,
            "cycle_over_floor": cycle / floor, "samples_per_s": batch / cycle,
            "floor_samples_per_s": batch / floor,
        }  # fmt: skip
        print(f"  {key:24s} {step:12.4f}s {cycle:13.4f}s {floor:8.4f}s {step / floor:11.3f} "
              f"{cycle / floor:12.3f} {batch / cycle:18.1f}")  # fmt: skip
    print(f"load average at the end: {load_average()}")
    if options.json:
        payload = {"summary": summary, "runs": runs, "batch": prepared, "steps": options.steps,
                   "repeats": options.repeats, "cores": cores,
                   "load_average_end": load_average()}  # fmt: skip
        options.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
