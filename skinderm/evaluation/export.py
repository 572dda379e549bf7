"""Hand a trained run to someone else: one merged model folder + processor + model card.

`export_run` loads a run's model the way evaluation does (`load_run_model`: a LoRA adapter is put on the
base it was trained on and folded in with `merge_and_unload`), and saves a plain Qwen2.5-VL folder that
loads with `from_pretrained` alone: safetensors weights, config, a generation config set to the greedy
decoding evaluation measured, the processor with the run's pixel budget, and a README.md model card
(Hub front matter; data and splits; metrics with 95% intervals from `skinderm.evaluate` runs of this
model; the commands that made it; the prompt and answer format; intended use and limitations).

The folder is written under a temporary name and renamed into place, so a failed export never leaves
half a model where a finished one is expected; an existing export there is replaced, anything else is
refused. `skinderm_export.json` marks a folder as an export (and records where it came from).
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from skinderm.config import DTYPES
from skinderm.core.files import to_plain
from skinderm.evaluation.choice import generation_budget
from skinderm.models.checkpoints import (
    FINISHED_MARKER,
    METRICS_FILE,
    MODEL_DIR,
    RESOLVED_CONFIG_FILE,
    is_adapter_folder,
    load_run_config,
    load_run_model,
    resolve_run,
    stage1_run_of,
)
from skinderm.models.loading import hub_offline, looks_like_local_path

log = logging.getLogger(__name__)

MANIFEST_FILE = "skinderm_export.json"
CARD_FILE = "README.md"
EXPORT_DIR = "export"
EVALUATE_TASK = "evaluate"
# Files that would make the folder an adapter (not merged) or load through pickle instead of safetensors.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Licences of the shipped base models, as their Hub cards declare them: (license, license_name, link).
BASE_LICENSES: dict[str, tuple[str, str | None, str | None]] = {
    "Qwen/Qwen2.5-VL-3B-Instruct": (
        "other",
        "qwen-research",
        "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/LICENSE",
    ),
    "Qwen/Qwen2.5-VL-7B-Instruct": ("apache-2.0", None, None),
}
# The tiny model is built by this project from random weights: the project's own licence.
TINY_LICENSE = "apache-2.0"
HAM10000_LICENSE = "CC BY-NC 4.0"
# Headline metrics of an evaluation, with the bootstrap key holding each one's interval.
_METRIC_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("parse rate", "parse_rate", None),
    ("accuracy", "accuracy", "accuracy"),
    ("balanced accuracy", "balanced_accuracy", "balanced_accuracy"),
    ("macro F1", "macro_f1", "macro_f1"),
    ("location accuracy (3x3 cell)", "spatial_accuracy", "spatial_accuracy"),
    ("mean box IoU", "bbox.mean_iou", "bbox_mean_iou"),
    ("mean mask IoU", "mask_mean_iou", None),
    ("macro AUROC (one-vs-rest)", "calibration.macro_auroc_ovr", None),
    ("ECE (top label)", "calibration.ece", None),
    ("majority-class baseline, balanced accuracy", "majority_baseline.balanced_accuracy", None),
)


# --------------------------------------------------------------------------------------------------
# Config


# --------------------------------------------------------------------------------------------------
# The export


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what its card reports."""

    path: Path
    run_dir: Path
    evaluations: list[Path]
    merged_adapter: bool


def export_run(
    run: str | Path,
    *,
    log_dir: str | Path,
    out: str | Path | None = None,
    dtype: str | None = None,
    max_new_tokens: int | None = None,
    license: str | None = None,
    base_model_path: str | None = None,
    command: str | None = None,
) -> ExportResult:
    """Write the merged model, processor, model card and manifest of a finished run into `out`.

    `out` defaults to `<run>/export`. `dtype` defaults to the precision the run trained in (the merge
    itself is done in float32). `max_new_tokens` (generation_config.json) defaults to the run's own
    generation budget (`generation_budget`). `base_model_path`: where an adapter run's base checkpoint
    lives on this machine, if not at the run's model.name_or_path (the card still names the recorded base).
    `command`: the export command line, for the card.
    """
    run_dir = resolve_run(run, log_dir)
    if not (run_dir / FINISHED_MARKER).is_file():
        raise ValueError(
            f"run={run}: {run_dir} has no {FINISHED_MARKER} marker, so training did not finish; export a "
            "finished run (or resume this one: python -m skinderm.train resume=<run folder>)"
        )
    target = Path(out).expanduser() if out not in (None, "") else run_dir / EXPORT_DIR
    check_export_target(target)
    run_cfg = load_run_config(run_dir)
    metrics = _read_json(run_dir / METRICS_FILE) or {}
    dtype = dtype or str(OmegaConf.select(run_cfg, "hardware.precision", default="float32"))
    if dtype not in DTYPES:
        dtype = "float32"
    evaluations = find_evaluations(run_dir, [Path(log_dir), *_recorded_log_dirs(run_dir, run_cfg)])

    overrides = {"name_or_path": base_model_path} if base_model_path else None
    log.info("loading %s (merging a LoRA adapter if it has one)", run_dir)
    model, processor = load_run_model(
        run_dir, torch_dtype="float32", merge_adapter=True, model_overrides=overrides
    )
    if dtype != "float32":
        import torch

        model = model.to(getattr(torch, dtype))
    model.eval()
    max_new_tokens = generation_budget(run_cfg, max_new_tokens)
    set_greedy_generation(model, processor, max_new_tokens=max_new_tokens)
    merged = is_adapter_folder(run_dir / MODEL_DIR)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(staging))
        processor.save_pretrained(str(staging))
        card = model_card(
            run_dir,
            run_cfg,
            metrics,
            evaluations,
            dtype=dtype,
            parameters=sum(p.numel() for p in model.parameters()),
            max_new_tokens=max_new_tokens,
            license=license,
            command=command,
        )
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        manifest = {
            "format": "skinderm export 1",
            "run": str(run_dir.resolve()),
            "stage": OmegaConf.select(run_cfg, "stage.name"),
            "merged_adapter": merged,
            "dtype": dtype,
            "evaluations": [str(path) for path in evaluations],
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        check_export_folder(staging)
        _move_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("export written to %s", target)
    return ExportResult(target, run_dir, evaluations, merged)


def check_export_target(target: Path) -> None:
    """Refuse to write over anything but an earlier export (or an empty folder)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"out={target}: exists and is a file; choose another out= folder")
    if any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise ValueError(
            f"out={target}: exists and is not a skinderm export (no {MANIFEST_FILE}); choose another out= "
            "folder or remove it"
        )


def check_export_folder(folder: Path) -> None:
    """The export is merged (no adapter files) and pickle-free (safetensors weights only)."""
    names = [path.name for path in folder.rglob("*") if path.is_file()]
    adapter = sorted(set(names) & set(ADAPTER_FILES))
    pickles = sorted(name for name in names if name.endswith(PICKLE_SUFFIXES))
    if adapter or pickles:
        raise RuntimeError(f"export {folder} holds {adapter + pickles}: expected merged safetensors only")
    if not any(name.endswith(".safetensors") for name in names):
        raise RuntimeError(f"export {folder} holds no .safetensors weights")


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished folder to `target`; an earlier export there is replaced."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def set_greedy_generation(model: Any, processor: Any, *, max_new_tokens: int) -> None:
    """Make plain `model.generate(**inputs)` decode as skinderm's evaluation does.

    Greedy, no repetition penalty (Qwen's Instruct checkpoints ship sampling with repetition_penalty
    1.05), stopping at every end-of-answer id; the answers a user gets are then the answers measured.
    """
    from transformers import GenerationConfig

    from skinderm.evaluation.generation import stop_token_ids

    tokenizer = processor.tokenizer
    previous = model.generation_config
    model.generation_config = GenerationConfig(
        bos_token_id=previous.bos_token_id,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else previous.pad_token_id,
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        max_new_tokens=int(max_new_tokens),
    )


# --------------------------------------------------------------------------------------------------
# Where a run's evaluations and commands are


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _recorded_log_dirs(run_dir: Path, run_cfg: DictConfig) -> list[Path]:
    """Log folders the run may sit under: its recorded paths.log_dir and <log>/<stage>/runs/<time>."""
    found: list[Path] = []
    recorded = OmegaConf.select(run_cfg, "paths.log_dir", default=None)
    if recorded:
        found.append(Path(str(recorded)))
    stage = OmegaConf.select(run_cfg, "task_name", default=None) or OmegaConf.select(run_cfg, "stage.name")
    for parent in run_dir.resolve().parents:
        if parent.name == str(stage):
            found.append(parent.parent)
            break
    return found


def _same_run(recorded: str, run_dir: Path, eval_root: str | None) -> bool:
    """Whether an evaluation's recorded `run` (absolute, or relative to where it was run) is `run_dir`."""
    path = Path(recorded).expanduser()
    candidates = [path] if path.is_absolute() else [Path(eval_root) / path] if eval_root else []
    for candidate in candidates:
        try:
            if candidate.resolve() == run_dir.resolve():
                return True
        except OSError:
            continue
    # Relative to an unknown working directory: the trailing <stage>/runs/<time> parts must match.
    parts = path.parts
    return not path.is_absolute() and len(parts) >= 3 and run_dir.resolve().parts[-len(parts) :] == parts


def find_evaluations(run_dir: Path, log_dirs: Sequence[Path]) -> list[Path]:
    """Finished `skinderm.evaluate` folders of this run: the newest per dataset/split/subset, test first."""
    seen: set[Path] = set()
    newest: dict[tuple[Any, ...], tuple[float, Path]] = {}
    for log_dir in log_dirs:
        root = Path(log_dir).expanduser() / EVALUATE_TASK
        if not root.is_dir():
            continue
        for marker in root.glob("**/" + FINISHED_MARKER):
            folder = marker.parent.resolve()
            if folder in seen:
                continue
            seen.add(folder)
            context = (_read_json(folder / METRICS_FILE) or {}).get("evaluation") or {}
            if not context.get("run"):
                continue
            eval_root = None
            if (folder / RESOLVED_CONFIG_FILE).is_file():
                eval_root = OmegaConf.select(load_run_config(folder), "paths.root_dir", default=None)
            if not _same_run(str(context["run"]), run_dir, None if eval_root is None else str(eval_root)):
                continue
            key = (context.get("dataset"), context.get("dataset_root"), context.get("split"),
                   context.get("max_samples"))  # fmt: skip
            stamp = marker.stat().st_mtime
            if key not in newest or stamp > newest[key][0]:
                newest[key] = (stamp, folder)
    order = {"test": 0, "val": 1, "train": 2}
    return [
        folder
        for key, (_, folder) in sorted(
            newest.items(), key=lambda item: (order.get(item[0][2], 3), -item[1][0])
        )
    ]


def training_chain(run_dir: Path) -> list[Path]:
    """The runs that made this model, first stage first (a GRPO run after the Stage 1 run it started from)."""
    chain = [run_dir]
    while OmegaConf.select(load_run_config(chain[0]), "stage.name") == "grpo":
        earlier = stage1_run_of(chain[0])
        if earlier.resolve() in {path.resolve() for path in chain}:
            break
        chain.insert(0, earlier)
    return chain


def training_command(run_dir: Path) -> str | None:
    """`python -m skinderm.train <overrides>` as Hydra recorded it in <run>/.hydra/overrides.yaml."""
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError):
        return None
    return " ".join(["python -m skinderm.train", *(shlex.quote(str(item)) for item in overrides)])


# --------------------------------------------------------------------------------------------------
# The model card


def card_license(model_cfg: Mapping[str, Any], override: str | None) -> dict[str, str]:
    """The front matter's licence keys: `override`, the shipped base's, the tiny model's, else `other`."""
    if override:
        return {"license": str(override)}
    if model_cfg.get("tiny"):
        return {"license": TINY_LICENSE}
    known = BASE_LICENSES.get(str(model_cfg.get("name_or_path")))
    if known is None:
        return {"license": "other"}
    name, license_name, link = known
    keys = {"license": name}
    if license_name:
        keys["license_name"] = license_name
    if link:
        keys["license_link"] = link
    return keys


def hub_base_model(model_cfg: Mapping[str, Any]) -> str | None:
    """The base model's Hub id, or None for a local folder or the tiny model (the Hub needs an id)."""
    name = str(model_cfg.get("name_or_path") or "")
    if model_cfg.get("tiny") or not name or looks_like_local_path(name):
        return None
    return name


def _front_matter(run_cfg: DictConfig, model_cfg: Mapping[str, Any], license: str | None) -> str:
    stage = str(OmegaConf.select(run_cfg, "stage.name"))
    dataset = str(OmegaConf.select(run_cfg, "dataset.name"))
    tags = ["skinderm", "dermatology", "dermoscopy", "skin-lesion", "medical", "qwen2_5_vl", "trl", stage]
    tags += ["ham10000"] if dataset == "ham10000" else ["synthetic-data"] if dataset == "synthetic" else []
    if bool(OmegaConf.select(run_cfg, "model.lora.enabled", default=False)):
        tags.append("lora-merged")
    matter: dict[str, Any] = card_license(model_cfg, license)
    base = hub_base_model(model_cfg)
    if base:
        matter["base_model"] = base
    matter.update(library_name="transformers", pipeline_tag="image-text-to-text", tags=tags)
    return "---\n" + yaml.safe_dump(matter, sort_keys=False, allow_unicode=True) + "---\n"


def _get(mapping: Mapping[str, Any], dotted: str) -> Any:
    value: Any = mapping
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _number(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.3f}"


def _evaluation_section(
    evaluations: Sequence[Path], run_dir: Path, metrics: Mapping[str, Any], fields: Sequence[str]
) -> list[str]:
    lines = ["## Evaluation", ""]
    if not evaluations:
        lines += [
            "**Not evaluated**: no finished `skinderm.evaluate` run of this model was found. To evaluate it "
            "(test split, 95% intervals from resampling whole lesions), then export again:",
            "",
            "```bash",
            f"python -m skinderm.evaluate run={shlex.quote(str(run_dir))} split=test",
            "```",
            "",
        ]
    for folder in evaluations:
        result = _read_json(folder / METRICS_FILE) or {}
        context = result.get("evaluation") or {}
        subset = f", a seeded subset of {context['max_samples']}" if context.get("max_samples") else ""
        lines += [
            f"### {context.get('dataset')} / {context.get('split')}: {result.get('n')} images{subset}",
            "",
            f"Greedy answers (`max_new_tokens={context.get('max_new_tokens')}`), scored by "
            f"`skinderm.evaluate` (`{folder}`). Intervals: 95% percentile bootstrap over whole lesions.",
            "",
            "| metric | value | 95% interval |",
            "|---|---|---|",
        ]
        for label, key, interval_key in _METRIC_ROWS:
            value = _get(result, key)
            if value is None:
                continue
            interval = (result.get("bootstrap") or {}).get(interval_key or "") or {}
            low, high = interval.get("low"), interval.get("high")
            bounds = f"{_number(low)} - {_number(high)}" if low is not None and high is not None else ""
            lines.append(f"| {label} | {_number(value)} | {bounds} |")
        per_class = result.get("per_class") or {}
        if per_class:
            recalls = ", ".join(
                f"{code} {_number((row or {}).get('recall'))}" for code, row in per_class.items()
            )
            lines += ["", f"Recall per class: {recalls}."]
        lines.append("")
    check = metrics.get("val_after") or metrics.get("val_generation")
    if check:
        lines += [
            f"Training-time check (not an evaluation; {check.get('n')} val images, no intervals): "
            f"balanced accuracy {_number(check.get('balanced_accuracy'))}, parse rate "
            f"{_number(check.get('parse_rate'))}.",
            "",
        ]
    return lines


def _split_counts(run_cfg: DictConfig) -> list[str]:
    """Images per class and split, from the dataset's splits.csv when it is still the run's split."""
    from skinderm.data import layout
    from skinderm.data.splits import read_splits, split_summary

    root = OmegaConf.select(run_cfg, "dataset.annotations_dir") or OmegaConf.select(run_cfg, "dataset.root")
    if not root:
        return []
    folder = Path(str(root))
    params = _read_json(folder / layout.SPLITS_PARAMS_JSON)
    wanted = to_plain(OmegaConf.select(run_cfg, "dataset.splits"))
    if not (folder / layout.SPLITS_CSV).is_file() or params is None or params != wanted:
        return [f"(Images per split: `{folder / layout.SPLITS_CSV}` is not here or was remade since.)", ""]
    table = read_splits(folder / layout.SPLITS_CSV)
    summary = split_summary(table, table["split"])
    header = ["dx", *(str(column) for column in summary.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dx, row in summary.iterrows():
        lines.append("| " + " | ".join([str(dx), *(str(int(value)) for value in row)]) + " |")
    return ["Images per class and split:", "", *lines, ""]


def _data_section(run_cfg: DictConfig, metrics: Mapping[str, Any]) -> list[str]:
    dataset = to_plain(run_cfg.dataset)
    splits = dataset.get("splits") or {}
    name = dataset.get("name")
    lines = ["## Training data and splits", ""]
    if name == "ham10000":
        lines.append(
            f"HAM10000 (Tschandl et al. 2018, {HAM10000_LICENSE}: non-commercial), read from "
            f"`{dataset.get('root')}`; lesion boxes, outlines and 3x3 locations derived from its masks."
        )
    elif name == "synthetic":
        synthetic = dataset.get("synthetic") or {}
        given = synthetic.get("class_counts") or {}
        counts = ", ".join(f"{code} {count}" for code, count in given.items()) or "in HAM10000 proportions"
        lines.append(
            f"Synthetic dermoscopy-like images made by `skinderm.synthesize` (not real skin): "
            f"{synthetic.get('num_images')} images of {synthetic.get('image_width')}x"
            f"{synthetic.get('image_height')} px, seed {synthetic.get('seed')}, class counts {counts}."
        )
    else:
        lines.append(f"Dataset `{name}` at `{dataset.get('root')}`.")
    lines += [
        "",
        "Splits: stratified by diagnosis and grouped by lesion (no lesion in two splits), val fraction "
        f"{splits.get('val_fraction')}, test fraction {splits.get('test_fraction')}, "
        f"seed {splits.get('seed')}. "
        f"Training used {metrics.get('n_train', '?')} images of the train split.",
        "",
        *_split_counts(run_cfg),
    ]
    summary = metrics.get("data") or {}
    if summary:
        skipped = sum(int(value) for value in (summary.get("skip_counts") or {}).values())
        lines += [
            f"Data preparation: {summary.get('images_listed')} images listed, {summary.get('images_used')} "
            f"used, {skipped} skipped (`on_error={summary.get('on_error')}`); masks missing "
            f"{summary.get('masks_missing', 0)}, empty {summary.get('masks_empty', 0)}.",
            "",
        ]
    return lines


def _training_lines(chain: Sequence[Path]) -> list[str]:
    lines: list[str] = []
    for run_dir in chain:
        cfg = load_run_config(run_dir)
        metrics = _read_json(run_dir / METRICS_FILE) or {}
        stage = OmegaConf.select(cfg, "stage.name")
        lora = to_plain(OmegaConf.select(cfg, "model.lora")) or {}
        how = (
            f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')} on "
            f"{', '.join(lora.get('target_modules', []))} (merged into the weights here)"
            if lora.get("enabled")
            else "full fine-tuning"
        )
        what = f"- **{str(stage).upper()}** (`{run_dir}`): {how}, {metrics.get('global_step', '?')} steps, "
        what += f"learning rate {OmegaConf.select(cfg, 'stage.learning_rate')}, "
        what += f"{OmegaConf.select(cfg, 'hardware.precision')}, seed {OmegaConf.select(cfg, 'seed')}"
        if stage == "grpo":
            weights = to_plain(OmegaConf.select(cfg, "reward.weights")) or {}
            what += ", reward weights " + ", ".join(f"{key} {value}" for key, value in weights.items())
        lines.append(what + ".")
    return lines


def _commands_section(chain: Sequence[Path], command: str | None) -> list[str]:
    lines = ["## How this model was made", "", *_training_lines(chain), "", "```bash"]
    for run_dir in chain:
        stage = OmegaConf.select(load_run_config(run_dir), "stage.name")
        recorded = training_command(run_dir)
        lines.append(f"# {stage}: {run_dir}")
        lines.append(recorded or f"# (not recorded: {run_dir}/.hydra/overrides.yaml is missing)")
    lines.append("# export")
    lines.append(command or f"python -m skinderm.export run={shlex.quote(str(chain[-1]))}")
    return [*lines, "```", ""]


def _usage_section(
    model_cfg: Mapping[str, Any], fields: Sequence[str], max_new_tokens: int, dtype: str
) -> list[str]:
    from skinderm.answers import format_answer
    from skinderm.conversations import build_prompt
    from skinderm.data.classes import CLASS_NAMES, LOCATIONS

    prompt = build_prompt(fields)
    min_pixels, max_pixels = int(model_cfg["min_pixels"]), int(model_cfg["max_pixels"])
    example = format_answer(
        diagnosis="nv",
        location=LOCATIONS[len(LOCATIONS) // 2],
        bbox_2d=[62, 40, 158, 121],
        polygon=[[62, 80], [110, 40], [158, 80], [110, 121]],
        fields=fields,
    )
    classes = "; ".join(f"`{code}` {name}" for code, name in CLASS_NAMES.items())
    return [
        "## How to use",
        "",
        "Plain transformers (no `trust_remote_code`). transformers 5.24 builds Qwen2.5-VL's processor only "
        "where torchvision imports (it insists on the video processor); without torchvision, load the "
        "processor with skinderm's image-only loader (`pip install skinderm`), which gives the same "
        "tokens and pixels:",
        "",
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        'path = "path/to/this/folder"  # or the Hub repo id',
        f"model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.{dtype}).eval()"
        "  # Qwen2_5_VLForConditionalGeneration",
        "processor = AutoProcessor.from_pretrained(path)  # with torchvision",
        "# without torchvision:",
        "# from skinderm.models.processor import load_processor",
        f"# processor = load_processor(path, min_pixels={min_pixels}, max_pixels={max_pixels})",
        "",
        f"PROMPT = {prompt!r}",
        'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]',
        "text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
        'image = Image.open("lesion.jpg").convert("RGB")',
        "inputs = processor(",
        '    text=[text], images=[image], padding=True, padding_side="left", return_tensors="pt"',
        ")",
        "with torch.inference_mode():",
        "    output = model.generate(**inputs)  # greedy: generation_config.json has the evaluated settings",
        'new_tokens = output[:, inputs["input_ids"].shape[1] :]',
        "answer = processor.batch_decode(new_tokens, skip_special_tokens=True)[0]",
        "```",
        "",
        'Batches: pass several texts and images with `padding_side="left"` (answers do not change with the '
        f"batch size in float32). `generation_config.json` is greedy, no repetition penalty, at most "
        f"{max_new_tokens} new tokens, as skinderm's evaluation decodes.",
        "",
        "## Answer format",
        "",
        f"The prompt, exactly as in training: `{prompt}`",
        "",
        f"The answer is one JSON object, e.g. `{example}`. Diagnoses: {classes}. Locations: "
        f"{', '.join(LOCATIONS)} (the 3x3 cell of the lesion's centre).",
        "",
        "Coordinates are pixels of the image **as the model sees it**, after the processor's resize to "
        f"multiples of 28 px within {min_pixels}..{max_pixels} pixels. Its size is "
        '`h, w = inputs["image_grid_thw"][0][1:] * 14`; scale boxes by the original width / w and '
        "height / h. "
        "skinderm resizes images to that size itself (PIL bicubic, `skinderm.coordinates."
        "model_input_size`) before the processor, so its scores match that path exactly; the processor's own "
        "resize gives the same size and nearly the same pixels.",
        "",
    ]


def model_card(
    run_dir: Path,
    run_cfg: DictConfig,
    metrics: Mapping[str, Any],
    evaluations: Sequence[Path],
    *,
    dtype: str,
    parameters: int,
    max_new_tokens: int,
    license: str | None = None,
    command: str | None = None,
) -> str:
    """README.md of an export: Hub front matter, then what a user needs to judge and call the model."""
    model_cfg = to_plain(run_cfg.model)
    fields = list(to_plain(OmegaConf.select(run_cfg, "answer.fields")) or ["diagnosis"])
    stage = str(OmegaConf.select(run_cfg, "stage.name"))
    chain = training_chain(run_dir)
    base = hub_base_model(model_cfg) or (
        f"the tiny random Qwen2.5-VL built by skinderm ({model_cfg.get('name')}, not pretrained)"
        if model_cfg.get("tiny")
        else f"`{model_cfg.get('name_or_path')}`"
    )
    licence_note = (
        ""
        if license or card_license(model_cfg, None)["license"] != "other"
        else (" The base model's licence is not known to skinderm: check it and export with `license=...`.")
    )
    adapters = [path for path in chain if is_adapter_folder(path / MODEL_DIR)]
    merged_note = ", LoRA adapter(s) merged into the weights" if adapters else ""
    lines = [
        _front_matter(run_cfg, model_cfg, license),
        f"# skinderm {stage.upper()}: {model_cfg.get('name')} for dermoscopy diagnosis and lesion location",
        "",
        "> **Not for clinical use.** A research model: it has not been validated for diagnosis, screening "
        "or treatment decisions and must not be used for them.",
        "",
        f"Qwen2.5-VL fine-tuned with skinderm ({' then '.join(s.upper() for s in _stages(chain))}) to "
        f"answer, for one dermoscopy image, {', '.join(fields)} as JSON. Base model: {base}. "
        f"{parameters:,} parameters, {dtype} safetensors{merged_note}.{licence_note}",
        "",
        "## Intended use",
        "",
        "Research on vision-language models for dermoscopy: reproducing and comparing the seven-class "
        "HAM10000 diagnosis task and lesion localisation, and as a starting point for further fine-tuning. "
        "Not for patients, clinicians or triage, and not for images other than dermoscopy.",
        "",
        *_usage_section(model_cfg, fields, max_new_tokens, dtype),
        *_data_section(run_cfg, metrics),
        *_evaluation_section(evaluations, run_dir, metrics, fields),
        *_commands_section(chain, command),
        "## Limitations",
        "",
        "- **Not for clinical use.** Accuracy on the held-out split says nothing about other cameras, "
        "clinics, skin types or lesion kinds outside the seven HAM10000 classes; it always names one "
        "of them.",
        "- HAM10000 comes mostly from fair-skinned patients in Austria and Australia and is dominated by "
        "nevi (about 67%); rare classes have few lesions, so their intervals are wide.",
        "- Boxes, outlines and locations were taught from the dataset's segmentation masks (their largest "
        "component); the location is a coarse 3x3 cell.",
        "- Answers are free text parsed as JSON; a malformed answer counts as wrong (see the parse rate).",
        "- A model trained on synthetic data or the tiny random model only shows the pipeline works; it "
        "knows nothing about real skin.",
        "",
    ]
    return "\n".join(lines)


def _stages(chain: Sequence[Path]) -> list[str]:
    return [str(OmegaConf.select(load_run_config(run_dir), "stage.name")) for run_dir in chain]


# --------------------------------------------------------------------------------------------------
# Hub upload


def push_export(folder: Path, repo_id: str, *, private: bool = True) -> str:
    """Upload an export folder to the Hugging Face Hub; returns the repo URL. One-line errors when offline."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    if hub_offline():
        raise ValueError(
            f"push_to_hub={repo_id}: HF_HUB_OFFLINE is set; unset it on a machine with network access "
            f"and upload {folder}"
        )
    token = huggingface_hub.get_token()
    if not token:
        raise ValueError(f"push_to_hub={repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    try:
        url = huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
        huggingface_hub.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            token=token,
            commit_message="skinderm export",
            ignore_patterns=[MANIFEST_FILE],
        )
    except (HfHubHTTPError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"push_to_hub={repo_id}: upload failed ({reason})") from None
    return str(url)
