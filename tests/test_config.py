"""Every config group option composes and validates; mistakes fail fast with a message naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from skinderm.config import ConfigError, validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("dataset", "model", "stage", "reward", "hardware", "logger")


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"), [(group, option) for group in GROUPS for option in group_options(group)]
)
def test_every_group_option_composes_and_validates(compose_train, group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if group == "dataset" and option != "synthetic":
        overrides.append("dataset.root=/data/somewhere")
    cfg = compose_train(overrides)
    if (group, option) == ("dataset", "isic2018_test"):
        with pytest.raises(ConfigError, match="for training"):
            validate_config(cfg)
        return
    validate_config(cfg)
    assert cfg[group].get("name", option) is not None


def test_every_yaml_starts_with_a_command_comment() -> None:
    for path in CONF.rglob("*.yaml"):
        first = path.read_text().splitlines()[0]
        assert (first.startswith("#") and "python" in first) or "@package" in first, path


def test_misspelled_key_inside_a_group_is_named(compose_train) -> None:
    from omegaconf import open_dict

    cfg = compose_train()
    with open_dict(cfg):
        cfg.model.lora.rank = 8
    with pytest.raises(ConfigError, match=r"model\.lora\.rank"):
        validate_config(cfg)


def test_wrong_value_type_is_named(compose_train) -> None:
    cfg = compose_train(["stage.max_steps=lots"])
    with pytest.raises(ConfigError, match=r"stage\.max_steps"):
        validate_config(cfg)


def test_unknown_choice_is_named(compose_train) -> None:
    cfg = compose_train(["hardware.precision=float8"])
    with pytest.raises(ConfigError, match=r"hardware\.precision"):
        validate_config(cfg)


def test_real_dataset_without_root_says_how_to_fix(compose_train) -> None:
    cfg = compose_train(["dataset=ham10000"])
    with pytest.raises(ConfigError, match=r"dataset\.root=/path/to/HAM10000"):
        validate_config(cfg)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skinderm.train", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_misspelled_key_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    result = run_cli("dataset.nmae=x", cwd=tmp_path)
    assert result.returncode != 0
    assert "dataset.nmae" in result.stderr.splitlines()[0]
    assert "Traceback" not in result.stderr


def test_cli_unknown_group_option_lists_the_choices(tmp_path: Path) -> None:
    result = run_cli("model=tinyy", cwd=tmp_path)
    assert result.returncode != 0
    assert "tinyy" in result.stderr and "qwen2_5_vl_3b" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_prints_the_resolved_job_config(tmp_path: Path) -> None:
    result = run_cli("--cfg", "job", "stage=grpo", "reward=iou_heavy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: grpo" in result.stdout and "weights:" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("stage.max_steps=lots",), "stage.max_steps"),
        (("hardware.precision=float8",), "hardware.precision"),
        (("dataset=ham10000",), "dataset.root=/path/to/HAM10000"),
        (("dataset=ham10000", "dataset.root=/no/such/folder"), "/no/such/folder"),
        (("stage=grpo", "logger=none"), "run `python -m skinderm.train stage=sft` first"),
        (("stage=grpo", "logger=none", "stage.init_from=/no/run"), "stage.init_from=/no/run"),
        (("logger.mode=online",), "WANDB_API_KEY"),
        (("resume=latest",), "without resume"),
    ],
)
def test_cli_user_mistakes_end_in_one_line_naming_the_fix(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "skinderm.train", *args, f"paths.root_dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode != 0
    error_lines = [
        line for line in result.stderr.splitlines() if line.startswith(("error:", "Error", "Could not"))
    ]
    assert error_lines and expected in error_lines[0], result.stderr[-1500:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("env", "tag"), [({}, ""), ({"WORLD_SIZE": "2", "RANK": "1"}, "[rank 1]")])
def test_log_lines_name_their_rank_only_in_multi_process_runs(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], tag: str
) -> None:
    """All ranks append to the run folder's one train.log: each line says which rank wrote it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    for key in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    GlobalHydra.instance().clear()
    with initialize_config_module("skinderm.conf", version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    GlobalHydra.instance().clear()
    log_format = OmegaConf.to_container(cfg.hydra.job_logging.formatters, resolve=True)["simple"]["format"]
    assert log_format == f"[%(asctime)s]{tag}[%(name)s][%(levelname)s] %(message)s"


def test_every_range_rule_names_a_key_the_shipped_configs_have(compose_train) -> None:
    """A renamed key must not silently drop its rule (check_ranges skips keys a config lacks)."""
    from omegaconf import OmegaConf

    from skinderm.config import TRAIN_RANGES

    composed = [compose_train(), compose_train(["stage=grpo"])]
    missing = [
        key
        for key in TRAIN_RANGES
        if all(OmegaConf.select(cfg, key, default="<absent>") == "<absent>" for cfg in composed)
    ]
    assert not missing


def test_range_rules_describe_what_is_allowed() -> None:
    from skinderm.config import COUNT, FRACTION, POSITIVE, SEED, Range

    assert COUNT.allows(1) and not COUNT.allows(0) and not COUNT.allows(1.5) and not COUNT.allows(True)
    assert POSITIVE.allows(1e-9) and not POSITIVE.allows(0) and not POSITIVE.allows(float("inf"))
    assert not POSITIVE.allows(float("nan")) and FRACTION.allows("0.5") and not FRACTION.allows(1.01)
    assert SEED.describe() == "an integer >= 0 and <= 4294967295"
    assert Range(low=1, integer=True, optional=True).allows(None) and not COUNT.allows(None)
