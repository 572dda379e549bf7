"""A tiny SFT run and a GRPO run from it write everything a reviewer needs into their run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from tests.conftest import SMALL_DATASET, compose_config

pytestmark = pytest.mark.slow

FAST = (*SMALL_DATASET, "logger=none", "stage.logging_steps=1", "eval.num_samples=6", "eval.batch_size=6")


def _run(cfg, run_dir: Path) -> dict:
    from skinderm.training.pipeline import run_training

    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return run_training(cfg)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, shared_cache) -> Path:
    """One 4-step SFT run shared by the tests below (and the GRPO tests, which start from it)."""
    root = tmp_path_factory.mktemp("sft_run")
    run_dir = root / "outputs" / "sft" / "runs" / "test"
    cfg = compose_config(
        root,
        shared_cache,
        [*FAST, "stage.max_steps=4", "stage.eval_steps=2", "stage.save_steps=2"],
        output_dir=run_dir,
    )
    _run(cfg, run_dir)
    return run_dir


def test_sft_run_folder_holds_model_processor_config_and_metrics(sft_run: Path) -> None:
    assert (sft_run / "model" / "model.safetensors").is_file()
    assert (sft_run / "model" / "tokenizer.json").is_file()
    assert (sft_run / "model" / "processor_config.json").is_file()
    assert (sft_run / "FINISHED").is_file()
    resolved = OmegaConf.load(sft_run / "config_resolved.yaml")
    assert resolved.stage.name == "sft" and "${" not in (sft_run / "config_resolved.yaml").read_text()
    metrics = json.loads((sft_run / "metrics.json").read_text())
    assert metrics["global_step"] == 4
    assert len(metrics["train_loss_curve"]) == 4
    assert metrics["eval_loss_last"] < metrics["eval_loss_first"], (
        "eval loss should fall in 4 steps at lr 1e-3"
    )
    assert metrics["val_generation"]["n"] == 6
    assert len((sft_run / "predictions_val.jsonl").read_text().splitlines()) == 6


def test_sft_checkpoints_are_safetensors(sft_run: Path) -> None:
    checkpoints = sorted((sft_run / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, "save_steps=2 should have written checkpoints"
    assert all(not list(c.glob("pytorch_model.bin")) for c in checkpoints)
    assert all((c / "model.safetensors").is_file() for c in checkpoints)


@pytest.fixture(scope="module")
def lora_sft_run(tmp_path_factory, shared_cache) -> Path:
    """A 2-step LoRA SFT run (adapter only in model/)."""
    root = tmp_path_factory.mktemp("lora_sft_run")
    run_dir = root / "outputs" / "sft" / "runs" / "lora"
    cfg = compose_config(
        root,
        shared_cache,
        [*FAST, "stage.max_steps=2", "model.lora.enabled=true", "eval.num_samples=0"],
        output_dir=run_dir,
    )
    assert _run(cfg, run_dir)["trainable_parameters"] > 0
    return run_dir


def test_sft_with_lora_saves_an_adapter(lora_sft_run: Path) -> None:
    assert (lora_sft_run / "model" / "adapter_config.json").is_file()
    assert not (lora_sft_run / "model" / "model.safetensors").exists()


def test_qlora_sft_then_grpo_train_adapters_on_4bit_weights(compose_train, tmp_path: Path) -> None:
    """hardware.load_in_4bit=true end to end on CPU (bitsandbytes 4-bit layers run there too)."""
    pytest.importorskip("bitsandbytes", reason="pip install -e '.[qlora]'")
    qlora = (*FAST, "model.lora.enabled=true", "hardware.load_in_4bit=true", "eval.num_samples=2")
    sft = _run(compose_train([*qlora, "stage.max_steps=2"]), tmp_path / "sft")
    assert sft["global_step"] == 2 and sft["val_generation"]["n"] == 2
    assert (tmp_path / "sft" / "model" / "adapter_config.json").is_file()
    grpo = _run(
        compose_train([*qlora, "stage=grpo", "stage.max_steps=1", f"stage.init_from={tmp_path / 'sft'}"]),
        tmp_path / "grpo",
    )
    assert grpo["global_step"] == 1 and grpo["val_after"]["n"] == 2
    assert (tmp_path / "grpo" / "model" / "adapter_config.json").is_file()


@pytest.mark.parametrize("merge", [False, True])
def test_grpo_from_a_lora_run_continues_or_merges_the_adapter(
    compose_train, lora_sft_run: Path, tmp_path: Path, merge: bool
) -> None:
    cfg = compose_train(
        [*FAST, "stage=grpo", "stage.max_steps=1", f"stage.init_from={lora_sft_run}",
         "model.lora.enabled=true", f"stage.merge_adapter={str(merge).lower()}", "eval.num_samples=0"]
    )  # fmt: skip
    metrics = _run(cfg, tmp_path / "grpo")
    assert metrics["global_step"] == 1
    # Either way GRPO trains (and saves) a LoRA adapter: the Stage 1 one, or a fresh one on merged weights.
    assert (tmp_path / "grpo" / "model" / "adapter_config.json").is_file()
    # ... and evaluation finds the base that adapter belongs to (the Stage 1 base, or Stage 1 merged).
    from skinderm.evaluation.answering import answer_records
    from skinderm.models.checkpoints import load_run_model
    from skinderm.training.common import example_builder, load_split_records

    model, processor = load_run_model(tmp_path / "grpo")
    records = load_split_records(cfg)["val"][:2]
    answers = answer_records(model, processor, records, example_builder(cfg), batch_size=2, max_new_tokens=8)
    assert [answer["image_id"] for answer in answers] == [record["image_id"] for record in records]


def test_grpo_from_latest_sft_run_records_reward_trends(compose_train, sft_run: Path, tmp_path: Path) -> None:
    cfg = compose_train([*FAST, "stage=grpo", "stage.max_steps=2", f"stage.init_from={sft_run}"])
    metrics = _run(cfg, tmp_path / "grpo")
    assert metrics["init_from"] == str(sft_run)
    # The default answer carries the outline: the box and the outline terms share localisation's 0.3.
    assert metrics["reward_names"] == ["diagnosis", "spatial", "bbox_iou", "outline_iou"]
    assert metrics["reward_weights"] == pytest.approx(
        {"diagnosis": 0.4, "spatial": 0.3, "bbox_iou": 0.15, "outline_iou": 0.15}
    )
    for name in ("rewards/bbox_iou/mean", "rewards/outline_iou/mean", "reward"):
        assert set(metrics["reward_trends"][name]) == {"first_10pct", "last_10pct", "n_logs"}
    assert {"reward_weighted", "reward_diagnosis"} <= set(metrics["val_before"])
    assert (tmp_path / "grpo" / "model" / "model.safetensors").is_file()


def test_field_credit_and_greedy_baseline_hand_trl_per_token_advantages(
    compose_train, sft_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stage.credit=field with stage.baseline=greedy: TRL's loss receives (B, T) advantages measured from
    each prompt's greedy answer, whose reward is logged every step; the run writes its policy as any other."""
    import torch

    import skinderm.training.grpo as grpo

    seen: list[torch.Tensor] = []

    def spy(*args, **kwargs):
        out = credit(*args, **kwargs)
        seen.append(out)
        return out

    credit = grpo.field_credit_advantages
    monkeypatch.setattr(grpo, "field_credit_advantages", spy)
    greedy_rewards = grpo.SkindermGRPOTrainer._greedy_rewards
    greedy: list[torch.Tensor] = []

    def greedy_spy(self, inputs, num_generations):
        out = greedy_rewards(self, inputs, num_generations)
        greedy.append(out)
        return out

    monkeypatch.setattr(grpo.SkindermGRPOTrainer, "_greedy_rewards", greedy_spy)
    cfg = compose_train(
        [*FAST, "stage=grpo", "stage.max_steps=2", "stage.credit=field", "stage.baseline=greedy",
         f"stage.init_from={sft_run}"]
    )  # fmt: skip
    metrics = _run(cfg, tmp_path / "grpo_field")
    assert metrics["global_step"] == 2 and seen
    per_step = int(cfg.stage.per_device_train_batch_size)
    groups = per_step // int(cfg.stage.num_generations)
    assert len(greedy) == 2 and all(out.shape == (groups, len(metrics["reward_names"])) for out in greedy)
    assert all(((out >= 0) & (out <= 1)).all() for out in greedy)
    assert all(out.dim() == 2 and out.shape[0] == per_step for out in seen)
    assert (tmp_path / "grpo_field" / "model" / "model.safetensors").is_file()


def test_grpo_without_any_sft_run_says_what_to_do(compose_train) -> None:
    cfg = compose_train([*FAST, "stage=grpo", "stage.max_steps=1"])
    with pytest.raises(FileNotFoundError, match=r"run `python -m skinderm\.train stage=sft` first"):
        _run(cfg, Path(cfg.paths.root_dir) / "grpo_none")


def test_grpo_refuses_an_answer_format_other_than_stage1s(
    compose_train, sft_run: Path, tmp_path: Path
) -> None:
    cfg = compose_train([*FAST, "stage=grpo", f"stage.init_from={sft_run}", "answer.fields=[diagnosis]"])
    with pytest.raises(ValueError, match=r"answer\.fields"):
        _run(cfg, tmp_path / "grpo_fmt")


def test_grpo_logs_completion_tables_with_images_to_wandb(
    compose_train, sft_run: Path, tmp_path: Path
) -> None:
    """TRL 1.16's own table (chat messages, image lists in cells) crashes wandb.Table; ours is plain."""
    overrides = [o for o in FAST if o != "logger=none"]
    cfg = compose_train(
        [*overrides, "logger=wandb", "stage=grpo", "stage.max_steps=2", f"stage.init_from={sft_run}",
         "eval.num_samples=0", "logger.log_completions=2"]
    )  # fmt: skip
    _run(cfg, tmp_path / "grpo_wandb")
    tables = sorted(
        (tmp_path / "grpo_wandb" / "wandb").glob("offline-run-*/files/media/table/completions_*.json")
    )
    assert len(tables) >= 2, "a completion table per logged step (and one with the final log)"
    table = json.loads(tables[0].read_text())
    assert table["columns"][:4] == ["step", "image", "prompt", "completion"]
    assert len(table["data"]) == 2 and all(isinstance(cell, str) for cell in table["data"][0][2:4])


def test_sft_field_loss_weights_weigh_the_diagnosis_tokens_in_the_training_loss(
    compose_train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stage.field_loss_weights={diagnosis: 10}: the first step's training loss (same weights, same batch)
    rises above TRL's plain mean, and the weight sits on the tokens of the class code alone; weight 1 gives
    TRL's loss exactly."""
    import skinderm.training.sft as sft

    seen: list[tuple] = []

    def spy(labels, weights, tokenizer, **kwargs):
        out = weigh(labels, weights, tokenizer, **kwargs)
        seen.append((labels.cpu(), out.cpu(), tokenizer))
        return out

    weigh = sft.field_loss_weights
    monkeypatch.setattr(sft, "field_loss_weights", spy)
    one_step = [*FAST, "stage.max_steps=1", "stage.eval_steps=1", "eval.num_samples=2"]
    plain = _run(compose_train([*one_step, "stage.field_loss_weights=null"]), tmp_path / "plain")
    assert not seen, "no weights: TRL's loss untouched"
    weighted_cfg = compose_train([*one_step, "stage.field_loss_weights=null"])
    with open_dict(weighted_cfg):
        weighted_cfg.stage.field_loss_weights = {"diagnosis": 10.0}
    weighted = _run(weighted_cfg, tmp_path / "weighted")
    assert weighted["train_loss_curve"][0][1] > plain["train_loss_curve"][0][1]
    labels, weights, tokenizer = seen[0]
    unit_cfg = compose_train([*one_step, "stage.field_loss_weights=null"])
    with open_dict(unit_cfg):
        unit_cfg.stage.field_loss_weights = {"diagnosis": 1.0}  # the wrapper runs, and must be TRL exactly
    unit = _run(unit_cfg, tmp_path / "unit")
    assert len(seen) > 1
    assert unit["train_loss_curve"][0][1] == pytest.approx(plain["train_loss_curve"][0][1], rel=1e-6)
    codes = {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    for row_labels, row_weights in zip(labels, weights, strict=True):
        heavy = tokenizer.decode(row_labels[row_weights == 10.0].tolist(), skip_special_tokens=True)
        assert heavy.strip('", ') in codes  # a token may carry the quotes or comma beside the code
        assert set(row_weights.unique().tolist()) == {1.0, 10.0}


def test_sft_field_loss_weights_name_answer_fields(compose_train) -> None:
    cfg = compose_train([*FAST, "stage.field_loss_weights=null"])
    with open_dict(cfg):
        cfg.stage.field_loss_weights = {"diagnoses": 10}
    with pytest.raises(ValueError, match=r"field_loss_weights has fields \['diagnoses'\] no answer has"):
        _run(cfg, Path(cfg.paths.output_dir))
    from skinderm.training.sft import checked_field_loss_weights

    only_diagnosis = compose_train([*FAST, "answer.fields=[diagnosis]"])  # the recipe also weighs location
    assert checked_field_loss_weights(only_diagnosis) == {"diagnosis": 10.0}
