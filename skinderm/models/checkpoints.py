"""Training run folders as models: find a run (`latest` or a path) and load its `model/` for inference.

A run's `model/` folder holds either full weights or a LoRA adapter (`adapter_config.json`). An adapter
folder has no base weights, so the base is rebuilt from what the run recorded:

- SFT with LoRA: the adapter sits on the run's `model` config group.
- GRPO that kept training the Stage 1 adapter (`stage.merge_adapter=false`): on the Stage 1 base
  (found recursively).
- GRPO with a new adapter (Stage 1 adapter merged, or Stage 1 full weights): on the Stage 1 model,
  loaded and merged.

The Stage 1 run of a GRPO run is `init_from` in its metrics.json (config_resolved.yaml may only say
`latest`). The processor always comes from the run's `model/` folder (saved beside the weights) with the
run's pixel budget, so images are resized exactly as in training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from skinderm.core.files import to_plain
from skinderm.core.runs import (
    FINISHED_MARKER,
    METRICS_FILE,
    MODEL_DIR,
    RESOLVED_CONFIG_FILE,
    find_latest_run,
    load_run_config,
)

log = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"
# Stages whose runs hold a model that can be evaluated; `latest` picks the newest finished one.
TRAINING_STAGES: tuple[str, ...] = ("sft", "grpo")


def is_adapter_folder(model_dir: str | Path) -> bool:
    """Whether a saved model folder is a PEFT adapter (no base weights of its own)."""
    return (Path(model_dir) / ADAPTER_CONFIG_FILE).is_file()


def resolve_run(run: str | Path, log_dir: str | Path, stages: Sequence[str] = TRAINING_STAGES) -> Path:
    """The run folder named by `run` (`latest` or a path), checked to hold a model and its config."""
    if str(run) == "latest":
        found = find_latest_run(log_dir, stages)
        if found is None:
            where = ", ".join(str(Path(log_dir) / stage) for stage in stages)
            raise FileNotFoundError(
                f"run=latest: no finished training run under {where}; train one first "
                "(`python -m skinderm.train`) or pass run=<run folder> (run=null evaluates the model group)"
            )
        return found
    path = Path(str(run)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"run={run}: no such folder; pass a training run folder or run=latest")
    if not (path / MODEL_DIR).is_dir() or not (path / RESOLVED_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"run={run}: not a finished skinderm training run folder (needs {MODEL_DIR}/ and "
            f"{RESOLVED_CONFIG_FILE}); pass the folder printed at the end of training, or run=latest"
        )
    if not (path / FINISHED_MARKER).is_file():
        log.warning("run %s has no %s marker: training may not have completed", path, FINISHED_MARKER)
    return path


def stage1_run_of(run_dir: str | Path) -> Path:
    """The Stage 1 run a GRPO run started from (`init_from` of its metrics.json)."""
    metrics_path = Path(run_dir) / METRICS_FILE
    try:
        init_from = json.loads(metrics_path.read_text(encoding="utf-8")).get("init_from")
    except (OSError, ValueError):
        init_from = None
    if not init_from:
        raise FileNotFoundError(
            f"{metrics_path}: no `init_from`, so the Stage 1 run under this GRPO adapter is unknown; "
            "the GRPO run did not finish"
        )
    path = Path(init_from)
    if not (path / MODEL_DIR).is_dir():
        raise FileNotFoundError(
            f"GRPO run {run_dir} was trained from Stage 1 run {path}, which is gone; its adapter needs that "
            "run's model as the base"
        )
    return path


def load_run_model(
    run_dir: str | Path,
    *,
    torch_dtype: str = "float32",
    attn_implementation: str | None = None,
    merge_adapter: bool = True,
    adapter_trainable: bool = False,
    model_overrides: Mapping[str, Any] | None = None,
    quantization: Mapping[str, Any] | None = None,
) -> tuple[Any, Any]:
    """(model, processor) from a training run folder; adapters are put on the base they were trained on.

    `merge_adapter` folds a LoRA adapter into the weights (faster inference, a plain model); otherwise the
    PeftModel is returned, with trainable adapter weights if `adapter_trainable` (GRPO continuing it).
    `model_overrides` replace keys of the run's `model` config for the base model (e.g. `name_or_path`
    when the base checkpoint lives elsewhere on this machine); the pixel budget is always the run's.
    `quantization`: `from_pretrained` arguments for 4-bit weights (QLoRA), applied to whichever model is
    loaded from weights (the full model, or an adapter's base).
    """
    from skinderm.models.loading import load_model_and_processor
    from skinderm.models.processor import load_processor

    run_dir = Path(run_dir)
    run_cfg = load_run_config(run_dir)
    model_cfg: dict[str, Any] = dict(to_plain(run_cfg.model))
    model_dir = run_dir / MODEL_DIR
    if not is_adapter_folder(model_dir):
        full_cfg = {**model_cfg, **(model_overrides or {}), "name_or_path": str(model_dir), "tiny": None}
        full_cfg["min_pixels"], full_cfg["max_pixels"] = model_cfg["min_pixels"], model_cfg["max_pixels"]
        return load_model_and_processor(
            full_cfg,
            torch_dtype=torch_dtype,
            attn_implementation=attn_implementation,
            quantization=quantization,
        )

    from peft import PeftModel

    base = _adapter_base(
        run_dir,
        run_cfg,
        model_cfg,
        torch_dtype,
        attn_implementation,
        model_overrides=model_overrides,
        quantization=quantization,
    )
    processor = load_processor(
        str(model_dir),
        min_pixels=int(model_cfg["min_pixels"]),
        max_pixels=int(model_cfg["max_pixels"]),
        local_files_only=True,
    )
    trainable = adapter_trainable and not merge_adapter
    model = PeftModel.from_pretrained(base, str(model_dir), is_trainable=trainable)
    if merge_adapter:
        model = model.merge_and_unload()
    return model, processor


def _adapter_base(
    run_dir: Path,
    run_cfg: DictConfig,
    model_cfg: dict[str, Any],
    torch_dtype: str,
    attn_implementation: str | None,
    *,
    model_overrides: Mapping[str, Any] | None,
    quantization: Mapping[str, Any] | None = None,
) -> Any:
    """The model an adapter run's LoRA weights were trained on (see the module table)."""
    from skinderm.models.loading import load_model_and_processor

    stage = OmegaConf.select(run_cfg, "stage.name")
    if stage == "grpo":
        init_run = stage1_run_of(run_dir)
        merged_stage1 = bool(OmegaConf.select(run_cfg, "stage.merge_adapter", default=False))
        if is_adapter_folder(init_run / MODEL_DIR) and not merged_stage1:
            # GRPO trained the Stage 1 adapter further: same base as Stage 1.
            init_cfg = load_run_config(init_run)
            return _adapter_base(
                init_run,
                init_cfg,
                dict(to_plain(init_cfg.model)),
                torch_dtype,
                attn_implementation,
                model_overrides=model_overrides,
                quantization=quantization,
            )
        log.info("GRPO adapter %s: base = Stage 1 run %s (merged)", run_dir, init_run)
        base, _ = load_run_model(
            init_run,
            torch_dtype=torch_dtype,
            attn_implementation=attn_implementation,
            merge_adapter=True,
            model_overrides=model_overrides,
            quantization=quantization,
        )
        return base
    base, _ = load_model_and_processor(
        {**model_cfg, **(model_overrides or {})},
        torch_dtype=torch_dtype,
        attn_implementation=attn_implementation,
        quantization=quantization,
    )
    return base
