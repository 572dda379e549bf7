"""Stage 2 recipe: GRPO with TRL's GRPOTrainer from a Stage 1 run, with weighted, hack-resistant rewards."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from trl import GRPOConfig, GRPOTrainer

from skinderm.core.files import to_plain
from skinderm.core.runs import MODEL_DIR, RESOLVED_CONFIG_FILE, RunFolder, find_latest_run
from skinderm.data.splits import subsample
from skinderm.evaluation.generation import generate_answers
from skinderm.models.checkpoints import is_adapter_folder, load_run_model
from skinderm.rewards import build_reward_functions
from skinderm.training.common import (
    check_trl_fields,
    example_builder,
    examples_drawn,
    image_dataset,
    load_split_records,
    lora_config,
    model_loading_arguments,
    save_policy,
    summarise_log_history,
    trainer_arguments,
    with_trl_fields,
)
from skinderm.training.credit import BASELINES, CREDITS, field_credit_advantages, term_advantages
from skinderm.training.resume import ResumableTrainerMixin
from skinderm.training.sampling import PromptGroupSampler, draws_report
from skinderm.training.shards import SHARDS_DIR, record_data_shards
from skinderm.training.val_check import (
    generation_model,
    reward_components,
    val_check,
    val_records,
    write_val_check,
)

log = logging.getLogger(__name__)


def resolve_init_run(cfg: DictConfig) -> Path:
    """The Stage 1 run folder named by `stage.init_from` (a path or `latest`), checked to be complete."""
    init_from = cfg.stage.init_from
    if init_from in (None, "", "latest"):
        found = find_latest_run(Path(cfg.paths.log_dir), "sft")
        if found is None:
            raise FileNotFoundError(
                f"stage.init_from=latest: no finished SFT run under {Path(cfg.paths.log_dir) / 'sft'}; "
                "run `python -m skinderm.train stage=sft` first or pass stage.init_from=<run folder>"
            )
        return found
    path = Path(init_from).expanduser()
    if not (path / MODEL_DIR).is_dir() or not (path / RESOLVED_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"stage.init_from={init_from}: not a finished skinderm SFT run folder (needs model/ and "
            f"{RESOLVED_CONFIG_FILE}); pass the folder printed at the end of the SFT run, or `latest`"
        )
    return path


def _check_same_answer_format(cfg: DictConfig, sft_cfg: DictConfig, run_dir: Path) -> None:
    """GRPO must ask and reward exactly what SFT taught, at the same image size."""
    keys = ["answer.fields", "model.min_pixels", "model.max_pixels"]
    if "polygon" in (OmegaConf.select(cfg, "answer.fields") or []):
        keys.append("answer.polygon_max_points")  # the outline's vertex budget is part of what was taught
    for key in keys:
        ours, theirs = OmegaConf.select(cfg, key), OmegaConf.select(sft_cfg, key)
        if to_plain(ours) != to_plain(theirs):
            raise ValueError(
                f"{key}={to_plain(ours)} but the Stage 1 run {run_dir} used {to_plain(theirs)}: "
                f"pass {key}={to_plain(theirs)} so GRPO rewards the format SFT taught"
            )


def load_stage1_policy(cfg: DictConfig, init_run: Path) -> tuple[Any, Any, Any]:
    """(model, processor, peft_config) from a Stage 1 run: full weights, or base + LoRA adapter.

    An adapter is kept trainable (GRPO continues it) unless `stage.merge_adapter`, which folds it into the
    weights; a fresh adapter is then added when `model.lora.enabled`.
    """
    sft_cfg = OmegaConf.load(init_run / RESOLVED_CONFIG_FILE)
    _check_same_answer_format(cfg, sft_cfg, init_run)
    merge = bool(cfg.stage.merge_adapter)
    model, processor = load_run_model(
        init_run, merge_adapter=merge, adapter_trainable=True, **model_loading_arguments(cfg)
    )
    keeps_adapter = is_adapter_folder(init_run / "model") and not merge
    return model, processor, None if keeps_adapter else lora_config(cfg)


class SkindermGRPOTrainer(ResumableTrainerMixin, GRPOTrainer):
    """TRL's GRPOTrainer with skinderm's prompt sampler (`stage.class_balance`), exact resume, optional
    field-level credit and greedy baseline (`stage.credit`, `stage.baseline`: skinderm/training/credit.py),
    and a W&B completion table that holds plain cells (TRL 1.16's crashes on image prompts).

    TRL puts chat messages (lists of dicts) and lists of images into `wandb.Table` cells, which raises
    "Data row contained incompatible types". We keep TRL's sampling/logging and write our own table: the
    image, the prompt text, the completion text, each reward and the advantage, one row per completion.
    """

    def __init__(
        self,
        *args: Any,
        prompt_labels: Sequence[str],
        class_balance: str,
        credit: str = "sequence",
        baseline: str = "group",
        prompt: str = "",
        completion_samples: int = 0,
        **kwargs: Any,
    ) -> None:
        self._prompt_labels, self._class_balance = list(prompt_labels), class_balance
        if credit not in CREDITS:
            raise ValueError(f"stage.credit={credit!r}: choose one of {list(CREDITS)}")
        if baseline not in BASELINES:
            raise ValueError(f"stage.baseline={baseline!r}: choose one of {list(BASELINES)}")
        self._credit, self._baseline, self._prompt, self._rewards_per_func = credit, baseline, prompt, None
        super().__init__(*args, **kwargs)
        self._completion_samples = completion_samples
        self.log_completions = False  # TRL's own table is replaced by _log_completion_table

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        """TRL's prompt-group layout with the prompts drawn by `stage.class_balance` (as SFT draws its
        examples) and seeded by (seed, epoch), so that a resumed run continues the same prompt order."""
        return PromptGroupSampler(
            self._prompt_labels,
            self._class_balance,  # type: ignore[arg-type]
            seed=int(self.args.seed),
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
        )

    def _calculate_rewards(
        self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
    ) -> Any:
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards  # all processes' rows: field credit groups them as TRL does
        return rewards

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        """TRL's rollout, then our advantages where asked: under `stage.baseline: greedy` each completion
        is measured against its prompt's greedy answer instead of the group mean; under `stage.credit:
        field` the (B,) advantages become (B, T) token advantages (skinderm/training/credit.py), which
        TRL's loss accepts as they are. With neither, TRL's advantages are untouched."""
        output = super()._generate_and_score_completions(inputs)
        rewards, self._rewards_per_func = self._rewards_per_func, None
        if rewards is None or (self._credit == "sequence" and self._baseline == "group"):
            return output
        n = self.num_generations if self.model.training else self.num_generations_eval
        baseline = self._greedy_rewards(inputs, n) if self._baseline == "greedy" else None
        local = output["completion_ids"].shape[0]
        rank = self.accelerator.process_index
        per_term = term_advantages(
            rewards, self.reward_weights, n, str(self.scale_rewards), str(self.multi_objective_aggregation),
            baseline,
        )[rank * local : (rank + 1) * local]  # fmt: skip
        if self._credit == "field":
            advantages = field_credit_advantages(
                per_term, self.reward_func_names, output["completion_ids"], output["completion_mask"],
                self.processing_class,
            )  # fmt: skip
        else:
            advantages = torch.nan_to_num(per_term, nan=0.0).sum(dim=1)
        output["advantages"] = advantages.to(output["advantages"].device, output["advantages"].dtype)
        return output

    def _greedy_rewards(self, inputs: Sequence[Mapping[str, Any]], num_generations: int) -> Any:
        """(groups, K) reward terms of each prompt's greedy answer, all processes' groups in TRL's order.

        The prompts of a group are consecutive (PromptGroupSampler), so every num_generations-th row is a
        group's; the greedy answer is what evaluation scores, the reference ReMax measures samples from."""
        heads = list(inputs)[::num_generations]
        with generation_model(self) as model:
            completions = generate_answers(
                model, self.processing_class, [row["images"][0] for row in heads], self._prompt,
                batch_size=len(heads), max_new_tokens=int(self.max_completion_length), progress_bar=False,
            )  # fmt: skip
        columns = [
            {key: value for key, value in row.items() if key not in ("prompt", "images")} for row in heads
        ]
        scores = reward_components(self.reward_funcs, completions, columns)
        rows = [
            [float("nan") if v is None else float(v) for v in scores[name]] for name in self.reward_func_names
        ]
        local = torch.tensor(
            rows,
            dtype=torch.float32,
            device=self.accelerator.device,
        ).T
        greedy = self.accelerator.gather(local)
        weights = self.reward_weights.to(greedy)
        self._metrics["train"]["greedy_reward"].append(float(torch.nansum(greedy * weights, dim=1).mean()))
        for k, name in enumerate(self.reward_func_names):
            self._metrics["train"][f"greedy_rewards/{name}"].append(float(torch.nanmean(greedy[:, k])))
        return greedy

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        training = self.model.training
        super().log(logs, start_time)
        if training and self._completion_samples and self.accelerator.is_main_process:
            self._log_completion_table()

    def _log_completion_table(self) -> None:
        import wandb

        if wandb.run is None or not self._logs["completion"]:
            return
        rewards = {name: list(values) for name, values in self._logs["rewards"].items()}
        prompts, completions = list(self._logs["prompt"]), list(self._logs["completion"])
        images = list(self._logs["images"]) if self._logs.get("images") else []
        columns = ["step", "image", "prompt", "completion", *rewards, "advantage"]
        table = wandb.Table(columns=columns)
        advantages = list(self._logs["advantages"])
        for row in range(min(self._completion_samples, len(completions))):
            image_list = images[row] if row < len(images) else None
            image = wandb.Image(image_list[0]) if image_list else None
            table.add_data(
                self.state.global_step,
                image,
                _message_text(prompts[row]),
                _message_text(completions[row]),
                *(float(values[row]) for values in rewards.values()),
                float(advantages[row]),
            )
        # No `step=`: TRL's own timing logs move W&B's step counter ahead of global_step, and W&B drops rows
        # logged at an earlier step. The training step travels as a column and as train/global_step.
        wandb.log({"completions": table, "train/global_step": self.state.global_step})


def _message_text(messages: Any) -> str:
    """The text of a chat turn list (or a plain string), images dropped."""
    if isinstance(messages, str):
        return messages
    parts: list[str] = []
    for message in messages or []:
        content = message.get("content") if isinstance(message, Mapping) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("text")
            )
    return "\n".join(parts)


def sampler_arguments(hardware: DictConfig) -> dict[str, Any]:
    """GRPOConfig arguments for how completions are sampled: transformers' generate (default) or vLLM.

    colocate: vLLM runs inside each training process and shares its GPU (`vllm_gpu_memory_utilization`
    of it); server: a separate `trl vllm-serve` process on other GPUs, reached at `vllm_server_base_url`.
    """
    if hardware.vllm is None:
        return {}
    arguments: dict[str, Any] = {"use_vllm": True, "vllm_mode": str(hardware.vllm)}
    if hardware.vllm == "colocate":
        arguments["vllm_gpu_memory_utilization"] = float(hardware.vllm_gpu_memory_utilization)
    else:
        arguments["vllm_server_base_url"] = str(hardware.vllm_server_base_url)
    return arguments


def grpo_arguments(cfg: DictConfig, run: RunFolder, reward_weights: Sequence[float]) -> dict[str, Any]:
    """GRPOConfig's arguments from the stage, hardware and reward groups (`stage.trl.*` adds others)."""
    stage = cfg.stage
    return {
        **trainer_arguments(cfg, run),
        "num_generations": int(stage.num_generations),
        "max_completion_length": int(stage.max_completion_length),
        "temperature": float(stage.temperature),
        "top_p": float(stage.top_p),
        "beta": float(stage.beta),
        "loss_type": stage.loss_type,
        "scale_rewards": stage.scale_rewards,
        "num_iterations": int(stage.num_iterations),
        "disable_dropout": bool(stage.disable_dropout),
        "reward_weights": list(reward_weights),
        "log_completions": False,
        "remove_unused_columns": False,
        **sampler_arguments(cfg.hardware),
    }


def reward_trends(history: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean of each logged reward over the first and the last 10% of training steps."""
    trends: dict[str, dict[str, float]] = {}
    for key in [f"rewards/{name}/mean" for name in names] + ["reward"]:
        values = [float(entry[key]) for entry in history if entry.get(key) is not None and "loss" in entry]
        if not values:
            continue
        window = max(1, len(values) // 10)
        first, last = values[:window], values[-window:]
        trends[key] = {
            "first_10pct": sum(first) / len(first),
            "last_10pct": sum(last) / len(last),
            "n_logs": len(values),
        }
    return trends


def run_grpo(
    cfg: DictConfig,
    run: RunFolder,
    *,
    resume_from_checkpoint: str | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train Stage 2 from a Stage 1 run and return its metrics."""
    check_trl_fields(GRPOConfig, grpo_arguments(cfg, run, []), cfg.stage.trl)  # before any data or model
    if int(cfg.stage.per_device_train_batch_size) % int(cfg.stage.num_generations):
        raise ValueError(
            f"stage.per_device_train_batch_size={cfg.stage.per_device_train_batch_size} "
            "must be a multiple of "
            f"stage.num_generations={cfg.stage.num_generations}"
        )
    init_run = resolve_init_run(cfg)
    log.info("GRPO starts from Stage 1 run %s", init_run)
    splits = load_split_records(cfg)
    builder = example_builder(cfg)
    model, processor, peft_config = load_stage1_policy(cfg, init_run)

    train_records = subsample(splits["train"], cfg.stage.train_max_samples, cfg.seed)
    class_counts = Counter(record["dx"] for record in splits["train"])
    reward_funcs, weights = build_reward_functions(
        to_plain(cfg.reward), class_counts=dict(class_counts), answer_fields=tuple(cfg.answer.fields)
    )
    names = [func.__name__ for func in reward_funcs]
    train_dataset = image_dataset(train_records, builder.grpo_columns, "train prompts")  # decoded per batch
    eval_records = val_records(splits["val"], cfg)

    arguments = with_trl_fields(GRPOConfig, grpo_arguments(cfg, run, weights), cfg.stage.trl)
    trainer = SkindermGRPOTrainer(
        model=model,
        reward_funcs=list(reward_funcs),
        args=arguments,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=list(callbacks),
        completion_samples=int(cfg.logger.get("log_completions", 0)) if cfg.logger.name == "wandb" else 0,
        prompt_labels=[record["dx"] for record in train_records],
        class_balance=cfg.stage.class_balance,
        credit=str(cfg.stage.credit),
        baseline=str(cfg.stage.baseline),
        prompt=builder.prompt,
    )
    if cfg.hardware.record_shards:
        record_data_shards(trainer, run.path / SHARDS_DIR)
    before: dict[str, Any] = {}
    if eval_records:  # the starting policy, after the trainer set up the ranks (and any LoRA wrapping)
        before, _, _ = val_check(trainer, processor, eval_records, builder, cfg, desc="val before")
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    save_policy(trainer, processor, run)

    metrics: dict[str, Any] = {
        "stage": "grpo",
        "init_from": str(init_run),
        "n_train_prompts": len(train_records),
        "reward_names": names,
        "reward_weights": dict(zip(names, weights, strict=True)),
        "global_step": trainer.state.global_step,
        "reward_trends": reward_trends(trainer.state.log_history, names),
        "class_draws": draws_report(
            [record["dx"] for record in train_records],
            cfg.stage.class_balance,
            examples_drawn(trainer) // int(cfg.stage.num_generations),  # prompts, not completions
        ),
        **summarise_log_history(trainer.state.log_history),
    }
    if eval_records:  # on every rank: with sharded weights generation needs them all
        after, predictions, val_metrics = val_check(
            trainer, processor, eval_records, builder, cfg, desc="val after"
        )
        metrics["val_before"], metrics["val_after"] = before, after
        metrics["val_generation"] = after
        write_val_check(run, before=before, after=after, predictions=predictions, metrics=val_metrics)
    return metrics
