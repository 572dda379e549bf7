"""Which model answers, in which format, on which data: a training run (its pixel budget and answer fields
are fixed by what it was taught) or the model group zero-shot; and loading it on the right device.

A run fixes what the model was taught: its pixel budget (model.min_pixels/max_pixels) and its answer
fields come from the run's config_resolved.yaml, and overriding them is an error. The run's dataset is
used unless the command line names another (`dataset=...`); `dataset.key=value` overrides apply on top
of whichever dataset is used. `model.key=value` overrides (e.g. model.name_or_path, where an adapter's
base checkpoint lives on this machine) apply to the run's base model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from skinderm.config import ConfigError, check_model_budget
from skinderm.conversations import ExampleBuilder
from skinderm.core.files import to_plain

log = logging.getLogger(__name__)

# Keys of the model group a run fixes (answers are in the pixel space they define).
RUN_FIXED_MODEL_KEYS: tuple[str, ...] = ("min_pixels", "max_pixels")
# Longest answer generated for a model group zero-shot (run=null), which brings no recipe: the pretrained
# recipes' eval.max_new_tokens (conf/train.yaml), room for Qwen2's 242-token longest answer with a 16-point
# polygon (docs/recipes.md).
ZERO_SHOT_MAX_NEW_TOKENS = 320


def generation_budget(run_cfg: DictConfig | None, requested: int | None) -> int:
    """The `max_new_tokens` a command generates with: `requested` when given, else the budget the run's
    recipe chose for the answer it taught (its `eval.max_new_tokens`, which its own val check used), else
    ZERO_SHOT_MAX_NEW_TOKENS. A run taught polygons needs 3-5x the tokens of a box answer: one fixed
    default either truncates its outlines or wastes nothing only by luck."""
    if requested is not None:
        return int(requested)
    budget = None if run_cfg is None else OmegaConf.select(run_cfg, "eval.max_new_tokens", default=None)
    return int(budget) if budget is not None else ZERO_SHOT_MAX_NEW_TOKENS


def command_line_overrides() -> list[str]:
    """The overrides of this Hydra job (`key=value`, `group=option`), or [] outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError, AttributeError):
        return []


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _group_overrides(overrides: Sequence[str], group: str) -> tuple[bool, list[str]]:
    """(the group option itself was chosen, keys under the group that were set) for one config group."""
    keys = [_override_key(item) for item in overrides]
    return group in keys, [key[len(group) + 1 :] for key in keys if key.startswith(group + ".")]


@dataclass(frozen=True)
class ModelChoice:
    """Which model answers, in which format: a training run, or the model group zero-shot."""

    run_dir: Path | None
    model: dict[str, Any]
    answer: dict[str, Any]
    model_overrides: dict[str, Any]
    run_cfg: DictConfig | None

    def max_new_tokens(self, requested: int | None) -> int:
        """`generation_budget` of this choice's run (or zero-shot)."""
        return generation_budget(self.run_cfg, requested)

    @property
    def description(self) -> str:
        return str(self.run_dir) if self.run_dir else f"{self.model['name']} (zero-shot)"

    def builder(self) -> ExampleBuilder:
        return ExampleBuilder(
            fields=tuple(self.answer["fields"]),
            min_pixels=int(self.model["min_pixels"]),
            max_pixels=int(self.model["max_pixels"]),
            polygon_max_points=int(self.answer.get("polygon_max_points", 16)),
        )


def choose_model(cfg: DictConfig, overrides: Sequence[str] | None = None) -> ModelChoice:
    """The model and answer format of this command: from `cfg.run`'s folder, or cfg.model zero-shot."""
    from skinderm.models.checkpoints import load_run_config, resolve_run

    overrides = command_line_overrides() if overrides is None else list(overrides)
    if cfg.run in (None, "", "null", "none"):
        return ModelChoice(None, to_plain(cfg.model), to_plain(cfg.answer), {}, None)

    run_dir = resolve_run(cfg.run, cfg.paths.log_dir)
    run_cfg = load_run_config(run_dir)
    model_group, model_keys = _group_overrides(overrides, "model")
    if model_group:
        raise ConfigError(
            f"model=... cannot be combined with run={cfg.run}: a run fixes its model; "
            "use run=null to evaluate a model group zero-shot"
        )
    fixed = sorted({key.split(".")[0] for key in model_keys} & set(RUN_FIXED_MODEL_KEYS))
    if fixed:
        raise ConfigError(
            f"model.{fixed[0]} is fixed by the run {run_dir} (its answers are in that pixel space); "
            "drop the override"
        )
    answer_group, answer_keys = _group_overrides(overrides, "answer")
    if answer_group or answer_keys:
        raise ConfigError(f"answer.* is fixed by the run {run_dir} (what it was taught); drop the override")

    model = to_plain(run_cfg.model)
    try:  # a run saved before budgets were checked: say so before any data or model loads
        check_model_budget(OmegaConf.create({key: model.get(key) for key in RUN_FIXED_MODEL_KEYS}))
    except ConfigError as error:
        raise ConfigError(f"run {run_dir} (its config_resolved.yaml): {error}") from None
    model_overrides: dict[str, Any] = {}
    for key in model_keys:
        top = key.split(".")[0]
        model_overrides[top] = to_plain(OmegaConf.select(cfg.model, top))
    model.update(model_overrides)
    return ModelChoice(run_dir, model, to_plain(run_cfg.answer), model_overrides, run_cfg)


def choose_dataset(
    cfg: DictConfig, choice: ModelChoice, overrides: Sequence[str] | None = None
) -> dict[str, Any]:
    """The dataset config to evaluate on: the run's, unless `dataset=...` was given; key overrides on top.

    A run's saved root is resolved. When it is the folder the dataset group's own `root` template gives for
    the run's values (the synthetic set's one folder per num_images, seed, style and acquisition) and the
    overrides change those values but not the root, the root follows them: `dataset.synthetic.acquisition=
    shifted` scores the shifted set in its own folder, instead of regenerating the run's folder in place.
    """
    overrides = command_line_overrides() if overrides is None else list(overrides)
    group, keys = _group_overrides(overrides, "dataset")
    if choice.run_cfg is None or group or "dataset" not in choice.run_cfg:
        return to_plain(cfg.dataset)
    dataset = OmegaConf.create(to_plain(choice.run_cfg.dataset))
    default_root = _templated_root(cfg, dataset)
    for key in keys:
        OmegaConf.update(dataset, key, to_plain(OmegaConf.select(cfg.dataset, key)), merge=False)
    root_given = any(key == "root" or key.startswith("root.") for key in keys)
    if not root_given and default_root is not None and dataset.get("root") == default_root:
        dataset.root = _templated_root(cfg, dataset)
    return to_plain(dataset)


def _templated_root(cfg: DictConfig, dataset: DictConfig) -> str | None:
    """The root that `cfg.dataset`'s unresolved `root` template gives for `dataset`'s values; None when the
    template is a plain path, belongs to another dataset, or does not resolve outside Hydra."""
    template = OmegaConf.to_container(cfg.dataset, resolve=False).get("root")
    if (
        not isinstance(template, str)
        or "${" not in template
        or cfg.dataset.get("name") != dataset.get("name")
    ):
        return None
    probe = OmegaConf.create(
        {"paths": to_plain(cfg.paths), "dataset": {**to_plain(dataset), "root": template}}
    )
    try:
        return str(probe.dataset.root)
    except OmegaConfBaseException:
        return None


# --------------------------------------------------------------------------------------------------
# Data and model


def load_evaluation_records(dataset_cfg: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    """Records of one split of the configured dataset (HAM10000, synthetic, or the ISIC 2018 test set)."""
    from skinderm.data.isic2018 import DATASET_NAME as ISIC2018_TEST
    from skinderm.data.isic2018 import read_isic2018_test
    from skinderm.data.prepare import frame_to_records

    if dataset_cfg.get("name") == ISIC2018_TEST:
        if split != "test":
            raise ConfigError(f"dataset={ISIC2018_TEST} is one test set: use split=test (got split={split})")
        root = dataset_cfg.get("root")
        if root in (None, "", "???"):
            raise ConfigError(
                f"config key 'dataset.root' is required for dataset={ISIC2018_TEST}: the folder holding "
                "ISIC2018_Task3_Test_Input/ and the ground-truth CSV"
            )
        frame = read_isic2018_test(root, on_error=str(dataset_cfg.get("on_error", "raise")))
    else:
        from skinderm.data.prepare import prepare_dataset

        frame = prepare_dataset(dataset_cfg)
    records = frame_to_records(frame[frame["split"] == split])
    if not records:
        raise ValueError(
            f"dataset {dataset_cfg.get('name')} at {dataset_cfg.get('root')}: split {split!r} is empty"
        )
    return records


def _device(hardware: Mapping[str, Any]) -> str:
    import torch

    if hardware.get("use_cpu"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    log.warning("hardware=%s asks for a GPU but CUDA is not available: running on CPU", hardware.get("name"))
    return "cpu"


def load_chosen_model(choice: ModelChoice, hardware: Mapping[str, Any]) -> tuple[Any, Any]:
    """(model, processor) of a ModelChoice on the configured device and dtype, ready for inference."""
    from skinderm.models.checkpoints import load_run_model
    from skinderm.models.loading import load_model_and_processor

    dtype, attention = str(hardware["precision"]), hardware.get("attn_implementation")
    if choice.run_dir is not None:
        model, processor = load_run_model(
            choice.run_dir,
            torch_dtype=dtype,
            attn_implementation=attention,
            merge_adapter=True,
            model_overrides=choice.model_overrides,
        )
    else:
        model, processor = load_model_and_processor(
            choice.model, torch_dtype=dtype, attn_implementation=attention
        )
    model.to(_device(hardware))
    model.eval()
    return model, processor


# --------------------------------------------------------------------------------------------------
# python -m skinderm.evaluate


def effective_config(cfg: DictConfig, choice: ModelChoice, dataset: Mapping[str, Any]) -> DictConfig:
    """The config actually used (the run's model and answer, the chosen dataset): saved and sent to W&B."""
    effective = cfg.copy()
    with open_dict(effective):
        effective.model = choice.model
        effective.answer = choice.answer
        effective.dataset = dict(dataset)
        effective.run = None if choice.run_dir is None else str(choice.run_dir)
    return effective
