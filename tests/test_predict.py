"""`python -m skinderm.predict`: one image in; its answer as JSON in its own pixels and an overlay out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from skinderm.config import validate_predict_config
from skinderm.coordinates import model_input_size
from skinderm.data.classes import CLASS_NAMES
from skinderm.evaluation.commands import run_prediction

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def predict_cli(tmp_path: Path, shared_cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "skinderm.predict", "run=null", "model=tiny", "max_new_tokens=8",
        f"paths.root_dir={tmp_path}", f"paths.cache_dir={shared_cache}", f"hydra.run.dir={tmp_path / 'out'}",
        *overrides,
    ]  # fmt: skip
    return subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture
def lesion_jpg(tmp_path: Path) -> Path:
    pixels = np.full((450, 600, 3), (205, 160, 130), dtype=np.uint8)
    pixels[150:300, 200:420] = (90, 50, 30)
    path = tmp_path / "ISIC_0012345.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    return path


def test_predict_prints_json_only_and_writes_an_overlay(
    tmp_path: Path, shared_cache: Path, lesion_jpg: Path
) -> None:
    result = predict_cli(tmp_path, shared_cache, f"image={lesion_jpg}", f"out={tmp_path / 'overlay.png'}")
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)  # stdout holds the JSON answer and nothing else (logs go to stderr)
    assert answer["image"] == str(lesion_jpg)
    assert answer["image_size"] == [600, 450]
    assert answer["model"] == "tiny (zero-shot)"
    assert {"diagnosis", "diagnosis_name", "location", "bbox_2d", "polygon", "parse_ok", "completion"} <= set(
        answer
    )
    assert answer["overlay"] == str(tmp_path / "overlay.png")
    with Image.open(answer["overlay"]) as overlay:
        assert overlay.format == "PNG" and overlay.size == (600, 450)


def test_an_extreme_aspect_image_is_answered_in_its_own_pixels(tmp_path: Path, shared_cache: Path) -> None:
    """50x9000 (180:1): pre-resized to a size the processor keeps (28x1428), answered, mapped back."""
    path = tmp_path / "strip.png"
    Image.new("RGB", (50, 9000), (205, 160, 130)).save(path)
    result = predict_cli(tmp_path, shared_cache, f"image={path}", f"out={tmp_path / 'overlay.png'}")
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    assert answer["image_size"] == [50, 9000]
    if answer["bbox_2d"] is not None:
        x1, y1, x2, y2 = answer["bbox_2d"]
        assert 0 <= x1 <= x2 <= 50 and 0 <= y1 <= y2 <= 9000


@pytest.mark.parametrize("case", ["missing", "corrupt", "not_given"])
def test_a_bad_image_is_one_line_error_with_exit_code_2(
    tmp_path: Path, shared_cache: Path, case: str
) -> None:
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    argument = {
        "missing": [f"image={tmp_path / 'absent.jpg'}"],
        "corrupt": [f"image={corrupt}"],
        "not_given": [],
    }
    result = predict_cli(tmp_path, shared_cache, *argument[case])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    expected = {
        "missing": "no such file",
        "corrupt": "cannot be decoded",
        "not_given": "'image' is required",
    }
    assert expected[case] in errors[0]
    assert result.stdout == ""


def test_answer_is_mapped_to_original_pixels_and_drawn(
    compose_train, lesion_jpg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skinderm.evaluation.generation as generation

    model_size = model_input_size(600, 450, min_pixels=3136, max_pixels=40_000)
    assert model_size == (224, 168)
    answer = {
        "diagnosis": "mel",
        "location": "center-center",
        "bbox_2d": [56, 42, 168, 126],  # a quarter inset on each side, in model pixels
        "polygon": [[56, 42], [168, 42], [168, 126], [56, 126]],
    }

    def fixed_answer(model: Any, processor: Any, images: list, prompt: str, **_: Any) -> list[str]:
        assert [image.size for image in images] == [model_size], "the model sees the image at its input size"
        return [json.dumps(answer)]

    monkeypatch.setattr(generation, "generate_answers", fixed_answer)
    cfg = compose_train(
        ["run=null", "model=tiny", f"image={lesion_jpg}", "score_classes=true"], config_name="predict"
    )
    validate_predict_config(cfg)
    result = run_prediction(cfg, overrides=[])

    assert result["diagnosis"] == "mel" and result["diagnosis_name"] == CLASS_NAMES["mel"]
    assert result["location"] == "center-center"
    assert result["bbox_2d"] == [150.0, 112.5, 450.0, 337.5]
    assert result["polygon"] == [[150.0, 112.5], [450.0, 112.5], [450.0, 337.5], [150.0, 337.5]]
    assert sum(result["class_probs"].values()) == pytest.approx(1.0, abs=1e-5)
    overlay = np.asarray(Image.open(result["overlay"]).convert("RGB")).astype(int)
    assert Path(result["overlay"]).parent == Path(cfg.paths.output_dir)
    red = (overlay[:, :, 0] > 180) & (overlay[:, :, 1] < 90) & (overlay[:, :, 2] < 90)
    assert red[112:338, 150].mean() > 0.9 and red[200, 160:440].mean() < 0.05, (
        "red outline on the box edge only"
    )
