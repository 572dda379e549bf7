"""GPU check: LoRA SFT and GRPO steps at Qwen2.5-VL 3B and 7B shapes, through skinderm's own trainer layer.

    bash scripts/gpu_check.sh                  # on a CUDA machine: 3B then 7B (if time and memory allow)
    python scripts/gpu_check.py --tiny         # CPU, tiny shapes: the same code path in ~1 minute
    python scripts/gpu_check.py --sizes 3b --sft-steps 6 --grpo-steps 2
    bash scripts/gpu_check.sh --sizes 7b --qlora   # the same with 4-bit base weights (QLoRA)

No downloads: each model is a randomly initialised Qwen2.5-VL built at the published shapes
(docs: shared/reference/qwen2_5_vl.md; 3.75 B and 8.29 B parameters) in bf16 on the GPU, with the tiny
model's locally trained tokenizer and processor, and saved to a folder that `model.name_or_path`
points at. Synthetic 448x448 lesion images (256 visual tokens each). Then `run_training` does a Stage 1
LoRA SFT run and a Stage 2 GRPO run from it, with hardware=gpu (bf16, TF32, sdpa, gradient
checkpointing), exactly as `python -m skinderm.train` would.

Printed for each stage: median step time (first step, which includes warm-up, apart), model FLOPs per
step, achieved TFLOP/s and MFU against the card's dense bf16 peak (skinderm.training.flops: the formula
and the peak table; HFU counts checkpointing recompute too; no MFU on a card not in the table), generated
tokens/s of GRPO's sampling (timed around the policy's `generate`), and peak GPU memory
(torch.cuda.max_memory_allocated). On CUDA the card's measured 8192^3 bf16 matmul rate is printed beside
the datasheet peak.

Time: the default runs 7B first (never measured before 2026-11-29), then 3B, in about 8 minutes on one
H200 (--deadline-s 450). Each stage is skipped, with the reason printed, when the previous size's same
stage scaled by the parameter ratio would end after the deadline; a stage that fails is recorded with its
error and the next one runs. A JSON summary goes to $OUT/gpu_check.json when OUT is set, and to
--json. A random model rarely emits <|im_end|>, so GRPO completions run to max_completion_length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

# Published Qwen2.5-VL shapes (config.json of the Instruct checkpoints); "tiny" is conf/model/tiny.yaml.
VISION = {
    "vision_hidden_size": 1280,
    "vision_depth": 32,
    "vision_num_heads": 16,
    "vision_intermediate_size": 3420,
}
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "text_hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 256, "vision_hidden_size": 64, "vision_depth": 2, "vision_num_heads": 2,
        "vision_intermediate_size": 128, "vocab_size": 1024, "tie_word_embeddings": False,
    },
    "3b": {
        "text_hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16,
        "num_key_value_heads": 2, "intermediate_size": 11008, "vocab_size": 151936,
        "tie_word_embeddings": True, **VISION,
    },
    "7b": {
        "text_hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
        "tie_word_embeddings": False, **VISION,
    },
}  # fmt: skip
# Published parameter counts (tests/test_gpu_check.py checks SHAPES against them): stage-time estimates.
PARAMETERS = {"tiny": 1, "3b": 3_754_622_976, "7b": 8_292_166_656}
MODEL_GROUP = {"tiny": "qwen2_5_vl_3b", "3b": "qwen2_5_vl_3b", "7b": "qwen2_5_vl_7b"}
# GPU memory a size needs at least (bf16 weights, LoRA states, activations, GRPO sampling), GiB.
MIN_GPU_MEMORY_GIB = {"tiny": 0, "3b": 24, "7b": 48}
IMAGE_SIDE = 448  # 448x448 -> 16x16 = 256 visual tokens
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[gpu_check {time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def build_random_model(out_dir: Path, shape: dict[str, Any], *, device: str, dtype: str, seed: int) -> int:
    """Write a random Qwen2.5-VL of `shape` (+ the tiny tokenizer/processor) to out_dir; returns parameters.

    Initialised directly on `device` in `dtype`: a 7B model built on a CPU in fp32 would take minutes.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    from skinderm.models.processor import ImageOnlyQwen2_5_VLProcessor, build_image_processor
    from skinderm.models.tiny import tiny_config, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(1024)
    tokenizer.chat_template = qwen2_5_vl_chat_template
    config = tiny_config(
        tokenizer, **{key: value for key, value in shape.items() if key != "tie_word_embeddings"}
    )
    config.tie_word_embeddings = bool(shape["tie_word_embeddings"])
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=getattr(torch, dtype))
    text = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=[text.eos_token_id, text.pad_token_id],
        pad_token_id=text.pad_token_id,
        do_sample=False,
    )
    parameters = sum(parameter.numel() for parameter in model.parameters())
    model.save_pretrained(out_dir, safe_serialization=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=build_image_processor(min_pixels=3136, max_pixels=IMAGE_SIDE * IMAGE_SIDE),
        tokenizer=tokenizer,
        chat_template=qwen2_5_vl_chat_template,
    )
    processor.save_pretrained(out_dir)
    return parameters


def make_step_timer(cuda: bool, time_generation: bool) -> Any:
    """A TrainerCallback timing optimizer steps, the policy's generate() calls and peak GPU memory."""
    import torch
    from transformers import TrainerCallback

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.step_seconds: list[float] = []
            self.generate_seconds = 0.0
            self.generated_tokens = 0
            self.generate_calls = 0
            self.peak_memory_gib: float | None = None
            self._step_started = 0.0
            self._patched: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            if time_generation and model is not None:
                self._patch_generate(model)

        def _patch_generate(self, model: Any) -> None:
            original = model.generate
            timer = self

            def timed_generate(*args: Any, **kwargs: Any) -> Any:
                prompt = kwargs.get("input_ids", args[0] if args else None)
                synchronize()
                started = time.perf_counter()
                output = original(*args, **kwargs)
                synchronize()
                timer.generate_seconds += time.perf_counter() - started
                sequences = output if isinstance(output, torch.Tensor) else output.sequences
                if prompt is not None:
                    timer.generated_tokens += (sequences.shape[1] - prompt.shape[1]) * sequences.shape[0]
                timer.generate_calls += 1
                return output

            model.generate = timed_generate  # instance attribute, removed at on_train_end
            self._patched = model

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any):
            synchronize()
            self._step_started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
            synchronize()
            self.step_seconds.append(time.perf_counter() - self._step_started)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
            if cuda:
                self.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30
            if self._patched is not None and "generate" in vars(self._patched):
                del self._patched.generate

        def summary(self) -> dict[str, Any]:
            steps = self.step_seconds
            later = steps[1:] or steps
            result: dict[str, Any] = {
                "steps": len(steps),
                "first_step_s": round(steps[0], 3) if steps else None,
                "median_step_s": round(statistics.median(later), 3) if later else None,
                "peak_gpu_memory_gib": round(self.peak_memory_gib, 2) if self.peak_memory_gib else None,
            }
            if time_generation:
                result["generate_calls"] = self.generate_calls
                result["generated_tokens"] = self.generated_tokens
                result["generated_tokens_per_s"] = (
                    round(self.generated_tokens / self.generate_seconds, 1) if self.generate_seconds else None
                )
            return result

    return StepTimer()


def compose(overrides: list[str], output_dir: Path) -> Any:
    """The training config `python -m skinderm.train <overrides>` would run, with its output folder set."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from skinderm.config import validate_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    validate_config(cfg)
    return cfg


def run_stage(overrides: list[str], output_dir: Path, *, cuda: bool, grpo: bool) -> dict[str, Any]:
    """One `run_training` stage with the step timer and skinderm's ThroughputCallback (FLOPs, MFU)."""
    from skinderm.training.flops import ThroughputCallback
    from skinderm.training.pipeline import run_training

    cfg = compose(overrides, output_dir)
    timer = make_step_timer(cuda, time_generation=grpo)
    throughput = ThroughputCallback()
    started = time.perf_counter()
    metrics = run_training(cfg, callbacks=[timer, throughput])
    result = {"wall_s": round(time.perf_counter() - started, 1), **timer.summary()}
    perf = throughput.summary()
    result["model_flops_per_step"] = perf.get("model_flops_per_step")
    result["hardware_flops_per_step"] = perf.get("hardware_flops_per_step")
    result["tokens_per_step"] = perf.get("tokens_per_step")
    for key in ("tflops", "hardware_tflops", "tokens_per_s", "mfu", "hfu"):
        value = perf.get(key)
        result[key] = None if value is None else round(value, 4 if key in ("mfu", "hfu") else 2)
    result["device_name"], result["peak_tflops"] = perf.get("device_name"), perf.get("peak_tflops")
    result["global_step"] = metrics.get("global_step")
    result["train_loss_last"] = metrics.get("train_loss_last")
    return result


class Schedule:
    """Skips a stage that would end after the deadline: the last size's same stage x parameter ratio."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.seconds: dict[str, tuple[str, float]] = {}  # stage -> (size, seconds) of the last one run

    def skip_reason(self, stage: str, size: str) -> str | None:
        if stage not in self.seconds:
            return None
        previous, seconds = self.seconds[stage]
        estimate = seconds * PARAMETERS[size] / PARAMETERS[previous]
        elapsed = time.perf_counter() - STARTED
        if elapsed + estimate > self.deadline_s:
            return (
                f"would end after --deadline-s {self.deadline_s:.0f} (at {elapsed:.0f} s, ~{estimate:.0f} s)"
            )
        return None

    def record(self, stage: str, size: str, seconds: float) -> None:
        self.seconds[stage] = (size, seconds)


def timed_stage(stage: str, size: str, schedule: Schedule, run: Any) -> dict[str, Any]:
    """run() unless the schedule skips it; an error becomes the stage's result (the next stage still runs)."""
    reason = schedule.skip_reason(stage, size)
    if reason:
        log(f"{size}: {stage} skipped, {reason}")
        return {"skipped": reason}
    started = time.perf_counter()
    try:
        result = run()
    except Exception as error:  # a one-shot GPU session: keep the other rows
        import traceback

        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"[:500]}
    schedule.record(stage, size, time.perf_counter() - started)
    return result


def check_size(
    size: str, work: Path, options: argparse.Namespace, cuda: bool, schedule: Schedule
) -> dict[str, Any]:
    model_dir = work / f"model_{size}"
    dtype = "bfloat16" if cuda else "float32"
    result: dict[str, Any] = {
        "weights": "4-bit NF4 (QLoRA)" if options.qlora else "bf16" if cuda else "float32"
    }

    def build() -> dict[str, Any]:
        log(f"{size}: building a random Qwen2.5-VL ({dtype}, {'cuda' if cuda else 'cpu'}) in {model_dir}")
        started = time.perf_counter()
        parameters = build_random_model(
            model_dir, SHAPES[size], device="cuda" if cuda else "cpu", dtype=dtype, seed=options.seed
        )
        count = f"{parameters / 1e9:.2f} B" if parameters >= 1e8 else f"{parameters / 1e6:.2f} M"
        seconds = round(time.perf_counter() - started, 1)
        log(f"{size}: {count} parameters, built and saved in {seconds} s")
        return {"parameters": parameters, "build_s": seconds}

    built = timed_stage("build", size, schedule, build)
    if "parameters" not in built:
        return {
            **result,
            "skipped" if "skipped" in built else "error": built.get("skipped") or built["error"],
        }
    result.update(built)

    common = [
        f"model={MODEL_GROUP[size]}",
        f"model.name_or_path={model_dir}",
        "model.min_pixels=3136",
        f"model.max_pixels={IMAGE_SIDE * IMAGE_SIDE}",
        f"hardware={'gpu' if cuda else 'cpu'}",
        "hardware.gradient_checkpointing=true",
        "hardware.attn_implementation=sdpa",
        "dataset=synthetic",
        "dataset.synthetic.num_images=70",
        "dataset.synthetic.class_counts={akiec:10,bcc:10,bkl:10,df:10,mel:10,nv:10,vasc:10}",
        f"dataset.synthetic.image_width={IMAGE_SIDE}",
        f"dataset.synthetic.image_height={IMAGE_SIDE}",
        "logger=none",
        "eval.num_samples=0",
        f"paths.root_dir={work}",
        f"seed={options.seed}",
        f"hardware.load_in_4bit={str(options.qlora).lower()}",
    ]
    sft_dir = work / "outputs" / size / "sft"

    def sft() -> dict[str, Any]:
        log(f"{size}: LoRA SFT, {options.sft_steps} steps of {options.sft_batch} images")
        return run_stage(
            [
                *common,
                "stage=sft",
                f"stage.max_steps={options.sft_steps}",
                f"stage.per_device_train_batch_size={options.sft_batch}",
                "stage.gradient_accumulation_steps=1",
                "stage.learning_rate=1e-4",
                "stage.warmup_steps=0",
                "stage.logging_steps=1",
                "stage.eval_steps=100000",
                "stage.eval_max_samples=4",
                "stage.save_steps=100000",
            ],
            sft_dir,
            cuda=cuda,
            grpo=False,
        )

    def grpo() -> dict[str, Any]:
        log(
            f"{size}: GRPO, {options.grpo_steps} steps of {options.grpo_batch} completions "
            f"({options.num_generations} per prompt, {options.completion_tokens} tokens)"
        )
        return run_stage(
            [
                *common,
                "stage=grpo",
                f"stage.init_from={sft_dir}",
                f"stage.max_steps={options.grpo_steps}",
                f"stage.per_device_train_batch_size={options.grpo_batch}",
                # one micro-batch per step (the LoRA recipe accumulates 4): one generate call per step
                "stage.gradient_accumulation_steps=1",
                f"stage.num_generations={options.num_generations}",
                f"stage.max_completion_length={options.completion_tokens}",
                "stage.learning_rate=1e-5",
                "stage.logging_steps=1",
                "stage.save_steps=100000",
            ],
            work / "outputs" / size / "grpo",
            cuda=cuda,
            grpo=True,
        )

    result["sft"] = timed_stage("sft", size, schedule, sft)
    log(f"{size}: SFT {result['sft']}")
    if "steps" in result["sft"]:
        result["grpo"] = timed_stage("grpo", size, schedule, grpo)
    else:
        result["grpo"] = {"skipped": "no SFT run to start from"}
    log(f"{size}: GRPO {result['grpo']}")
    shutil.rmtree(model_dir, ignore_errors=True)  # 7.5 / 16.6 GB of random weights
    shutil.rmtree(work / "outputs" / size, ignore_errors=True)
    return result


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
    """The card's bf16 matmul rate on random data (the practical ceiling beside the datasheet peak)."""
    import torch

    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    del a, b
    torch.cuda.empty_cache()
    return 2 * size**3 * repeats / seconds / 1e12


def environment() -> dict[str, Any]:
    import torch
    import transformers
    import trl

    from skinderm.training.flops import peak_tflops

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "cuda": torch.cuda.is_available(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = properties.name
        info["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
        info["peak_bf16_dense_tflops"] = peak_tflops(properties.name)
        info["matmul_bf16_tflops_measured"] = round(matmul_tflops(), 1)
    return info


def _number(value: float | None, form: str, missing: str = "-") -> str:
    return missing if value is None else format(value, form)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_table(results: dict[str, Any]) -> None:
    print(
        "\nsize  stage  steps  first step  median step   FLOPs/step   TFLOP/s     MFU     HFU  "
        "generated tok/s  peak GPU memory",
        flush=True,
    )
    for size, result in results.items():
        if "parameters" not in result:
            print(f"{size:5s} {'skipped' if 'skipped' in result else 'failed'}: "
                  f"{result.get('skipped') or result.get('error')}")  # fmt: skip
            continue
        for stage in ("sft", "grpo"):
            row = result[stage]
            if "steps" not in row:
                print(f"{size:5s} {stage:5s} {row.get('skipped') or row.get('error')}")
                continue
            mfu, hfu = row.get("mfu"), row.get("hfu")
            print(
                f"{size:5s} {stage:5s} {row['steps']:5d} {row['first_step_s']:9.2f} s "
                f"{row['median_step_s']:10.3f} s {_number(row.get('model_flops_per_step'), '.3e'):>12} "
                f"{_number(row.get('tflops'), '.3g'):>9} {_percent(mfu):>7} {_percent(hfu):>7} "
                f"{_number(row.get('generated_tokens_per_s'), '.0f'):>16} "
                f"{_number(row.get('peak_gpu_memory_gib'), '.1f'):>12} GiB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU test mode); default: 7b 3b")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SHAPES), default=None)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--sft-steps", type=int, default=None, help="default 6 (tiny: 3)")
    parser.add_argument("--sft-batch", type=int, default=4)
    parser.add_argument("--grpo-steps", type=int, default=None, help="default 3 (tiny: 2)")
    parser.add_argument(
        "--grpo-batch", type=int, default=8, help="completions per step (a multiple of --num-generations)"
    )
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--completion-tokens", type=int, default=None, help="default 64 (tiny: 16)")
    parser.add_argument(
        "--deadline-s", type=float, default=450.0, help="skip stages that would end after this"
    )
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--qlora", action="store_true", help="base weights in 4-bit NF4 (hardware.load_in_4bit; bitsandbytes)"
    )
    options = parser.parse_args()
    options.sizes = options.sizes or (["tiny"] if options.tiny else ["7b", "3b"])
    options.sft_steps = options.sft_steps or (3 if options.tiny else 6)
    options.grpo_steps = options.grpo_steps or (2 if options.tiny else 3)
    options.completion_tokens = options.completion_tokens or (16 if options.tiny else 64)
    if options.grpo_batch % options.num_generations:
        raise SystemExit("error: --grpo-batch must be a multiple of --num-generations")

    for variable, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("WANDB_MODE", "disabled"),
    ):
        os.environ.setdefault(variable, value)
    import torch

    cuda = torch.cuda.is_available() if options.device == "auto" else options.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA GPU")
    info = environment()
    log(f"environment: {info}")
    work = options.work or Path(tempfile.mkdtemp(prefix="skinderm_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {}
    schedule = Schedule(options.deadline_s)
    for size in options.sizes:
        memory = info.get("gpu_memory_gib", 0.0)
        if cuda and memory < MIN_GPU_MEMORY_GIB[size]:
            results[size] = {
                "skipped": f"needs >= {MIN_GPU_MEMORY_GIB[size]} GiB of GPU memory, found {memory}"
            }
            log(f"{size}: skipped, {results[size]['skipped']}")
            continue
        started = time.perf_counter()
        results[size] = check_size(size, work, options, cuda, schedule)
        results[size]["size_s"] = round(time.perf_counter() - started, 1)
        if cuda:
            torch.cuda.empty_cache()

    summary = {"environment": info, "results": results, "total_s": round(time.perf_counter() - STARTED, 1)}
    print_table(results)
    print(json.dumps(summary, indent=2), flush=True)
    targets = [options.json] if options.json else []
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / "gpu_check.json")
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(summary, indent=2) + "\n")
        log(f"summary written to {target}")
    if options.work is None:
        shutil.rmtree(work, ignore_errors=True)
    failed = [
        f"{size} {stage}"
        for size, result in results.items()
        for stage in ("build", "sft", "grpo")
        if "error" in (result if stage == "build" else result.get(stage, {}))
    ]
    if failed:
        raise SystemExit(f"error: failed: {', '.join(failed)} (the other rows are in the summary)")


if __name__ == "__main__":
    main()
