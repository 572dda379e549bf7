"""User mistakes in config values and inputs end in ONE `error:` line naming the key or file, exit code 2.

Each case runs the real command in a subprocess and checks that it stopped before any expensive work:
no synthetic data folder and no tiny model were built (validation runs before both).
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from skinderm.config import user_errors_as_messages
from tests.conftest import cli_env

ENV = cli_env()
ENV.pop("HYDRA_FULL_ERROR", None)


def run_command(module: str, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", f"skinderm.{module}", *overrides,
        f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.data_dir={tmp_path / 'cache' / 'data'}",
    ]  # fmt: skip
    return subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)


def assert_one_error_line_before_any_work(
    result: subprocess.CompletedProcess[str], expected: str, tmp_path: Path
) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert expected in errors[0], errors[0]
    # Nothing expensive started: no data prepared, no model built.
    assert not (tmp_path / "cache" / "data").exists()
    assert not (tmp_path / "cache" / "models").exists()
    return errors[0]


TRAIN_CASES = [
    (("seed=abc",), "config key 'seed'"),
    (("seed=1.5",), "config key 'seed'"),
    (("seed=-1",), "config key 'seed' = -1: must be an integer >= 0"),
    (("answer.fields=[]",), "config key 'answer.fields' = []: list one or more of"),
    (("answer.fields=[diagnosis,size]",), "unknown field(s) ['size']"),
    (("answer.fields=[diagnosis,diagnosis]",), "['diagnosis'] listed more than once"),
    (("answer.polygon_max_points=2",), "'answer.polygon_max_points' = 2: must be an integer >= 3"),
    (
        ("stage.per_device_train_batch_size=0",),
        "'stage.per_device_train_batch_size' = 0: must be an integer >= 1",
    ),
    (("stage.per_device_eval_batch_size=0",), "'stage.per_device_eval_batch_size' = 0"),
    (("stage.gradient_accumulation_steps=0",), "'stage.gradient_accumulation_steps' = 0"),
    (("stage.max_steps=0",), "'stage.max_steps' = 0"),
    (("stage.save_steps=0",), "'stage.save_steps' = 0"),
    (("stage.logging_steps=0",), "'stage.logging_steps' = 0"),
    (("stage.eval_steps=0",), "'stage.eval_steps' = 0"),
    (("stage.save_total_limit=0",), "'stage.save_total_limit' = 0: must be an integer >= 1 (or null)"),
    (("stage.warmup_steps=-1",), "'stage.warmup_steps' = -1"),
    (("stage.learning_rate=0",), "'stage.learning_rate' = 0: must be a finite number > 0"),
    (("stage.learning_rate=-1e-3",), "'stage.learning_rate' = -0.001"),
    (("stage.learning_rate=nan",), "'stage.learning_rate' = nan"),
    (("stage.max_grad_norm=-1",), "'stage.max_grad_norm' = -1"),
    (("stage=grpo", "stage.num_generations=1"), "'stage.num_generations' = 1: must be an integer >= 2"),
    (("stage=grpo", "stage.num_generations=3"), "must be a multiple of stage.num_generations = 3"),
    (("stage=grpo", "stage.temperature=0"), "'stage.temperature' = 0"),
    (("stage=grpo", "stage.top_p=1.5"), "'stage.top_p' = 1.5: must be a finite number > 0 and <= 1"),
    (("eval.batch_size=0",), "'eval.batch_size' = 0"),
    (("eval.max_new_tokens=0",), "'eval.max_new_tokens' = 0"),
    (("eval.num_samples=-1",), "'eval.num_samples' = -1"),
    (("model.min_pixels=40000",), "model.min_pixels == model.max_pixels == 40000"),
    (("model.max_pixels=500",), "fix model.min_pixels / model.max_pixels"),
    (("model.min_pixels=39300", "model.max_pixels=39500"), "no image size fits between them"),
    (("model.lora.r=0",), "'model.lora.r' = 0"),
    (("hardware.dataloader_num_workers=-1",), "'hardware.dataloader_num_workers' = -1"),
    (("hardware.torch_threads=0",), "'hardware.torch_threads' = 0"),
    (("dataset.synthetic.num_images=0",), "'dataset.synthetic.num_images' = 0"),
    (("dataset.synthetic.image_width=0",), "'dataset.synthetic.image_width' = 0"),
    (("dataset.splits.val_fraction=0.5", "dataset.splits.test_fraction=0.5"), "must be < 1 to leave images"),
    (
        (
            "reward.weights.diagnosis=0",
            "reward.weights.spatial=0",
            "reward.weights.bbox=0",
            "reward.weights.outline=0",
        ),
        "'reward.weights.*' are all 0",
    ),
    (("reward.weights.bbox=-0.1",), "'reward.weights.bbox' = -0.1"),
    (("reward.weights.iou=0.3",), "reward.weights.iou = 0.3 is retired"),
    (("reward.format.required_fields=[]",), "'reward.format.required_fields' = []"),
]


@pytest.mark.parametrize(
    ("overrides", "expected"), TRAIN_CASES, ids=[" ".join(case[0]) for case in TRAIN_CASES]
)
def test_train_refuses_bad_values_in_one_line_before_data_or_model(
    tmp_path: Path, overrides: tuple[str, ...], expected: str
) -> None:
    result = run_command("train", tmp_path, *overrides, "logger=none")
    assert_one_error_line_before_any_work(result, expected, tmp_path)


EVALUATE_CASES = [
    (("seed=abc",), "config key 'seed'"),
    (("batch_size=0",), "'batch_size' = 0"),
    (("max_new_tokens=0",), "'max_new_tokens' = 0"),
    (("max_samples=0",), "'max_samples' = 0"),
    (("bootstrap.n_resamples=-1",), "'bootstrap.n_resamples' = -1"),
    (("bootstrap.seed=abc",), "config key 'bootstrap.seed'"),
    (("run=null", "answer.fields=[]"), "config key 'answer.fields' = []"),
    (("run=null", "model.min_pixels=40000"), "model.min_pixels == model.max_pixels"),
]


@pytest.mark.parametrize(
    ("overrides", "expected"), EVALUATE_CASES, ids=[" ".join(case[0]) for case in EVALUATE_CASES]
)
def test_evaluate_refuses_bad_values_in_one_line(
    tmp_path: Path, overrides: tuple[str, ...], expected: str
) -> None:
    result = run_command("evaluate", tmp_path, *overrides, "logger=none")
    assert_one_error_line_before_any_work(result, expected, tmp_path)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An ordinary image, one beyond the processor's 200:1 limit, and two decompression bombs."""
    folder = tmp_path_factory.mktemp("images")
    sizes = {
        "ok": ("RGB", (600, 450)),
        "wide": ("RGB", (20_000, 50)),
        "tall": ("RGB", (50, 12_000)),
        # 1-bit PNGs compress to a few kB; PIL errors above 2 x MAX_IMAGE_PIXELS and warns above it.
        "bomb": ("1", (20_000, 20_000)),
        "warn": ("1", (10_000, 10_000)),
    }
    paths = {}
    for name, (mode, size) in sizes.items():
        paths[name] = folder / f"{name}.png"
        Image.new(mode, size).save(paths[name])
    paths["loop"] = folder / "loop.jpg"
    paths["loop"].symlink_to(paths["loop"].name)  # a link to itself
    # A cut-off JPEG "repaired" with an end-of-image marker: it passes an end-marker check.
    buffer = io.BytesIO()
    Image.effect_noise((600, 450), 64).convert("RGB").save(buffer, format="JPEG", quality=90)
    paths["padded"] = folder / "padded.jpg"
    paths["padded"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2] + b"\xff\xd9")
    return paths


PREDICT_CASES = [
    ("seed=abc", "ok", "config key 'seed'"),
    ("max_new_tokens=0", "ok", "'max_new_tokens' = 0"),
    ("answer.fields=[]", "ok", "config key 'answer.fields' = []"),
    ("model.min_pixels=40000", "ok", "model.min_pixels == model.max_pixels"),
    (None, "wide", "20000x50 pixels has aspect ratio 400:1, over the 200:1 limit"),
    (None, "tall", "50x12000 pixels has aspect ratio 240:1, over the 200:1 limit"),
    (None, "bomb", "has 400,000,000 pixels, more than the 89,478,485 that PIL decodes"),
    (None, "warn", "has 100,000,000 pixels, more than the 89,478,485 that PIL decodes"),
    (None, "loop", "is a symbolic link loop"),
    (None, "padded", "is truncated"),
]


@pytest.mark.parametrize(("override", "image", "expected"), PREDICT_CASES)
def test_predict_refuses_bad_values_and_images_before_loading_the_model(
    tmp_path: Path, images: dict[str, Path], override: str | None, image: str, expected: str
) -> None:
    extra = [override] if override else []
    result = run_command("predict", tmp_path, "run=null", f"image={images[image]}", *extra)
    line = assert_one_error_line_before_any_work(result, expected, tmp_path)
    if override is None:  # the line names the file
        assert str(images[image]) in line
    if image in ("bomb", "warn"):
        assert f"{Image.MAX_IMAGE_PIXELS:,}" in line


# --- a full disk -----------------------------------------------------------------------------------------


def _raise_inside(cfg: object, error: BaseException, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stopped, user_errors_as_messages(cfg):  # type: ignore[arg-type]
        raise error
    return int(stopped.value.code), capsys.readouterr().err


@pytest.fixture
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKINDERM_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_names_the_file_being_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_debug: None, code: int
) -> None:
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "run")}})
    error = OSError(code, os.strerror(code), str(tmp_path / "run" / "checkpoint-5" / "model.safetensors"))
    status, stderr = _raise_inside(cfg, error, capsys)
    assert status == 2
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr
    assert lines[0].startswith(
        f"error: no space left on device writing {tmp_path / 'run' / 'checkpoint-5' / 'model.safetensors'}: "
        "free space or point paths.root_dir elsewhere"
    )
    assert "OSError" in (tmp_path / "run" / "error.txt").read_text()


def test_a_full_disk_without_a_file_name_names_the_run_folder_even_when_wrapped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_debug: None
) -> None:
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "run")}})
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos") from cause
    except RuntimeError as wrapped:
        status, stderr = _raise_inside(cfg, wrapped, capsys)
    assert status == 2
    assert stderr.splitlines() == [
        f"error: no space left on device writing the run folder {tmp_path / 'run'}: free space or point "
        f"paths.root_dir elsewhere (traceback: {tmp_path / 'run' / 'error.txt'})"
    ]


def test_the_message_survives_when_the_traceback_file_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_debug: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk error.txt fails too: the one line still comes, and no cut-off error.txt is left."""
    (tmp_path / "run").mkdir()

    def disk_full(self: Path, *args: object, **kwargs: object) -> int:
        self.open("w").close()  # the file gets created, then the write fails
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", disk_full)
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "run")}})
    status, stderr = _raise_inside(
        cfg, OSError(errno.ENOSPC, "No space left on device", "/data/x.json"), capsys
    )
    assert status == 2
    assert stderr.splitlines() == [
        "error: no space left on device writing /data/x.json: free space or point paths.root_dir elsewhere "
        "(SKINDERM_DEBUG=1 shows the traceback)"
    ]
    assert not (tmp_path / "run" / "error.txt").exists()


def test_other_os_errors_are_not_called_a_full_disk(no_debug: None) -> None:
    with pytest.raises(OSError, match="Input/output error"), user_errors_as_messages(None):
        raise OSError(errno.EIO, "Input/output error", "/data/x")
