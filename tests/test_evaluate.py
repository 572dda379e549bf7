"""`python -m skinderm.evaluate`: a run (or a base model zero-shot) scored on a split; its report agrees with
scikit-learn computed from its own predictions.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from skinderm.config import ConfigError, validate_evaluate_config
from skinderm.data.classes import CLASS_CODES, LOCATIONS
from skinderm.evaluation.choice import choose_dataset, choose_model, load_evaluation_records
from skinderm.evaluation.commands import run_evaluation
from tests.conftest import SMALL_DATASET, compose_config
from tests.data.test_isic2018 import write_isic2018_test

REPO = Path(__file__).resolve().parents[1]
QUICK = ("logger=none", "bootstrap.n_resamples=50", "max_new_tokens=6", "batch_size=4")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """One 2-step SFT run of the tiny model (full weights) on the small synthetic set, for every test here."""
    from skinderm.training.pipeline import run_training

    root = tmp_path_factory.mktemp("evaluate_runs")
    run_dir = root / "outputs" / "sft" / "runs" / "tiny"
    overrides = [
        *SMALL_DATASET, "logger=none", "stage.max_steps=2", "eval.num_samples=0",
        "answer.fields=[diagnosis,location,bbox_2d]",
    ]  # fmt: skip
    run_training(compose_config(root, shared_cache, overrides, output_dir=run_dir))
    return run_dir


@pytest.fixture
def compose_evaluate(compose_train) -> Iterator:
    """conf/evaluate.yaml composed like the CLI (outputs in tmp_path, the shared data/model cache)."""

    def _compose(*overrides: str):
        other_dataset = any(item.startswith("dataset=") for item in overrides)
        small = () if other_dataset else SMALL_DATASET
        cfg = compose_train([*QUICK, *small, *overrides], config_name="evaluate")
        validate_evaluate_config(cfg)
        return cfg

    yield _compose


def fake_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the model's answers by a fixed, varied sequence: every class and location, some unparsable."""
    import skinderm.evaluation.answering as generation

    def answers(model: Any, processor: Any, images: Sequence, prompt: str, **_: Any) -> list[str]:
        out = []
        for i in range(len(images)):
            if i % 5 == 4:
                out.append("no idea")
                continue
            box = [10 + 3 * i, 12 + 2 * i, 120 + i, 100 + 2 * i]
            answer = {"diagnosis": CLASS_CODES[i % 7], "location": LOCATIONS[i % 9], "bbox_2d": box}
            out.append(json.dumps(answer))
        return out

    monkeypatch.setattr(generation, "generate_answers", answers)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_agrees_with_sklearn(metrics: dict, predictions: list[dict]) -> None:
    y_true = [p["dx_true"] for p in predictions]
    y_pred = [p["dx_pred"] or "unparsed" for p in predictions]
    present = sorted(set(y_true))
    assert metrics["n"] == len(predictions)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": they are left out, as here
        warnings.simplefilter("ignore", UserWarning)
        expected_balanced = balanced_accuracy_score(y_true, y_pred)
    assert metrics["balanced_accuracy"] == pytest.approx(expected_balanced)
    expected_f1 = f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    assert metrics["macro_f1"] == pytest.approx(expected_f1)
    columns = [*CLASS_CODES, "unparsed"]
    expected = confusion_matrix(y_true, y_pred, labels=columns)[: len(CLASS_CODES)]
    assert np.array_equal(np.asarray(metrics["confusion_matrix"]), expected)
    assert metrics["parse_rate"] == pytest.approx(np.mean([p["parse_ok"] for p in predictions]))


def test_evaluate_cli_scores_a_run_and_writes_its_report(
    trained_run: Path, tmp_path: Path, shared_cache
) -> None:
    out = tmp_path / "evaluation"
    command = [
        sys.executable, "-m", "skinderm.evaluate", f"run={trained_run}", "split=test", "max_samples=6",
        *QUICK, f"paths.root_dir={tmp_path}", f"paths.cache_dir={shared_cache}", f"hydra.run.dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    predictions = read_jsonl(out / "predictions.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(predictions) == 6
    assert set(predictions[0]) >= {
        "image_id", "lesion_id", "dx_true", "dx_pred", "location_true", "location_pred", "bbox_true",
        "bbox_pred", "iou", "mask_iou", "parse_ok", "completion", "sex", "age", "localization",
    }  # fmt: skip
    assert_agrees_with_sklearn(metrics, predictions)
    assert metrics["evaluation"]["run"] == str(trained_run)
    assert metrics["evaluation"]["split"] == "test" and metrics["evaluation"]["n_split"] >= 6
    assert metrics["bootstrap"]["balanced_accuracy"]["n_resamples"] == 50
    assert metrics["bootstrap"]["balanced_accuracy"]["group_key"] == "lesion_id"
    assert metrics["calibration"] is None
    for plot in ("confusion_matrix", "per_class_recall", "iou_histogram", "prediction_grid"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    assert (out / "FINISHED").is_file()
    used = OmegaConf.load(out / "config_resolved.yaml")
    taught = OmegaConf.load(trained_run / "config_resolved.yaml")
    assert used.answer.fields == taught.answer.fields
    assert used.model.max_pixels == taught.model.max_pixels
    assert used.dataset.root == taught.dataset.root, "the run's dataset is used when none is named"
    for line in (
        "parse rate",
        "balanced accuracy",
        "[95% CI",
        "majority baseline",
        "spatial accuracy",
        "mean box IoU",
    ):
        assert line in result.stdout


def test_metrics_json_agrees_with_scikit_learn_on_varied_answers(
    compose_evaluate, trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_generation(monkeypatch)
    cfg = compose_evaluate(f"run={trained_run}", "split=train", "plots=false")
    metrics = run_evaluation(cfg)
    out = Path(metrics["output_dir"])
    predictions = read_jsonl(out / "predictions.jsonl")
    on_disk = json.loads((out / "metrics.json").read_text())
    assert len(predictions) > 20 and len({p["dx_pred"] for p in predictions}) == 8  # 7 classes + None
    assert_agrees_with_sklearn(on_disk, predictions)
    for prediction in predictions:
        expected = None if prediction["bbox_true"] is None else prediction["iou"]
        if expected is not None:
            assert 0.0 <= expected <= 1.0
    interval = on_disk["bootstrap"]["accuracy"]
    assert interval["low"] <= on_disk["accuracy"] <= interval["high"]
    assert not (out / "plots").exists()


def test_zero_shot_tiny_base_model_with_class_scores(compose_evaluate) -> None:
    cfg = compose_evaluate("run=null", "model=tiny", "split=val", "max_samples=4", "score_classes=true")
    metrics = run_evaluation(cfg)
    out = Path(metrics["output_dir"])
    predictions = read_jsonl(out / "predictions.jsonl")
    assert len(predictions) == 4 and metrics["evaluation"]["run"] is None
    for prediction in predictions:
        assert list(prediction["class_probs"]) == list(CLASS_CODES)
        assert sum(prediction["class_probs"].values()) == pytest.approx(1.0)
    assert {"macro_auroc_ovr", "ece", "reliability"} <= set(metrics["calibration"])
    assert (out / "plots" / "reliability_diagram.png").is_file()
    assert OmegaConf.load(out / "config_resolved.yaml").run is None


def test_isic2018_test_set_is_scored_on_diagnosis_only(
    compose_evaluate, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_generation(monkeypatch)
    root = write_isic2018_test(tmp_path / "isic")
    cfg = compose_evaluate(f"run={trained_run}", "dataset=isic2018_test", f"dataset.root={root}")
    metrics = run_evaluation(cfg)
    out = Path(metrics["output_dir"])
    assert metrics["n"] == 7 and metrics["evaluation"]["dataset"] == "isic2018_test"
    assert metrics["bbox"]["n"] == 0 and metrics["spatial_n"] == 0 and metrics["mask_n"] == 0
    assert metrics["bootstrap"]["bbox_mean_iou"] is None
    assert not (out / "plots" / "iou_histogram.png").exists()
    assert (out / "plots" / "confusion_matrix.png").is_file()
    assert_agrees_with_sklearn(metrics, read_jsonl(out / "predictions.jsonl"))
    with pytest.raises(ConfigError, match="split=test"):
        load_evaluation_records({"name": "isic2018_test", "root": str(root)}, "val")


def test_a_run_fixes_its_pixel_budget_and_answer_format(compose_evaluate, trained_run: Path) -> None:
    cfg = compose_evaluate(f"run={trained_run}", "model.attn_implementation=eager")
    for override in ("model.max_pixels=200704", "answer.fields=[diagnosis]", "model=qwen2_5_vl_3b"):
        with pytest.raises(ConfigError, match="run"):
            choose_model(cfg, [f"run={trained_run}", override])
    choice = choose_model(cfg, [f"run={trained_run}", "model.attn_implementation=eager"])
    assert choice.model["attn_implementation"] == "eager"
    assert choice.model_overrides == {"attn_implementation": "eager"}
    assert choice.model["max_pixels"] == OmegaConf.load(trained_run / "config_resolved.yaml").model.max_pixels


def test_a_run_saved_with_a_budget_that_cannot_be_honoured_is_refused_before_loading(
    compose_evaluate, trained_run: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "old_run"
    shutil.copytree(trained_run, run)
    saved = OmegaConf.load(run / "config_resolved.yaml")
    saved.model.min_pixels = saved.model.max_pixels
    OmegaConf.save(saved, run / "config_resolved.yaml")
    cfg = compose_evaluate(f"run={run}")
    with pytest.raises(ConfigError, match=rf"run {run} .*model\.min_pixels == model\.max_pixels"):
        choose_model(cfg, [f"run={run}"])


def test_dataset_key_overrides_apply_to_the_runs_dataset(compose_evaluate, trained_run: Path) -> None:
    cfg = compose_evaluate(f"run={trained_run}", "dataset.on_error=skip")
    choice = choose_model(cfg, [f"run={trained_run}"])
    dataset = choose_dataset(cfg, choice, [f"run={trained_run}", "dataset.on_error=skip"])
    taught = OmegaConf.load(trained_run / "config_resolved.yaml").dataset
    assert (
        dataset["root"] == taught.root and dataset["synthetic"]["num_images"] == taught.synthetic.num_images
    )
    assert dataset["on_error"] == "skip"


def test_latest_picks_the_newest_finished_run_and_a_missing_run_is_one_clear_error(
    compose_evaluate, trained_run: Path, tmp_path: Path
) -> None:
    cfg = compose_evaluate("run=latest", f"paths.log_dir={trained_run.parents[2]}")
    assert choose_model(cfg, ["run=latest"]).run_dir == trained_run
    empty = compose_evaluate("run=latest", f"paths.log_dir={tmp_path / 'nothing'}")
    with pytest.raises(FileNotFoundError, match="no finished training run"):
        choose_model(empty, ["run=latest"])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        choose_model(compose_evaluate(f"run={tmp_path / 'gone'}"), [])


def test_bad_values_are_config_errors(compose_evaluate) -> None:
    for override, key in (
        ("split=holdout", "split"),
        ("batch_size=0", "batch_size"),
        ("max_samples=0", "max_samples"),
    ):
        with pytest.raises(ConfigError, match=key):
            compose_evaluate(override)


def test_wandb_gets_summary_plots_and_a_plain_predictions_table(tmp_path: Path) -> None:
    import wandb
    from PIL import Image

    from skinderm.evaluation.report import build_metrics, log_to_wandb, write_plots

    image_path = tmp_path / "ISIC_0000000.jpg"
    Image.new("RGB", (600, 450), (200, 150, 120)).save(image_path)
    predictions = [
        {
            "image_id": f"ISIC_{i:07d}",
            "lesion_id": f"HAM_{i // 2:07d}",
            "dx_true": CLASS_CODES[i % 7],
            "dx_pred": CLASS_CODES[(i * 3) % 7] if i % 4 else None,
            "location_true": LOCATIONS[i % 9],
            "location_pred": LOCATIONS[(i + 1) % 9] if i % 4 else None,
            "bbox_true": [100, 50, 300, 200],
            "bbox_pred": [110, 60, 290, 220] if i % 4 else None,
            "polygon_pred": None,
            "iou": 0.7 if i % 4 else 0.0,
            "mask_iou": 0.6 if i % 4 else 0.0,
            "parse_ok": bool(i % 4),
            "completion": "{}",
            "sex": "male",
            "age": 50.0,
            "localization": "back",
        }
        for i in range(12)
    ]
    metrics = build_metrics(predictions, n_resamples=20)
    image_paths = {p["image_id"]: str(image_path) for p in predictions}
    plots = write_plots(predictions, metrics, tmp_path / "plots", image_paths)

    class Recorder:
        def __init__(self) -> None:
            self.summary: dict = {}
            self.logged: dict = {}

        def log(self, data: dict) -> None:
            self.logged.update(data)

    tracker = Recorder()
    log_to_wandb(tracker, metrics, plots, predictions, image_paths)
    assert tracker.summary["eval/balanced_accuracy"] == metrics["balanced_accuracy"]
    assert tracker.summary["eval/balanced_accuracy_ci_low"] <= metrics["balanced_accuracy"]
    assert {f"eval/plots/{name}" for name in plots} <= set(tracker.logged)
    table = tracker.logged["eval/predictions"]
    assert isinstance(table, wandb.Table) and len(table.data) == 12
    assert isinstance(table.data[0][table.columns.index("image")], wandb.Image)
    assert all(
        isinstance(cell, str | float | int | bool | wandb.Image) or cell is None for cell in table.data[0]
    )


@pytest.mark.slow
def test_a_lora_run_is_evaluated_as_base_plus_merged_adapter(compose_train, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel

    from skinderm.models.checkpoints import load_run_config, load_run_model
    from skinderm.models.loading import load_model_and_processor
    from skinderm.training.pipeline import run_training

    cfg = compose_train(
        [*SMALL_DATASET, "logger=none", "stage.max_steps=1", "eval.num_samples=0", "model.lora.enabled=true"]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "lora_run")
    run_training(cfg)
    run_dir = tmp_path / "lora_run"
    assert (run_dir / "model" / "adapter_config.json").is_file()

    merged, processor = load_run_model(run_dir)
    assert not isinstance(merged, PeftModel)
    base, _ = load_model_and_processor(OmegaConf.to_container(load_run_config(run_dir).model))
    reference = PeftModel.from_pretrained(base, str(run_dir / "model"))
    ids = processor.tokenizer("diagnosis: mel", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**ids).logits, reference(**ids).logits, atol=1e-5)


def test_a_synthetic_parameter_override_scores_that_sets_own_folder(
    compose_evaluate, trained_run: Path
) -> None:
    """dataset.synthetic.acquisition=shifted (or any generator value) moves the run's default-layout root to
    that set's folder, so evaluation never regenerates the run's own data in place; a given root stays."""
    taught = OmegaConf.load(trained_run / "config_resolved.yaml").dataset
    override = "dataset.synthetic.seed=99"
    cfg = compose_evaluate(f"run={trained_run}", override)
    dataset = choose_dataset(cfg, choose_model(cfg, [f"run={trained_run}"]), [f"run={trained_run}", override])
    assert dataset["synthetic"]["seed"] == 99 and dataset["root"] != taught.root
    assert dataset["root"] == taught.root.replace(f"_seed{taught.synthetic.seed}_", "_seed99_")
    given = [override, "dataset.root=/data/elsewhere"]
    cfg = compose_evaluate(f"run={trained_run}", *given)
    dataset = choose_dataset(cfg, choose_model(cfg, [f"run={trained_run}"]), [f"run={trained_run}", *given])
    assert dataset["root"] == "/data/elsewhere"
