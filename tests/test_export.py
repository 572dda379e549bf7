"""`python -m skinderm.export`: a run (full weights or LoRA) becomes one plain transformers folder with a
model card; a fresh process loads it with `from_pretrained` and answers exactly as the run does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from skinderm.config import validate_export_config
from skinderm.evaluation.export import (
    ADAPTER_FILES,
    CARD_FILE,
    MANIFEST_FILE,
    check_export_target,
    export_run,
    find_evaluations,
    push_export,
    training_chain,
    training_command,
)
from tests.conftest import SMALL_DATASET, cli_env, compose_config

ENV = cli_env()
N_IMAGES, BATCH, NEW_TOKENS = 6, 3, 24
FRONT_MATTER_KEYS = {"license", "library_name", "pipeline_tag", "tags"}
SECTIONS = (
    "## Intended use", "## How to use", "## Answer format", "## Training data and splits", "## Evaluation",
    "## How this model was made", "## Limitations",
)  # fmt: skip


def cli(module: str, root: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """A skinderm command run from `root` (relative run paths resolve there), data and model in `cache`."""
    command = [
        sys.executable, "-m", module, f"paths.root_dir={root}", f"paths.cache_dir={cache}",
        f"paths.data_dir={cache}/data", *overrides,
    ]  # fmt: skip
    return subprocess.run(command, cwd=root, env=ENV, capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def read_card(folder: Path) -> tuple[dict[str, Any], str]:
    text = (folder / CARD_FILE).read_text(encoding="utf-8")
    assert text.startswith("---\n")
    matter, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(matter), body


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> dict[str, dict[str, Path]]:
    """Two short SFT runs (full weights; LoRA), the first evaluated, both exported through the CLI."""
    root = tmp_path_factory.mktemp("export_runs")
    train = (*SMALL_DATASET, "logger=none", "stage.max_steps=20", "eval.num_samples=0")
    runs = {"full": root / "outputs/sft/runs/full", "lora": root / "outputs/sft/runs/lora"}
    ok(cli("skinderm.train", root, shared_cache, *train, f"hydra.run.dir={runs['full']}"))
    ok(
        cli(
            "skinderm.train",
            root,
            shared_cache,
            *train,
            "model.lora.enabled=true",
            f"hydra.run.dir={runs['lora']}",
        )
    )
    ok(
        cli(
            "skinderm.evaluate", root, shared_cache, "run=outputs/sft/runs/full", "logger=none",
            "plots=false", "bootstrap.n_resamples=50", "max_new_tokens=8", "batch_size=8",
        )
    )  # fmt: skip
    # A relative run path (as typed) for one, run=latest (the LoRA run, trained last) for the other.
    ok(cli("skinderm.export", root, shared_cache, "run=outputs/sft/runs/full"))
    lora_out = root / "exports" / "lora"
    result = ok(cli("skinderm.export", root, shared_cache, "run=latest", f"out={lora_out}"))
    assert f"export folder: {lora_out}" in result.stdout
    return {
        "full": {"run": runs["full"], "export": runs["full"] / "export"},
        "lora": {"run": runs["lora"], "export": lora_out},
    }


def reference_answers(run_dir: Path, image_dir: Path) -> tuple[list[str], list[Path], str, dict[str, Any]]:
    """The run's own greedy answers (skinderm's batched generation) on test images, saved as PNGs."""
    from omegaconf import OmegaConf

    from skinderm.conversations import ExampleBuilder
    from skinderm.evaluation.choice import load_evaluation_records
    from skinderm.evaluation.generation import generate_answers
    from skinderm.models.checkpoints import load_run_config, load_run_model

    cfg = load_run_config(run_dir)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    builder = ExampleBuilder(
        fields=tuple(cfg.answer.fields),
        min_pixels=int(cfg.model.min_pixels),
        max_pixels=int(cfg.model.max_pixels),
    )
    records = load_evaluation_records(OmegaConf.to_container(cfg.dataset, resolve=True), "test")[:N_IMAGES]
    images = [builder.image(record) for record in records]
    image_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        paths.append(image_dir / f"{index}.png")  # lossless: the fresh process sees the same pixels
        image.save(paths[-1])
    model, processor = load_run_model(run_dir)
    answers = generate_answers(
        model, processor, images, builder.prompt, batch_size=BATCH, max_new_tokens=NEW_TOKENS
    )
    return answers, paths, builder.prompt, model_cfg


# Loads the export as the model card says: plain transformers; skinderm's processor loader only where
# transformers cannot build Qwen2.5-VL's processor (no torchvision).
FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLForConditionalGeneration
    from transformers.utils import is_torchvision_available

    path, prompt, batch, new_tokens, min_pixels, max_pixels, *images = sys.argv[1:]
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert type(model) is Qwen2_5_VLForConditionalGeneration, type(model)
    direct = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), direct.state_dict().values()))
    if is_torchvision_available():
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained(path)
    else:
        from skinderm.models.processor import load_processor
        processor = load_processor(path, min_pixels=int(min_pixels), max_pixels=int(max_pixels))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answers = []
    for start in range(0, len(images), int(batch)):
        pictures = [Image.open(p).convert("RGB") for p in images[start : start + int(batch)]]
        inputs = processor(
            text=[text] * len(pictures), images=pictures, padding=True, padding_side="left",
            return_tensors="pt",
        )
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=int(new_tokens))
        new = output[:, inputs["input_ids"].shape[1] :]
        answers.extend(processor.batch_decode(new, skip_special_tokens=True))
    print(json.dumps(answers))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_export_loads_in_a_fresh_process_and_answers_like_the_run(
    exported: dict[str, dict[str, Path]], kind: str, tmp_path: Path
) -> None:
    run_dir, folder = exported[kind]["run"], exported[kind]["export"]
    expected, images, prompt, model_cfg = reference_answers(run_dir, tmp_path / "images")
    command = [
        sys.executable, "-c", FRESH_PROCESS, str(folder), prompt, str(BATCH), str(NEW_TOKENS),
        str(model_cfg["min_pixels"]), str(model_cfg["max_pixels"]), *map(str, images),
    ]  # fmt: skip
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
    assert any(answer.strip() for answer in expected)  # the models say something, not only end-of-answer

    names = {path.name for path in folder.iterdir()}
    assert not names & set(ADAPTER_FILES), names  # merged: no adapter left
    assert "model.safetensors" in names and not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    assert {"config.json", "generation_config.json", "processor_config.json", "chat_template.jinja"} <= names
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["repetition_penalty"] == 1.0


@pytest.mark.slow
def test_lora_export_holds_the_adapter_folded_into_the_base(exported: dict[str, dict[str, Path]]) -> None:
    from safetensors.torch import load_file

    from skinderm.models.checkpoints import load_run_config

    run_dir, folder = exported["lora"]["run"], exported["lora"]["export"]
    assert (run_dir / "model" / "adapter_config.json").is_file()  # the run itself saved an adapter
    base = load_file(str(Path(load_run_config(run_dir).model.name_or_path) / "model.safetensors"))
    merged = load_file(str(folder / "model.safetensors"))
    assert set(base) == set(merged)  # the same plain checkpoint layout as the base model
    changed = [key for key in base if "q_proj.weight" in key and "visual" not in key]
    assert changed and all(not base[key].equal(merged[key]) for key in changed)
    vision = [key for key in base if "visual" in key]
    assert vision and all(base[key].equal(merged[key]) for key in vision)  # adapters stay off the ViT
    assert json.loads((folder / MANIFEST_FILE).read_text())["merged_adapter"] is True


@pytest.mark.slow
def test_model_cards_hold_their_fields(exported: dict[str, dict[str, Path]]) -> None:
    for kind in ("full", "lora"):
        matter, body = read_card(exported[kind]["export"])
        assert set(matter) >= FRONT_MATTER_KEYS, matter
        assert matter["library_name"] == "transformers" and matter["pipeline_tag"] == "image-text-to-text"
        assert matter["license"] == "apache-2.0"  # the tiny model is skinderm's own
        assert "base_model" not in matter  # the tiny model has no Hub id; a Qwen base would be named
        assert "dermoscopy" in matter["tags"] and "sft" in matter["tags"]
        for section in SECTIONS:
            assert f"\n{section}\n" in body, section
        assert "**Not for clinical use.**" in body
        assert "Look at this dermoscopy image. Answer in JSON with" in body
        assert "AutoModelForImageTextToText.from_pretrained" in body and "load_processor(path" in body
        assert "| akiec |" in body and "| All |" in body  # images per class and split
        assert "python -m skinderm.train paths.root_dir=" in body
        assert "python -m skinderm.export" in body

    _, full = read_card(exported["full"]["export"])
    evaluation = full.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    assert "### synthetic / test" in evaluation and "| metric | value | 95% interval |" in evaluation
    row = next(line for line in evaluation.splitlines() if line.startswith("| balanced accuracy |"))
    assert row.count(" - ") == 1  # the value and its interval
    assert "Not evaluated" not in full and "full fine-tuning" in full

    lora_matter, lora = read_card(exported["lora"]["export"])
    assert (
        "**Not evaluated**" in lora and f"python -m skinderm.evaluate run={exported['lora']['run']}" in lora
    )
    assert "model.lora.enabled=true" in lora and "LoRA r=16" in lora and "lora-merged" in lora_matter["tags"]


@pytest.mark.slow
def test_exporting_again_replaces_the_earlier_export(exported: dict[str, dict[str, Path]]) -> None:
    folder = exported["full"]["export"]
    before = json.loads((folder / MANIFEST_FILE).read_text())
    result = export_run(exported["full"]["run"], log_dir=folder.parents[3], out=folder)
    assert (
        result.path == folder
        and json.loads((folder / MANIFEST_FILE).read_text())["created"] >= before["created"]
    )
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".export.")]  # no leftovers


# --- bad input, without a model -----------------------------------------------------------------------


def fake_run(
    folder: Path, *, stage: str = "sft", finished: bool = True, overrides: list[str] | None = None
) -> Path:
    """A run folder with the files the export reads before loading a model."""
    (folder / "model").mkdir(parents=True)
    (folder / "config_resolved.yaml").write_text(
        yaml.safe_dump({"stage": {"name": stage}, "task_name": stage})
    )
    if finished:
        (folder / "FINISHED").write_text("ok\n")
    if overrides is not None:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return folder


def test_unfinished_run_is_one_error_line(tmp_path: Path, shared_cache: Path) -> None:
    run_dir = fake_run(tmp_path / "outputs/sft/runs/half", finished=False)
    result = cli("skinderm.export", tmp_path, shared_cache, f"run={run_dir}")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "did not finish" in lines[0] and "Traceback" not in result.stderr


def test_missing_run_and_foreign_out_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        export_run(tmp_path / "nowhere", log_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no finished training run"):
        export_run("latest", log_dir=tmp_path / "outputs")
    run_dir = fake_run(tmp_path / "outputs/sft/runs/done")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a skinderm export"):
        export_run(run_dir, log_dir=tmp_path / "outputs", out=foreign)
    with pytest.raises(ValueError, match="is not a skinderm export"):
        export_run(run_dir, log_dir=tmp_path / "outputs", out=run_dir)  # never over the run itself
    assert (foreign / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    check_export_target(tmp_path / "empty")  # an empty folder or an earlier export may be written


def test_grpo_card_command_chain_goes_back_to_stage1(tmp_path: Path) -> None:
    sft = fake_run(tmp_path / "outputs/sft/runs/a", overrides=["stage.max_steps=5", "dataset.root=/my data"])
    grpo = fake_run(tmp_path / "outputs/grpo/runs/b", stage="grpo", overrides=["stage=grpo"])
    (grpo / "metrics.json").write_text(json.dumps({"init_from": str(sft)}))
    assert training_chain(grpo) == [sft, grpo]
    assert training_command(sft) == "python -m skinderm.train stage.max_steps=5 'dataset.root=/my data'"
    assert training_command(grpo) == "python -m skinderm.train stage=grpo"
    assert training_command(tmp_path) is None


def test_evaluations_are_found_by_absolute_or_relative_run_path(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "outputs/sft/runs/r1")
    other = fake_run(tmp_path / "outputs/sft/runs/r2")

    def evaluation(name: str, run: str, split: str) -> Path:
        folder = tmp_path / "outputs/evaluate/runs" / name
        folder.mkdir(parents=True)
        context = {"run": run, "dataset": "synthetic", "split": split, "max_samples": None}
        (folder / "metrics.json").write_text(json.dumps({"n": 3, "evaluation": context}))
        (folder / "config_resolved.yaml").write_text(yaml.safe_dump({"paths": {"root_dir": str(tmp_path)}}))
        (folder / "FINISHED").write_text("ok\n")
        return folder

    val = evaluation("e1", str(run_dir), "val")
    test = evaluation("e2", "outputs/sft/runs/r1", "test")  # relative to where evaluate ran
    evaluation("e3", str(other), "test")
    found = find_evaluations(run_dir, [tmp_path / "outputs"])
    assert found == [test.resolve(), val.resolve()]  # test split first


def test_config_is_checked_and_push_refuses_offline(tmp_path: Path, shared_cache: Path) -> None:
    from skinderm.config import ConfigError

    cfg = compose_config(tmp_path, shared_cache, config_name="export", output_dir=tmp_path / "log")
    validate_export_config(cfg)
    for override, key in (
        ("dtype=float8", "dtype"),
        ("push_to_hub=not a repo", "push_to_hub"),
        ("max_new_tokens=0", "max_new_tokens"),
    ):
        bad = compose_config(
            tmp_path, shared_cache, [override], config_name="export", output_dir=tmp_path / "log"
        )
        with pytest.raises(ConfigError, match=key):
            validate_export_config(bad)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        push_export(tmp_path, "me/skinderm-sft")  # refused before any network call (tests run offline)
